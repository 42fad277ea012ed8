"""Apache Kafka on this machine: its broker's jars from Maven Central, and a KRaft
cluster of one or three nodes on loopback.

Run: ``churnwatch broker --apache-kafka [--nodes 3]`` (Ctrl-C stops it). The
test suite and ``churnwatch demo --broker apache-kafka`` use
:class:`ApacheKafkaCluster` too. Unlike the embedded Tansu broker, Apache Kafka
keeps its logs on disk (``data_dir``), has transactions, and replicates
partitions across nodes; a node can be killed and restarted with its data.

The version is ``KAFKA_VERSION`` of ``configs/versions.env``, the pin the
compose file reads too. The jars come through Maven (``configs/apache-kafka/
pom.xml``, ``mvn dependency:copy-dependencies``) into a cache folder, once per
version; they need Java 17 (``java`` on the PATH or ``JAVA_HOME``).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from churnwatch.core.broker import BrokerError, free_port, start_child, stop_child
from churnwatch.core.settings import CONFIGS

log = logging.getLogger(__name__)

VERSIONS = CONFIGS / "versions.env"
POM = CONFIGS / "apache-kafka" / "pom.xml"


class ApacheKafkaUnavailable(BrokerError):
    """Java, Maven or the jars cannot be had here; the message says which and why."""


def pinned_version(path: Path = VERSIONS) -> str:
    """``KAFKA_VERSION`` from the versions file (the compose file's pin); a
    ``KAFKA_VERSION`` in the environment wins, as it does for compose."""
    if explicit := os.environ.get("KAFKA_VERSION", "").strip():
        return explicit
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "KAFKA_VERSION" and value.strip():
            return value.strip()
    raise ApacheKafkaUnavailable(f"{path} has no KAFKA_VERSION=... line")


def cache_root() -> Path:
    """Where fetched jars are kept between runs (``APACHE_KAFKA_CACHE``, else
    ``$XDG_CACHE_HOME/churnwatch/apache-kafka``, else ``~/.cache/...``)."""
    if explicit := os.environ.get("APACHE_KAFKA_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "churnwatch" / "apache-kafka"


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise ApacheKafkaUnavailable(
            "Apache Kafka needs Java 17 or newer: no java on the PATH and no JAVA_HOME "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )
    return candidate


def fetch_jars(version: str | None = None, root: Path | None = None) -> Path:
    """The folder of the broker's jars for ``version``, fetched with Maven when missing.

    Fetched into a temporary folder and renamed, so an interrupted fetch leaves
    nothing that looks complete. Maven's own cache (``~/.m2``) makes a second
    fetch of the same version offline.
    """
    version = version or pinned_version()
    dest = (root or cache_root()) / version
    if (dest / f"kafka_2.13-{version}.jar").exists():
        return dest
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ApacheKafkaUnavailable(
            f"the Apache Kafka {version} jars are not in {dest} and Maven is not installed "
            "to fetch them (Debian: apt-get install maven)"
        )
    java_binary()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{version}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    args = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)  # noqa: S603
    if done.returncode != 0 or not (partial / f"kafka_2.13-{version}.jar").exists():
        shutil.rmtree(partial, ignore_errors=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
        raise ApacheKafkaUnavailable(
            f"Maven could not fetch Apache Kafka {version} (exit {done.returncode}): "
            + " | ".join(tail)
        )
    with contextlib.suppress(FileExistsError, OSError):
        partial.rename(dest)  # another process may have won the race: theirs is as good
    shutil.rmtree(partial, ignore_errors=True)
    return dest


def _listener_ports(properties: Path) -> tuple[int, int]:
    """The broker and controller ports of a node's server.properties."""
    for line in properties.read_text(encoding="utf-8").splitlines():
        if line.startswith("listeners="):
            ports = dict(
                (part.split("://")[0], int(part.rsplit(":", 1)[1]))
                for part in line.removeprefix("listeners=").split(",")
            )
            return ports["PLAINTEXT"], ports["CONTROLLER"]
    raise BrokerError(f"{properties} has no listeners= line: remove its folder to start afresh")


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class Node:
    """One KRaft node in combined mode (broker and controller in one process)."""

    node_id: int
    port: int
    controller_port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def properties(self) -> Path:
        return self.folder / "server.properties"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ApacheKafkaCluster:
    """Apache Kafka in KRaft combined mode, ``nodes`` processes on loopback; a context
    manager that stops every process it started.

    With three nodes, topics default to replication factor 3 and
    ``min.insync.replicas`` 2, as in production: one node may be down and
    producers with ``acks=all`` carry on.
    """

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 1,
        version: str | None = None,
        host: str = "127.0.0.1",
        heap_mb: int = 384,
        startup_timeout: float = 120.0,
        ports: list[int] | None = None,
    ) -> None:
        if nodes not in (1, 3):
            raise ValueError("an Apache Kafka cluster here has 1 or 3 nodes")
        self.version = version or pinned_version()
        self.data_dir = Path(data_dir)
        self.host = host
        self.heap_mb = heap_mb
        self.startup_timeout = startup_timeout
        given = ports or [free_port(host) for _ in range(nodes)]
        self.nodes = [
            Node(i + 1, given[i], free_port(host), self.data_dir / f"node-{i + 1}")
            for i in range(nodes)
        ]
        self.jars: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    @property
    def replication_factor(self) -> int:
        return 3 if len(self.nodes) == 3 else 1

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The first node's process (a one-node cluster's only one), as for Tansu."""
        return self.nodes[0].proc

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    # -- life cycle ------------------------------------------------------------

    def start(self) -> ApacheKafkaCluster:
        self.jars = fetch_jars(self.version)
        java = java_binary()
        fresh = not any(n.properties.exists() for n in self.nodes)
        if not fresh:  # a cluster made before, on its data: its ports are in its files
            for node in self.nodes:
                node.port, node.controller_port = _listener_ports(node.properties)
        else:
            cluster_id = _cluster_id()
            for node in self.nodes:
                node.folder.mkdir(parents=True, exist_ok=True)
                node.properties.write_text(self._properties(node), encoding="utf-8")
                self._format(java, node, cluster_id)
        try:
            for node in self.nodes:
                self._launch(java, node)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in self.nodes)
        rf = self.replication_factor
        isr = 2 if rf == 3 else 1
        lines = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.host}:{node.port},"
            f"CONTROLLER://{self.host}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": node.folder / "data",
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "offsets.topic.num.partitions": 10,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",  # as in docker-compose.yml
            "unclean.leader.election.enable": "false",
            "log.segment.bytes": 64 * 1024 * 1024,
            "num.network.threads": 2,
            "num.io.threads": 4,
            "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _format(self, java: str, node: Node, cluster_id: str) -> None:
        args = [
            java,
            "-cp",
            f"{self.jars}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(node.properties),
        ]
        for attempt in (1, 2):  # (once seen to die with nothing said: tried again)
            done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
            if done.returncode == 0:
                return
            log.warning(
                "formatting Apache Kafka node %s's storage exited %s (attempt %s)",
                node.node_id,
                done.returncode,
                attempt,
            )
            args = [*args, "--ignore-formatted"]  # a second try after a half-done first
        raise BrokerError(
            f"formatting Apache Kafka node {node.node_id}'s storage failed "
            f"(exit {done.returncode}): " + (done.stdout + done.stderr).strip()[-800:]
        )

    def _launch(self, java: str, node: Node) -> None:
        args = [
            java,
            f"-Xmx{self.heap_mb}m",
            f"-Xms{min(self.heap_mb, 128)}m",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",  # a faster start; throughput is not measured here
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-cp",
            f"{self.jars}/*",
            "kafka.Kafka",
            str(node.properties),
        ]
        node.proc = start_child(args, log=node.log)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Every running node accepts connections and the cluster's metadata lists them."""
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        want = {n.node_id for n in self.nodes if n.proc is not None}
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    raise BrokerError(
                        f"Apache Kafka node {node.node_id} exited at start "
                        f"(code {node.proc.returncode}): {self._tail(node)}"
                    )
            if self._brokers_listed() >= want:
                return
            time.sleep(0.3)
        raise BrokerError(
            f"Apache Kafka ({self.bootstrap_servers}) was not ready within "
            f"{timeout or self.startup_timeout:.0f}s: "
            + " | ".join(f"node {n.node_id}: {self._tail(n)}" for n in self.nodes)
        )

    def _brokers_listed(self) -> set[int]:
        for node in self.nodes:
            if not node.running:
                continue
            try:
                with socket.create_connection((self.host, node.port), timeout=0.5):
                    pass
            except OSError:
                continue
            from kafka import KafkaAdminClient

            admin = None
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=f"{self.host}:{node.port}",
                    request_timeout_ms=3000,
                )
                return {int(b["broker_id"]) for b in admin.describe_cluster()["brokers"]}
            except Exception:  # noqa: BLE001, S112 - not ready yet: any answer but a list is "wait"
                continue
            finally:
                if admin is not None:
                    with contextlib.suppress(Exception):
                        admin.close()
        return set()

    def _tail(self, node: Node, lines: int = 6) -> str:
        try:
            text = node.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " / ".join(text[-lines:]) or "(empty log)"

    def kill(self, node_id: int) -> None:
        """kill -9 one node (its data stays on disk)."""
        node = self.node(node_id)
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=30)
        node.proc = None

    def stop_node(self, node_id: int) -> None:
        """A controlled shutdown of one node (SIGTERM: it hands its leaderships over)."""
        node = self.node(node_id)
        if node.proc is not None:
            stop_child(node.proc, timeout=60)
        node.proc = None

    def start_node(self, node_id: int, wait: bool = True) -> None:
        """Start a stopped or killed node again, on its data."""
        node = self.node(node_id)
        if node.running:
            return
        self._launch(java_binary(), node)
        if wait:
            self.wait_ready()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to every node at once (one after another, the last ones would wait
        for a controller quorum that is already gone), then SIGKILL what is left."""
        running = [n.proc for n in self.nodes if n.proc is not None]
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            stop_child(proc, timeout=1)
        for node in self.nodes:
            node.proc = None

    def __enter__(self) -> ApacheKafkaCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

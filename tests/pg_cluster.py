"""A throw-away PostgreSQL cluster for tests, benchmarks and the multi-host example: ``initdb`` into a
temporary folder, a free port on 127.0.0.1, ``pg_ctl start``, and everything removed at :meth:`stop`.

PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged user (``nobody``,
or ``$CIRCUITRY_PG_USER``) and its commands run through ``runuser``. The binaries are found through
``$CIRCUITRY_PG_BIN``, ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` (newest first) or ``PATH``.

Nothing here is collected by pytest (no ``test_`` names); ``tests/conftest.py`` wraps it in fixtures.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["Cluster", "ClusterError", "find_bindir"]

USER = "circuitry"
#: The superuser's password: a URL carries it, so tests can check it is never logged.
PASSWORD = "s3cret-Pa55word"


class ClusterError(RuntimeError):
    """PostgreSQL could not be started here (the message says why)."""


def find_bindir() -> Path | None:
    env = os.environ.get("CIRCUITRY_PG_BIN")
    if env:
        return Path(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out and (Path(out) / "initdb").exists():
                return Path(out)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if versions:
        return versions[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One PostgreSQL server of its own (see the module docstring).

    Args:
        durable: Keep ``fsync`` and synchronous commit on (benchmarks); tests turn them off for speed.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.bindir = find_bindir()
        self.port = 0
        self.folder: Path | None = None
        self._run_as: str | None = None
        self._dbs = 0

    # -- commands ---------------------------------------------------------------------------------------

    def _cmd(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bindir is not None
        argv = [str(self.bindir / args[0]), *args[1:]]
        if self._run_as is not None:
            argv = ["runuser", "-u", self._run_as, "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/",
                              env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
        if check and proc.returncode != 0:
            raise ClusterError(f"{args[0]} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
        return proc

    @property
    def data(self) -> Path:
        assert self.folder is not None
        return self.folder / "data"

    @property
    def log(self) -> Path:
        assert self.folder is not None
        return self.folder / "server.log"

    def start(self) -> Cluster:
        """Create and start the cluster. Raises :class:`ClusterError` with the reason if it cannot."""
        if self.bindir is None or not (self.bindir / "initdb").exists():
            raise ClusterError("PostgreSQL binaries not found (install Debian's postgresql, or set CIRCUITRY_PG_BIN)")
        self.folder = Path(tempfile.mkdtemp(prefix="circuitry-pg-"))
        if os.geteuid() == 0:
            self._run_as = os.environ.get("CIRCUITRY_PG_USER", "nobody")
            try:
                entry = pwd.getpwnam(self._run_as)
            except KeyError:
                raise ClusterError(f"running as root, and user {self._run_as!r} to run PostgreSQL does not exist") \
                    from None
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        self._cmd("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "-E", "UTF8", "--locale=C", *(() if self.durable else ("--no-sync",)))
        pwfile.unlink()
        for attempt in range(5):
            self.port = _free_port()
            try:
                self._pg_ctl_start()
                break
            except ClusterError:
                if attempt == 4:
                    raise
        return self

    def _pg_ctl_start(self) -> None:
        settings = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", "-c unix_socket_directories=",
                    "-c max_connections=300", "-c shared_buffers=64MB", "-c log_min_messages=warning",
                    "-c log_min_error_statement=panic"]
        if not self.durable:
            settings += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", " ".join(settings),
                  "start")

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server (the cluster stays: :meth:`start_server` brings it back on the same port). A
        server that does not stop in ``mode`` within a minute (a loaded machine) is stopped immediately:
        it then recovers from its log on the next start."""
        if self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False).returncode:
            self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")

    def start_server(self) -> None:
        self._pg_ctl_start()

    def restart(self, mode: str = "fast") -> None:
        self.stop_server(mode)
        self.start_server()

    def stop(self) -> None:
        """Stop the server and remove the cluster."""
        if self.folder is None:
            return
        with contextlib.suppress(Exception):
            self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    # -- databases --------------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres", *, password: bool = True) -> str:
        auth = f"{USER}:{PASSWORD}" if password else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=True, **kwargs)

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; its URL."""
        self._dbs += 1
        name = f"{prefix}_{os.getpid()}_{self._dbs}_{int(time.time() * 1000) % 100000}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

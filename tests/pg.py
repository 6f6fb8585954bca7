"""A real PostgreSQL server for tests: Debian's binaries, a data directory of its own, a Unix socket.

PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` user the Debian package creates (else `nobody`), in a directory
made for it under /tmp (pytest's tmp_path is root's alone). It listens on a
Unix socket in that directory and on no TCP port, so tests never clash on a
port, and it is stopped (immediately) when the test is over, pass or fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

MISSING = "PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` installs it when run as root)"


def bindir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


class PgServer:
    """One PostgreSQL server; `dsn` connects to its `dispy` database as the superuser `dispy`.

    Args:
        fsync: off for speed in tests (a crash of the machine loses nothing a test needs); on for benchmarks.
        tls: (certificate, key) files: it listens on 127.0.0.1 too, on a free port, TLS only (`port`).
    """

    def __init__(self, fsync: bool = False, tls: tuple[Path, Path] | None = None) -> None:
        bins = bindir()
        if bins is None:
            pytest.skip(MISSING)
        self.bins = bins
        self.owner = self._owner()
        self.dir = Path(tempfile.mkdtemp(prefix="dispy-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        if self.owner is not None:
            os.chown(self.dir, self.owner.pw_uid, self.owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "dispy", "--auth=trust", "-E", "UTF8", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = ''\nunix_socket_directories = '{self.dir}'\nfsync = {'on' if fsync else 'off'}\n"
                "max_connections = 50\nshared_buffers = 32MB\n"
            )
        self.port = 0
        if tls is not None:
            self._listen_tls(*tls)
        self.dsn = f"postgresql://dispy@/dispy?host={self.dir}" + (f"&port={self.port}" if self.port else "")
        self.start()
        self._run("createdb", "-h", str(self.dir), *(["-p", str(self.port)] if self.port else []), "-U", "dispy", "dispy")

    def _listen_tls(self, cert: Path, key: Path) -> None:
        """TCP on 127.0.0.1 with TLS required (no plaintext line in pg_hba.conf), the key readable by the server only."""
        for source in (cert, key):
            shutil.copy(source, self.data / source.name)
            if self.owner is not None:
                os.chown(self.data / source.name, self.owner.pw_uid, self.owner.pw_gid)
        (self.data / key.name).chmod(0o600)
        with socket.socket() as probe:  # PostgreSQL takes no port 0: a free one, asked of the OS just before
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nssl = on\n"
                       f"ssl_cert_file = '{cert.name}'\nssl_key_file = '{key.name}'\n")  # fmt: skip
        with open(self.data / "pg_hba.conf", "w") as hba:
            hba.write("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")

    @staticmethod
    def _owner() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        pytest.skip("running as root with neither a postgres nor a nobody user to run PostgreSQL as")

    def _run(self, program: str, *args: str) -> None:
        argv = [str(self.bins / program), *args]
        if self.owner is not None:
            argv = ["runuser", "-u", self.owner.pw_name, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=self.dir, timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"{program} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{self.server_log()}")

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stops the server if it runs, and removes its directory."""
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except AssertionError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pg() -> Iterator[PgServer]:
    """A fresh PostgreSQL server for one test (skipped, saying why, where PostgreSQL is not installed)."""
    server = PgServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the tests that need only a database of their own (`pg_dsn`)."""
    server = PgServer()
    try:
        yield server
    finally:
        server.close()


_databases = iter(range(1, 1 << 30))


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A fresh, empty database on the shared server."""
    import psycopg

    name = f"t{next(_databases)}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return pg_server.dsn.replace("/dispy?", f"/{name}?")

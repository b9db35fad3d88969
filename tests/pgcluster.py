"""A real PostgreSQL server for the tests: a throwaway cluster per test run.

`make test` installs PostgreSQL from Debian's packages (tools/sysdeps.sh); this module
runs `initdb` into a temporary folder and starts the server on a free loopback port (as
a non-root user when the tests run as root: PostgreSQL refuses to run as root), creates
one database for the run, and at the end drops it and stops the cluster.

`AOGSTREAM_TEST_DATABASE_URL` (a URL of a role that may create databases, on a server
that is already running) uses that server instead of starting one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

ENV = "AOGSTREAM_TEST_DATABASE_URL"
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are (Debian keeps them out of PATH, by version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def with_db(url: str, dbname: str) -> str:
    """`url` pointing at database `dbname`."""
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


class Cluster:
    """initdb + pg_ctl in a temporary folder, owned by a non-root user when we are root."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="aogstream-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.user: int | None = None
        self.group: int | None = None
        if os.geteuid() == 0:
            owner = _unprivileged_user()
            self.user, self.group = owner.pw_uid, owner.pw_gid
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.port = 0

    def _run(self, *argv: str, timeout: float = START_TIMEOUT) -> None:
        proc = subprocess.run(argv, user=self.user, group=self.group, cwd=self.dir,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "LC_ALL": "C.UTF-8"})
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({proc.returncode}): "
                               f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def start(self) -> str:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "aogstream",
                  "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
        last = ""
        for _ in range(3):  # a free port can be taken between pick and bind
            self.port = free_port()
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.log), "-w", "-t", str(int(START_TIMEOUT)), "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                          f"-c max_connections=200", "start")
                return f"postgresql://aogstream@127.0.0.1:{self.port}/postgres"
            except RuntimeError as exc:
                last = f"{exc}\n{self.log_tail()}"
        raise RuntimeError(f"PostgreSQL did not start: {last}")

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                      "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists "
                       "to run PostgreSQL as")


class TestDatabase:
    """The run's database: `url` to connect to it; `reset()` empties it (every table of
    the store goes, so the next store that opens migrates from nothing)."""

    __test__ = False

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.name = f"aogstream_test_{uuid.uuid4().hex[:12]}"
        self.url = with_db(admin_url, self.name)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def reset(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[TestDatabase]:
    """One database on a real PostgreSQL server for the whole run, dropped after."""
    admin = os.environ.get(ENV, "")
    cluster: Cluster | None = None
    if not admin:
        bindir = pg_bindir()
        if bindir is None:
            pytest.fail("PostgreSQL is not installed: run `make sysdeps` (Debian's postgresql "
                        f"package), or set {ENV} to a running server")
        cluster = Cluster(bindir)
        admin = cluster.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                db = TestDatabase(admin)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            yield db
        finally:
            db.drop()
    finally:
        if cluster is not None:
            cluster.stop()

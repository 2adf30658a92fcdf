"""A throw-away PostgreSQL cluster for one benchmark run.

``initdb --auth=scram-sha-256`` in the run's directory, a free port on 127.0.0.1, durability
off (the data is thrown away), room for 1,000 idle sessions plus the pgbench clients. One role
and one database (``bench``) hold the pgbench tables; every route logs in as that role, with
scram-sha-256. initdb and postgres refuse to run as root, so when the harness is root the
cluster belongs to the ``postgres`` system user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlalchemy as sa
from psycopg import sql

from bench.procs import BenchError, free_port, run_checked, wait_for

SERVER_OS_USER = "postgres"
ROLE = "bench"
DATABASE = "bench"
START_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it


@dataclass(frozen=True, slots=True)
class Postgres:
    """A running cluster and the benchmark role's credentials."""

    host: str
    port: int
    role: str
    password: str
    database: str
    bin_dir: Path
    version: str

    def store_url(self) -> str:
        """This database as a Wardgate store (a SQLAlchemy URL, password included)."""
        return sa.URL.create(
            "postgresql+psycopg",
            username=self.role,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.database,
        ).render_as_string(hide_password=False)

    def new_store(self, name: str) -> str:
        """A fresh database `name` in this cluster, for one run's Wardgate store; its URL."""
        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.role,
            password=self.password,
            dbname=self.database,
            sslmode="disable",
            autocommit=True,
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return dataclasses.replace(self, database=name).store_url()


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory for one run, removed after; the postgres system user may enter
    it, since the run's cluster lives inside."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(tmp)
        path.chmod(0o711)
        yield path


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/*/bin holding the server programs; fail naming the package."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    if on_path := shutil.which("pg_ctl"):
        candidates.append(Path(on_path).resolve().parent)
    for candidate in candidates:
        if all((candidate / p).is_file() for p in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise BenchError(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) not found: "
        "install the Debian package `postgresql` (`make deps`)"
    )


def client_program(name: str) -> str:
    """The path of psql or pgbench; fail naming the package."""
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found: install the Debian package `postgresql-client`")
    return found


class _Cluster:
    def __init__(self, root: Path, bin_dir: Path, max_connections: int) -> None:
        self.root = root
        self.bin_dir = bin_dir
        self.max_connections = max_connections
        self.datadir = root / "data"
        self.socket_dir = root / "sock"
        self.logfile = root / "server.log"
        self.password = secrets.token_urlsafe(24)
        self.as_root = os.geteuid() == 0
        self.port = 0

    def _run(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """Run a server program, as the postgres system user when we are root."""
        user = None
        group = None
        if self.as_root:
            try:
                entry = pwd.getpwnam(SERVER_OS_USER)
            except KeyError:
                raise BenchError(
                    f"running as root needs the {SERVER_OS_USER!r} system user, which the "
                    "Debian package `postgresql` creates"
                ) from None
            user, group = entry.pw_uid, entry.pw_gid
        try:
            return subprocess.run(
                [str(self.bin_dir / args[0]), *args[1:]],
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
                cwd=self.root,
                env={**os.environ, "LC_ALL": "C"},
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{args[0]} did not finish within {timeout:g}s") from exc

    def init(self) -> None:
        self.root.mkdir()
        self.socket_dir.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if self.as_root:
            entry = pwd.getpwnam(SERVER_OS_USER)
            for path in (self.root, self.socket_dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        result = self._run(
            "initdb",
            f"--pgdata={self.datadir}",
            "--username=postgres",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise BenchError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        failures: list[str] = []
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(self.port),
                "unix_socket_directories": f"'{self.socket_dir}'",
                "max_connections": str(self.max_connections),
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
                "log_min_messages": "warning",
            }
            with (self.datadir / "postgresql.auto.conf").open("w") as conf:
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            self.logfile.unlink(missing_ok=True)
            # -l points the server's output at the log, not at our pipes (which would keep
            # subprocess.run waiting for the server's whole lifetime).
            result = self._run(
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
            )
            if result.returncode == 0:
                return
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            failures.append(f"port {self.port}: {result.stdout}{result.stderr}\n{log}")
            if "could not bind" not in log and "already in use" not in log:
                break
        raise BenchError("PostgreSQL did not start:\n" + "\n---\n".join(failures))

    def stop(self) -> None:
        # Keyed on the pid file, so a server left by an interrupted start is stopped too.
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.datadir))


def _conninfo(host: str, port: int, user: str, password: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(
        host=host, port=port, user=user, password=password, dbname=dbname, sslmode="disable"
    )


@contextlib.contextmanager
def postgres(
    root: Path, *, max_connections: int, scale: int, pgbench_timeout: float = 300.0
) -> Iterator[Postgres]:
    """Start a cluster in ``root`` (created) with the pgbench tables at ``scale``; stop it after."""
    cluster = _Cluster(root, find_bin_dir(), max_connections)
    try:
        cluster.init()
        cluster.start()
        superuser = _conninfo("127.0.0.1", cluster.port, "postgres", cluster.password, "postgres")
        wait_for(lambda: _ready(superuser), "PostgreSQL to accept a password login")
        password = secrets.token_urlsafe(24)
        with psycopg.connect(superuser, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE), sql.Identifier(ROLE)
                )
            )
            row = conn.execute("SHOW server_version").fetchone()
            version = str(row[0]) if row else "unknown"
        pg = Postgres("127.0.0.1", cluster.port, ROLE, password, DATABASE, cluster.bin_dir, version)
        run_checked(
            [client_program("pgbench"), "-i", "-q", "-s", str(scale)],
            env={
                **os.environ,
                "PGHOST": pg.host,
                "PGPORT": str(pg.port),
                "PGUSER": pg.role,
                "PGPASSWORD": pg.password,
                "PGDATABASE": pg.database,
                "PGSSLMODE": "disable",
            },
            timeout=pgbench_timeout,
            what="pgbench -i",
        )
        yield pg
    finally:
        cluster.stop()


def _ready(conninfo: str) -> bool:
    with psycopg.connect(conninfo, connect_timeout=2) as conn:
        conn.execute("SELECT 1")
    return True

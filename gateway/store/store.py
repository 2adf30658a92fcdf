"""``Store``: the gateway's persistent state, a facade over one repository per aggregate.

``Store.open(url)`` connects, migrates and returns the store; its repositories are attributes:
``agents``, ``identity`` (users, tokens, sign-ins, local credentials, token replay),
``connections``, ``sessions``, ``reviews`` (with owners and grants), ``audit``, ``policy``
(versions and budget usage), ``ssh_keys``, ``members`` and ``rate_limits``. They share one
``db.Database`` (engine, transactions, errors). ``store.io`` is how the event loop calls any of
them (``gateway/store/writer.py``): ``await store.io.read(store.agents.get, name)``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import alembic.command
import alembic.config
import alembic.script
import alembic.util
import sqlalchemy as sa

from gateway.store import console, db, members, ratelimits
from gateway.store.agents import Agents
from gateway.store.auditlog import AuditLog
from gateway.store.connections import Connections
from gateway.store.db import StoreError, utcnow
from gateway.store.identity import Identity
from gateway.store.policy import Policy
from gateway.store.reviews import Reviews
from gateway.store.sessions import Sessions
from gateway.store.sshkeys import SshKeys
from gateway.store.writer import AsyncFace, Writer

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# pg_advisory_xact_lock key serialising migrations across gateway processes ("Ward").
_MIGRATION_LOCK_KEY = 0x57617264


def alembic_config(connection: sa.Connection | None = None) -> alembic.config.Config:
    """An Alembic configuration for the store's migrations, without an alembic.ini.

    With ``connection``, migrations run on it, inside whatever transaction it holds.
    """
    config = alembic.config.Config()
    # ConfigParser interpolation would read a '%' in the path as the start of a reference.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


class Store:
    """The gateway's agents, users, tokens, connections, sessions and audit log.

    Create it with ``Store.open(url)``; it is safe to share between threads. Records it returns
    carry timezone-aware UTC datetimes, and it refuses naive ones.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        serialize: bool = False,
        sqlite_sync: Literal["full", "normal"] = "full",
        read_only: bool = False,
    ) -> None:
        """Wrap ``engine`` without migrating it; ``open`` is the usual way in.

        ``serialize`` makes calls take turns, for engines whose threads share one connection.
        """
        self._db = db.Database(
            engine, clock=clock, serialize=serialize, sqlite_sync=sqlite_sync, read_only=read_only
        )
        self._writer = Writer()
        # How the event loop calls this store: writes on the one writer thread, reads where
        # they do not block the loop (see gateway/store/writer.py).
        self.io = AsyncFace(self._db.dialect, self._writer)
        self.agents = Agents(self._db)
        self.identity = Identity(self._db)
        self.connections = Connections(self._db)
        self.sessions = Sessions(self._db)
        self.reviews = Reviews(self._db)
        self.audit = AuditLog(self._db)
        self.policy = Policy(self._db)
        self.ssh_keys = SshKeys(self._db)
        self.rate_limits = ratelimits.RateLimits(self._db)
        self.console = console.ConsoleSessions(self._db)  # web console sign-ins (0009)
        # The fleet's members and identity (migration 0008).
        self.members = members.Members(
            self._db.read, self._db.write, self.audit.append_in, self._db.dialect, clock
        )

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        engine_options: Mapping[str, Any] | None = None,
        sqlite_sync: Literal["full", "normal"] = "full",
    ) -> Store:
        """Connect to ``url``, bring the schema up to date, and return the store.

        ``sqlite:///path/wardgate.db`` (the parent directory is created) or
        ``postgresql+psycopg://user:password@host:port/db``. ``engine_options`` go to
        ``sqlalchemy.create_engine`` (pool sizes and the like). ``sqlite_sync`` "full" fsyncs
        every commit (events survive a power cut); "normal" leaves that to the WAL checkpoint
        (events survive a gateway crash, the last ones may not survive the host losing power).
        """
        engine, serialize = db.create_engine(sa.make_url(url), dict(engine_options or {}))
        try:
            store = cls(engine, clock=clock, serialize=serialize, sqlite_sync=sqlite_sync)
            store._migrate()
        except BaseException:
            engine.dispose()
            raise
        return store

    @classmethod
    def open_read_only(cls, url: str) -> Store:
        """Connect to an existing store to read it, changing nothing: no migration, no file
        created, read-only connections (SQLite ``mode=ro``; PostgreSQL read-only
        transactions). Raises ``StoreError`` when there is no store at ``url`` or its schema
        is not the one this version of Wardgate reads (`wardgate audit verify --store`)."""
        parsed = sa.make_url(url)
        if parsed.get_backend_name() == "sqlite":
            path = parsed.database
            if path in (None, "", ":memory:") or parsed.query.get("uri") is not None:
                raise StoreError(f"a store to read is a sqlite:///PATH file, not {url!r}")
            assert path is not None
            if not Path(path).is_file():
                raise StoreError(f"no store at {path}: the file does not exist")
            parsed = parsed.set(
                database=f"file:{urllib.parse.quote(str(Path(path).resolve()))}",
                query={"mode": "ro", "uri": "true"},
            )
            engine = sa.create_engine(parsed)
        else:
            engine, _ = db.create_engine(
                parsed, {"connect_args": {"options": "-c default_transaction_read_only=on"}}
            )
        try:
            store = cls(engine, read_only=True)
            store._check_schema()
        except BaseException:
            engine.dispose()
            raise
        return store

    def _check_schema(self) -> None:
        """Refuse a database whose schema is not this version's (read, never migrated)."""
        expected = alembic.script.ScriptDirectory.from_config(alembic_config()).get_current_head()
        with self._db.read() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                raise StoreError(
                    "not a Wardgate store (it has no schema version); check the store URL"
                )
            found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        if found != expected:
            raise StoreError(
                f"the store's schema is at version {found or 'none'}, this wardgate reads "
                f"{expected}: verify with the wardgate version of the gateway that wrote it "
                "(a gateway of this version migrates the store when it starts)"
            )

    def close(self) -> None:
        """Close every pooled connection. The store cannot be used afterwards."""
        self._writer.close()  # what is queued is written first
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]:
        return self._db.dialect

    @property
    def engine(self) -> sa.Engine:
        """The underlying engine, for maintenance tools and tests."""
        return self._db.engine

    def _migrate(self) -> None:
        with self._db.write() as conn:
            if self._db.dialect == "postgresql":
                # Gateways started together would otherwise race to create the same tables.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            try:
                alembic.command.upgrade(alembic_config(conn), "head")
            except alembic.util.CommandError as exc:
                # Typically a database migrated by a newer gateway than this one.
                raise StoreError(f"cannot migrate the store schema: {exc}") from exc

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Make every call of this thread inside the block one write transaction: all of it
        commits, or none of it. An administrator's change and its audit event
        (``audit.append``) go together this way, so a store that refuses the event refuses the
        change. A call that fails inside rolls back its own part only (a savepoint), as when
        it runs alone."""
        return self._db.transaction()

    def check_writable(self) -> None:
        """A write transaction that changes nothing (readiness probes): raises
        StoreUnavailable when the store would refuse writes."""
        self._db.check_writable()

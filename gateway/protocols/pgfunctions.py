"""Catalog lookups for the guardrails: ask the server what the functions a statement calls do
(and, for the masked columns' inference check, what relations and functions it reads).

The I/O half of `gateway.policy.functions`. A lookup is one simple Query on a second stream
to the session's own target (`SessionBroker.open_side`): the agent logs in with the same
credential and startup settings as the session (so the same role, database and default
search_path), the gateway sends the catalog query, reads its rows and ReadyForQuery, then
Terminate. The agent needs nothing new: to it this is one more PostgreSQL session. Nothing
runs inside the client's session, so its transaction, its pipeline and its answers are not
touched. Any failure (no agent, login refused, an ErrorResponse, LOOKUP_TIMEOUT) raises
`LookupFailed`, and the statement is refused (fail closed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.agents.registry import AgentConn, RoutingError
from gateway.policy.explain import lineage_report
from gateway.policy.functions import FunctionCheck, LookupFailed
from gateway.policy.lineage import ColumnRules
from gateway.policy.lineage_check import LineageCheck
from gateway.sessions import Session, SessionBroker, SessionError
from gateway.store import ConnectionRecord
from shared.pgwire.backend import DataRow, ErrorResponse, ReadyForQuery, decode_backend
from shared.pgwire.errors import PgProtocolError
from shared.pgwire.framing import MessageReader
from shared.pgwire.frontend import Query, Terminate
from shared.tunnel.stream import (
    DataReceived,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
    TunnelStream,
)

LOOKUP_TIMEOUT = 10.0  # seconds for login and query together

Rows = list[tuple[str | None, ...]]


def function_check(broker: SessionBroker, session: Session) -> FunctionCheck:
    """The session's catalog-backed guardrail check (one per session: it holds the cache)."""

    async def ask(sql: str) -> Sequence[Sequence[str | None]]:
        return await query(broker, session, sql)

    return FunctionCheck(ask, time.monotonic)


def lineage_check(broker: SessionBroker, session: Session) -> LineageCheck:
    """The session's inference check over the same catalog path (one per session: its cache)."""

    async def ask(sql: str) -> Sequence[Sequence[str | None]]:
        return await query(broker, session, sql)

    return LineageCheck(ask, time.monotonic)


async def query(broker: SessionBroker, session: Session, sql: str) -> Rows:
    """The rows (text format) of `sql` run on a second connection like `session`'s."""
    return await query_on(broker, lambda: broker.open_side(session, "catalog"), sql)


async def query_on(
    broker: SessionBroker,
    open_side: Callable[[], Awaitable[tuple[TunnelStream, AgentConn]]],
    sql: str,
) -> Rows:
    """The rows (text format) of `sql` on a side connection `open_side` opens."""
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT):
            stream, agent = await open_side()
            try:
                await stream.send_data(Query(sql).encode())
                rows = await _read_rows(stream)
                await stream.send_data(Terminate().encode())
                return rows
            finally:
                await broker.close_side(stream, agent)
    except TimeoutError:
        raise LookupFailed(f"no answer within {LOOKUP_TIMEOUT:g}s") from None
    except RoutingError as exc:
        raise LookupFailed(exc.message) from None
    except SessionClosedError as exc:
        raise LookupFailed(f"the lookup session ended: {exc.message}") from None
    except PgProtocolError as exc:
        raise LookupFailed(f"server protocol error: {exc}") from None


async def _read_rows(stream: TunnelStream) -> Rows:
    frames = MessageReader()
    rows: Rows = []
    ready = 0  # the login's ReadyForQuery comes first, then the query's
    while True:
        event = await stream.receive()
        if isinstance(event, RemoteClosed | SessionReset):
            raise LookupFailed("the server closed the lookup connection")
        if not isinstance(event, DataReceived):
            continue
        frames.feed(event.payload)
        while (message := frames.next_message()) is not None:
            decoded = decode_backend(message)
            if isinstance(decoded, DataRow):
                rows.append(tuple(None if v is None else v.decode("utf-8") for v in decoded.values))
            elif isinstance(decoded, ErrorResponse):
                raise LookupFailed(f"the server answered {decoded.sqlstate} {decoded.message}")
            elif isinstance(decoded, ReadyForQuery):
                ready += 1
                if ready == 2:
                    return rows


async def explain_lineage(
    broker: SessionBroker, conn: ConnectionRecord, rules: ColumnRules, sql: str
) -> dict[str, Any]:
    """The lineage report of `sql` on `conn` (`policy explain`), its catalog read over a side
    connection with the connection's own credential; a catalog that cannot be read says so
    in the report's refusal, as the front door would refuse the statement."""

    async def ask(text: str) -> Sequence[Sequence[str | None]]:
        try:
            return await query_on(broker, lambda: broker.open_catalog(conn, "explain"), text)
        except SessionError as exc:
            raise LookupFailed(exc.message) from None

    verdict = await LineageCheck(ask, time.monotonic).check(rules, sql)
    return lineage_report(rules, verdict.lineages, verdict.refusal)

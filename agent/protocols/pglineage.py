"""The agent's side connection for lineage: catalog questions asked beside the session.

A session with column masking rules follows each statement's lineage
(`shared.masking.planner.LineagePlanner`); the catalog it needs (relations, view
definitions, SQL function bodies, the search_path's resolution) is asked here, on a second
connection with the session's credential, opened at the first question and closed with the
session. One question at a time (the planner awaits each); a question that fails or takes
longer than ASK_TIMEOUT closes the connection and raises `CatalogUnavailable`, which the
planner turns into fail-closed masking.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from shared.pgwire.backend import DataRow, ErrorResponse, ReadyForQuery, decode_backend
from shared.pgwire.framing import MessageReader
from shared.pgwire.frontend import Query
from shared.tunnel.frames import Target

if TYPE_CHECKING:
    from agent.protocols.postgres import _Server

ASK_TIMEOUT = 10.0


class CatalogUnavailable(Exception):
    pass


class SideConnection:
    def __init__(
        self,
        target: Target,
        connect: Callable[[Target], Awaitable[_Server]],
        login: Callable[[_Server, Target], Awaitable[object]],
    ) -> None:
        self._target = target
        self._connect = connect
        self._login = login
        self._server: _Server | None = None
        self._lock = asyncio.Lock()

    async def ask(self, sql: str) -> Sequence[Sequence[str | None]]:
        async with self._lock:
            try:
                async with asyncio.timeout(ASK_TIMEOUT):
                    return await self._ask(sql)
            except CatalogUnavailable:
                self.close()
                raise
            except Exception as exc:  # the connection, the login, the server's answer
                self.close()
                raise CatalogUnavailable(str(exc) or type(exc).__name__) from exc

    async def _ask(self, sql: str) -> list[list[str | None]]:
        if self._server is None:
            server = await self._connect(self._target)
            self._server = server
            await self._login(server, self._target)
        server = self._server
        assert server is not None
        server.writer.write(Query(sql).encode())
        await server.writer.drain()
        frames = MessageReader()
        rows: list[list[str | None]] = []
        error: str | None = None
        while True:
            while (message := frames.next_message()) is None:
                data = await server.reader.read(65536)
                if not data:
                    raise CatalogUnavailable("the server closed the catalog connection")
                frames.feed(data)
            decoded = decode_backend(message)
            if isinstance(decoded, DataRow):
                rows.append(
                    [None if v is None else v.decode("utf-8", "replace") for v in decoded.values]
                )
            elif isinstance(decoded, ErrorResponse):
                error = f"{decoded.sqlstate} {decoded.message}"
            elif isinstance(decoded, ReadyForQuery):
                if error is not None:
                    raise CatalogUnavailable(error)
                return rows

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
                server.writer.close()

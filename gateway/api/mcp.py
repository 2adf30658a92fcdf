"""The MCP door: AI agents on the public port at `/mcp` (Model Context Protocol, Streamable HTTP).

Built on the official `mcp` SDK (stateless, JSON responses: every POST carries its own
credential and stands alone, so any member of a fleet can answer it). What is ours:

- Who is calling: `Authorization: Bearer` with the credentials the API takes (a person's
  access token, a service account's API key), checked by the API's own `identity_of` (so a
  bad one is audited and rate limited like any other). Without one: 401 with
  `WWW-Authenticate: Bearer resource_metadata=...` naming the RFC 9728 document served at
  `/.well-known/oauth-protected-resource[/mcp]`, which names this gateway as the
  authorization server. (The OAuth flow itself, PKCE and client registration, is a later step.)
- `query` and `describe` do not judge SQL here. They open a real PostgreSQL connection to this
  gateway's own PostgreSQL front door on loopback, as the caller, with the caller's own
  credential as the password: authorization, guardrails, masking, budgets, reviews and the
  audit apply exactly as to psql, because it is the same path. A refusal comes back as a tool
  error with the door's SQLSTATE and message.
- `list_connections`: what the caller may reach (or request), as the session broker decides.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import decimal
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import Counter
from starlette.types import Message, Receive, Scope, Send

from gateway.api import mcpkube
from gateway.api.deps import identity_of
from gateway.api.mcpssh import SshExec, SshExecError
from gateway.audit import Auditor
from gateway.auth import Identity
from gateway.config import McpConfig
from gateway.policy.grants import AccessPolicy
from gateway.policy.lineage import ColumnRules
from gateway.policy.rules import subject_for
from gateway.policystore import PolicyView
from gateway.reviews import ReviewError, ReviewService, review_json
from gateway.sessions import SessionBroker
from gateway.store import ReviewRecord, Store
from shared.lineage.model import Source
from shared.tasks import TaskOwner
from shared.version import __version__

PATH = "/mcp"
METADATA = "/.well-known/oauth-protected-resource"
_IDENTITY = "wardgate.identity"  # ASGI scope keys: the caller, checked before the SDK runs
_TOKEN = "wardgate.token"  # noqa: S105 - a scope key, not a secret
MAX_BODY = 4 * 1024 * 1024  # a JSON-RPC request: SQL, a command or a Kubernetes object
PROGRESS_INTERVAL = 5.0  # seconds between progress notifications while a statement is held
APPLICATION_NAME = "wardgate-mcp"  # in the session's startup options: the audit says "via MCP"

DESCRIBE_SQL = """
select c.table_schema, c.table_name, c.column_name, c.data_type, c.is_nullable = 'YES'
from information_schema.columns c
where c.table_schema not in ('pg_catalog', 'information_schema')
  and (%(schema)s::text is null or c.table_schema = %(schema)s::text)
order by c.table_schema, c.table_name, c.ordinal_position
"""


@dataclass(frozen=True)
class Loopback:
    """Where this gateway's PostgreSQL front door answers, as the MCP tools dial it."""

    host: str
    port: int
    ca_path: Path  # the gateway's CA: the door's certificate is checked (verify-ca)

    @classmethod
    def of(cls, public: tuple[str, int], ca_path: Path) -> Loopback:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(public[0], public[0])
        return cls(host, public[1], ca_path)


class McpDoor:
    """The MCP server and its HTTP edges; `run()` is its lifetime (the SDK's task group)."""

    def __init__(
        self,
        store: Store,
        broker: SessionBroker,
        loopback: Loopback,
        config: McpConfig,
        calls: Counter,
        guardrails: PolicyView,
        access: AccessPolicy,
        auditor: Auditor,
        reviews: ReviewService | None = None,
        *,
        ssh_host_key: str = "",
    ) -> None:
        self._store = store
        self._ssh_host_key = ssh_host_key  # the SSH door's, pinned by `ssh_exec` ("": none)
        self._reviews = reviews  # None: approvals are off on this gateway
        self._auditor = auditor
        self._broker = broker
        self._guardrails = guardrails  # the masking rules, to mark masked columns
        self._access = access
        self._loopback = loopback
        self._config = config
        self._calls = calls
        # Two servers with the same tools: JSON answers (one body per POST), and server-sent
        # events for a call that asks for progress (`_meta.progressToken`): JSON has no wire
        # for the notifications a held statement sends while it waits for its review.
        self.server = self._server()
        self._streaming = self._server()
        # The SDK logs each request and each failed call at INFO; the audit has them already.
        logging.getLogger("mcp").setLevel(logging.WARNING)
        # Stateless: every request stands alone. Bearer credentials, not cookies, make a
        # DNS-rebinding page useless, and the gateway answers to any of its names.
        for server, json_response in ((self.server, True), (self._streaming, False)):
            server.streamable_http_app(
                stateless_http=True,
                json_response=json_response,
                transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            )

    def _server(self) -> MCPServer[Any]:
        server: MCPServer[Any] = MCPServer(
            "wardgate",
            version=__version__,
            instructions="Wardgate: reach databases through an access gateway that checks, "
            "masks and audits every statement as the calling identity.",
        )
        self._tools(server)
        return server

    async def run(self) -> None:
        async with self.server.session_manager.run(), self._streaming.session_manager.run():
            await asyncio.Event().wait()  # until the gateway stops (cancelled)

    # ---- HTTP edges ------------------------------------------------------------------

    def mount(self, app: Any) -> None:
        """Serve `/mcp` and the protected-resource metadata on `app` (the API's FastAPI)."""
        # The door itself, not a method: Starlette serves an object as a raw ASGI app (all
        # methods), a function or method as a request handler (GET only).
        app.add_route(PATH, self, include_in_schema=False)
        router = APIRouter(tags=["mcp"])

        @router.get(METADATA, include_in_schema=False)
        @router.get(METADATA + PATH)
        async def protected_resource(request: Request) -> dict[str, Any]:
            """RFC 9728: this gateway is the protected resource at /mcp, and its own
            authorization server."""
            base = _base(request)
            return {
                "resource": base + PATH,
                "authorization_servers": [base],
                "bearer_methods_supported": ["header"],
                "resource_name": "Wardgate",
                "resource_documentation": base + "/docs",
            }

        app.include_router(router)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            who = await identity_of(request)
        except HTTPException as exc:
            headers = dict(exc.headers or {})
            if exc.status_code == 401:
                meta = _base(request) + METADATA + PATH
                scheme, _, params = headers.get("WWW-Authenticate", "").partition(" ")
                if scheme == "DPoP":  # a DPoP-bound credential: keep its error (RFC 9449)
                    headers["WWW-Authenticate"] = f'DPoP resource_metadata="{meta}", {params}'
                else:
                    headers["WWW-Authenticate"] = f'Bearer resource_metadata="{meta}"'
            answer = JSONResponse({"detail": exc.detail}, exc.status_code, headers=headers)
            await answer(scope, receive, send)
            return
        scope[_IDENTITY] = who
        scope[_TOKEN] = request.headers["authorization"].partition(" ")[2].strip()
        server = self.server
        if scope.get("method") == "POST":
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    answer = JSONResponse({"detail": "request body too large"}, 413)
                    await answer(scope, receive, send)
                    return
            if _asks_progress(bytes(body)):
                server = self._streaming
            receive = _replay(bytes(body), receive)
        await server.session_manager.handle_request(scope, receive, send)

    # ---- tools -----------------------------------------------------------------------

    def _tools(self, server: MCPServer[Any]) -> None:
        @server.tool()
        async def list_connections(ctx: Context) -> dict[str, Any]:
            """The connections you may reach through Wardgate: name, type (postgres, ssh,
            kubernetes, tcp), your access level, and whether access can be requested."""
            async with self._counted("list_connections"):
                who, _ = _caller(ctx)
                shown = []
                for record in await self._store.io.scan(self._store.connections.list_all):
                    decision = await self._broker.access(who, record)
                    if decision.access is None and decision.on_request is None:
                        continue
                    shown.append(
                        {
                            "name": record.name,
                            "type": record.type,
                            "access": decision.access,
                            "on_request": decision.on_request is not None,
                        }
                    )
                return {"user": who.user, "connections": shown}

        @server.tool()
        async def query(connection: str, sql: str, ctx: Context) -> dict[str, Any]:
            """Run one SQL statement on a PostgreSQL connection, as you. The gateway's
            guardrails, masking, budgets and reviews apply; a refusal says why. Results
            are cut at the gateway's row and byte limits, with a note when they are."""
            async with self._counted("query"):
                return await self._query(ctx, "query", connection, sql, None)

        @server.tool()
        async def describe(
            connection: str, ctx: Context, schema: str | None = None
        ) -> dict[str, Any]:
            """The tables and columns of a PostgreSQL connection (information_schema, read
            as you: what you may not see is not listed), optionally one schema only. A
            column the gateway masks for you says how (`masked`: redact, partial, token)."""
            async with self._counted("describe"):
                result = await self._query(
                    ctx, "describe", connection, DESCRIBE_SQL, {"schema": schema}
                )
                rules = self._column_rules(_caller(ctx)[0], connection)
                tables: dict[tuple[str, str], list[dict[str, Any]]] = {}
                for s, t, column, kind, nullable in result["rows"]:
                    entry = {"name": column, "type": kind, "nullable": nullable}
                    if (rule := rules.rule_for(Source(s, t, column))) is not None:
                        entry["masked"] = rule.strategy
                    tables.setdefault((s, t), []).append(entry)
                out: dict[str, Any] = {
                    "connection": connection,
                    "tables": [
                        {"schema": s, "table": t, "columns": cols}
                        for (s, t), cols in tables.items()
                    ],
                }
                if "note" in result:
                    out["note"] = result["note"]
                return out

        @server.tool()
        async def request_access(
            connection: str, duration: int, reason: str, ctx: Context
        ) -> dict[str, Any]:
            """Ask for time-boxed access to a connection your roles let you request
            (`list_connections` says `on_request`): `duration` in seconds, `reason` for
            the reviewers. Another person approves it; `review_status` follows it."""
            async with self._counted("request_access"):
                who, _ = _caller(ctx)
                record = await self._review_call(
                    self._approvals().request_access(
                        who, connection=connection, duration=duration, reason=reason
                    )
                )
                return _review_out(record)

        @server.tool()
        async def review_status(review_id: str, ctx: Context) -> dict[str, Any]:
            """The status of one of your own reviews: an access request (`request_access`)
            or a statement held for review (its id is in the `query` error, `rv_...`)."""
            async with self._counted("review_status"):
                who, _ = _caller(ctx)
                record = await self._review_call(self._approvals().visible(who, review_id))
                if record.requester != who.user:  # the caller's own, as `/v1/requests` lists
                    raise ToolError(f"no review {review_id!r}")
                return _review_out(record)

        @server.tool()
        async def ssh_exec(connection: str, command: str, ctx: Context) -> dict[str, Any]:
            """Run one command on an SSH connection, as you (no terminal, no input). The
            gateway's command rules, reviews and recording apply; a refused command is an
            error saying why. Returns stdout, stderr and the exit status, cut at the
            gateway's byte limit with a note when they are."""
            async with self._counted("ssh_exec"):
                return await self._ssh_exec(ctx, connection, command)

        @server.tool()
        async def kube(
            connection: str,
            path: str,
            ctx: Context,
            method: str = "GET",
            body: dict[str, Any] | None = None,
        ) -> dict[str, Any]:
            """One Kubernetes API request on a kubernetes connection, as you: `path` is the
            API path (`/api/v1/namespaces/default/pods` lists pods, `.../pods/NAME` gets one,
            `.../pods/NAME/log?tailLines=100` reads logs), `method` GET by default; writes
            (POST, PUT, PATCH as a JSON merge patch, DELETE) where the gateway's policy
            allows them. No watch or follow. A refusal says why; a body past the gateway's
            byte limit is cut, with a note."""
            async with self._counted("kube"):
                return await self._kube(ctx, connection, path, method, body)

    async def _kube(
        self, ctx: Context, connection: str, path: str, method: str, body: dict[str, Any] | None
    ) -> dict[str, Any]:
        who, token = _caller(ctx)
        try:
            mcpkube.check_request(connection, method, path)
        except mcpkube.KubeCallError as exc:
            raise ToolError(str(exc)) from None
        await self._audit_call(ctx, who, "kube", connection)
        host = f"[{self._loopback.host}]" if ":" in self._loopback.host else self._loopback.host
        limit = self._config.max_bytes
        try:
            async with asyncio.timeout(self._config.timeout):
                got = await mcpkube.send(
                    f"https://{host}:{self._loopback.port}",
                    self._loopback.ca_path,
                    token,
                    connection,
                    method,
                    path,
                    body,
                    limit,
                )
        except mcpkube.KubeCallError as exc:
            raise ToolError(str(exc)) from None
        except TimeoutError:
            raise ToolError(
                f"no answer within {self._config.timeout:g}s; the request was abandoned"
            ) from None
        except httpx.HTTPError as exc:
            raise ToolError(f"the Kubernetes door could not be reached: {exc}") from None
        out: dict[str, Any] = {"connection": connection, "status": got.status, "body": got.body}
        if got.cut:
            out["truncated"] = True
            out["note"] = f"body truncated: the limit is {limit} bytes (mcp.max_bytes)"
        return out

    async def _ssh_exec(self, ctx: Context, connection: str, command: str) -> dict[str, Any]:
        who, token = _caller(ctx)
        if not self._ssh_host_key:
            raise ToolError("the SSH door is not served by this gateway")
        await self._audit_call(ctx, who, "ssh_exec", connection)
        limit = self._config.max_bytes
        runner = SshExec(
            self._loopback.host, self._loopback.port, self._ssh_host_key, self._config.timeout
        )
        try:
            async with asyncio.timeout(self._config.timeout):
                got = await asyncio.to_thread(
                    runner.run, who.user, connection, token, command, limit
                )
        except SshExecError as exc:
            raise ToolError(str(exc)) from None
        except TimeoutError:
            said = bytes(runner.stderr_seen).decode(errors="replace").splitlines()
            held = [line.strip() for line in said if "held for review" in line][:1]
            waiting = f" ({held[0].removeprefix('wardgate: ')})" if held else ""
            raise ToolError(
                f"no answer within {self._config.timeout:g}s{waiting}; the command was stopped"
            ) from None
        except OSError as exc:  # TimeoutError is one: caught above
            raise ToolError(f"the SSH door could not be reached: {exc}") from None
        finally:
            runner.stop()  # the worker thread gives up at its next look
        stdout = got.stdout.decode(errors="replace")
        stderr = got.stderr.decode(errors="replace")
        if (refusal := _ssh_refusal(got.exit_status, stdout, stderr)) is not None:
            raise ToolError(refusal)
        out: dict[str, Any] = {
            "connection": connection,
            "exit_status": got.exit_status,
            "stdout": stdout,
            "stderr": stderr,
        }
        if got.cut:
            out["truncated"] = True
            out["note"] = (
                f"output truncated: the limit is {limit} bytes (mcp.max_bytes); "
                "the command was stopped"
            )
        return out

    async def _audit_call(self, ctx: Context, who: Identity, tool: str, connection: str) -> None:
        """`mcp.call`: the session a tool opens comes from the gateway itself (loopback);
        this event names the MCP client's own address, just before the session's events."""
        peer = getattr(ctx.request_context.request, "client", None)
        await self._auditor.record(
            "mcp.call",
            actor=who.user,
            tool=tool,
            connection=connection,
            client=f"{peer.host}:{peer.port}" if peer else "-",
        )

    def _approvals(self) -> ReviewService:
        if self._reviews is None:
            raise ToolError("approvals are not enabled on this gateway")
        return self._reviews

    async def _review_call(self, work: Coroutine[Any, Any, ReviewRecord]) -> ReviewRecord:
        try:
            return await work
        except ReviewError as exc:
            raise ToolError(exc.message) from None

    def _column_rules(self, who: Identity, connection: str) -> ColumnRules:
        """The column masking rules the PostgreSQL door applies to `who` on `connection`,
        of the policy version in force (as gateway/policystore.py picks them)."""
        subject = subject_for(self._access, who.user, who.groups, machine=who.is_machine)
        return ColumnRules.of(
            r
            for r in self._guardrails.policy.config.masking
            if r.match.applies(subject, connection)
        )

    @contextlib.asynccontextmanager
    async def _counted(self, tool: str) -> AsyncIterator[None]:
        try:
            yield
        except ToolError:
            self._calls.labels(tool, "refused").inc()
            raise
        except BaseException:
            self._calls.labels(tool, "error").inc()
            raise
        self._calls.labels(tool, "ok").inc()

    async def _query(
        self,
        ctx: Context,
        tool: str,
        connection: str,
        sql: str,
        params: dict[str, Any] | None,
    ) -> dict[str, Any]:
        who, token = _caller(ctx)
        await self._audit_call(ctx, who, tool, connection)
        held: list[str] = []  # the door's notice when the statement waits for a review
        try:
            async with asyncio.timeout(self._config.timeout):
                conn = await psycopg.AsyncConnection.connect(
                    host=self._loopback.host,
                    port=self._loopback.port,
                    dbname=connection,
                    user=who.user,
                    password=token,
                    sslmode="verify-ca",
                    sslrootcert=str(self._loopback.ca_path),
                    application_name=APPLICATION_NAME,
                    connect_timeout=max(1, int(self._config.timeout)),
                    autocommit=True,
                )
                waiting = asyncio.Event()

                def notice(diag: psycopg.errors.Diagnostic) -> None:
                    if "held for review" in _text(diag):
                        held.append(_text(diag))
                        waiting.set()

                conn.add_notice_handler(notice)
                owner = TaskOwner("mcp query")
                try:
                    async with conn:
                        owner.spawn(self._progress(ctx, held, waiting), name="held progress")
                        return await self._fetch(conn, connection, sql, params)
                finally:
                    await owner.aclose()
        except psycopg.Error as exc:
            raise ToolError(_refusal(exc)) from None
        except TimeoutError:
            why = f" ({held[-1]})" if held else ""
            raise ToolError(
                f"no answer within {self._config.timeout:g}s{why}; the statement did not run"
            ) from None

    async def _progress(self, ctx: Context, held: list[str], waiting: asyncio.Event) -> None:
        """While the statement waits for its review: a progress notification now and every
        PROGRESS_INTERVAL seconds, naming the review (sent only to a caller that asked for
        progress; the JSON answers have no wire for them)."""
        await waiting.wait()
        for beat in itertools.count(1):
            await ctx.report_progress(beat, None, f"{held[-1]}; waiting for the decision")
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def _fetch(
        self,
        conn: psycopg.AsyncConnection[tuple[Any, ...]],
        connection: str,
        sql: str,
        params: dict[str, Any] | None,
    ) -> dict[str, Any]:
        limit_rows, limit_bytes = self._config.max_rows, self._config.max_bytes
        rows: list[list[Any]] = []
        size, cut = 0, ""
        status = None
        async with conn.cursor() as cur:
            # Streamed (single-row mode): a huge result stops at the limit instead of being
            # read whole (psycopg cancels the rest through the door, then drains it).
            try:
                async for row in cur.stream(sql, params):
                    if len(rows) == limit_rows:
                        cut = f"{limit_rows} rows (mcp.max_rows)"
                        break
                    values = [_jsonable(v) for v in row]
                    size += len(json.dumps(values, default=str))
                    if size > limit_bytes:
                        cut = f"{limit_bytes} bytes (mcp.max_bytes)"
                        break
                    rows.append(values)
            except psycopg.ProgrammingError as exc:
                # psycopg's own words once a statement without rows (SET, an allowed
                # INSERT) has completed: it ran, it just has no rows to stream.
                if exc.sqlstate is not None or "didn't produce a result" not in str(exc):
                    raise
                status = "done (the statement returns no rows)"
            columns = [c.name for c in cur.description or []]
        out: dict[str, Any] = {"connection": connection, "columns": columns, "rows": rows}
        if status is not None:
            out["status"] = status
        if cut:
            out["truncated"] = True
            out["note"] = f"result truncated after {len(rows)} rows: the limit is {cut}"
        return out


def _caller(ctx: Context) -> tuple[Identity, str]:
    """Who `McpDoor.__call__` found the request to come from; fail closed without one."""
    request = ctx.request_context.request
    scope: Scope = getattr(request, "scope", {})
    if _IDENTITY not in scope or _TOKEN not in scope:
        raise ToolError("this call carries no Wardgate credential")
    return scope[_IDENTITY], scope[_TOKEN]


def _ssh_refusal(status: int | None, stdout: str, stderr: str) -> str | None:
    """The SSH door's own refusal (a session it would not open: exit 1; a refused or denied
    command: 126), in its words without the `wardgate:` prefix; None for the command's own."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if status not in (1, 126) or stdout or not lines:
        return None
    if not all(line.startswith("wardgate:") for line in lines):
        return None
    return "\n".join(line.removeprefix("wardgate:").strip() for line in lines)


def _review_out(record: ReviewRecord) -> dict[str, Any]:
    """The API's view of a review (`GET /v1/reviews/ID`), and what to do next."""
    out = review_json(record)
    if record.status == "pending":
        out["next"] = (
            f"another person approves it (wardgate reviews approve {record.id}); "
            "ask review_status again later"
        )
    return out


def _asks_progress(body: bytes) -> bool:
    """Whether this JSON-RPC request carries a progress token (then it is answered as
    server-sent events, which can carry the progress notifications)."""
    try:
        message = json.loads(body)
    except ValueError:
        return False
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and meta.get("progressToken") is not None


def _replay(body: bytes, then: Receive) -> Receive:
    """An ASGI `receive` that hands the SDK the body already read, then the server's own
    (its next message is the client's disconnect)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _text(diag: psycopg.errors.Diagnostic) -> str:
    return diag.message_primary or ""


def _refusal(exc: psycopg.Error) -> str:
    """The server's words: SQLSTATE, message, and its detail and hint when it gave them."""
    d = exc.diag
    if d.sqlstate is None:  # refused at connect: libpq's text, the door's reason at its end
        text = " ".join(str(exc).split())
        _, fatal, reason = text.rpartition("FATAL: ")
        return f"connection refused: {reason}" if fatal else text or type(exc).__name__
    parts = [f"{d.sqlstate}: {d.message_primary}"]
    parts += [f"DETAIL: {d.message_detail}"] if d.message_detail else []
    parts += [f"HINT: {d.message_hint}"] if d.message_hint else []
    return "\n".join(parts)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact, as the server wrote it
    if isinstance(value, (dt.date, dt.time, dt.datetime)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)

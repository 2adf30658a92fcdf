"""PostgreSQL on the agent side: log in to the real server with the injected credential.

    dial -> SSLRequest per sslmode -> StartupMessage(connection's user and database, the
    client's other startup parameters) -> SCRAM-SHA-256 (with tls-server-end-point channel
    binding over TLS) / MD5 / cleartext -> AuthenticationOk -> collect the server's
    ParameterStatus / BackendKeyData / ReadyForQuery -> OpenResult(ok) and those messages as
    the first data -> relay bytes both ways.

The real BackendKeyData stays here: a cancel arrives as a Signal and is replayed to the
server on a new connection. Errors name the connection and the server's SQLSTATE, never the
secret.

Masking: when the session's Target carries masking rules, the server's bytes go through
`shared.pgwire.masking.ResultMasker` before they enter the tunnel, so the gateway never
receives an unmasked value; counts go to the gateway as MaskReport frames after each
ReadyForQuery. Column rules are matched by catalog identity too: at session open the agent
looks up, on a second connection with the same credential, the (table OID, attribute
number) of every table column whose name the rules' globs can match, cached per connection
for `CATALOG_TTL` seconds. A session without masking rules keeps the untouched byte pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import time
from dataclasses import dataclass

from agent.protocols import tcp
from agent.protocols.pglineage import SideConnection
from shared.masking.planner import LineagePlanner
from shared.masking.spec import MaskSpec
from shared.masking.values import Masker
from shared.pgwire.auth import ScramSha256Client, md5_password, tls_server_end_point
from shared.pgwire.backend import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    DataRow,
    ErrorResponse,
    ReadyForQuery,
    decode_backend,
)
from shared.pgwire.errors import PgProtocolError
from shared.pgwire.follow import ResultUnits
from shared.pgwire.framing import Message, MessageReader
from shared.pgwire.frontend import Query, SASLInitialResponse, SASLResponse, password_message
from shared.pgwire.masking import ResultMasker
from shared.pgwire.startup import encode_cancel_request, encode_ssl_request, encode_startup
from shared.tunnel.frames import OpenResult, ResetCode, SignalKind, Target
from shared.tunnel.stream import TunnelStream

LOGIN_TIMEOUT = 20.0
CATALOG_TTL = 30.0
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class LoginFailed(Exception):
    def __init__(self, code: ResetCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Server:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tls: bool


def _client_tls(target: Target, mode: str) -> ssl.SSLContext:
    root = target.options.get("sslrootcert")
    if mode not in ("verify-ca", "verify-full"):
        return _ENCRYPT_ONLY
    # Keyed by the CA file's mtime too: a replaced file is read again, an unchanged one not.
    mtime = os.stat(root).st_mtime_ns if root else 0
    return _verifying_tls(mode, root, mtime)


def _encrypt_only() -> ssl.SSLContext:
    """require/prefer: encrypt, do not verify (libpq semantics): no trust store to load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# Built once: loading the system trust store takes ~65 ms, which every session open and
# every cancel on a TLS hop to the server paid before (issue 14: a loop of timeouts took
# seconds more through a TLS hop).
_ENCRYPT_ONLY = _encrypt_only()


@functools.lru_cache(maxsize=64)
def _verifying_tls(mode: str, root: str | None, mtime: int) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if root:
        ctx.load_verify_locations(cafile=root)
    ctx.check_hostname = mode == "verify-full"
    return ctx


async def connect(target: Target) -> _Server:
    mode = target.options.get("sslmode", "prefer")
    if mode not in SSL_MODES:
        raise LoginFailed(ResetCode.TARGET_REFUSED, f"unknown sslmode {mode!r}")
    reader, writer = await tcp.dial(target)
    if mode in ("disable", "allow"):
        return _Server(reader, writer, tls=False)
    writer.write(encode_ssl_request())
    await writer.drain()
    answer = await reader.readexactly(1)
    if answer == b"S":
        await writer.start_tls(
            _client_tls(target, mode),
            server_hostname=target.host if mode == "verify-full" else None,
        )
        return _Server(reader, writer, tls=True)
    if mode in ("require", "verify-ca", "verify-full"):
        writer.close()
        raise LoginFailed(
            ResetCode.TARGET_REFUSED, f"the server does not accept TLS (sslmode={mode})"
        )
    return _Server(reader, writer, tls=False)


async def _next_raw(
    frames: MessageReader, reader: asyncio.StreamReader, stage: str
) -> tuple[Message, object]:
    """The next server message, raw and decoded; an ErrorResponse ends the login."""
    while (message := frames.next_message()) is None:
        data = await reader.read(65536)
        if not data:
            raise LoginFailed(ResetCode.TARGET_UNREACHABLE, "the server closed the connection")
        frames.feed(data)
    decoded = decode_backend(message)
    if isinstance(decoded, ErrorResponse):
        raise LoginFailed(
            ResetCode.TARGET_REFUSED,
            f"the server refused the {stage}: {decoded.sqlstate} {decoded.message}",
        )
    return message, decoded


async def _next(frames: MessageReader, reader: asyncio.StreamReader) -> object:
    return (await _next_raw(frames, reader, "login"))[1]


async def login(server: _Server, target: Target) -> tuple[bytes, BackendKeyData | None]:
    """Authenticate; returns the raw post-auth messages (through ReadyForQuery) and the key."""
    params = {
        k.removeprefix("startup."): v for k, v in target.options.items() if k.startswith("startup.")
    }
    params["user"] = target.options.get("username", "")
    params["database"] = target.options.get("database", params["user"])
    if not params["user"]:
        raise LoginFailed(ResetCode.TARGET_REFUSED, "the connection has no username")
    password = target.secrets.get("password")
    secret = password if isinstance(password, bytes) else None
    reader, writer = server.reader, server.writer
    writer.write(encode_startup(params))
    await writer.drain()
    frames = MessageReader()

    def need_secret() -> bytes:
        if secret is None:
            raise LoginFailed(
                ResetCode.SECRET_UNAVAILABLE, "the server asks for a password; none is configured"
            )
        return secret

    while True:
        message = await _next(frames, reader)
        if isinstance(message, AuthenticationOk):
            break
        if isinstance(message, AuthenticationCleartextPassword):
            writer.write(password_message(need_secret()))
        elif isinstance(message, AuthenticationMD5Password):
            writer.write(
                password_message(md5_password(params["user"], need_secret(), message.salt))
            )
        elif isinstance(message, AuthenticationSASL):
            binding = None
            if server.tls:
                ssl_object = writer.get_extra_info("ssl_object")
                cert = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                binding = tls_server_end_point(cert) if cert else None
            scram = ScramSha256Client(need_secret(), message.mechanisms, binding)
            writer.write(SASLInitialResponse(scram.mechanism, scram.client_first()).encode())
            await writer.drain()
            first = await _next(frames, reader)
            if not isinstance(first, AuthenticationSASLContinue):
                raise LoginFailed(ResetCode.TARGET_REFUSED, "unexpected SCRAM message")
            writer.write(SASLResponse(scram.client_final(first.data)).encode())
            await writer.drain()
            final = await _next(frames, reader)
            if not isinstance(final, AuthenticationSASLFinal):
                raise LoginFailed(ResetCode.TARGET_REFUSED, "unexpected SCRAM message")
            scram.verify_server_final(final.data)
            continue
        else:
            raise LoginFailed(
                ResetCode.TARGET_REFUSED, f"unsupported authentication request {message!r}"
            )
        await writer.drain()

    raw: list[bytes] = []
    key: BackendKeyData | None = None
    while True:
        msg, decoded = await _next_raw(frames, reader, "session")
        if isinstance(decoded, BackendKeyData):
            key = decoded
        raw.append(msg.raw)
        if isinstance(decoded, ReadyForQuery):
            return b"".join(raw), key


async def cancel(target: Target, key: BackendKeyData, tls: bool) -> None:
    """Replay a cancel to the server on a new connection, as libpq does."""
    with contextlib.suppress(OSError, TimeoutError, LoginFailed, asyncio.IncompleteReadError):
        async with asyncio.timeout(10):
            server = await connect(target) if tls else _Server(*await tcp.dial(target), False)
            server.writer.write(encode_cancel_request(key.pid, key.secret))
            await server.writer.drain()
            await server.reader.read()  # the server closes when done
            server.writer.close()


# ---- masking ---------------------------------------------------------------------------

Catalog = dict[tuple[int, int], tuple[str, ...]]
_catalog_cache: dict[tuple[str, tuple[str, ...]], tuple[float, Catalog]] = {}


def _like(glob: str) -> str:
    """A SQL LIKE pattern (escape '!') matching at least what the fnmatch glob matches."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        ch = glob[i]
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch == "[" and "]" in glob[i + 1 :]:
            out.append("_")  # one character of a class
            i = glob.index("]", i + 1)
        elif ch in "%_!":
            out.append("!" + ch)
        elif ch == "'":
            out.append("''")
        elif ch == "\\":
            out.append("_")  # never a backslash: safe whatever standard_conforming_strings
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def catalog_query(globs: tuple[str, ...]) -> str:
    names = sorted({g.rsplit(".", 1)[-1] for g in globs})
    where = " OR ".join(f"lower(a.attname::text) LIKE '{_like(n)}' ESCAPE '!'" for n in names)
    # The patterns are the operator's globs, quoted by _like (no backslash, quotes doubled).
    return _CATALOG_SQL + " AND (" + where + ")"


_CATALOG_SQL = (
    "SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname"
    " FROM pg_catalog.pg_attribute a"
    " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'm', 'p', 'f')"
)


async def lookup_catalog(target: Target, globs: tuple[str, ...]) -> Catalog:
    """(table OID, attnum) -> (table.column, schema.table.column) for columns the globs
    can match, read on a separate connection; cached per connection for CATALOG_TTL."""
    cache_key = (target.connection, globs)
    cached = _catalog_cache.get(cache_key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < CATALOG_TTL:
        return cached[1]
    catalog: Catalog = {}
    server = await connect(target)
    try:
        _startup, _key = await login(server, target)
        server.writer.write(Query(catalog_query(globs)).encode())
        await server.writer.drain()
        frames = MessageReader()
        while True:
            _raw, message = await _next_raw(frames, server.reader, "catalog lookup")
            if isinstance(message, DataRow):
                oid, attnum, schema, table, column = (
                    (v or b"").decode("utf-8", "replace") for v in message.values
                )
                schema, table, column = schema.lower(), table.lower(), column.lower()
                catalog[(int(oid), int(attnum))] = (
                    f"{table}.{column}",
                    f"{schema}.{table}.{column}",
                )
            elif isinstance(message, ReadyForQuery):
                break
    finally:
        server.writer.close()
    if len(_catalog_cache) > 256:
        _catalog_cache.clear()
    _catalog_cache[cache_key] = (now, catalog)
    return catalog


async def rewriter_for(target: Target) -> ResultMasker | None:
    spec: MaskSpec = target.masking
    if spec.empty:
        return None
    globs = spec.column_globs
    catalog = await lookup_catalog(target, globs) if globs else {}
    # Column rules: each result is tied to its statement, whose lineage masks what derives
    # from a masked column (shared.masking.planner).
    units = ResultUnits() if globs else None
    return ResultMasker(Masker(spec), catalog=catalog, units=units)


def planner_for(
    target: Target, rewriter: ResultMasker | None
) -> tuple[LineagePlanner, SideConnection] | None:
    if rewriter is None or rewriter.units is None:
        return None
    side = SideConnection(target, connect, login)
    planner = LineagePlanner(target.masking, side.ask, time.monotonic, rewriter.units)
    return planner, side


async def serve(stream: TunnelStream, target: Target) -> None:
    server: _Server | None = None
    rewriter: ResultMasker | None = None
    try:
        async with asyncio.timeout(LOGIN_TIMEOUT):
            # Fail closed: masking that cannot be set up refuses the session.
            rewriter = await rewriter_for(target)
            server = await connect(target)
            startup, key = await login(server, target)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        reason = (
            "timed out"
            if isinstance(exc, TimeoutError)
            else (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__)
        )
        await _refuse(
            stream,
            server,
            ResetCode.TARGET_UNREACHABLE,
            f"cannot reach {target.host}:{target.port}: {reason}",
        )
        return
    except LoginFailed as exc:
        await _refuse(stream, server, exc.code, str(exc))
        return
    except PgProtocolError as exc:
        await _refuse(stream, server, ResetCode.TARGET_REFUSED, f"server protocol error: {exc}")
        return

    async def on_signal(kind: SignalKind) -> None:
        if kind is SignalKind.CANCEL and key is not None and server is not None:
            await cancel(target, key, server.tls)

    planned = planner_for(target, rewriter)
    await stream.send_open_result(OpenResult(True))
    try:
        await stream.send_data(startup)
        await tcp.pump(
            stream,
            server.reader,
            server.writer,
            on_signal,
            rewriter,
            before_write=planned[0].client_data if planned else None,
        )
    finally:
        if planned:
            planned[1].close()
        server.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await server.writer.wait_closed()


async def _refuse(
    stream: TunnelStream, server: _Server | None, code: ResetCode, message: str
) -> None:
    if server is not None:
        server.writer.close()
    await stream.send_open_result(OpenResult(False, code, message))

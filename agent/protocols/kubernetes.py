"""Kubernetes: one tunnel session = one API request (or one WebSocket upgrade) to the real
API server, made with the connection's own credential. The frames are shared/kubeapi.py's.

The credential comes from the connection, loaded here with the `kubernetes` package's
config loaders, and never reaches the gateway or the client:

    options.auth = token       https://HOST:PORT with the `token` (or `password`) secret (a
                               reference such as env:/file:, resolved here) and
                               `certificate_authority` (a path here; absent: the system
                               trust store)
    options.auth = kubeconfig  options.kubeconfig (a path here), options.context (optional)
    options.auth = in-cluster  the pod's service account (KUBERNETES_SERVICE_HOST, token, CA)

`options.impersonate = true` adds Impersonate-User / Impersonate-Group for the Wardgate
identity the gateway put in the request head (prefixed with `options.impersonate_prefix`),
so the cluster's RBAC and audit log see the person; the client's own Authorization and
Impersonate-* headers never pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    NegotiationError,
    WebSocketException,
)
from websockets.typing import Subprotocol

from shared.kubeapi import (
    WS_BINARY,
    WS_CLOSE,
    WS_TEXT,
    HeadError,
    Masker,
    RequestHead,
    ResponseHead,
    decode_head,
    decode_ws,
    encode_head,
    encode_ws,
    encode_ws_close,
    status_body,
)
from shared.relay import Refused, StreamPeer, relay
from shared.tunnel.frames import MAX_PAYLOAD, OpenResult, ResetCode, Target
from shared.tunnel.stream import (
    DataReceived,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
    TunnelStream,
)

MAX_REQUEST_BODY = 16 * 1024 * 1024  # kube-apiserver itself caps request bodies near 3 MiB
MAX_MASKED_BODY = 64 * 1024 * 1024  # a masked JSON document is rewritten whole
MAX_WATCH_LINE = 16 * 1024 * 1024
MAX_WS_MESSAGE = MAX_PAYLOAD - 1  # one tunnel frame per message, after the tag byte
CONNECT_TIMEOUT = 10.0
CACHE_TTL = 60.0  # seconds a loaded cluster credential is reused
MAX_POOLED = 64
_RESPONSE_DROPPED = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "content-encoding",
        "date",  # the gateway's HTTP server sets its own
        "server",
    }
)


class UpstreamConfigError(Exception):
    """The connection's cluster credential cannot be loaded (names the source, not a value)."""


@dataclass(frozen=True)
class Upstream:
    server: str  # https://host:port[/prefix]
    ssl_context: ssl.SSLContext
    authorization: str | None  # "Bearer ..."; None with client certificates only


def _ssl_context(ca: str | None, cert: str | None, key: str | None, verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def load_upstream(target: Target) -> Upstream:
    """Blocking (reads files, may run a kubeconfig exec plugin): call it in a thread."""
    auth = target.options.get("auth", "token")
    if auth == "token":
        # `password` too: what `wardgate connection create --password` stores.
        token = target.secrets.get("token", target.secrets.get("password"))
        if token is None:
            raise UpstreamConfigError("auth=token needs a `token` (or `password`) secret")
        assert isinstance(token, bytes)  # resolved on this agent before serve()
        try:
            ctx = _ssl_context(target.options.get("certificate_authority"), None, None, True)
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConfigError(f"certificate_authority: {exc}") from None
        return Upstream(f"https://{target.host}:{target.port}", ctx, f"Bearer {token.decode()}")
    # The loaders are a heavy import (~25 MiB): only for the credentials that need them.
    from kubernetes import client, config

    try:
        cfg = client.Configuration()
        if auth == "kubeconfig":
            path = target.options.get("kubeconfig")
            if not path:
                raise UpstreamConfigError("auth=kubeconfig needs the `kubeconfig` option")
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path,
                context=target.options.get("context") or None,
                client_configuration=cfg,
                persist_config=False,
            )
        elif auth == "in-cluster":
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            raise UpstreamConfigError(f"unknown auth {auth!r}: use token, kubeconfig, in-cluster")
    except config.ConfigException as exc:
        raise UpstreamConfigError(f"{auth} credential: {exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise UpstreamConfigError(f"{auth} credential: {exc}") from None
    authorization = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    prefix = cfg.api_key_prefix.get("authorization")
    if authorization and prefix and not authorization.startswith(prefix):
        authorization = f"{prefix} {authorization}"
    ctx = _ssl_context(cfg.ssl_ca_cert, cfg.cert_file, cfg.key_file, bool(cfg.verify_ssl))
    return Upstream(cfg.host.rstrip("/"), ctx, authorization)


def _upstream_headers(
    head: RequestHead, upstream: Upstream, target: Target
) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for name, value in head.headers:
        low = name.lower()
        if low in ("authorization", "accept-encoding") or low.startswith("impersonate-"):
            continue  # the gateway dropped them already; defence in depth
        if low == "accept" and head.masks:
            # Masking reads JSON: never let the server answer in protobuf.
            kept = [p for p in value.split(",") if "protobuf" not in p]
            value = ",".join(kept) or "application/json"
        headers.append((low, value))
    headers.append(("accept-encoding", "identity"))
    if upstream.authorization:
        headers.append(("authorization", upstream.authorization))
    if target.options.get("impersonate") == "true" and head.impersonate_user:
        # A prefix keeps Wardgate names apart from the cluster's own (no "system:masters").
        prefix = target.options.get("impersonate_prefix", "")
        headers.append(("impersonate-user", prefix + head.impersonate_user))
        headers.extend(("impersonate-group", prefix + g) for g in head.impersonate_groups)
    return headers


class _KubeClientProtocol(ClientProtocol):
    """Accepts the API server's choice of exactly one offered subprotocol, verbatim.

    Port-forward's `SPDY/3.1+portforward.k8s.io` holds a "/", which is not an RFC 7230
    token: websockets refuses to offer it (`connect` validates) and to parse the answer
    naming it, though kube-apiserver and kubectl use it so."""

    def process_subprotocol(self, headers: Headers) -> Subprotocol | None:
        values = [v.strip() for v in headers.get_all("Sec-WebSocket-Protocol")]
        if not values:
            return None
        offered = self.available_subprotocols or []
        if len(values) != 1 or values[0] not in offered:
            raise NegotiationError(f"unsupported subprotocol: {', '.join(values)}")
        return Subprotocol(values[0])


def _connection_class(offered: tuple[str, ...]) -> type[ClientConnection]:
    """A ClientConnection offering `offered` as they are; websockets builds its
    ClientProtocol itself, so the protocol's class and offer are set here."""

    class _KubeClientConnection(ClientConnection):
        def __init__(self, protocol: ClientProtocol, **kwargs: Any) -> None:
            protocol.__class__ = _KubeClientProtocol
            protocol.available_subprotocols = [Subprotocol(p) for p in offered]
            super().__init__(protocol, **kwargs)

    return _KubeClientConnection


async def _send_error(stream: TunnelStream, code: int, message: str) -> None:
    head = ResponseHead(code, (("content-type", "application/json"),))
    await stream.send_data(encode_head(head))
    await stream.send_data(status_body(code, message))
    await stream.send_close()


class UpstreamPool:
    """Loaded cluster credentials and their HTTP connection pools, per connection definition.

    kubectl sends many short requests; a TLS handshake and a kubeconfig parse for each would
    cost more than the request. An entry lives `CACHE_TTL` seconds, so a rotated token or
    kubeconfig is picked up; a retired entry's connections close when its last request ends
    (a watch may outlive the TTL by hours).
    """

    def __init__(self) -> None:
        self._live: dict[tuple[object, ...], _Entry] = {}

    @staticmethod
    def _key(target: Target) -> tuple[object, ...]:
        secrets = tuple(
            sorted(
                (name, hashlib.sha256(v if isinstance(v, bytes) else v.encode()).hexdigest())
                for name, v in target.secrets.items()
            )
        )
        return (
            target.connection,
            target.host,
            target.port,
            tuple(sorted(target.options.items())),
            secrets,
        )

    async def acquire(self, target: Target) -> _Entry:
        key = self._key(target)
        now = time.monotonic()
        entry = self._live.get(key)
        if entry is not None and now - entry.born > CACHE_TTL:
            await self._retire(key, entry)
            entry = None
        if entry is None:
            upstream = await asyncio.to_thread(load_upstream, target)
            entry = self._live.get(key)  # another request may have loaded it meanwhile
            if entry is None:
                timeout = httpx.Timeout(CONNECT_TIMEOUT, read=None)
                client = httpx.AsyncClient(verify=upstream.ssl_context, timeout=timeout)
                entry = _Entry(upstream, client, now)
                self._live[key] = entry
                if len(self._live) > MAX_POOLED:
                    oldest = min(self._live, key=lambda k: self._live[k].born)
                    await self._retire(oldest, self._live[oldest])
        entry.users += 1
        return entry

    async def release(self, entry: _Entry) -> None:
        entry.users -= 1
        if entry.retired and entry.users == 0:
            await entry.client.aclose()

    async def _retire(self, key: tuple[object, ...], entry: _Entry) -> None:
        self._live.pop(key, None)
        entry.retired = True
        if entry.users == 0:
            await entry.client.aclose()


@dataclass(eq=False)
class _Entry:
    upstream: Upstream
    client: httpx.AsyncClient
    born: float
    users: int = 0
    retired: bool = False


POOL = UpstreamPool()


async def serve(stream: TunnelStream, target: Target) -> None:
    try:
        entry = await POOL.acquire(target)
    except UpstreamConfigError as exc:
        await stream.send_open_result(
            OpenResult(False, ResetCode.TARGET_REFUSED, f"connection {target.connection!r}: {exc}")
        )
        return
    try:
        await stream.send_open_result(OpenResult(True))
        try:
            head, body = await _read_request(stream)
        except HeadError as exc:
            await stream.reset(ResetCode.PROTOCOL_ERROR, f"kubernetes request: {exc}")
            return
        if head is None:
            return
        if head.upgrade:
            await _raw_upgrade(stream, head, entry.upstream, target)
        elif head.websocket_protocols:
            await _websocket(stream, head, entry.upstream, target)
        else:
            await _http(stream, head, body, entry, target)
    except SessionClosedError:
        return
    finally:
        await POOL.release(entry)


async def _read_request(stream: TunnelStream) -> tuple[RequestHead | None, bytes]:
    head: RequestHead | None = None
    body = bytearray()
    while True:
        event = await stream.receive()
        if isinstance(event, DataReceived):
            if head is None:
                decoded = decode_head(event.payload)
                if not isinstance(decoded, RequestHead):
                    raise HeadError("expected a request head")
                head = decoded
                if head.websocket_protocols or head.upgrade:
                    return head, b""  # messages follow once the upgrade is done
                continue
            body += event.payload
            if len(body) > MAX_REQUEST_BODY:
                raise HeadError(f"request body over {MAX_REQUEST_BODY} bytes")
        elif isinstance(event, RemoteClosed):
            if head is None:
                raise HeadError("closed before the request head")
            return head, bytes(body)
        elif isinstance(event, SessionReset):
            return None, b""


async def _http(
    stream: TunnelStream, head: RequestHead, body: bytes, entry: _Entry, target: Target
) -> None:
    upstream, client = entry.upstream, entry.client
    url = upstream.server + head.path + (f"?{head.query}" if head.query else "")
    request = client.build_request(
        head.method, url, headers=_upstream_headers(head, upstream, target), content=body
    )
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        await _send_error(
            stream, 502, f"connection {target.connection!r}: API server unreachable: {exc}"
        )
        return
    try:
        async with asyncio.TaskGroup() as tg:
            relay = tg.create_task(
                _relay_response(stream, head, response), name=f"k8s/{stream.session_id}/down"
            )
            # A quiet watch sends nothing for hours: its end is the gateway ending the
            # session (the client left), not a failed write. After a complete response the
            # gateway ends the session too, which ends this watcher without cancelling a
            # tunnel read.
            await _until_ended(stream)
            relay.cancel()
    finally:
        await response.aclose()


async def _until_ended(stream: TunnelStream) -> None:
    """Wait until the gateway ends the session; no data comes after the request."""
    while isinstance(await stream.receive(), DataReceived):
        pass


async def _relay_response(
    stream: TunnelStream, head: RequestHead, response: httpx.Response
) -> None:
    content_type = response.headers.get("content-type", "")
    masking = head.masks and response.status_code < 300
    if masking and "protobuf" in content_type:
        await _send_error(
            stream, 502, "the API server answered in protobuf, which cannot be masked"
        )
        return
    headers = tuple(
        (k, v) for k, v in response.headers.multi_items() if k.lower() not in _RESPONSE_DROPPED
    )
    masker = Masker(head.mask_secrets, head.mask_env)
    if masking and "json" in content_type and not _is_watch(head.query):
        # One document: masked whole, so the head can say how many values were masked.
        whole = bytearray()
        async for chunk in response.aiter_bytes():
            whole += chunk
            if len(whole) > MAX_MASKED_BODY:
                await _send_error(stream, 502, "the response is too large to be masked")
                return
        try:
            body = masker.mask_json(bytes(whole))
        except ValueError:
            await _send_error(stream, 502, "the response is not JSON and cannot be masked")
            return
        await stream.send_data(
            encode_head(ResponseHead(response.status_code, headers, None, masker.masked))
        )
        await stream.send_data(body)
        await stream.send_close()
        return
    await stream.send_data(encode_head(ResponseHead(response.status_code, headers)))
    if not masking or "json" not in content_type:
        async for chunk in response.aiter_bytes():
            await stream.send_data(chunk)
    else:
        # A watch: one JSON event per line, masked line by line, never the whole stream.
        pending = bytearray()
        async for chunk in response.aiter_bytes():
            pending += chunk
            if b"\n" not in chunk:
                if len(pending) > MAX_WATCH_LINE:
                    await stream.reset(ResetCode.INTERNAL, "watch event too large to mask")
                    return
                continue
            *lines, rest = bytes(pending).split(b"\n")
            pending = bytearray(rest)
            try:
                out = b"".join(masker.mask_json(line) + b"\n" for line in lines if line.strip())
            except ValueError:
                await stream.reset(ResetCode.INTERNAL, "a watch event is not JSON: cannot mask")
                return
            if out:
                await stream.send_data(out)
    await stream.send_close()


def _is_watch(query: str) -> bool:
    return any(v in ("true", "1") for v in parse_qs(query).get("watch", []))


async def _websocket(
    stream: TunnelStream, head: RequestHead, upstream: Upstream, target: Target
) -> None:
    url = "wss" + upstream.server.removeprefix("https") + head.path
    url += f"?{head.query}" if head.query else ""
    headers = [
        (k, v) for k, v in _upstream_headers(head, upstream, target) if k != "accept-encoding"
    ]
    try:
        ws = await connect(
            url,
            ssl=upstream.ssl_context,
            additional_headers=headers,
            open_timeout=CONNECT_TIMEOUT,
            max_size=MAX_WS_MESSAGE,
            compression=None,
            ping_interval=None,
            create_connection=_connection_class(head.websocket_protocols),
        )
    except InvalidStatus as exc:
        answer = exc.response
        kept = tuple(
            (k, v) for k, v in answer.headers.raw_items() if k.lower() not in _RESPONSE_DROPPED
        )
        await stream.send_data(encode_head(ResponseHead(answer.status_code, kept)))
        if answer.body:
            await stream.send_data(answer.body)
        await stream.send_close()
        return
    except (OSError, TimeoutError, WebSocketException) as exc:
        await _send_error(
            stream, 502, f"connection {target.connection!r}: API server unreachable: {exc}"
        )
        return
    try:
        await stream.send_data(encode_head(ResponseHead(101, (), ws.subprotocol)))
        await _relay_ws(stream, ws)
    finally:
        await ws.close()


class _UpstreamWebSocket:
    """The API server's WebSocket as a relay peer: each message one tunnel frame; its
    close (code and reason) is a frame too, before the tunnel's close."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.closed = False

    async def read(self) -> bytes | None:
        if self.closed:
            return None
        try:
            message = await self.ws.recv()
        except ConnectionClosed:
            self.closed = True
            return encode_ws_close(self.ws.close_code or 1000, self.ws.close_reason or "")
        if isinstance(message, str):
            return encode_ws(WS_TEXT, message.encode())
        return encode_ws(WS_BINARY, message)

    async def write(self, data: bytes) -> None:
        try:
            kind, payload = decode_ws(data)
        except HeadError as exc:
            raise Refused(str(exc)) from exc
        # A closed upstream shows in `read`, which tells the gateway how it closed.
        with contextlib.suppress(ConnectionClosed):
            if kind == WS_CLOSE:
                await self.ws.close()
            else:
                await self.ws.send(payload.decode() if kind == WS_TEXT else payload)

    async def write_eof(self) -> None:
        raise AssertionError("WebSocket has no half-close")

    async def wait_gone(self) -> None:
        raise AssertionError("WebSocket has no half-close")


async def _relay_ws(stream: TunnelStream, ws: ClientConnection) -> None:
    await relay(
        stream,
        _UpstreamWebSocket(ws),
        half_close=False,
        name=f"k8s/{stream.session_id}",
        who="API server",
        failure_code=ResetCode.TARGET_UNREACHABLE,
    )


# ---- plain upgrades (SPDY/3.1) ---------------------------------------------------------

MAX_UPGRADE_ANSWER = 64 * 1024
RAW_CHUNK = 32 * 1024


async def _raw_upgrade(
    stream: TunnelStream, head: RequestHead, upstream: Upstream, target: Target
) -> None:
    """kubectl's SPDY fallback: the same upgrade request to the API server on a connection
    of its own; after its 101 the bytes are relayed as they are, both ways (the SPDY
    framing is kubectl's and the API server's business)."""
    parts = urlsplit(upstream.server)
    host, port = parts.hostname or "", parts.port or 443
    path = parts.path.rstrip("/") + head.path + (f"?{head.query}" if head.query else "")
    headers = [
        (k, v) for k, v in _upstream_headers(head, upstream, target) if k != "accept-encoding"
    ]
    lines = [f"{head.method} {path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += ["Connection: Upgrade", f"Upgrade: {head.upgrade}", "Content-Length: 0"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    unreachable = f"connection {target.connection!r}: API server unreachable"
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=upstream.ssl_context, server_hostname=host,
                limit=MAX_UPGRADE_ANSWER,
            )  # fmt: skip
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        await _send_error(stream, 502, f"{unreachable}: {exc}")
        return
    try:
        try:
            writer.write(request)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                raw = await reader.readuntil(b"\r\n\r\n")
        except (OSError, TimeoutError, ssl.SSLError, asyncio.LimitOverrunError,
                asyncio.IncompleteReadError) as exc:  # fmt: skip
            await _send_error(stream, 502, f"{unreachable}: no upgrade answer ({exc!r})")
            return
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")
        try:
            status = int(status_line.split(" ")[1])
        except (IndexError, ValueError):
            await _send_error(stream, 502, f"{unreachable}: bad status line {status_line[:80]!r}")
            return
        answer: list[tuple[str, str]] = []
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                answer.append((name.strip(), value.strip()))
        kept = tuple((k, v) for k, v in answer if k.lower() not in _RESPONSE_DROPPED | {"upgrade"})
        await stream.send_data(encode_head(ResponseHead(status, kept)))
        if status != 101:
            # A refusal (403, 404, ...): its body, bounded, then the end.
            length = next((v for k, v in answer if k.lower() == "content-length"), None)
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError, ValueError):
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    if length is not None:
                        body = await reader.readexactly(min(int(length), MAX_UPGRADE_ANSWER))
                    else:
                        body = await reader.read(MAX_UPGRADE_ANSWER)
                if body:
                    await stream.send_data(body)
            await stream.send_close()
            return
        await _relay_raw(stream, reader, writer)
    except asyncio.IncompleteReadError:
        await stream.send_close()
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(5):
                await writer.wait_closed()


async def _relay_raw(
    stream: TunnelStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    # TLS cannot half-close: either end closing ends the session (the caller closes).
    await relay(
        stream,
        StreamPeer(reader, writer, RAW_CHUNK),
        half_close=False,
        name=f"k8s/{stream.session_id}",
        who="API server",
        failure_code=ResetCode.TARGET_UNREACHABLE,
    )

"""Kubernetes API requests over the tunnel, sans-I/O: the head codec, request attributes,
Status bodies and response masking. Gateway and agent both use it.

One tunnel session carries one HTTP request to the API server (or one WebSocket upgrade).
Its rules:

1. The first Data frame each way is a *head*: a 4-byte big-endian length, then that many
   bytes of JSON (`RequestHead` gateway -> agent, `ResponseHead` agent -> gateway). A head
   never exceeds `MAX_HEAD`; anything else is a protocol error of the sender.
2. For plain HTTP, the frames after the head are body bytes, in order, and a tunnel Close
   ends the body. The gateway sends the request body, then Close; the agent answers with
   the response head and the response body as it arrives (watch, `logs -f`: open-ended,
   streamed frame by frame, never buffered whole), then Close.
3. For a WebSocket upgrade (`RequestHead.websocket_protocols` non-empty) the response head
   says 101 and the chosen subprotocol, or carries an ordinary HTTP error response. After
   101 every Data frame is exactly one WebSocket message: one tag byte (`WS_BINARY`,
   `WS_TEXT`, `WS_CLOSE`) then the payload; a close message carries a 2-byte code then
   the reason.
4. What the agent must do to the request is in the head, decided by the gateway: the
   identity to impersonate and what to mask. The agent never trusts client headers for it:
   `Authorization` and `Impersonate-*` from the client are dropped on both sides.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

MAX_HEAD = 64 * 1024
MASKED = "********"
MASKED_B64 = base64.b64encode(MASKED.encode()).decode()

WS_BINARY = 0
WS_TEXT = 1
WS_CLOSE = 2

# Headers a client may never pass to the API server: the agent sets its own credential and
# the impersonation of the Wardgate identity.
_STRIPPED_PREFIXES = ("impersonate-",)
_STRIPPED = frozenset(
    {
        "authorization",
        "host",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


class HeadError(ValueError):
    """A head that does not decode: the sender broke this module's rules."""


def forwardable(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The client headers that may reach the API server (hop-by-hop and credentials dropped)."""
    kept = []
    for name, value in headers:
        low = name.lower()
        if low in _STRIPPED or low.startswith(_STRIPPED_PREFIXES):
            continue
        kept.append((low, value))
    return tuple(kept)


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    path: str  # the API server path, starting with "/"
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    websocket_protocols: tuple[str, ...] = ()  # non-empty: a WebSocket upgrade
    impersonate_user: str | None = None
    impersonate_groups: tuple[str, ...] = ()
    mask_secrets: bool = False
    mask_env: tuple[str, ...] = ()  # globs of environment variable names
    # Set ("SPDY/3.1"): a plain HTTP upgrade; after a 101 both sides relay raw bytes.
    upgrade: str | None = None

    @property
    def masks(self) -> bool:
        return self.mask_secrets or bool(self.mask_env)


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    websocket_protocol: str | None = None  # set with status 101
    masked: int = 0  # values the agent masked in a whole-document body (not in streams)

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)


def encode_head(head: RequestHead | ResponseHead) -> bytes:
    if isinstance(head, RequestHead):
        doc: dict[str, Any] = {
            "request": {
                "method": head.method,
                "path": head.path,
                "query": head.query,
                "headers": [list(h) for h in head.headers],
                "websocket_protocols": list(head.websocket_protocols),
                "impersonate_user": head.impersonate_user,
                "impersonate_groups": list(head.impersonate_groups),
                "mask_secrets": head.mask_secrets,
                "mask_env": list(head.mask_env),
                "upgrade": head.upgrade,
            }
        }
    else:
        doc = {
            "response": {
                "status": head.status,
                "headers": [list(h) for h in head.headers],
                "websocket_protocol": head.websocket_protocol,
                "masked": head.masked,
            }
        }
    body = json.dumps(doc, separators=(",", ":")).encode()
    if len(body) > MAX_HEAD:
        raise HeadError(f"head of {len(body)} bytes exceeds {MAX_HEAD}")
    return struct.pack("!I", len(body)) + body


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    ):
        raise HeadError("headers must be a list of [name, value] strings")
    return tuple((p[0], p[1]) for p in value)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise HeadError(f"{what} must be a list of strings")
    return tuple(value)


def _upgrade(value: Any) -> str | None:
    # Optional: heads from agents and gateways that predate raw upgrades lack it.
    if value is not None and not isinstance(value, str):
        raise HeadError("upgrade must be a string")
    return value


def decode_head(payload: bytes) -> RequestHead | ResponseHead:
    if len(payload) < 4:
        raise HeadError("head shorter than its length prefix")
    (length,) = struct.unpack("!I", payload[:4])
    if length > MAX_HEAD or length != len(payload) - 4:
        raise HeadError(f"head length {length} does not match its frame")
    try:
        doc = json.loads(payload[4:])
    except ValueError:
        raise HeadError("head is not JSON") from None
    if not isinstance(doc, dict) or len(doc) != 1:
        raise HeadError("head must be one object")
    try:
        if isinstance(req := doc.get("request"), dict):
            user = req["impersonate_user"]
            if user is not None and not isinstance(user, str):
                raise HeadError("impersonate_user must be a string")
            for key in ("method", "path", "query"):
                if not isinstance(req[key], str):
                    raise HeadError(f"{key} must be a string")
            if not req["path"].startswith("/"):
                raise HeadError("path must start with /")
            return RequestHead(
                method=req["method"],
                path=req["path"],
                query=req["query"],
                headers=_pairs(req["headers"]),
                websocket_protocols=_strings(req["websocket_protocols"], "websocket_protocols"),
                impersonate_user=user,
                impersonate_groups=_strings(req["impersonate_groups"], "impersonate_groups"),
                mask_secrets=bool(req["mask_secrets"]),
                mask_env=_strings(req["mask_env"], "mask_env"),
                upgrade=_upgrade(req.get("upgrade")),
            )
        if isinstance(resp := doc.get("response"), dict):
            status = resp["status"]
            proto = resp["websocket_protocol"]
            if not isinstance(status, int) or not 100 <= status <= 599:
                raise HeadError("status must be an HTTP status code")
            if proto is not None and not isinstance(proto, str):
                raise HeadError("websocket_protocol must be a string")
            masked = resp["masked"]
            if not isinstance(masked, int) or masked < 0:
                raise HeadError("masked must be a count")
            return ResponseHead(status, _pairs(resp["headers"]), proto, masked)
    except KeyError as exc:
        raise HeadError(f"head lacks {exc.args[0]!r}") from None
    raise HeadError("head is neither a request nor a response")


def encode_ws(kind: int, payload: bytes) -> bytes:
    return bytes([kind]) + payload


def encode_ws_close(code: int, reason: str) -> bytes:
    return bytes([WS_CLOSE]) + struct.pack("!H", code) + reason.encode()[:120]


def decode_ws(frame: bytes) -> tuple[int, bytes]:
    if not frame or frame[0] not in (WS_BINARY, WS_TEXT, WS_CLOSE):
        raise HeadError("WebSocket message without a valid tag byte")
    return frame[0], frame[1:]


# ---- request attributes (what RBAC calls the request info) ---------------------------


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The Kubernetes attributes of one request, as the API server's RBAC sees them.

    Non-resource requests (discovery, /version, /openapi, /healthz) have `resource` "".
    """

    verb: str
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    api_group: str = ""
    path: str = ""

    @property
    def is_resource(self) -> bool:
        return bool(self.resource)

    def describe(self) -> str:
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        if not what:
            return f"{self.verb} {self.path}"
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        name = f" {self.name!r}" if self.name else ""
        return f"{self.verb} {what}{name}{where}"


# Subresources that open a stream to a container: RBAC checks them as "create".
CONNECT_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})
_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def request_info(method: str, path: str, query: str = "") -> RequestInfo:
    """Resolve a request the way kube-apiserver's RequestInfoFactory does (simplified).

    /api/v1/namespaces/NS/pods/NAME/SUB and /apis/GROUP/VERSION/...; "namespaces/NS" alone
    is the namespace object itself.
    """
    method = method.upper()
    params = parse_qs(query)
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        rest = []
        group = ""
    if not rest:
        return RequestInfo(verb=method.lower(), path=path)
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 2:
        namespace = rest[1]
        rest = rest[2:] if len(rest) > 2 else ["namespaces", namespace]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    if subresource in CONNECT_SUBRESOURCES:
        verb = "create"
    elif method in ("GET", "HEAD"):
        watch = params.get("watch", [""])[-1] in ("true", "1")
        verb = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _METHOD_VERBS.get(method, method.lower())
    return RequestInfo(verb, resource, subresource, namespace, name, group, path)


# ---- Status bodies ------------------------------------------------------------------

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
}


def status_body(code: int, message: str, details: Mapping[str, Any] | None = None) -> bytes:
    """A Kubernetes `Status` object, which kubectl prints as "Error from server (Reason)"."""
    doc: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        doc["details"] = dict(details)
    return json.dumps(doc).encode()


# ---- masking ------------------------------------------------------------------------


@dataclass
class Masker:
    """Rewrites API objects in place: Secret `data`/`stringData` values, and the values of
    environment variables whose names match `env_globs`, wherever an object nests them
    (lists, watch events, Tables with objects, pod templates). Counts what it masked."""

    mask_secrets: bool
    env_globs: tuple[str, ...] = ()
    masked: int = field(default=0)

    def _env_hit(self, name: Any) -> bool:
        return isinstance(name, str) and any(
            fnmatch.fnmatchcase(name.upper(), g.upper()) for g in self.env_globs
        )

    def walk(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item)
            return
        if not isinstance(node, dict):
            return
        if self.mask_secrets and node.get("kind") == "Secret":
            for key, replacement in (("data", MASKED_B64), ("stringData", MASKED)):
                values = node.get(key)
                if isinstance(values, dict):
                    for k in values:
                        values[k] = replacement
                        self.masked += 1
        env = node.get("env")
        if self.env_globs and isinstance(env, list):
            for var in env:
                if isinstance(var, dict) and "value" in var and self._env_hit(var.get("name")):
                    var["value"] = MASKED
                    self.masked += 1
        for value in node.values():
            if isinstance(value, dict | list):
                self.walk(value)

    def mask_json(self, body: bytes) -> bytes:
        """Mask one JSON document; raises ValueError when it is not JSON (fail closed)."""
        doc = json.loads(body)
        # A list's items carry no "kind" of their own: give Secret lists' items one.
        if isinstance(doc, dict) and doc.get("kind") == "SecretList":
            for item in doc.get("items") or []:
                if isinstance(item, dict):
                    item.setdefault("kind", "Secret")
        self.walk(doc)
        return json.dumps(doc, separators=(",", ":")).encode()


# ---- exec recording -----------------------------------------------------------------

# Channel numbers of the v4/v5 channel.k8s.io protocols.
STDOUT, STDERR, RESIZE = 1, 2, 4
CHANNEL_PROTOCOLS = frozenset({"v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"})
MAX_RECORDING = 4 * 1024 * 1024


@dataclass
class ExecRecorder:
    """Terminal output of an exec/attach as asciicast v2 lines, bounded.

    Output (stdout, stderr) and resizes are recorded; stdin is not (it carries what people
    type, passwords included). `started` and `now` are seconds on any monotonic clock; the
    caller supplies them, so this stays pure. Past `limit` bytes the recording stops and
    says so once.
    """

    started: float
    limit: int = MAX_RECORDING
    size: int = 0
    truncated: bool = False
    _pending: list[str] = field(default_factory=list)

    def header(self, width: int = 80, height: int = 24, timestamp: int = 0) -> str:
        return json.dumps({"version": 2, "width": width, "height": height, "timestamp": timestamp})

    def server_message(self, now: float, message: bytes) -> None:
        if len(message) > 1 and message[0] in (STDOUT, STDERR):
            self._add(now, "o", message[1:].decode("utf-8", errors="replace"))

    def client_message(self, now: float, message: bytes) -> None:
        if len(message) > 1 and message[0] == RESIZE:
            try:
                size = json.loads(message[1:])
                self._add(now, "r", f"{int(size['Width'])}x{int(size['Height'])}")
            except (ValueError, KeyError, TypeError):
                return

    def _add(self, now: float, kind: str, data: str) -> None:
        if self.truncated:
            return
        line = json.dumps([round(now - self.started, 6), kind, data])
        if self.size + len(line) > self.limit:
            self.truncated = True
            line = json.dumps([round(now - self.started, 6), "o", "\r\n[recording truncated]\r\n"])
        self.size += len(line) + 1
        self._pending.append(line)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def take(self) -> str:
        """The lines recorded since the last call, newline-terminated."""
        out = "".join(line + "\n" for line in self._pending)
        self._pending.clear()
        return out


MAX_UPGRADE_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A plain HTTP/1.1 upgrade request head (kubectl's SPDY/3.1 exec, attach, port-forward)."""

    method: str
    target: str  # the raw request target: path and query, still percent-encoded
    headers: tuple[tuple[str, str], ...]
    upgrade: str

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)


def parse_upgrade(head: bytes) -> UpgradeRequest | None:
    """The SPDY upgrade an HTTP/1.1 request head (through its blank line) asks for, or None
    for anything else, including heads that do not parse (the HTTP server answers those)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers.append((name, value.strip()))
    request = UpgradeRequest(parts[0], parts[1], tuple(headers), "")
    upgrade = request.header("upgrade") or ""
    connection = {t.strip().lower() for t in (request.header("connection") or "").split(",")}
    if not upgrade.lower().startswith("spdy/") or "upgrade" not in connection:
        return None
    return dataclasses.replace(request, upgrade=upgrade)


def encode_response_head(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

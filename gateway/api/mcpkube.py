"""`kube` for the MCP door: one Kubernetes API request through this gateway's own Kubernetes
door (`/k8s/CONNECTION/...`, gateway/protocols/kubernetes.py), on loopback, as the caller.

Nothing is judged here: the caller's own credential is the bearer token, so the door's
authorization, per-request policy (verbs, namespaces, subresources), reviews, secret and
env masking and its audit apply exactly as to `kubectl`. The door's certificate is checked
against the gateway's CA (as `query` does with verify-ca: loopback is not a name on it).
A refusal is the door's `Status` object, said in words.
"""

from __future__ import annotations

import json
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_CONNECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_STREAMING = ("watch", "follow")  # answers without end: a tool call must finish


class KubeCallError(Exception):
    """A request not sent, or refused: the message says why, for the tool error."""


@dataclass(frozen=True)
class KubeAnswer:
    status: int
    body: Any  # decoded JSON, or text (logs)
    cut: bool


def check_request(connection: str, method: str, path: str) -> str:
    """The method, upper case, if this is a request the tool sends; else KubeCallError."""
    if not _CONNECTION.fullmatch(connection):
        raise KubeCallError(f"{connection!r} is not a connection name")
    verb = method.upper()
    if verb not in METHODS:
        raise KubeCallError(f"method must be one of {', '.join(METHODS)}")
    parts = urlsplit(path)
    if not path.startswith("/") or parts.scheme or parts.netloc or ".." in parts.path.split("/"):
        raise KubeCallError("path must be an API path such as /api/v1/namespaces/default/pods")
    query = parse_qs(parts.query)
    for name in _STREAMING:
        if any(v.lower() in ("true", "1") for v in query.get(name, [])):
            raise KubeCallError(f"{name}=true streams without end; ask without it")
    return verb


async def send(
    base: str,
    ca_path: Path,
    token: str,
    connection: str,
    method: str,
    path: str,
    body: Any,
    limit: int,
) -> KubeAnswer:
    """One request to the door; the answer's body read up to `limit` bytes."""
    verb = check_request(connection, method, path)
    verify = ssl.create_default_context(cafile=str(ca_path))
    verify.check_hostname = False  # the CA is checked; loopback is not a name on the cert
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, */*"}
    content = None
    if body is not None:
        content = json.dumps(body).encode()
        kind = "application/merge-patch+json" if verb == "PATCH" else "application/json"
        headers["Content-Type"] = kind
    async with (
        httpx.AsyncClient(base_url=base, verify=verify, timeout=None) as http,  # noqa: S113 - the caller's asyncio.timeout bounds it
        http.stream(verb, f"/k8s/{connection}{path}", headers=headers, content=content) as r,
    ):
        data, cut = bytearray(), False
        async for chunk in r.aiter_bytes():
            data += chunk
            if len(data) > limit:
                del data[limit:]
                cut = True
                break
        is_json = r.headers.get("content-type", "").startswith("application/json")
    text = data.decode(errors="replace")
    decoded: Any = text
    if is_json and not cut:
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = text
    if r.status_code >= 400:
        raise KubeCallError(_refusal(r.status_code, decoded, text))
    return KubeAnswer(r.status_code, decoded, cut)


def _refusal(code: int, decoded: Any, text: str) -> str:
    """`Status` as kubectl says it: 'Error from server (Forbidden): message'."""
    if isinstance(decoded, dict) and decoded.get("kind") == "Status":
        reason = decoded.get("reason") or "Unknown"
        return f"{code} {reason}: {decoded.get('message', '')}".rstrip(": ")
    return f"{code}: {' '.join(text.split())[:500]}"

"""DPoP proofs (RFC 9449), the client's side: what the CLI and the tests sign, and the
helpers the gateway's checks (gateway/identity/dpop.py) share with it."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from joserfc import jws
from joserfc.jwk import ECKey, OKPKey


class BadUrl(ValueError):
    """An ``htu`` that is not an http(s) URL."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def access_token_hash(token: str) -> str:
    """The ``ath`` claim for ``token``."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def normalise_url(url: str) -> str:
    """``url`` as ``htu`` compares it: no query or fragment, scheme and host lower-case,
    the scheme's default port dropped, an empty path as ``/``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadUrl(f"htu is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise BadUrl("htu is not an http(s) URL")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return urlunsplit((scheme, host, parts.path or "/", "", ""))


def make_proof(
    key: ECKey | OKPKey,
    *,
    method: str,
    url: str,
    access_token: str | None = None,
    jti: str | None = None,
    iat: float | None = None,
    nonce: str | None = None,
) -> str:
    """A proof signed by ``key`` (the CLI's and the tests' side of the exchange)."""
    alg = {"EC": "ES256", "OKP": "Ed25519"}[key.key_type]
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    claims: dict[str, Any] = {
        "jti": jti or secrets.token_urlsafe(16),
        "htm": method.upper(),
        "htu": normalise_url(url),
        "iat": int(time.time() if iat is None else iat),
    }
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    if nonce is not None:
        claims["nonce"] = nonce
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return jws.serialize_compact(header, payload, key, algorithms=[alg])

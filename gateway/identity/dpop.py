"""DPoP proofs (RFC 9449): a credential bound to the client's key.

A service account that requires DPoP presents its API key as ``Authorization: DPoP <key>``
and, on every request, a ``DPoP`` header: a JWT signed by the client's private key, whose
public half travels in the JWT header. `check_proof` is sans-I/O: it checks one proof as
RFC 9449 §4.3 says and returns what the caller must still do with the store (remember the
``jti`` so that a proof is good once, across every gateway member; compare the key's
thumbprint with the one the credential is bound to).

Rules, each refused in words (`DpopError`): ``typ`` is ``dpop+jwt``; ``alg`` is an
asymmetric algorithm from `ALGORITHMS` (never ``none`` nor HMAC); ``jwk`` is a public key
(a private part is refused: a client that sends its private key has no key to bind to); the
signature verifies with that key; ``htm`` is the request's method; ``htu`` is the request's
URL without query and fragment (scheme and host lower-cased, default port dropped); ``iat``
is within ``window`` seconds of now; ``jti`` is present; ``ath`` is the base64url SHA-256 of
the access token presented with it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import JWKRegistry

from shared.dpop import BadUrl, access_token_hash, normalise_url

__all__ = ["ALGORITHMS", "DpopError", "Proof", "access_token_hash", "check_proof"]

# Ed25519 is RFC 9864's name for what clients still call EdDSA; both verify the same way.
# No RSA: joserfc refuses a JWS header holding a 2048-bit modulus as too large.
ALGORITHMS = ("ES256", "Ed25519", "EdDSA")
DEFAULT_WINDOW = 60.0  # seconds either side of now an `iat` may be
MAX_PROOF_LENGTH = 8192  # a proof is a few hundred bytes; more is not a proof
_KEY_TYPES = frozenset({"EC", "OKP"})
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class DpopError(Exception):
    """A DPoP proof that does not prove what it must; the message says which rule failed."""


@dataclass(frozen=True, slots=True)
class Proof:
    jkt: str  # RFC 7638 thumbprint of the proof's key: what a credential is bound to
    jti: str
    iat: float


def _segment(part: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise DpopError("the proof is not a JWT") from None
    if not isinstance(value, dict):
        raise DpopError("the proof is not a JWT")
    return value


def check_proof(
    proof: str | None,
    *,
    method: str,
    url: str,
    access_token: str | None,
    now: float | None = None,
    window: float = DEFAULT_WINDOW,
) -> Proof:
    """The checked proof, or `DpopError`. The caller still checks ``jti`` against the
    replay cache and ``jkt`` against the credential's binding."""
    if not proof:
        raise DpopError("a DPoP proof header is required")
    if len(proof) > MAX_PROOF_LENGTH or proof.count(".") != 2:
        raise DpopError("the proof is not a compact JWS")
    header = _segment(proof.split(".", 1)[0])
    if header.get("typ") != "dpop+jwt":
        raise DpopError("the proof's typ is not dpop+jwt")
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise DpopError(f"the proof's alg must be one of {', '.join(ALGORITHMS)}")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or jwk.get("kty") not in _KEY_TYPES:
        raise DpopError("the proof's jwk header is not a public EC or OKP key")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise DpopError("the proof's jwk header holds a private key")
    try:
        key = JWKRegistry.import_key(jwk, jwk["kty"])
        with warnings.catch_warnings():  # joserfc warns that "EdDSA" is deprecated (RFC 9864)
            warnings.simplefilter("ignore", SecurityWarning)
            verified = jws.deserialize_compact(proof, key, algorithms=[alg])
        claims = json.loads(verified.payload)
        jkt = key.thumbprint()
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise DpopError(f"the proof's signature does not verify ({type(exc).__name__})") from None
    if not isinstance(claims, dict):
        raise DpopError("the proof's payload is not a JSON object")
    if claims.get("htm") != method.upper():
        raise DpopError(f"the proof's htm is not {method.upper()}")
    htu = claims.get("htu")
    try:
        same = isinstance(htu, str) and normalise_url(htu) == normalise_url(url)
    except BadUrl as exc:
        raise DpopError(str(exc)) from None
    if not same:
        raise DpopError("the proof's htu is not this request's URL")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise DpopError("the proof has no jti")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise DpopError("the proof has no iat")
    current = time.time() if now is None else now
    if abs(current - iat) > window:
        raise DpopError(f"the proof's iat is more than {window:g} s from the gateway's clock")
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):
        raise DpopError("the proof's ath does not match the access token")
    return Proof(jkt=jkt, jti=jti, iat=float(iat))


def replay_digest(proof: Proof) -> bytes:
    """The replay cache's key for a proof: its key and ``jti`` (RFC 9449 §11.1 lets the
    cache be per key), hashed so that the store holds fixed-size values."""
    return hashlib.sha256(f"dpop\0{proof.jkt}\0{proof.jti}".encode()).digest()

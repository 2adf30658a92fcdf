"""Which keys of an issuer's JWKS may verify tokens, and with which algorithm (pure).

A JWKS comes from a provider the operator trusts, over verified HTTPS, yet what it lists is
not all fit to verify a signature: a provider may publish an old 512-bit RSA key next to its
real one, an encryption key, or (by mistake) a private key. joserfc verifies with whatever
it is given and at most warns, so the gateway sorts the published keys first. A key is
refused, for good, when:

- its type is `oct` (a shared secret is no public key), or unknown;
- it carries private members (`d`, `p`, `q`...): a published private key signs for anyone;
- RSA: the modulus has fewer than `MIN_RSA_BITS` bits (or more than `MAX_RSA_BITS`, which
  only costs CPU per token), or the public exponent is even or below 3;
- EC: the curve is not P-256, P-384 or P-521 (secp256k1 is not a JOSE signature curve);
  OKP: the curve is not Ed25519 or Ed448 (X25519 and X448 are for key agreement);
- `use` is present and not `sig`; `key_ops` is present and lacks `verify`, or names an
  operation other than `sign`/`verify` (a key for encryption too);
- `alg` is present and is not an asymmetric signature algorithm that fits the key.

A usable key then verifies only tokens whose `alg` fits it (`fits`): RS*/PS* an RSA key,
ES256 a P-256 key (ES384 P-384, ES512 P-521), EdDSA an OKP key, and the key's own `alg` when
it names one, so one key cannot be used under two algorithms.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384

SIGNATURE_ALGORITHMS: dict[str, tuple[str, str | None]] = {
    # alg: (kty, crv) the key must have
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
_CURVES = {"EC": frozenset({"P-256", "P-384", "P-521"}), "OKP": frozenset({"Ed25519", "Ed448"})}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_SIGNING_OPS = frozenset({"sign", "verify"})


def _b64_int(value: object) -> int | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    return int.from_bytes(raw, "big")


def unfit(jwk: Mapping[str, Any]) -> str | None:
    """Why this published key must not verify anything, or None when it may."""
    kty = jwk.get("kty")
    for member in ("kty", "crv", "use", "alg", "kid"):
        if member in jwk and not isinstance(jwk[member], str):
            return f"malformed {member}"
    if kty == "oct":
        return "a symmetric (oct) key is not a public key"
    if kty not in ("RSA", "EC", "OKP"):
        return f"key type {str(kty)[:20]!r} is not supported"
    private = [m for m in _PRIVATE_MEMBERS if m in jwk]
    if private:
        return f"it publishes private key members ({', '.join(private)})"
    if kty == "RSA":
        n, e = _b64_int(jwk.get("n")), _b64_int(jwk.get("e"))
        if n is None or e is None:
            return "RSA key without a readable modulus or exponent"
        if n.bit_length() < MIN_RSA_BITS:
            return f"RSA key of {n.bit_length()} bits (at least {MIN_RSA_BITS} needed)"
        if n.bit_length() > MAX_RSA_BITS:
            return f"RSA key of {n.bit_length()} bits (at most {MAX_RSA_BITS})"
        if e < 3 or e % 2 == 0:
            return "RSA public exponent is not an odd number of at least 3"
    else:
        crv = jwk.get("crv")
        if crv not in _CURVES[kty]:
            allowed = ", ".join(sorted(_CURVES[kty]))
            return f"{kty} curve {str(crv)[:20]!r} is not allowed for signatures ({allowed})"
    use = jwk.get("use")
    if use is not None and use != "sig":
        return f"its use is {str(use)[:20]!r}, not sig"
    ops = jwk.get("key_ops")
    if ops is not None:
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            return "malformed key_ops"
        if "verify" not in ops or not set(ops) <= _SIGNING_OPS:
            return f"its key_ops {ops[:8]!r} are not for signature verification"
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in SIGNATURE_ALGORITHMS:
            return f"its alg {str(alg)[:20]!r} is not an asymmetric signature algorithm"
        if not _kind_fits(jwk, alg):
            return f"its alg {alg} does not fit a {kty} key"
    return None


def _kind_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    kty, crv = SIGNATURE_ALGORITHMS[alg]
    return jwk.get("kty") == kty and (crv is None or jwk.get("crv") == crv)


def fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether a usable key verifies tokens signed with `alg`."""
    if not isinstance(alg, str) or alg not in SIGNATURE_ALGORITHMS or not _kind_fits(jwk, alg):
        return False
    own = jwk.get("alg")
    return own is None or own == alg

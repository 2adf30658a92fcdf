"""Local users (password + TOTP) for setups without an IdP: hashing and one-time codes.

Passwords are hashed with scrypt (n=2**14, r=8, p=1, 16-byte salt) and compared in constant
time. TOTP is RFC 6238 (SHA-1, 6 digits, 30 s steps, one step of drift either way), so any
authenticator app works; the secret is stored sealed with the gateway's secret key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import quote

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_LENGTH = 12  # the CLI says it in its prompt
TOTP_STEP = 30
TOTP_DIGITS = 6


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_b64, digest_b64 = stored.split("$")
        salt, digest = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    return hmac.compare_digest(candidate, digest)


def new_totp_secret() -> str:
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def totp(secret: str, at: float | None = None, *, step: int = TOTP_STEP) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)
    counter = int((time.time() if at is None else at) // step)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    code = (struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**TOTP_DIGITS
    return f"{code:0{TOTP_DIGITS}d}"


def verify_totp(secret: str, code: str, at: float | None = None) -> bool:
    now = time.time() if at is None else at
    ok = False
    for drift in (-1, 0, 1):
        ok |= hmac.compare_digest(totp(secret, now + drift * TOTP_STEP), code.strip())
    return ok


def provisioning_uri(secret: str, user: str, issuer: str = "Wardgate") -> str:
    return (
        f"otpauth://totp/{quote(issuer)}:{quote(user)}?secret={secret}"
        f"&issuer={quote(issuer)}&digits={TOTP_DIGITS}&period={TOTP_STEP}"
    )

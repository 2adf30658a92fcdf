"""Secrets at rest and bearer tokens.

``SecretBox`` seals connection secrets (database passwords, SSH keys) before they reach the store:
AES-256-GCM with a random 96-bit nonce, and a caller-chosen *context* (for example
``"connection/prod-db/password"``) bound as associated data. Binding the context means a sealed blob
copied from one connection's row into another's fails to open instead of leaking the first secret
through the second connection.

Sealed values look like ``enc:v1:<base64url(nonce || ciphertext || tag)>`` so the store can hold
them next to ``env:NAME`` and ``file:PATH`` references, and a later format can be told apart by
its version.

Bearer tokens are random, shown once, and stored as sha256 digests; see :func:`new_token`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED_PREFIX = "enc:v1:"
KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16
# Domain separation: a v1 blob's tag also commits to the format, so a future format reusing the
# key cannot be confused with this one.
_AAD_PREFIX = b"wardgate/secretbox/v1\x00"


class SecretBoxError(Exception):
    """A sealed value could not be opened. The message never contains key or plaintext."""


def _b64decode_lenient(value: str) -> bytes:
    """Decode standard or url-safe base64, padded or not; raise binascii.Error otherwise."""
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


class SecretBox:
    """Seals and opens small secrets with one AES-256-GCM key."""

    __slots__ = ("_aead", "_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"secret box key must be {KEY_SIZE} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self._key = key

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for another purpose (HKDF-SHA256), so this key is never reused."""
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"wardgate/" + purpose.encode()
        ).derive(self._key)

    @classmethod
    def from_config(cls, value: str) -> SecretBox:
        """Build from the configured key: base64 (standard or url-safe) of 32 bytes."""
        try:
            key = _b64decode_lenient(value)
        except (binascii.Error, ValueError):
            # The value is the key itself, or close to it: never quote it.
            raise ValueError("secret box key is not valid base64") from None
        if len(key) != KEY_SIZE:
            raise ValueError(
                f"secret box key must decode to {KEY_SIZE} bytes, got {len(key)} "
                "(SecretBox.generate_key() makes a suitable one)"
            )
        return cls(key)

    @staticmethod
    def generate_key() -> str:
        """A new random key in the form :meth:`from_config` reads."""
        return base64.urlsafe_b64encode(os.urandom(KEY_SIZE)).decode("ascii")

    @staticmethod
    def is_sealed(value: str) -> bool:
        """True when ``value`` is a blob produced by :meth:`seal` (of any key or context)."""
        return value.startswith(SEALED_PREFIX)

    def seal(self, plaintext: bytes, *, context: str) -> str:
        """Encrypt ``plaintext`` so that only this key and this exact ``context`` can open it."""
        # Random nonces are safe here: a key seals at most thousands of secrets, far below the
        # 2**32 messages after which 96-bit random nonces risk a collision.
        nonce = os.urandom(_NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, plaintext, _aad(context))
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")

    def open(self, blob: str, *, context: str) -> bytes:
        """Decrypt a blob from :meth:`seal`; raise SecretBoxError if anything does not match."""
        if not self.is_sealed(blob):
            # Not quoted: an unsealed value may well be a plaintext secret.
            raise SecretBoxError(
                f"value for {context!r} is not sealed (no {SEALED_PREFIX!r} prefix)"
            )
        try:
            raw = _b64decode_lenient(blob[len(SEALED_PREFIX) :])
        except (binascii.Error, ValueError):
            raise SecretBoxError(f"sealed value for {context!r} is not valid base64") from None
        if len(raw) < _NONCE_SIZE + _TAG_SIZE:
            raise SecretBoxError(f"sealed value for {context!r} is truncated")
        nonce, sealed = raw[:_NONCE_SIZE], raw[_NONCE_SIZE:]
        try:
            return self._aead.decrypt(nonce, sealed, _aad(context))
        except InvalidTag:
            raise SecretBoxError(
                f"cannot open sealed value for {context!r}: wrong key, sealed for another "
                "context, or tampered with"
            ) from None


def _aad(context: str) -> bytes:
    return _AAD_PREFIX + context.encode("utf-8")


# Module-level spellings for callers that only need to classify or mint, not seal.
is_sealed = SecretBox.is_sealed
generate_key = SecretBox.generate_key


def new_token(prefix: str = "wgt_") -> str:
    """A new bearer token. The prefix lets secret scanners and humans recognise a leaked token."""
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    """The digest stored in place of the token.

    Plain sha256 suffices: tokens carry 256 random bits, so there is nothing to brute-force that a
    slow password hash would protect.
    """
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_matches(token: str, stored_hash: bytes) -> bool:
    """Check a presented token against a stored digest without a timing side channel."""
    return constant_time_equal(hash_token(token), stored_hash)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """``a == b`` in time independent of where they differ."""
    return hmac.compare_digest(a, b)

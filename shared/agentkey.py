"""The agent key: everything an agent needs to find and prove itself to a gateway, in one string.

    wardgate://NAME:SECRET@HOST:PORT[?ca=sha256:HEX][&insecure=1]

``NAME`` identifies the agent, ``SECRET`` proves it (the gateway stores only its sha256),
``HOST`` and ``PORT`` say where to dial, ``ca`` pins the gateway's CA certificate by fingerprint
(the kubeadm pattern: fetch the chain unverified, keep the certificate whose hash matches, then
verify normally against it) and ``insecure=1`` marks a development gateway that takes agents
over plaintext, which agents still refuse unless their operator allows it.

Rules this module keeps:

* It is sans-I/O: parsing and formatting only, no sockets, no asyncio, no grpc.
* An ``AgentKey`` is valid by construction; ``parse(key.format()) == key`` for every key.
* The secret never leaves through ``repr``, ``str``, f-strings or error messages. Parse errors may
  quote only text that follows the last ``@``, because the secret cannot contain ``@`` and therefore
  never lies beyond it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass

SCHEME = "wardgate"
_PREFIX = f"{SCHEME}://"
# Generous for any real key, small enough that a pasted file is rejected before any regex runs.
MAX_KEY_LENGTH = 2048

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# url-safe base64 alphabet; padding is tolerated although new_secret() never produces it.
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{1,512}={0,2}")
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}")
_FINGERPRINT_RE = re.compile(r"sha256:[0-9a-f]{64}")
_FINGERPRINT_INPUT_RE = re.compile(r"sha256:((?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2})")
_NAME_RULE = (
    "agent name must be 1-63 characters of a-z, 0-9, '-', '_' or '.', "
    "starting with a letter or digit"
)
_SECRET_RULE = "agent secret must be 1-512 url-safe base64 characters (A-Z a-z 0-9 - _)"  # noqa: S105


def normalize_fingerprint(text: str) -> str:
    """Return ``sha256:<lowercase hex>`` for a fingerprint in any common spelling.

    Accepts upper or lower case hex, with or without the colons that
    ``openssl x509 -fingerprint`` prints.
    """
    match = _FINGERPRINT_INPUT_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError("CA fingerprint must be 'sha256:' followed by 64 hex digits")
    return "sha256:" + match.group(1).replace(":", "").lower()


def _check_host(host: str) -> None:
    """Raise ValueError unless ``host`` is a DNS name, an IPv4 address or a bare IPv6 address."""
    if not host:
        raise ValueError("agent key has an empty host")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"agent key host {host!r} is not a valid IPv6 address") from None
        return
    if host.replace(".", "").isdigit():
        # All-digit names would pass the label rule, but a resolver reads them as IPv4.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"agent key host {host!r} is not a valid IPv4 address") from None
        return
    name = host.removesuffix(".")
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"agent key host {host!r} is not a valid host name")


@dataclass(frozen=True, slots=True, repr=False)
class AgentKey:
    """A parsed agent key; construct with :func:`parse` or directly, both validate."""

    name: str
    secret: str
    host: str
    port: int
    ca_fingerprint: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(_NAME_RULE)
        if not _SECRET_RE.fullmatch(self.secret):
            raise ValueError(_SECRET_RULE)
        _check_host(self.host)
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError("agent key port must be an integer")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"agent key port {self.port} is outside 1-65535")
        if self.ca_fingerprint is not None and not _FINGERPRINT_RE.fullmatch(self.ca_fingerprint):
            raise ValueError("CA fingerprint must be 'sha256:' followed by 64 lowercase hex digits")
        if not isinstance(self.insecure, bool):
            raise ValueError("agent key 'insecure' must be a bool")

    @property
    def address(self) -> str:
        """``HOST:PORT`` as a dialer expects it, with IPv6 hosts in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def _render(self, secret: str) -> str:
        query: list[str] = []
        if self.ca_fingerprint is not None:
            query.append(f"ca={self.ca_fingerprint}")
        if self.insecure:
            query.append("insecure=1")
        suffix = "?" + "&".join(query) if query else ""
        return f"{_PREFIX}{self.name}:{secret}@{self.address}{suffix}"

    def format(self) -> str:
        """The full key, secret included: hand it to the agent operator, never to a log."""
        return self._render(self.secret)

    def __str__(self) -> str:
        return self._render("***")

    def __repr__(self) -> str:
        return f"AgentKey({self._render('***')!r})"


def _parse_query(query: str) -> tuple[str | None, bool]:
    ca: str | None = None
    insecure = False
    seen: set[str] = set()
    for pair in query.split("&"):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"agent key query item {key[:32]!r} is not KEY=VALUE")
        if key in seen:
            raise ValueError(f"agent key query repeats {key!r}")
        seen.add(key)
        if key == "ca":
            ca = normalize_fingerprint(value)
        elif key == "insecure":
            if value not in ("0", "1"):
                raise ValueError("agent key 'insecure' must be 0 or 1")
            insecure = value == "1"
        else:
            raise ValueError(
                f"agent key has unknown query parameter {key[:32]!r} (want ca, insecure)"
            )
    return ca, insecure


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT`` as keys and fleet members write it (IPv6 in brackets)."""
    return _parse_address(address)


def _parse_address(address: str) -> tuple[str, int]:
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket:
            raise ValueError("agent key IPv6 host is missing its closing ']'")
        if ":" not in host:
            raise ValueError("only IPv6 hosts go in brackets")
        if not rest.startswith(":"):
            raise ValueError("agent key is missing ':PORT' after the host")
        port_text = rest[1:]
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon:
            raise ValueError("agent key is missing ':PORT' after the host")
        if ":" in host:
            raise ValueError("IPv6 hosts must be written in brackets, as in [::1]:8443")
    if not _PORT_RE.fullmatch(port_text):
        raise ValueError(f"agent key port {port_text[:16]!r} is not a number in 1-65535")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"agent key port {port} is outside 1-65535")
    return host, port


def parse(text: str) -> AgentKey:
    """Parse ``wardgate://NAME:SECRET@HOST:PORT[?ca=sha256:HEX][&insecure=1]``.

    Raises ValueError naming what is wrong; the message never contains the secret.
    """
    text = text.strip()  # keys are pasted from terminals and files, trailing newlines included
    if len(text) > MAX_KEY_LENGTH:
        raise ValueError(f"agent key is longer than {MAX_KEY_LENGTH} characters")
    if text[: len(_PREFIX)].lower() != _PREFIX:
        raise ValueError(f"agent key must start with '{_PREFIX}'")
    rest = text[len(_PREFIX) :]
    # Split at the last '@' first: the secret cannot contain '@', so everything after it is safe to
    # quote in errors, however mangled the credentials are.
    credentials, at, tail = rest.rpartition("@")
    if not at:
        raise ValueError("agent key is missing '@' between NAME:SECRET and HOST:PORT")
    name, colon, secret = credentials.partition(":")
    if not colon:
        raise ValueError("agent key credentials must be NAME:SECRET")
    if not name:
        raise ValueError("agent key has an empty name")
    if not secret:
        raise ValueError("agent key has an empty secret")
    if not _NAME_RE.fullmatch(name):
        # Not quoted: when the colon is missing or misplaced the "name" may hold secret characters.
        raise ValueError(_NAME_RULE)
    if not _SECRET_RE.fullmatch(secret):
        raise ValueError(_SECRET_RULE)
    address, question, query = tail.partition("?")
    host, port = _parse_address(address)
    ca, insecure = _parse_query(query) if question else (None, False)
    return AgentKey(name, secret, host, port, ca, insecure)


def new_secret() -> str:
    """A fresh agent secret with 256 bits of entropy."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> bytes:
    """The digest the gateway stores instead of the secret.

    A fast hash is enough: secrets come from new_secret() with 256 bits of entropy, so there is no
    dictionary to slow down, unlike with human passwords.
    """
    return hashlib.sha256(secret.encode("utf-8")).digest()


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    """Compare in constant time so response timing reveals nothing about the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)

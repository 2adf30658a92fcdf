"""The gateway's SSH user CA: short-lived OpenSSH user certificates.

`wardgate login --ssh-key` / `wardgate ssh-cert` send the user's SSH public key to the API,
which signs it into an OpenSSH user certificate (principal = the Wardgate user, key id =
user and the credential it was issued under, valid for at most the credential's lifetime).
The SSH front door accepts such a certificate as publickey authentication after
`check_user_cert` (signature by this CA, user type, validity window, principal, no
critical options); the caller then checks that the user exists and is not disabled.

Kept free of paramiko (the API signs too): the front door hands over the certificate blob.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
    load_ssh_public_identity,
)

USER_CA_FILE = "ssh_user_ca_ed25519_key"
DEFAULT_VALIDITY = dt.timedelta(hours=8)
MIN_VALIDITY = dt.timedelta(seconds=60)
# Issued certificates start a little in the past so a client clock slightly ahead of
# the gateway's does not make a fresh certificate "not yet valid".
BACKDATE = dt.timedelta(minutes=2)
EXTENSIONS = (b"permit-pty", b"permit-port-forwarding")  # what the gateway's policy may allow


class CertError(Exception):
    """A certificate that does not authenticate; the message is for the audit log only."""


@dataclass(frozen=True)
class CertInfo:
    key_id: str
    serial: int
    valid_before: int


SIGNABLE_KEYS = (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey)


def _fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ensure_ed25519_key(path: Path, comment: str) -> ed25519.Ed25519PrivateKey:
    """The Ed25519 key at `path` (OpenSSH format), created there on first use: 0600 from the
    start and moved into place whole, with `path.pub` beside it. The gateway's host key and
    user CA live in its data directory this way, so clients' trust survives restarts."""
    if not path.exists():
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        tmp = path.with_suffix(".tmp")
        tmp.touch(mode=0o600)
        tmp.write_bytes(pem)
        tmp.replace(path)
        path.with_suffix(".pub").write_text(f"{public_line(key)} {comment}\n")
    loaded = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 key")
    public = path.with_suffix(".pub")
    if not public.exists():  # a key given alone (a Secret holding only the private half)
        public.write_text(f"{public_line(loaded)} {comment}\n")
    return loaded


def load_user_ca(data_dir: Path) -> ed25519.Ed25519PrivateKey:
    """The CA key, created on first start and kept in the data directory (0600)."""
    return ensure_ed25519_key(data_dir / USER_CA_FILE, "wardgate-user-ca")


def public_line(ca: ed25519.Ed25519PrivateKey) -> str:
    """`ssh-ed25519 BASE64`, as in a TrustedUserCAKeys file."""
    return (
        ca.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def ca_fingerprint(ca: ed25519.Ed25519PrivateKey) -> str:
    raw = ca.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return _fingerprint(base64.b64decode(raw.split()[1]))


def issue_user_cert(
    ca: ed25519.Ed25519PrivateKey,
    public_key_line: str,
    *,
    user: str,
    key_id: str,
    now: dt.datetime,
    valid_before: dt.datetime,
) -> str:
    """Sign the user's public key: an OpenSSH certificate line (`...-cert-v01@openssh.com`)."""
    parts = public_key_line.strip().split()
    if len(parts) < 2:
        raise ValueError("expected an OpenSSH public key line: TYPE BASE64 [COMMENT]")
    loaded = load_ssh_public_identity(f"{parts[0]} {parts[1]}".encode())
    # An allow-list, not a deny-list: cryptography adds key types (DSA is deprecated, post-quantum
    # hybrids are new) that OpenSSH user certificates here are not meant to carry.
    if not isinstance(loaded, SIGNABLE_KEYS):
        raise ValueError("expected an Ed25519, ECDSA or RSA public key")
    builder = (
        SSHCertificateBuilder()
        .public_key(loaded)
        .serial(int.from_bytes(os.urandom(8), "big"))
        .type(SSHCertificateType.USER)
        .key_id(key_id.encode())
        .valid_principals([user.encode()])
        .valid_after(int((now - BACKDATE).timestamp()))
        .valid_before(int(valid_before.timestamp()))
    )
    for name in EXTENSIONS:
        builder = builder.add_extension(name, b"")
    cert = builder.sign(ca)
    return cert.public_bytes().decode()


def check_user_cert(
    cert_line: bytes,
    ca_public: ed25519.Ed25519PublicKey,
    principal: str,
    now: dt.datetime,
) -> CertInfo:
    """Accept an OpenSSH user certificate for `principal`, or raise CertError(why).

    The caller has already checked (in SSH) that the client holds the certified key.
    """
    try:
        cert = load_ssh_public_identity(cert_line)
    except (ValueError, TypeError) as exc:
        raise CertError(f"unreadable certificate: {exc}") from None
    if not isinstance(cert, SSHCertificate):
        raise CertError("not a certificate")
    signer = cert.signature_key()
    ours = ca_public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if not isinstance(signer, ed25519.Ed25519PublicKey) or (
        signer.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) != ours
    ):
        raise CertError("certificate not signed by the gateway's user CA")
    try:
        cert.verify_cert_signature()
    except InvalidSignature:
        raise CertError("certificate signature invalid") from None
    if cert.type != SSHCertificateType.USER:
        raise CertError("not a user certificate")
    stamp = int(now.timestamp())
    if stamp < cert.valid_after:
        raise CertError("certificate not yet valid")
    if stamp >= cert.valid_before:
        raise CertError("certificate expired")
    if principal.encode() not in cert.valid_principals:
        raise CertError("certificate not issued for this user")
    if cert.critical_options:
        # Options such as force-command or source-address would have to be enforced; the
        # gateway issues none, so a certificate with any is not one of ours to honour.
        names = ", ".join(sorted(k.decode(errors="replace") for k in cert.critical_options))
        raise CertError(f"certificate has critical options the gateway does not enforce: {names}")
    return CertInfo(
        key_id=cert.key_id.decode(errors="replace"),
        serial=cert.serial,
        valid_before=cert.valid_before,
    )

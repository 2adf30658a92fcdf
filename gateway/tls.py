"""TLS material for the gateway's public port: a self-managed local CA, or operator-supplied files.

With no configured certificate the gateway runs its own small PKI under ``DATA_DIR/tls/``:

* ``ca.pem`` / ``ca.key`` -- "Wardgate local CA", ECDSA P-256, ten years. Agents never receive it
  out of band: their key carries its fingerprint (``?ca=sha256:...``), they fetch the presented
  chain once without verification, keep the certificate with that hash and then verify normally.
* ``gateway.pem`` / ``gateway.key`` -- the server certificate, one year, signed by that CA.
  ``gateway.pem`` holds the leaf *followed by the CA*: shipping the root in the handshake is
  normally wasted bytes, but here it is what lets a pinning client find the CA at all.

The CA is the long-lived trust anchor, so it is replaced only when it is missing, unusable or about
to expire; a new hostname or an expiring leaf re-issues just the leaf, and existing agent keys
(which pin the CA) keep working. Files are replaced atomically and private keys are mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_COMMON_NAME = "Wardgate local CA"
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=365)
# Renew this long before expiry, so a gateway restarted now and then never serves an expired cert.
RENEW_BEFORE = dt.timedelta(days=30)
# Tolerate peers whose clocks run a little behind ours.
_BACKDATE = dt.timedelta(minutes=5)

_DNS_NAME_RE = re.compile(
    r"(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)

_SanName = str | ipaddress.IPv4Address | ipaddress.IPv6Address
_LoadErrors = (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature, IndexError)


class TLSConfigError(ValueError):
    """Operator-supplied TLS files are missing, unreadable or do not belong together."""


@dataclass(frozen=True, slots=True)
class TLSMaterial:
    cert_path: Path  # server certificate chain, leaf first
    key_path: Path
    ca_path: Path  # what clients should trust; its fingerprint goes into agent keys
    ca_fingerprint: str  # "sha256:<lowercase hex>" of the CA certificate's DER


def fingerprint(pem_or_der: bytes) -> str:
    """``sha256:<lowercase hex>`` of the DER of the first certificate in PEM or DER input."""
    if pem_or_der.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificates(pem_or_der)[0]
    else:
        cert = x509.load_der_x509_certificate(pem_or_der)
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _san_name(name: str) -> _SanName:
    """Canonical SAN value for a hostname or IP literal; raise ValueError for neither."""
    text = name.strip().rstrip(".")
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    # Certificates carry A-labels; accept Unicode names and convert rather than reject them.
    ascii_name = text.encode("idna").decode("ascii").lower() if not text.isascii() else text.lower()
    if len(ascii_name) > 253 or not _DNS_NAME_RE.fullmatch(ascii_name):
        raise ValueError(f"{name!r} is neither a DNS name nor an IP address")
    return ascii_name


def _wanted_names(hostnames: Sequence[str]) -> list[_SanName]:
    wanted: list[_SanName] = []
    for name in ("localhost", "127.0.0.1", "::1", socket.gethostname()):
        try:
            san = _san_name(name)
        except ValueError:
            continue  # an odd machine hostname is not worth failing startup over
        if san not in wanted:
            wanted.append(san)
    for name in hostnames:
        san = _san_name(name)  # the operator asked for it: a bad name is an error
        if san not in wanted:
            wanted.append(san)
    return wanted


def _san_names(cert: x509.Certificate) -> set[_SanName]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names: set[_SanName] = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    for ip in san.get_values_for_type(x509.IPAddress):
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            names.add(ip)
    return names


def dns_name(cert_path: Path) -> str | None:
    """The first DNS name the leaf certificate at `cert_path` is issued for: the name the
    fleet's members verify each other's certificates for (gateway/fleet/forward.py)."""
    leaf = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else None


def _same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _expiring(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_after_utc - now < RENEW_BEFORE


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` in one step, so a crash leaves the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        # mkstemp creates 0600; set the final mode before any bytes land in the file.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _new_ca(now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _new_leaf(
    now: dt.datetime,
    names: Sequence[_SanName],
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName(n) if isinstance(n, str) else x509.IPAddress(n) for n in names
    ]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    # Never outlive the issuer: a chain whose CA expires first fails verification anyway.
    not_after = min(now + LEAF_LIFETIME, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Wardgate gateway")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Python 3.13 clients verify with VERIFY_X509_STRICT, which insists on this extension.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _usable_ca(
    cert_path: Path, key_path: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    if not (cert_path.exists() and key_path.exists()):
        return None
    # Read errors other than absence (permissions, I/O) propagate: silently minting a new CA would
    # invalidate every agent key that pins the old one.
    cert_pem, key_bytes = cert_path.read_bytes(), key_path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_bytes, password=None)
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except (*_LoadErrors, x509.ExtensionNotFound) as exc:
        log.warning("replacing unusable local CA %s: %s", cert_path, exc)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_public_key(cert, key):
        log.warning("replacing local CA %s: key does not match certificate", cert_path)
        return None
    if not constraints.ca:
        log.warning("replacing local CA %s: not a CA certificate", cert_path)
        return None
    if _expiring(cert, now):
        log.warning("replacing local CA %s: expires %s", cert_path, cert.not_valid_after_utc)
        return None
    return cert, key


def _leaf_usable(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    wanted: Sequence[_SanName],
    now: dt.datetime,
) -> bool:
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
        key = _load_ec_key(key_path)
        leaf = chain[0]
        leaf.verify_directly_issued_by(ca_cert)
    except _LoadErrors as exc:
        log.info("re-issuing gateway certificate: %s", exc)
        return False
    if chain[1:] != [ca_cert] or not _same_public_key(leaf, key):
        log.info("re-issuing gateway certificate: chain or key does not match")
        return False
    if _expiring(leaf, now):
        log.info("re-issuing gateway certificate: expires %s", leaf.not_valid_after_utc)
        return False
    missing = set(wanted) - _san_names(leaf)
    if missing:
        log.info("re-issuing gateway certificate: adding %s", sorted(map(str, missing)))
        return False
    return True


def ensure_self_signed(data_dir: Path, hostnames: Sequence[str] = ()) -> TLSMaterial:
    """Return the local CA and gateway certificate under ``data_dir/tls``, creating what is needed.

    The server certificate covers localhost, 127.0.0.1, ::1, this machine's hostname and
    ``hostnames`` (IP literals become IP SANs). Raises ValueError for a hostname that is neither.
    """
    tls_dir = data_dir / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_path, ca_key_path = tls_dir / "ca.pem", tls_dir / "ca.key"
    cert_path, key_path = tls_dir / "gateway.pem", tls_dir / "gateway.key"
    wanted = _wanted_names(hostnames)
    now = dt.datetime.now(dt.UTC)

    ca = _usable_ca(ca_path, ca_key_path, now)
    if ca is None:
        ca_cert, ca_key = _new_ca(now)
        # Key first: a crash in between leaves a key with no certificate, which is regenerated.
        _write_atomic(ca_key_path, _key_pem(ca_key), 0o600)
        _write_atomic(ca_path, _cert_pem(ca_cert), 0o644)
        log.info("created local CA %s", fingerprint(_cert_pem(ca_cert)))
        leaf_ok = False
    else:
        ca_cert, ca_key = ca
        leaf_ok = _leaf_usable(cert_path, key_path, ca_cert, wanted, now)

    if not leaf_ok:
        leaf, leaf_key = _new_leaf(now, wanted, ca_cert, ca_key)
        _write_atomic(key_path, _key_pem(leaf_key), 0o600)
        _write_atomic(cert_path, _cert_pem(leaf) + _cert_pem(ca_cert), 0o644)

    return TLSMaterial(cert_path, key_path, ca_path, fingerprint(_cert_pem(ca_cert)))


def load_configured(cert_path: Path, key_path: Path, ca_path: Path | None = None) -> TLSMaterial:
    """Check operator-supplied TLS files and describe them.

    The pinned fingerprint is the CA's when ``ca_path`` is given, else that of the first certificate
    in ``cert_path`` (a self-signed leaf). For pinning agents to work, the chain in ``cert_path``
    must include the certificate that is pinned.
    """
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except OSError as exc:
        raise TLSConfigError(f"cannot read TLS certificate {cert_path}: {exc}") from exc
    except ValueError as exc:
        raise TLSConfigError(f"{cert_path} holds no PEM certificate: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise TLSConfigError(f"cannot read TLS key {key_path}: {exc}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # No detail from the parser: it has been handed private key material.
        raise TLSConfigError(
            f"{key_path} is not an unencrypted PEM private key ({type(exc).__name__})"
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TLSConfigError(f"{key_path} does not match the certificate in {cert_path}")
    if ca_path is None:
        return TLSMaterial(cert_path, key_path, cert_path, fingerprint(_cert_pem(chain[0])))
    try:
        ca_pem = ca_path.read_bytes()
        ca_fingerprint = fingerprint(ca_pem)
    except OSError as exc:
        raise TLSConfigError(f"cannot read CA certificate {ca_path}: {exc}") from exc
    except ValueError as exc:
        raise TLSConfigError(f"{ca_path} holds no PEM certificate: {exc}") from exc
    return TLSMaterial(cert_path, key_path, ca_path, ca_fingerprint)


def server_context(material: TLSMaterial, alpn: Sequence[str]) -> ssl.SSLContext:
    """A server-side context serving ``material``'s chain and offering ``alpn`` in that order."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(material.cert_path, material.key_path)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context

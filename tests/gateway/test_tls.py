"""Gateway TLS material, exercised through a real TLS server on loopback.

The server side uses gateway.tls, the client side shared.tlsutil, so these tests also check that
the two halves agree: a certificate minted here verifies there, and the pin an agent key carries
finds the CA in the chain the gateway presents.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import tls
from gateway.tls import TLSMaterial, ensure_self_signed, load_configured, server_context
from shared.tlsutil import PinMismatch, client_context, fetch_pinned_ca

ALPN = ["wardgate-tunnel/1", "h2"]


def _chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture
def material(tmp_path: Path) -> TLSMaterial:
    return ensure_self_signed(tmp_path)


# --- files on disk -------------------------------------------------------------------------------


def test_generate_then_reuse(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    leaf_pem, key_pem = first.cert_path.read_bytes(), first.key_path.read_bytes()
    second = ensure_self_signed(tmp_path)
    assert second == first
    assert second.ca_fingerprint.startswith("sha256:")
    assert second.cert_path.read_bytes() == leaf_pem
    assert second.key_path.read_bytes() == key_pem
    names = sorted(p.name for p in (tmp_path / "tls").iterdir())
    assert names == ["ca.key", "ca.pem", "gateway.key", "gateway.pem"]  # no temp files left over


def test_private_keys_are_owner_only(material: TLSMaterial) -> None:
    tls_dir = material.cert_path.parent
    for name in ("ca.key", "gateway.key"):
        assert stat.S_IMODE((tls_dir / name).stat().st_mode) == 0o600


def test_ca_certificate(material: TLSMaterial) -> None:
    ca = x509.load_pem_x509_certificate(material.ca_path.read_bytes())
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Wardgate local CA"
    assert ca.subject == ca.issuer
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.SECP256R1)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)
    assert material.ca_fingerprint == tls.fingerprint(material.ca_path.read_bytes())


def test_server_chain_is_leaf_then_ca(material: TLSMaterial) -> None:
    chain = _chain(material.cert_path)
    ca = x509.load_pem_x509_certificate(material.ca_path.read_bytes())
    assert len(chain) == 2
    leaf = chain[0]
    assert chain[1] == ca
    leaf.verify_directly_issued_by(ca)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime < dt.timedelta(days=366)
    sans = _sans(leaf)
    dns = sans.get_values_for_type(x509.DNSName)
    assert "localhost" in dns
    assert socket.gethostname().lower().rstrip(".") in dns
    ips = sans.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("::1") in ips


def test_new_hostname_reissues_the_leaf_under_the_same_ca(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    old_leaf = _chain(first.cert_path)[0]
    second = ensure_self_signed(tmp_path, ["Gateway.Example.com", "10.1.2.3", "[2001:db8::7]"])
    new_leaf = _chain(second.cert_path)[0]
    assert new_leaf != old_leaf
    # Agent keys pin the CA, so a new name must not cost them their pin.
    assert second.ca_fingerprint == first.ca_fingerprint
    sans = _sans(new_leaf)
    assert "gateway.example.com" in sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.1.2.3") in sans.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("2001:db8::7") in sans.get_values_for_type(x509.IPAddress)
    assert "10.1.2.3" not in sans.get_values_for_type(x509.DNSName)
    # A subset of what is covered already (any case) is a reuse, not another re-issue.
    third = ensure_self_signed(tmp_path, ["gateway.example.COM"])
    assert _chain(third.cert_path)[0] == new_leaf


def test_unicode_hostname_becomes_an_a_label(tmp_path: Path) -> None:
    material = ensure_self_signed(tmp_path, ["bücher.example"])
    dns = _sans(_chain(material.cert_path)[0]).get_values_for_type(x509.DNSName)
    assert "xn--bcher-kva.example" in dns


def test_bad_hostname_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a DNS name nor an IP address"):
        ensure_self_signed(tmp_path, ["not a host"])


def test_expiring_leaf_is_reissued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "LEAF_LIFETIME", dt.timedelta(days=20))
    first = ensure_self_signed(tmp_path)
    old_leaf = _chain(first.cert_path)[0]
    monkeypatch.undo()
    second = ensure_self_signed(tmp_path)
    new_leaf = _chain(second.cert_path)[0]
    assert new_leaf != old_leaf
    assert new_leaf.not_valid_after_utc - old_leaf.not_valid_after_utc > dt.timedelta(days=300)
    assert second.ca_fingerprint == first.ca_fingerprint


def test_expiring_ca_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "CA_LIFETIME", dt.timedelta(days=20))
    first = ensure_self_signed(tmp_path)
    # The leaf never outlives its issuer.
    assert (
        _chain(first.cert_path)[0].not_valid_after_utc
        <= _chain(first.ca_path)[0].not_valid_after_utc
    )
    monkeypatch.undo()
    second = ensure_self_signed(tmp_path)
    assert second.ca_fingerprint != first.ca_fingerprint
    _chain(second.cert_path)[0].verify_directly_issued_by(_chain(second.ca_path)[0])


def test_corrupt_ca_is_replaced(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    first.ca_path.write_bytes(b"not a certificate")
    second = ensure_self_signed(tmp_path)
    assert second.ca_fingerprint != first.ca_fingerprint
    _chain(second.cert_path)[0].verify_directly_issued_by(_chain(second.ca_path)[0])


def test_leaf_with_foreign_key_is_reissued(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path)
    old_leaf = _chain(first.cert_path)[0]
    stray = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    first.key_path.write_bytes(stray)
    second = ensure_self_signed(tmp_path)
    assert _chain(second.cert_path)[0] != old_leaf
    assert second.key_path.read_bytes() != stray
    assert second.ca_fingerprint == first.ca_fingerprint


# --- operator-supplied files and fingerprints ----------------------------------------------------


def test_load_configured_with_ca(material: TLSMaterial) -> None:
    loaded = load_configured(material.cert_path, material.key_path, material.ca_path)
    assert loaded == material


def test_load_configured_without_ca_pins_the_first_certificate(material: TLSMaterial) -> None:
    loaded = load_configured(material.cert_path, material.key_path)
    assert loaded.ca_path == material.cert_path
    assert loaded.ca_fingerprint == tls.fingerprint(material.cert_path.read_bytes())
    assert loaded.ca_fingerprint != material.ca_fingerprint  # the leaf, not the CA


def test_load_configured_rejects_mismatched_key(material: TLSMaterial) -> None:
    with pytest.raises(tls.TLSConfigError, match="does not match"):
        load_configured(material.cert_path, material.cert_path.parent / "ca.key")


def test_load_configured_names_the_missing_file(tmp_path: Path, material: TLSMaterial) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(tls.TLSConfigError, match=r"nope\.pem"):
        load_configured(missing, material.key_path)
    with pytest.raises(tls.TLSConfigError, match="not an unencrypted PEM private key"):
        load_configured(material.cert_path, material.cert_path)


def test_fingerprint_of_pem_and_der_agree(material: TLSMaterial) -> None:
    pem = material.ca_path.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    expected = "sha256:" + hashlib.sha256(der).hexdigest()
    assert tls.fingerprint(pem) == expected
    assert tls.fingerprint(der) == expected
    # First certificate of a chain file: the leaf.
    leaf_der = _chain(material.cert_path)[0].public_bytes(serialization.Encoding.DER)
    assert tls.fingerprint(material.cert_path.read_bytes()) == tls.fingerprint(leaf_der)


# --- a real TLS server on loopback ---------------------------------------------------------------


@pytest.fixture
async def tls_port(material: TLSMaterial) -> AsyncIterator[int]:
    """A TLS server on 127.0.0.1 that writes the negotiated ALPN protocol and waits for EOF."""
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            writer.write(f"{ssl_object.selected_alpn_protocol()}\n".encode())
            await writer.drain()
            await reader.read()
        except OSError:
            pass  # fetch_pinned_ca hangs up without close_notify; that is its right
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(material, ALPN))
    async with server:
        yield server.sockets[0].getsockname()[1]
    # Python 3.11's Server.wait_closed() does not wait for handlers; every client has hung up by
    # now, so these finish on their own.
    async with asyncio.timeout(10):
        await asyncio.gather(*handlers)


async def _alpn_over_verified_tls(port: int, context: ssl.SSLContext, hostname: str) -> str:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=hostname
    )
    try:
        line = await reader.readline()
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == line.decode().strip()
        return line.decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()


def _strict(context: ssl.SSLContext) -> ssl.SSLContext:
    # Python 3.13 turns this on by default; the local PKI must already pass it.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
async def test_client_verifies_and_negotiates_alpn(
    material: TLSMaterial, tls_port: int, hostname: str
) -> None:
    context = _strict(client_context(material.ca_path.read_bytes(), alpn=["h2"]))
    assert await _alpn_over_verified_tls(tls_port, context, hostname) == "h2"


async def test_alpn_can_select_the_tunnel_protocol(material: TLSMaterial, tls_port: int) -> None:
    context = client_context(material.ca_path.read_bytes(), alpn=["wardgate-tunnel/1"])
    assert await _alpn_over_verified_tls(tls_port, context, "localhost") == "wardgate-tunnel/1"


async def test_client_rejects_a_foreign_ca(tmp_path: Path, tls_port: int) -> None:
    other = ensure_self_signed(tmp_path / "other")
    context = client_context(other.ca_path.read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError):
        await _alpn_over_verified_tls(tls_port, context, "localhost")


async def test_client_rejects_a_name_not_in_the_certificate(
    material: TLSMaterial, tls_port: int
) -> None:
    context = client_context(material.ca_path.read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        await _alpn_over_verified_tls(tls_port, context, "elsewhere.example")


async def test_pinned_ca_then_verified_connection(material: TLSMaterial, tls_port: int) -> None:
    pem = await asyncio.to_thread(
        fetch_pinned_ca,
        "127.0.0.1",
        tls_port,
        material.ca_fingerprint.upper().replace("SHA", "sha"),
    )
    assert x509.load_pem_x509_certificate(pem) == x509.load_pem_x509_certificate(
        material.ca_path.read_bytes()
    )
    assert tls.fingerprint(pem) == material.ca_fingerprint
    # The kubeadm step two: the pinned certificate is now an ordinary trust root.
    context = _strict(client_context(pem, alpn=["h2"]))
    assert await _alpn_over_verified_tls(tls_port, context, "127.0.0.1") == "h2"


async def test_pin_mismatch_names_what_was_seen(material: TLSMaterial, tls_port: int) -> None:
    wrong = "sha256:" + "00" * 32
    with pytest.raises(PinMismatch) as excinfo:
        await asyncio.to_thread(fetch_pinned_ca, "127.0.0.1", tls_port, wrong)
    leaf_fingerprint = tls.fingerprint(material.cert_path.read_bytes())
    assert excinfo.value.seen == (leaf_fingerprint, material.ca_fingerprint)
    assert excinfo.value.expected == wrong
    message = str(excinfo.value)
    assert f"127.0.0.1:{tls_port}" in message
    assert wrong in message
    assert material.ca_fingerprint in message
    assert leaf_fingerprint in message


async def test_malformed_pin_fails_before_connecting() -> None:
    # Port 9 on loopback is almost surely closed; a ValueError proves no connection was tried.
    with pytest.raises(ValueError, match="64 hex digits"):
        await asyncio.to_thread(fetch_pinned_ca, "127.0.0.1", 9, "sha1:abcd")

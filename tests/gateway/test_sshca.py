"""The SSH user CA: issuing and checking OpenSSH user certificates (gateway/sshca.py)."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    SSHCertificateBuilder,
    SSHCertificateType,
)

from gateway import sshca

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def pub_line(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    raw = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return raw.decode() + " alice@laptop"


def issue(ca: ed25519.Ed25519PrivateKey, user: str = "alice", hours: float = 1) -> bytes:
    line = sshca.issue_user_cert(
        ca,
        pub_line(ed25519.Ed25519PrivateKey.generate()),
        user=user,
        key_id=f"{user}/tok1",
        now=NOW,
        valid_before=NOW + dt.timedelta(hours=hours),
    )
    return line.encode()


def test_an_issued_certificate_is_accepted_for_its_user() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    cert = issue(ca)
    assert cert.startswith(b"ssh-ed25519-cert-v01@openssh.com ")
    info = sshca.check_user_cert(cert, ca.public_key(), "alice", NOW)
    assert info.key_id == "alice/tok1"
    assert info.valid_before == int((NOW + dt.timedelta(hours=1)).timestamp())
    # Backdated a little for clock skew, and usable to the last second before the end.
    sshca.check_user_cert(cert, ca.public_key(), "alice", NOW - dt.timedelta(minutes=1))
    end = NOW + dt.timedelta(hours=1) - dt.timedelta(seconds=1)
    sshca.check_user_cert(cert, ca.public_key(), "alice", end)


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        (NOW + dt.timedelta(hours=1), "expired"),
        (NOW + dt.timedelta(days=3), "expired"),
        (NOW - dt.timedelta(minutes=10), "not yet valid"),
    ],
)
def test_outside_the_validity_window_is_refused(when: dt.datetime, reason: str) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(sshca.CertError, match=reason):
        sshca.check_user_cert(issue(ca), ca.public_key(), "alice", when)


def test_another_principal_is_refused() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(sshca.CertError, match="not issued for this user"):
        sshca.check_user_cert(issue(ca, "bob"), ca.public_key(), "alice", NOW)


def test_another_ca_is_refused() -> None:
    ours, theirs = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(sshca.CertError, match="not signed by the gateway's user CA"):
        sshca.check_user_cert(issue(theirs), ours.public_key(), "alice", NOW)
    # An ECDSA CA is someone else's too.
    key = ed25519.Ed25519PrivateKey.generate()
    ecdsa_ca = ec.generate_private_key(ec.SECP256R1())
    other = _builder(key).type(SSHCertificateType.USER).valid_principals([b"alice"]).sign(ecdsa_ca)
    with pytest.raises(sshca.CertError, match="not signed by the gateway's user CA"):
        sshca.check_user_cert(other.public_bytes(), ours.public_key(), "alice", NOW)


def _builder(key: ed25519.Ed25519PrivateKey) -> SSHCertificateBuilder:
    return (
        SSHCertificateBuilder()
        .public_key(key.public_key())
        .serial(1)
        .key_id(b"alice/tok1")
        .valid_after(int(NOW.timestamp()) - 60)
        .valid_before(int(NOW.timestamp()) + 60)
    )


def test_host_certificates_and_critical_options_are_refused() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    key = ed25519.Ed25519PrivateKey.generate()
    host = _builder(key).type(SSHCertificateType.HOST).valid_principals([b"alice"]).sign(ca)
    with pytest.raises(sshca.CertError, match="not a user certificate"):
        sshca.check_user_cert(host.public_bytes(), ca.public_key(), "alice", NOW)
    forced = (
        _builder(key)
        .type(SSHCertificateType.USER)
        .valid_principals([b"alice"])
        .add_critical_option(b"force-command", b"true")
        .sign(ca)
    )
    with pytest.raises(sshca.CertError, match="force-command"):
        sshca.check_user_cert(forced.public_bytes(), ca.public_key(), "alice", NOW)


def test_a_tampered_certificate_or_a_plain_key_is_refused() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    kind, b64 = issue(ca).split()[:2]

    blob = bytearray(base64.b64decode(b64))
    blob[-80] ^= 1  # inside the signed part
    tampered = kind + b" " + base64.b64encode(bytes(blob))
    with pytest.raises(sshca.CertError):
        sshca.check_user_cert(tampered, ca.public_key(), "alice", NOW)
    plain = pub_line(ed25519.Ed25519PrivateKey.generate()).encode()
    with pytest.raises(sshca.CertError, match="not a certificate"):
        sshca.check_user_cert(plain, ca.public_key(), "alice", NOW)
    with pytest.raises(sshca.CertError, match="unreadable"):
        sshca.check_user_cert(b"garbage", ca.public_key(), "alice", NOW)


def test_ecdsa_and_rsa_keys_can_be_certified() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    for key in (ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)):
        raw = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        line = sshca.issue_user_cert(
            ca, raw.decode(), user="alice", key_id="alice/t", now=NOW, valid_before=NOW
        )
        sshca.check_user_cert(
            line.encode(), ca.public_key(), "alice", NOW - dt.timedelta(minutes=1)
        )


def test_issuing_refuses_a_certificate_or_garbage() -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    for bad in (issue(ca).decode(), "ssh-ed25519", "ssh-ed25519 AAAA"):
        with pytest.raises(ValueError):
            sshca.issue_user_cert(ca, bad, user="a", key_id="a/t", now=NOW, valid_before=NOW)


def test_the_ca_key_is_kept_in_the_data_directory(tmp_path: Path) -> None:
    first = sshca.load_user_ca(tmp_path)
    again = sshca.load_user_ca(tmp_path)
    assert sshca.public_line(first) == sshca.public_line(again)
    assert (tmp_path / sshca.USER_CA_FILE).stat().st_mode & 0o777 == 0o600
    pub = (tmp_path / f"{sshca.USER_CA_FILE}.pub").read_text()
    assert pub.startswith(sshca.public_line(first))
    assert sshca.ca_fingerprint(first).startswith("SHA256:")

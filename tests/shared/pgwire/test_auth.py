"""Client-side authentication: MD5, SCRAM-SHA-256(-PLUS), SASLprep, tls-server-end-point."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from shared.pgwire import auth
from shared.pgwire.auth import (
    ScramSha256Client,
    md5_password,
    saslprep_password,
    tls_server_end_point,
)
from shared.pgwire.errors import AuthenticationFailed, LocalProtocolError, RemoteProtocolError
from tests.shared.pgwire.scram_server import ScramServer

# ---- MD5 ---------------------------------------------------------------------------------


def test_md5_password() -> None:
    user, password, salt = "postgres", b"secret", b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"secretpostgres").hexdigest()  # noqa: S324 - the protocol's hash
    expected = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()  # noqa: S324
    assert md5_password(user, password, salt) == expected.encode()
    assert len(md5_password(user, password, salt)) == 35


def test_md5_password_needs_a_four_byte_salt() -> None:
    with pytest.raises(LocalProtocolError, match="salt is 3 bytes"):
        md5_password("u", b"p", b"abc")


# ---- SCRAM: RFC 7677 test vector -----------------------------------------------------------

RFC_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def rfc_client() -> ScramSha256Client:
    return ScramSha256Client(b"pencil", ["SCRAM-SHA-256"], nonce=RFC_NONCE, username="user")


def test_rfc7677_vector() -> None:
    client = rfc_client()
    assert client.mechanism == "SCRAM-SHA-256"
    assert client.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert client.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    assert not client.done
    client.verify_server_final(RFC_SERVER_FINAL)
    assert client.done


def test_wrong_server_signature_fails() -> None:
    client = rfc_client()
    client.client_first()
    client.client_final(RFC_SERVER_FIRST)
    forged = b"v=" + base64.b64encode(b"\0" * 32)
    with pytest.raises(AuthenticationFailed, match="server signature does not match"):
        client.verify_server_final(forged)
    assert not client.done


def test_server_error_attribute_fails() -> None:
    client = rfc_client()
    client.client_first()
    client.client_final(RFC_SERVER_FIRST)
    with pytest.raises(AuthenticationFailed, match="'invalid-proof'"):
        client.verify_server_final(b"e=invalid-proof")


@pytest.mark.parametrize(
    "server_first",
    [
        b"r=someoneelse123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # not our nonce
        b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # ours, not extended
        b"r=XrOprNGfwEbeRWgbNEkqO123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # ours, not a prefix
    ],
)
def test_server_nonce_must_extend_the_client_nonce(server_first: bytes) -> None:
    client = rfc_client()
    client.client_first()
    with pytest.raises(AuthenticationFailed, match="server nonce does not extend"):
        client.client_final(server_first)


@pytest.mark.parametrize(
    ("server_first", "match"),
    [
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=!!!,i=4096", "salt is not valid base64"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=,i=4096", "empty salt"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=c2FsdA==,i=0", "iteration count 0 is outside"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=c2FsdA==,i=10000001", "iteration count 10000001"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=c2FsdA==,i=-1", "iteration count is not a number"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=c2FsdA==,i=", "iteration count is not a number"),
        (b"r=rOprNGfwEbeRWgbNEkqOx,s=c2FsdA==", "attributes start 'rs', expected 'rsi'"),
        (b"s=c2FsdA==,r=rOprNGfwEbeRWgbNEkqOx,i=1", "attributes start 'sri'"),
        (b"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=c2FsdA==,i=1", "unsupported mandatory extension"),
        (b"r=rOprNGfwEbeRWgbNEkqO\x7f,s=c2FsdA==,i=1", "server nonce is empty or not"),
        (b"garbage", "malformed attribute"),
        (b"\xff", "not valid UTF-8"),
    ],
)
def test_malformed_server_first(server_first: bytes, match: str) -> None:
    client = rfc_client()
    client.client_first()
    with pytest.raises(RemoteProtocolError, match=match):
        client.client_final(server_first)


def test_iteration_count_of_one_is_accepted() -> None:
    client = rfc_client()
    client.client_first()
    client.client_final(b"r=rOprNGfwEbeRWgbNEkqOx,s=c2FsdA==,i=1")


def test_steps_out_of_order_are_local_errors() -> None:
    client = rfc_client()
    with pytest.raises(LocalProtocolError, match="in step 'start'"):
        client.client_final(RFC_SERVER_FIRST)
    client.client_first()
    with pytest.raises(LocalProtocolError, match="in step 'sent client-first'"):
        client.verify_server_final(RFC_SERVER_FINAL)
    with pytest.raises(LocalProtocolError):
        client.client_first()
    # A failed step is final: no second attempt with the same nonce.
    with pytest.raises(AuthenticationFailed):
        client.client_final(b"r=other1,s=c2FsdA==,i=1")
    with pytest.raises(LocalProtocolError, match="in step 'failed'"):
        client.client_final(RFC_SERVER_FIRST)


def test_username_is_escaped() -> None:
    client = ScramSha256Client(b"pw", ["SCRAM-SHA-256"], nonce="abc", username="a=b,c")
    assert client.client_first() == b"n,,n=a=3Db=2Cc,r=abc"


def test_default_username_is_empty_as_postgresql_sends_it() -> None:
    client = ScramSha256Client(b"pw", ["SCRAM-SHA-256"], nonce="abc")
    assert client.client_first() == b"n,,n=,r=abc"


def test_generated_nonces_are_fresh_and_printable() -> None:
    firsts = {ScramSha256Client(b"pw", ["SCRAM-SHA-256"]).client_first() for _ in range(20)}
    assert len(firsts) == 20
    for first in firsts:
        nonce = first.split(b",r=")[1]
        assert len(nonce) == 24
        assert b"," not in nonce


@pytest.mark.parametrize("nonce", ["", "a,b", "é", "a b"])
def test_bad_client_nonce_is_a_local_error(nonce: str) -> None:
    with pytest.raises(LocalProtocolError, match="client nonce"):
        ScramSha256Client(b"pw", ["SCRAM-SHA-256"], nonce=nonce)


def test_repr_hides_the_password() -> None:
    client = ScramSha256Client(b"hunter2", ["SCRAM-SHA-256"])
    assert "hunter2" not in repr(client)


# ---- SCRAM: full exchanges against the test server ------------------------------------------


def exchange(client: ScramSha256Client, server: ScramServer) -> None:
    """Run the SASL conversation; the client raises if the server does not prove itself."""
    server_first = server.first(client.client_first())
    server_final = server.final(client.client_final(server_first))
    client.verify_server_final(server_final)


def test_full_exchange() -> None:
    server = ScramServer(b"correct horse")
    client = ScramSha256Client(b"correct horse", server.mechanisms)
    exchange(client, server)
    assert client.done
    assert server.gs2_header == b"n,,"


def test_wrong_password_is_refused_by_the_server() -> None:
    server = ScramServer(b"correct horse")
    client = ScramSha256Client(b"battery staple", server.mechanisms)
    with pytest.raises(AuthenticationFailed, match="invalid-proof"):
        exchange(client, server)


def test_later_logins_reuse_the_salted_password_and_a_wrong_one_still_fails() -> None:
    server = ScramServer(b"same role")  # one salt and count, as a server keeps per role
    exchange(ScramSha256Client(b"same role", server.mechanisms), server)
    before = auth._salted_password.cache_info()
    again = ScramSha256Client(b"same role", server.mechanisms)
    exchange(again, server)  # a fresh nonce, so a fresh proof, from the cached key
    assert again.done
    assert auth._salted_password.cache_info().hits == before.hits + 1
    with pytest.raises(AuthenticationFailed, match="invalid-proof"):
        exchange(ScramSha256Client(b"same rolf", server.mechanisms), server)


def test_a_server_without_the_verifier_cannot_impersonate() -> None:
    # A man in the middle that accepts any proof but does not know the password.
    real = ScramServer(b"correct horse")
    impostor = ScramServer(b"guess")
    client = ScramSha256Client(b"correct horse", real.mechanisms)
    server_first = impostor.first(client.client_first())
    client.client_final(server_first)
    with pytest.raises(AuthenticationFailed, match="signature does not match"):
        client.verify_server_final(b"v=" + base64.b64encode(impostor.server_key))


BINDING = hashlib.sha256(b"the server's certificate").digest()


def test_plus_is_chosen_when_offered_with_binding_data() -> None:
    server = ScramServer(b"pw", binding=BINDING)
    client = ScramSha256Client(b"pw", server.mechanisms, BINDING, nonce="abc")
    assert client.mechanism == "SCRAM-SHA-256-PLUS"
    first = client.client_first()
    assert first == b"p=tls-server-end-point,,n=,r=abc"
    final = client.client_final(server.first(first))
    c_value = final.split(b",")[0]
    assert c_value == b"c=" + base64.b64encode(b"p=tls-server-end-point,," + BINDING)
    client.verify_server_final(server.final(final))
    assert client.done


def test_plus_fails_when_the_bindings_differ() -> None:
    # Someone in the middle terminates TLS with another certificate.
    server = ScramServer(b"pw", binding=BINDING)
    client = ScramSha256Client(b"pw", server.mechanisms, b"\0" * 32)
    with pytest.raises(AuthenticationFailed, match="channel-bindings-dont-match"):
        exchange(client, server)


def test_y_flag_when_the_server_does_not_offer_plus() -> None:
    server = ScramServer(b"pw")
    client = ScramSha256Client(b"pw", ["SCRAM-SHA-256"], BINDING, nonce="abc")
    assert client.mechanism == "SCRAM-SHA-256"
    assert client.client_first() == b"y,,n=,r=abc"
    server.first(b"y,,n=,r=abc")
    final = client.client_final(server.first(b"y,,n=,r=abc"))
    assert final.startswith(b"c=eSws,")  # base64("y,,")
    client.verify_server_final(server.final(final))


def test_y_flag_exposes_a_stripped_plus_offer() -> None:
    # A man in the middle removes -PLUS from the offer; the real server can bind and refuses.
    server = ScramServer(b"pw", binding=BINDING)
    client = ScramSha256Client(b"pw", ["SCRAM-SHA-256"], BINDING)
    with pytest.raises(AuthenticationFailed, match="server-does-support-channel-binding"):
        exchange(client, server)


def test_plain_n_flag_without_binding_data() -> None:
    server = ScramServer(b"pw", binding=BINDING)
    client = ScramSha256Client(b"pw", server.mechanisms)
    assert client.mechanism == "SCRAM-SHA-256"
    assert client.client_first().startswith(b"n,,")


def test_required_binding_refuses_the_plain_mechanism() -> None:
    with pytest.raises(AuthenticationFailed, match="does not offer SCRAM-SHA-256-PLUS"):
        ScramSha256Client(b"pw", ["SCRAM-SHA-256"], BINDING, require_channel_binding=True)
    with pytest.raises(AuthenticationFailed, match="no TLS certificate"):
        ScramSha256Client(b"pw", ["SCRAM-SHA-256-PLUS"], None, require_channel_binding=True)
    client = ScramSha256Client(
        b"pw", ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"], BINDING, require_channel_binding=True
    )
    assert client.mechanism == "SCRAM-SHA-256-PLUS"


def test_mechanisms_as_a_str_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="not a str"):
        ScramSha256Client(b"pw", "SCRAM-SHA-256-PLUS", BINDING)


def test_no_common_mechanism() -> None:
    with pytest.raises(AuthenticationFailed, match="it offers OAUTHBEARER"):
        ScramSha256Client(b"pw", ["OAUTHBEARER"])
    with pytest.raises(AuthenticationFailed, match="it offers nothing"):
        ScramSha256Client(b"pw", [])


# ---- SASLprep --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("password", "prepared"),
    [
        ("user", "user"),  # ASCII: used as given
        ("\x07bell", "\x07bell"),  # ASCII, even control characters (PostgreSQL's fast path)
        ("I\u00adX", "IX"),  # soft hyphen maps to nothing (RFC 4013 example)
        ("\u00aa", "a"),  # NFKC (RFC 4013 example)
        ("\u2168", "IX"),  # ROMAN NUMERAL NINE, NFKC (RFC 4013 example)
        ("a\u00a0b", "a b"),  # non-ASCII space maps to SPACE
        ("é\u0007", "é\u0007"),  # prohibited control character: raw bytes
        ("\u0627\u0031", "\u0627\u0031"),  # bidi: RandALCat must end the string: raw
        ("\u0627\u0031\u0628", "\u0627\u0031\u0628"),  # bidi satisfied (digits are neutral)
        ("\u00ad", "\u00ad"),  # maps to empty: raw
        ("x\U000e0001", "x\U000e0001"),  # LANGUAGE TAG, prohibited (C.9): raw
        ("x\u0221", "x\u0221"),  # unassigned in Unicode 3.2: raw
    ],
)
def test_saslprep(password: str, prepared: str) -> None:
    assert saslprep_password(password.encode()) == prepared.encode()


def test_saslprep_keeps_non_utf8_passwords_raw() -> None:
    assert saslprep_password(b"\xff\xfepw") == b"\xff\xfepw"


def test_saslprep_applies_to_the_exchange() -> None:
    # The server stored the verifier of the prepared password, as PostgreSQL does.
    server = ScramServer(b"IX")
    client = ScramSha256Client("\u2168".encode(), server.mechanisms)
    exchange(client, server)


# ---- tls-server-end-point ---------------------------------------------------------------------

Signing = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)  # slow-ish: once per session


def certificate(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
    algorithm: Signing | None,
) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db.test")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    return builder.sign(key, algorithm).public_bytes(Encoding.DER)


@pytest.mark.parametrize(
    ("algorithm", "digest"),
    [
        (hashes.SHA256(), "sha256"),
        (hashes.SHA384(), "sha384"),
        (hashes.SHA512(), "sha512"),
    ],
    ids=["sha256", "sha384", "sha512"],
)
def test_tls_server_end_point(algorithm: Signing, digest: str) -> None:
    der = certificate(ec.generate_private_key(ec.SECP256R1()), algorithm)
    assert tls_server_end_point(der) == hashlib.new(digest, der).digest()


# sha256WithRSAEncryption is 1.2.840.113549.1.1.11; md5 and sha1 differ in the last arc only.
_SHA256_WITH_RSA = bytes.fromhex("2a864886f70d01010b")


@pytest.mark.parametrize("last_arc", [4, 5], ids=["md5", "sha1"])
def test_tls_server_end_point_upgrades_md5_and_sha1_to_sha256(last_arc: int) -> None:
    # cryptography no longer signs with MD5 or SHA-1, so relabel a SHA-256 signature: the
    # binding reads the algorithm, it does not verify the signature.
    der = certificate(rsa_key(), hashes.SHA256())
    assert der.count(_SHA256_WITH_RSA) == 2  # tbsCertificate.signature and signatureAlgorithm
    relabelled = der.replace(_SHA256_WITH_RSA, _SHA256_WITH_RSA[:-1] + bytes((last_arc,)))
    algorithm = x509.load_der_x509_certificate(relabelled).signature_hash_algorithm
    assert isinstance(algorithm, hashes.MD5 if last_arc == 4 else hashes.SHA1)
    assert tls_server_end_point(relabelled) == hashlib.sha256(relabelled).digest()


def test_tls_server_end_point_is_undefined_for_eddsa() -> None:
    with pytest.raises(RemoteProtocolError, match="no hash"):
        tls_server_end_point(certificate(ed25519.Ed25519PrivateKey.generate(), None))


def test_tls_server_end_point_rejects_garbage() -> None:
    with pytest.raises(RemoteProtocolError, match="server certificate"):
        tls_server_end_point(b"not a certificate")

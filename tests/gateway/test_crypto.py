"""SecretBox sealing and bearer tokens."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import crypto
from gateway.crypto import SecretBox, SecretBoxError

KEY = bytes(range(32))
CONTEXT = "connection/prod-db/password"
PLAINTEXT = b"hunter2-but-longer"


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(KEY)


@given(plaintext=st.binary(max_size=4096), context=st.text(max_size=100))
def test_seal_open_round_trip(plaintext: bytes, context: str) -> None:
    box = SecretBox(KEY)
    blob = box.seal(plaintext, context=context)
    assert SecretBox.is_sealed(blob)
    assert blob.startswith("enc:v1:")
    assert box.open(blob, context=context) == plaintext


def test_blob_layout(box: SecretBox) -> None:
    blob = box.seal(PLAINTEXT, context=CONTEXT)
    body = blob.removeprefix("enc:v1:")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert len(raw) == 12 + len(PLAINTEXT) + 16  # nonce, ciphertext, tag
    assert PLAINTEXT not in raw


def test_nonces_are_fresh(box: SecretBox) -> None:
    assert box.seal(PLAINTEXT, context=CONTEXT) != box.seal(PLAINTEXT, context=CONTEXT)


def test_tampering_is_detected(box: SecretBox) -> None:
    blob = box.seal(PLAINTEXT, context=CONTEXT)
    body = blob.removeprefix("enc:v1:")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    for index in (0, 12, len(raw) - 1):  # nonce, ciphertext, tag
        flipped = bytearray(raw)
        flipped[index] ^= 0x01
        tampered = "enc:v1:" + base64.urlsafe_b64encode(bytes(flipped)).decode()
        with pytest.raises(SecretBoxError, match="tampered"):
            box.open(tampered, context=CONTEXT)


def test_wrong_context_fails(box: SecretBox) -> None:
    blob = box.seal(PLAINTEXT, context=CONTEXT)
    with pytest.raises(SecretBoxError, match="connection/other-db/password") as excinfo:
        box.open(blob, context="connection/other-db/password")
    assert PLAINTEXT.decode() not in str(excinfo.value)


def test_wrong_key_fails(box: SecretBox) -> None:
    blob = box.seal(PLAINTEXT, context=CONTEXT)
    other = SecretBox(bytes(32))
    with pytest.raises(SecretBoxError, match="wrong key"):
        other.open(blob, context=CONTEXT)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        ("hunter2", "is not sealed"),
        ("enc:v1:", "truncated"),
        ("enc:v1:AAAA", "truncated"),
        ("enc:v1:not base64!", "not valid base64"),
        ("enc:v2:" + "A" * 60, "is not sealed"),
    ],
)
def test_malformed_blobs(box: SecretBox, blob: str, message: str) -> None:
    with pytest.raises(SecretBoxError, match=message) as excinfo:
        box.open(blob, context=CONTEXT)
    assert "hunter2" not in str(excinfo.value)


def test_from_config_accepts_both_base64_alphabets() -> None:
    key = bytes([0xFB, 0xFF] * 16)  # encodes to '+' and '/' in std, '-' and '_' in url-safe
    std = base64.b64encode(key).decode()
    url = base64.urlsafe_b64encode(key).decode()
    assert std != url
    blob = SecretBox(key).seal(PLAINTEXT, context=CONTEXT)
    for value in (std, url, url.rstrip("="), f"  {std}\n"):
        assert SecretBox.from_config(value).open(blob, context=CONTEXT) == PLAINTEXT


def test_generated_key_round_trips() -> None:
    key = SecretBox.generate_key()
    assert key != crypto.generate_key()
    box = SecretBox.from_config(key)
    assert box.open(box.seal(PLAINTEXT, context=CONTEXT), context=CONTEXT) == PLAINTEXT


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (base64.b64encode(b"k" * 16).decode(), "got 16"),
        ("definitely-not%base64", "not valid base64"),
    ],
)
def test_from_config_rejects_bad_keys(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as excinfo:
        SecretBox.from_config(value)
    assert value not in str(excinfo.value)


def test_raw_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SecretBox(b"short")


def test_is_sealed() -> None:
    assert crypto.is_sealed("enc:v1:abc")
    assert not crypto.is_sealed("env:DB_PASSWORD")
    assert not crypto.is_sealed("file:/run/secrets/db")


def test_tokens() -> None:
    token = crypto.new_token()
    assert token.startswith("wgt_")
    assert len(token) > 40
    assert crypto.new_token(prefix="wga_").startswith("wga_")
    assert token != crypto.new_token()
    stored = crypto.hash_token(token)
    assert len(stored) == 32
    assert crypto.token_matches(token, stored)
    assert not crypto.token_matches(token[:-1], stored)
    assert crypto.constant_time_equal(b"abc", b"abc")
    assert not crypto.constant_time_equal(b"abc", b"abd")

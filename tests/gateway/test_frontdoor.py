"""The first-bytes classifier of the public endpoint."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.frontdoor import Kind, classify


def pg(code: int, length: int = 8) -> bytes:
    return struct.pack("!II", length, code)


@pytest.mark.parametrize(
    ("prefix", "kind"),
    [
        (b"\x16\x03\x01\x02\x00", Kind.TLS),
        (b"\x16", Kind.TLS),
        (pg(80877103), Kind.POSTGRES),  # SSLRequest
        (pg(80877104), Kind.POSTGRES),  # GSSENCRequest
        (pg(80877102, 16), Kind.POSTGRES),  # CancelRequest
        (struct.pack("!II", 41, 196608), Kind.POSTGRES),  # StartupMessage v3.0
        (b"SSH-2.0-OpenSSH_9.2", Kind.SSH),
        (b"GET / HTTP/1.1\r\n", Kind.HTTP_PLAIN),
        (b"PRI * HTTP/2.0", Kind.HTTP_PLAIN),
        (b"\x00\x00\x00\x08\x00\x00\x00\x00", Kind.UNKNOWN),
        (b"\x16\x01", Kind.UNKNOWN),
        (b"SSX-", Kind.UNKNOWN),
        (b"hello world", Kind.UNKNOWN),
        (b"\xff\xfe\xfd\xfc", Kind.UNKNOWN),
    ],
)
def test_classify(prefix: bytes, kind: Kind) -> None:
    assert classify(prefix) is kind


@pytest.mark.parametrize("prefix", [b"", b"\x00\x00\x00", b"SS", b"GE", b"P"])
def test_classify_asks_for_more_bytes_when_undecided(prefix: bytes) -> None:
    assert classify(prefix) is None


@given(st.binary(min_size=8, max_size=16))
def test_eight_bytes_always_decide(prefix: bytes) -> None:
    assert classify(prefix) is not None


@given(st.binary(max_size=16))
def test_classify_never_raises(prefix: bytes) -> None:
    classify(prefix)

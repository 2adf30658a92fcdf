"""The streaming result rewriter: playbooks, chunking invariance and fuzzing (it reads the
server's bytes, which the agent does not trust to be well formed)."""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.masking.spec import MaskRule, MaskSpec, Strategy
from shared.masking.values import Masker
from shared.pgwire import backend as be
from shared.pgwire.backend import (
    CopyOutResponse,
    Field,
    command_complete,
    data_row,
    error_response,
    ready_for_query,
    row_description,
)
from shared.pgwire.framing import MessageReader, encode_message
from shared.pgwire.frontend import CopyData, CopyDone
from shared.pgwire.masking import ResultMasker

KEY = b"k" * 32
DETECT = MaskRule("pii", Strategy.REDACT, detectors=("email", "card"))
SSN = MaskRule("ssn", Strategy.PARTIAL, columns=("ssn",))
TOKEN = MaskRule("tok", Strategy.TOKEN, columns=("users.email", "uid", "n"))


def rewriter(*rules: MaskRule, max_message: int = 1 << 20) -> ResultMasker:
    catalog = {(100, 2): ("users.email", "public.users.email")}
    return ResultMasker(Masker(MaskSpec(rules, KEY)), catalog=catalog, max_message=max_message)


def messages(data: bytes) -> list[be.BackendMessage]:
    reader = MessageReader()
    reader.feed(data)
    out: list[be.BackendMessage] = []
    while (m := reader.next_message()) is not None:
        out.append(be.decode_backend(m))
    assert reader.take_buffered() == b""
    return out


def rows_of(data: bytes) -> list[tuple[bytes | None, ...]]:
    return [m.values for m in messages(data) if isinstance(m, be.DataRow)]


def feed_in(rw: ResultMasker, data: bytes, cuts: list[int]) -> bytes:
    out = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        out.append(rw.feed(data[last:cut]))
        last = max(last, cut)
    out.append(rw.feed(data[last:]))
    return b"".join(out)


FIELDS = [
    Field("id", 100, 1, 23),
    Field("email", 100, 2, 25),
    Field("ssn", 0, 0, 25),
    Field("doc", 0, 0, 3802),
    Field("n", 0, 0, 20),
]


def result(rows: list[tuple[bytes | None, ...]], fields: list[Field] = FIELDS) -> bytes:
    return (
        row_description(fields)
        + b"".join(data_row(r) for r in rows)
        + command_complete(f"SELECT {len(rows)}")
        + ready_for_query("I")
    )


ROW = (
    b"7",
    b"alice@example.com",
    b"123-45-6789",
    b'{"to": "bob@example.org", "card": 4111111111111111}',
    b"4111111111111111",
)


def test_text_row_is_masked_with_lengths_and_nulls_valid() -> None:
    rw = rewriter(DETECT, SSN, TOKEN)
    out = messages(rw.feed(result([ROW, (None,) * 5])))
    masked, nulls = out[1], out[2]
    assert isinstance(masked, be.DataRow) and isinstance(nulls, be.DataRow)
    id_, email, ssn, doc, n = masked.values
    assert id_ == b"7"
    assert email is not None and email.startswith(b"tok_")  # users.email via the catalog
    assert ssn == b"****6789"
    assert doc is not None
    assert json.loads(doc) == {"to": "[email]", "card": "[card]"}
    assert n is not None and int(n) >= 0 and n != ROW[4]  # keyed int8, still an int
    assert nulls.values == (None,) * 5
    assert rw.report_due
    assert dict(((c, d), k) for c, d, k in rw.take_report()) == {
        ("users.email", "column"): 1,
        ("ssn", "column"): 1,
        ("doc", "email"): 1,
        ("doc", "card"): 1,
        ("n", "column"): 1,
    }
    assert not rw.report_due


def test_binary_formats_get_type_valid_values() -> None:
    fields = [
        Field("uid", 0, 0, 2950, format=1),
        Field("n", 0, 0, 23, format=1),
        Field("doc", 0, 0, 3802, format=1),
        Field("note", 0, 0, 25, format=1),
        Field("amount", 0, 0, 1700, format=1),
    ]
    row = (
        bytes(range(16)),
        struct.pack("!i", 42),
        b'\x01{"e": "x@y.io"}',
        b"card 4111111111111111",
        b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x2a",  # numeric 42, binary
    )
    rw = rewriter(DETECT, TOKEN)
    ((uid, n, doc, note, amount),) = rows_of(rw.feed(result([row], fields)))
    assert uid is not None and len(uid) == 16 and uid != row[0]
    assert n is not None and len(n) == 4 and struct.unpack("!i", n)[0] >= 0
    assert doc == b'\x01{"e": "[email]"}'
    assert note == b"card [card]"
    assert amount == row[4]  # nothing detected: untouched
    # Tokens agree across formats: the text form of the same uuid/int masks alike.
    text = rewriter(DETECT, TOKEN)
    import uuid

    text_fields = [Field("uid", 0, 0, 2950), Field("n", 0, 0, 23)]
    text_row = (str(uuid.UUID(bytes=bytes(range(16)))).encode(), b"42")
    ((t_uid, t_n),) = rows_of(text.feed(result([text_row], text_fields)))
    assert t_uid is not None and uid == uuid.UUID(t_uid.decode()).bytes
    assert t_n is not None and int(t_n) == struct.unpack("!i", n)[0]


def test_without_an_active_column_rows_pass_byte_for_byte() -> None:
    rw = rewriter(SSN)  # masks column "ssn" only
    data = result([(b"1", b"a@b.io"), (None, b"4111111111111111")], [Field("id"), Field("x")])
    assert rw.feed(data) == data
    assert rw.take_report() == ()


def test_rows_without_a_description_are_masked_blind() -> None:
    rw = rewriter(DETECT, SSN)
    out = rows_of(rw.feed(data_row((b"a@b.io", b"plain")) + ready_for_query("I")))
    # Column rules apply and the columns are unknown: every value is withheld.
    assert out == [(None, None)]
    only_detect = rewriter(DETECT)
    out = rows_of(only_detect.feed(data_row((b"a@b.io", b"plain", None))))
    assert out == [(None, b"plain", None)]


def test_copy_text_and_csv_rows_are_scanned() -> None:
    rw = rewriter(DETECT)
    data = (
        CopyOutResponse(0, (0, 0)).encode()
        + CopyData(b"1\talice@example.com\n").encode()
        + CopyData(b'2,"Doe, J",4111 1111 1111 1111\n').encode()
        + CopyDone().encode()
        + command_complete("COPY 2")
        + ready_for_query("I")
    )
    out = messages(feed_in(rw, data, [3, 17, 40]))
    rows = [m.data for m in out if isinstance(m, CopyData)]
    assert rows == [b"1\t[email]\n", b'2,"Doe, J",[card]\n']


def test_copy_under_column_rules_ends_with_an_error_instead_of_rows() -> None:
    rw = rewriter(SSN)
    data = (
        CopyOutResponse(0, (0,)).encode()
        + CopyData(b"123-45-6789\n").encode()
        + CopyDone().encode()
        + command_complete("COPY 1")
        + ready_for_query("I")
    )
    out = messages(rw.feed(data))
    assert [type(m).__name__ for m in out] == ["CopyOutResponse", "ErrorResponse", "ReadyForQuery"]
    assert isinstance(out[1], be.ErrorResponse) and out[1].sqlstate == "42501"


def test_binary_copy_fields_with_a_hit_become_null() -> None:
    rw = rewriter(DETECT)
    header = b"PGCOPY\n\xff\r\n\x00" + b"\0\0\0\0" + b"\0\0\0\0"
    tuple_ = struct.pack("!h", 2) + struct.pack("!i", 6) + b"a@b.io" + struct.pack("!i", 2) + b"ok"
    data = (
        CopyOutResponse(1, (1, 1)).encode()
        + CopyData(header + tuple_).encode()
        + CopyData(b"\xff\xff").encode()
        + CopyDone().encode()
    )
    out = messages(rw.feed(data))
    assert isinstance(out[1], CopyData)
    first = out[1].data
    assert (
        first == header + struct.pack("!h", 2) + b"\xff\xff\xff\xff" + struct.pack("!i", 2) + b"ok"
    )


def test_error_detail_is_scanned() -> None:
    rw = rewriter(DETECT)
    err = be.ErrorResponse(
        {"S": "ERROR", "C": "23505", "M": "duplicate key", "D": "Key (email)=(a@b.io) exists."}
    ).encode()
    out = messages(rw.feed(err))
    assert isinstance(out[0], be.ErrorResponse)
    assert out[0].detail == "Key (email)=([email]) exists."


def test_a_row_over_the_limit_ends_the_session_with_fatal_54000() -> None:
    rw = rewriter(DETECT, max_message=1000)
    data = row_description([Field("t")]) + data_row((b"x" * 5000,))
    out = messages(rw.feed(data))
    assert isinstance(out[-1], be.ErrorResponse)
    assert out[-1].sqlstate == "54000" and out[-1].severity == "FATAL"
    assert rw.failed is not None
    assert rw.feed(ready_for_query("I")) == b""


def test_uninspected_messages_stream_without_being_held() -> None:
    rw = rewriter(DETECT)
    big = encode_message(b"S", b"x" * 100_000)  # ParameterStatus-sized, not rewritten
    for start in range(0, len(big), 4096):
        chunk = big[start : start + 4096]
        assert rw.feed(chunk) == chunk
    assert len(rw._buf) == 0


rows_strategy = st.lists(
    st.tuples(
        st.none() | st.sampled_from([b"1", b"42", b"-3"]),
        st.none() | st.sampled_from([b"a@b.io", b"x", b"", "é@ü.de".encode()]),
        st.none() | st.binary(max_size=20),
        st.none() | st.sampled_from([b"{}", b'{"a": "c@d.org"}', b"[1, 4111111111111111]"]),
        st.none() | st.sampled_from([b"0", b"4111111111111111"]),
    ),
    max_size=6,
)


@given(rows_strategy, st.lists(st.integers(0, 10_000), max_size=8))
@settings(max_examples=200)
def test_output_is_independent_of_chunking_and_valid(
    rows: list[tuple[bytes | None, ...]], cuts: list[int]
) -> None:
    data = result(rows) + error_response("XX000", "a@b.io failed")
    whole = rewriter(DETECT, SSN, TOKEN).feed(data)
    assert feed_in(rewriter(DETECT, SSN, TOKEN), data, cuts) == whole
    out = messages(whole)
    got = [m for m in out if isinstance(m, be.DataRow)]
    assert len(got) == len(rows)
    for before, after in zip(rows, got, strict=True):
        assert len(after.values) == 5
        # NULL stays NULL; text columns are never nulled.
        assert [v is None for v in after.values[:4]] == [v is None for v in before[:4]]
    for m in out:
        if isinstance(m, be.DataRow):
            for v in m.values:
                assert v is None or b"a@b.io" not in v


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
@settings(max_examples=300)
def test_garbage_from_the_server_never_raises(data: bytes, cuts: list[int]) -> None:
    rw = rewriter(DETECT, SSN, TOKEN, max_message=200)
    out = feed_in(rw, row_description(FIELDS) + data, cuts)
    assert isinstance(out, bytes)
    if rw.failed is not None:
        assert out.endswith(b"\0\0") or b"wardgate masking" in out


@given(
    st.lists(st.sampled_from([b"T", b"D", b"d", b"H", b"E", b"Z", b"C", b"A", b"V"]), max_size=6),
    st.binary(max_size=60),
)
@settings(max_examples=300)
def test_well_framed_nonsense_bodies_never_raise(types: list[bytes], body: bytes) -> None:
    rw = rewriter(DETECT, SSN)
    data = b"".join(encode_message(t, body) for t in types)
    assert isinstance(rw.feed(data), bytes)


def test_after_describe_statement_formats_are_unknown_and_covered_values_withheld() -> None:
    rw = rewriter(DETECT, TOKEN)
    described = be.ParameterDescription(()).encode() + row_description(
        [Field("n", 0, 0, 23), Field("note", 0, 0, 25), Field("doc", 0, 0, 3802)]
    )
    # Bind then asked for binary results: the int arrives as 4 raw bytes.
    data = described + data_row((struct.pack("!i", 5), b"a@b.io", b'\x01{"e": "c@d.org"}'))
    ((n, note, doc),) = rows_of(rw.feed(data))
    assert n is None  # a token in the wrong format would break the client: withheld
    assert note == b"[email]"  # text: the same bytes in both formats
    assert doc == b'\x01{"e": "[email]"}'  # jsonb: the version byte tells binary


def test_a_repeated_row_shape_is_planned_once_and_masks_alike() -> None:
    masker = Masker(MaskSpec((MaskRule("mail", Strategy.REDACT, detectors=("email",)),)))
    rewriter = ResultMasker(masker)
    result = (
        row_description([Field("contact")])
        + data_row([b"ann@example.com"])
        + command_complete("SELECT 1")
        + ready_for_query("I")
    )
    first = rewriter.feed(result)
    assert rewriter.feed(result) == first
    assert b"ann@example.com" not in first
    assert len(rewriter._described) == 1

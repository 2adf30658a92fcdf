"""The rewriter's prefilter: runs of CopyData/DataRow pass untouched unless the screen could
match, and the output and counts are exactly those of the full per-value path."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.masking.spec import DETECTORS, MaskRule, MaskSpec, Strategy
from shared.masking.values import Masker
from shared.pgwire.backend import (
    CopyOutResponse,
    Field,
    command_complete,
    data_row,
    ready_for_query,
    row_description,
)
from shared.pgwire.frontend import CopyData, CopyDone
from shared.pgwire.masking import ResultMasker
from tests.shared.pgwire.test_masking import feed_in

KEY = b"k" * 32
EMP = MaskRule("emp", Strategy.REDACT, patterns=(r"EMP-\d{6}",))
EMP_ANY_CASE = MaskRule("emp-i", Strategy.PARTIAL, patterns=(r"(?i)emp-\d{6}",))
EMAIL = MaskRule("email", Strategy.REDACT, detectors=("email",))
ALL = MaskRule("all", Strategy.TOKEN, detectors=DETECTORS)
ANCHORED = MaskRule("anchored", Strategy.REDACT, patterns=(r"^EMP-\d{6}",))
NOTE_ONLY = MaskRule("note-email", Strategy.REDACT, columns=("note",), detectors=("email",))
SSN_COLUMN = MaskRule("ssn", Strategy.PARTIAL, columns=("ssn",))


def make(*rules: MaskRule, prefilter: bool = True) -> ResultMasker:
    return ResultMasker(Masker(MaskSpec(rules, KEY)), prefilter=prefilter)


def same_as_full_path(rules: tuple[MaskRule, ...], data: bytes, cuts: list[int]) -> bytes:
    """Feed `data` cut at `cuts` with and without the prefilter: the bytes, the failure and
    the counts must agree. Returns the output."""
    fast, slow = make(*rules), make(*rules, prefilter=False)
    got, want = feed_in(fast, data, cuts), feed_in(slow, data, [])
    assert got == want
    assert fast.failed == slow.failed
    assert fast.take_report() == slow.take_report()
    return got


def copy_out(lines: list[bytes], fmt: int = 0) -> bytes:
    return (
        CopyOutResponse(fmt, (fmt,)).encode()
        + b"".join(CopyData(line).encode() for line in lines)
        + CopyDone().encode()
        + command_complete(f"COPY {len(lines)}")
        + ready_for_query("I")
    )


def select(fields: list[Field], rows: list[tuple[bytes | None, ...]]) -> bytes:
    return (
        row_description(fields)
        + b"".join(data_row(r) for r in rows)
        + command_complete(f"SELECT {len(rows)}")
        + ready_for_query("I")
    )


def test_a_clean_chunk_of_complete_messages_is_returned_as_is() -> None:
    rw = make(EMP)
    head = CopyOutResponse(0, (0,)).encode()
    assert rw.feed(head) is head
    chunk = b"".join(CopyData(b"x" * 1000 + b"\n").encode() for _ in range(64))
    assert rw.feed(chunk) is chunk
    tail = CopyDone().encode() + command_complete("COPY 64") + ready_for_query("I")
    assert rw.feed(tail) is tail
    assert rw.take_report() == ()


def test_only_the_message_with_a_hit_is_rewritten_and_counted() -> None:
    lines = [b"x" * 100 + b"\n"] * 10
    lines[3] = b"EMP-123456\tEMP-654321\n"
    lines[9] = b"y" * 90 + b"EMP-000001\n"
    out = same_as_full_path((EMP,), copy_out(lines), [])
    assert b"EMP-" not in out
    rw = make(EMP)
    rw.feed(copy_out(lines))
    assert rw.take_report() == (("copy", "regex", 3),)


@pytest.mark.parametrize("cut", [0, 1, 4, 5, 6, 11, 12, 13, 15, 17, 20])
def test_hits_at_message_and_chunk_edges(cut: int) -> None:
    # A hit starting a row, ending a row, and a row split anywhere by the chunking.
    lines = [b"EMP-123456", b"abc", b"zzEMP-999999", b"\\\\EMP-111111\\n", b"q"]
    data = copy_out(lines)
    head = len(CopyOutResponse(0, (0,)).encode())
    for offset in range(0, len(data) - head, 7):
        same_as_full_path((EMP,), data, [head + offset + cut, head + offset + cut + 3])


def test_copy_text_escapes_and_csv_quoting() -> None:
    lines = [
        b"1\tAlice\\tSmith\\nalice@example.com\n",  # escaped tab/newline before the value
        b"2\tback\\\\slash@example.org\n",
        b'3,"Doe, ""J"" <jd@example.net>",x\n',
        b'4,"multi\nline bob@example.com"\n',
        b"5\t\\N\tnothing here\n",
    ]
    out = same_as_full_path((EMAIL,), copy_out(lines), [17, 40, 90])
    assert b"example." not in out


def test_binary_copy_takes_the_full_path() -> None:
    header = b"PGCOPY\n\xff\r\n\x00" + b"\0\0\0\0" + b"\0\0\0\0"
    field = b"mail a@b.io"
    tuple_ = struct.pack("!h", 1) + struct.pack("!i", len(field)) + field
    data = copy_out([header + tuple_, tuple_, b"\xff\xff"], fmt=1)
    out = same_as_full_path((EMAIL,), data, [30])
    assert b"a@b.io" not in out


def test_multibyte_text_and_headers_that_join_a_body_into_a_character() -> None:
    # Unicode digits match \d in a str pattern; a row in Arabic-Indic digits is masked.
    arabic = "EMP-\u0661\u0662\u0663\u0664\u0665\u0666".encode()
    # A 191-byte body has length 195 = 0xC3, a UTF-8 lead byte: decoded with its header the
    # body's first byte (a continuation byte) would vanish into "\xc3\xa9".
    odd = MaskRule("odd", Strategy.REDACT, patterns=(r"[\udc80-\udcbf]EMP",))
    joined = b"\xa9EMP" + b"z" * 186 + b"\n"
    assert len(joined) + 4 == 0xC3
    lines = [b"caf\xc3\xa9\n", arabic + b"\n", joined, b"x\n"]
    out = same_as_full_path((EMP, odd), copy_out(lines), [])
    assert arabic not in out and b"\xa9EMP" not in out


def test_case_insensitive_pattern_and_several_detectors() -> None:
    lines = [b"emp-123456\n", b"Emp-654321 and carol@example.com\n", b"plain\n"]
    out = same_as_full_path((EMP_ANY_CASE, EMAIL, EMP), copy_out(lines), [9])
    assert b"123456" not in out and b"carol@" not in out


def test_unscreenable_pattern_falls_back_to_the_full_path() -> None:
    rw = make(ANCHORED)
    assert rw._screen is None
    out = same_as_full_path((ANCHORED,), copy_out([b"EMP-123456\n", b"xEMP-123456\n"]), [])
    assert out.count(b"[regex]") == 1


FIELDS = [
    Field("id", 0, 0, 23),
    Field("note", 0, 0, 25),
    Field("doc", 0, 0, 3802),
    Field("ssn", 0, 0, 25),
]


def test_data_rows_text_and_json() -> None:
    rows: list[tuple[bytes | None, ...]] = [
        (b"1", b"hello", b'{"a": 1}', b"123-45-6789"),
        (b"2", b"mail dave@example.com", None, None),
        (b"3", None, b'{"to": "erin@example.com", "n": 4111111111111111}', b"x"),
        (b"4", b"EMP-123456", b"[]", b""),
    ]
    for rules in [(EMAIL,), (ALL,), (EMP,), (NOTE_ONLY,), (ALL, SSN_COLUMN)]:
        out = same_as_full_path(rules, select(FIELDS, rows * 5), [33, 70])
        if rules == (ALL,):
            assert b"dave@" not in out and b"erin@" not in out and b"6789" not in out


def test_binary_integers_are_scanned_as_digits_so_their_rows_are_not_screened() -> None:
    fields = [Field("n", 0, 0, 20, format=1), Field("note", 0, 0, 25, format=1)]
    rule = MaskRule("six", Strategy.REDACT, patterns=(r"\d{6}",))
    rows: list[tuple[bytes | None, ...]] = [(struct.pack("!q", 123456789), b"none")] * 3
    rw = make(rule)
    out = rw.feed(select(fields, rows))
    assert struct.pack("!q", 123456789) not in out
    same_as_full_path((rule,), select(fields, rows), [])


def test_blind_rows_without_a_description() -> None:
    rows = b"".join(data_row((b"a@b.io", b"x")) for _ in range(3)) + data_row((b"y", b"z"))
    data = rows + command_complete("SELECT 4") + ready_for_query("I")
    same_as_full_path((EMAIL,), data, [10])
    same_as_full_path((EMAIL, SSN_COLUMN), data, [10])


def test_a_broken_run_fails_like_the_full_path() -> None:
    good = CopyData(b"EMP-123456\n").encode()
    data = CopyOutResponse(0, (0,)).encode() + good + b"d\0\0\0\x02" + good
    same_as_full_path((EMP,), data, [])
    big = CopyOutResponse(0, (0,)).encode() + b"d" + struct.pack("!i", 1 << 30)
    same_as_full_path((EMP,), big, [])


ALPHABET = [
    b"x",
    b"abc ",
    b"\t",
    b"\\t",
    b"\\\\",
    b'"',
    b",",
    b"7",
    b"12345",
    b"-",
    b"@",
    b"EMP-",
    b"emp-",
    b"Emp-1234567",
    b"alice@example.com",
    b"4111 1111 1111 1111",
    b"123-45-6789",
    b"+1 (415) 555-2671",
    b"DE89 3704 0044 0532 0130 00",
    b"AKIAIOSFODNN7EXAMPLE",
    b"\xc3\xa9",
    b"\xa9",
    b"\xc3",
    "\u0663".encode(),
]
values = st.lists(st.sampled_from(ALPHABET), max_size=12).map(b"".join)
rule_sets = st.sampled_from(
    [(EMP,), (EMAIL,), (ALL,), (EMP_ANY_CASE, EMAIL), (ALL, EMP), (NOTE_ONLY,), (ANCHORED,)]
)
cuts = st.lists(st.integers(0, 5000), max_size=6)


@given(rule_sets, st.lists(values, max_size=12), cuts)
@settings(max_examples=300, deadline=None)
def test_copy_stream_is_the_full_paths(
    rules: tuple[MaskRule, ...], lines: list[bytes], where: list[int]
) -> None:
    same_as_full_path(rules, copy_out([line + b"\n" for line in lines]), where)


@given(
    rule_sets,
    st.lists(st.tuples(values, st.none() | values, values, values), max_size=10),
    st.sampled_from([0, 1]),
    cuts,
)
@settings(max_examples=300, deadline=None)
def test_data_row_stream_is_the_full_paths(
    rules: tuple[MaskRule, ...],
    rows: list[tuple[bytes | None, ...]],
    fmt: int,
    where: list[int],
) -> None:
    fields = [
        Field("note", 0, 0, 25, format=fmt),
        Field("doc", 0, 0, 114, format=fmt),
        Field("ssn", 0, 0, 1043, format=fmt),
        Field("other", 0, 0, 16384, format=fmt),
    ]
    same_as_full_path(rules, select(fields, rows), where)


def test_a_data_row_length_that_joins_a_value_into_a_character() -> None:
    # A value of 195 bytes: its length field ends in 0xC3, a UTF-8 lead byte, and the value
    # starts with a continuation byte. Decoded alone (as the full path does) it starts with
    # the escape "\udca9"; decoded with its length field, "\xc3\xa9" would be one "é".
    odd = MaskRule("odd", Strategy.REDACT, patterns=(r"[\udc80-\udcbf]EMP",))
    value = b"\xa9EMP" + b"z" * 191
    assert len(value) == 0xC3
    data = select([Field("note", 0, 0, 25)], [(value,), (b"plain",)])
    out = same_as_full_path((odd,), data, [])
    assert value not in out


def test_a_data_row_of_the_wrong_width_is_refused_as_before() -> None:
    fields = [Field("a"), Field("b")]
    data = row_description(fields) + data_row((b"x", b"y")) + data_row((b"only",))
    data += data_row((b"x", b"y"))
    rw = make(EMAIL)
    out = rw.feed(data)
    assert rw.failed is not None and b"wardgate masking" in out
    same_as_full_path((EMAIL,), data, [])


def test_data_rows_with_multibyte_text_are_screened_value_by_value() -> None:
    fields = [Field("name"), Field("note")]
    clean: list[tuple[bytes | None, ...]] = [("Zoë".encode() + b"\xa9", "Ærøskøbing".encode())]
    clean *= 40
    rw = make(EMAIL, EMP)
    data = select(fields, clean)
    assert rw.feed(data) is data
    rows: list[tuple[bytes | None, ...]] = [*clean, ("Zoë".encode(), "é zoe@example.com".encode())]
    rows += [(None, "EMP-\u0661\u0662\u0663\u0664\u0665\u0666".encode()), (b"\xc3", b"\xa9EMP")]
    out = same_as_full_path((EMAIL, EMP), select(fields, rows), [100])
    assert b"example.com" not in out and "\u0661".encode() not in out

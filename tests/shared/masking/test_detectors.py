"""Detectors: shapes plus the checks that make them mean something (Luhn, mod-97)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.masking.detectors import BUILTIN, DetectorSet, iban_valid, luhn_valid

ALL = DetectorSet.build(BUILTIN)


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),  # Visa test number
        ("5500005555555559", True),  # Mastercard test number
        ("378282246310005", True),  # Amex
        ("4111111111111112", False),
        ("79927398713", True),  # the classic Luhn example
        ("79927398710", False),
        ("", False),
        ("12a4", False),
    ],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("iban", "valid"),
    [
        ("DE89 3704 0044 0532 0130 00", True),
        ("GB82WEST12345698765432", True),
        ("FR1420041010050500013M02606", True),
        ("NL91ABNA0417164300", True),
        ("GB82WEST12345698765433", False),
        ("DE00 3704 0044 0532 0130 00", False),
        ("XX", False),
    ],
)
def test_iban_mod97(iban: str, valid: bool) -> None:
    assert iban_valid(iban) is valid


@pytest.mark.parametrize(
    ("text", "detector", "found"),
    [
        ("mail Alice.Smith+x@Example.co.uk now", "email", "Alice.Smith+x@Example.co.uk"),
        ("card 4111-1111-1111-1111.", "card", "4111-1111-1111-1111"),
        ("iban DE89 3704 0044 0532 0130 00 Bank", "iban", "DE89 3704 0044 0532 0130 00"),
        ("tel +1 (415) 555-2671", "phone", "+1 (415) 555-2671"),
        ("tel (415) 555-2671", "phone", "(415) 555-2671"),
        ("ssn 123-45-6789", "national_id", "123-45-6789"),
        ("nino AB 12 34 56 C", "national_id", "AB 12 34 56 C"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nature_", "jwt", None),
        ("key AKIAIOSFODNN7EXAMPLE", "api_key", "AKIAIOSFODNN7EXAMPLE"),
        ("key ghp_" + "a" * 36, "api_key", "ghp_" + "a" * 36),
    ],
)
def test_each_detector_finds_its_shape(text: str, detector: str, found: str | None) -> None:
    spans = ALL.find(text)
    assert [s[2] for s in spans] == [detector], spans
    start, end, _ = spans[0]
    assert text[start:end] == (found if found is not None else text[4:])


@pytest.mark.parametrize(
    "text",
    [
        "order 4111111111111112",  # fails Luhn
        "ssn 000-12-3456",  # never issued
        "ssn 666-12-3456",
        "2024-01-15 12:30:00",
        "version 1.2.3.4",
        "GB82WEST12345698765433",  # fails mod-97
        "user@localhost",  # no TLD
        "uuid 6f1c2e2a-8d3b-4b1e-9c3f-2a7d5e9b0c11",
    ],
)
def test_near_misses_are_left_alone(text: str) -> None:
    assert ALL.find(text) == []


def test_spans_do_not_overlap_and_custom_patterns_report_as_regex() -> None:
    detectors = DetectorSet.build(["email", "card"], [r"EMP-\d{6}"])
    text = "EMP-123456 a@b.io 4111111111111111"
    assert [(text[s:e], d) for s, e, d in detectors.find(text)] == [
        ("EMP-123456", "regex"),
        ("a@b.io", "email"),
        ("4111111111111111", "card"),
    ]
    with pytest.raises(ValueError, match="unknown detectors"):
        DetectorSet.build(["passport"])


@given(st.text(max_size=200))
def test_find_on_any_text_gives_ordered_disjoint_spans(text: str) -> None:
    end = 0
    for start, stop, name in ALL.find(text):
        assert end <= start < stop <= len(text)
        assert name in BUILTIN
        end = stop

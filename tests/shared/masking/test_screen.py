"""The detectors' prefilter: every detector hit lies under a screen match, in any text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.masking import detectors as d
from shared.masking.detectors import BUILTIN, DetectorSet
from shared.masking.screen import Screen, build_screen

# The regular expressions behind each built-in detector: the screen must cover every match
# of these (a superset of what the detectors report, which also validate).
SHAPES: dict[str, tuple[re.Pattern[str], ...]] = {
    "email": (d._EMAIL,),
    "card": (d._CARD,),
    "iban": (d._IBAN,),
    "phone": (d._PHONE_INTL, d._PHONE_NANP),
    "national_id": (d._SSN, d._NINO, d._NIR),
    "jwt": (d._JWT,),
    "api_key": (d._API_KEY,),
}
FRAGMENTS = [
    *"0123456789",
    *"0123456789",
    *"ABCDEGKNPTZ",
    *"abcemoxyz",
    *" -.@+()_%\t\\\"',",
    "é",
    "\u212a",  # KELVIN SIGN: folds to k under Unicode IGNORECASE
    "eyJ",
    "AKIA",
    "ASIA",
    "ghp_",
    "github_pat_",
    "xoxb-",
    "sk_live_",
    "rk_live_",
    "AIza",
    "sk-",
    "wgt_",
    "-----BEGIN RSA PRIVATE KEY-----",
    "alice@example.com",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "+1 (415) 555-2671",
    "(415) 555-2671",
    "123-45-6789",
    "AB 12 34 56 C",
    "1 84 12 76 451 089 46",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
    "EMP-123456",
    # the shortest or barest forms of some shapes
    "4222222222222",
    "GB82WEST12345698765432",
    "GB82WEST1234ABCD",
    "eyJabcd.eyJabcd.",
    # api keys of the shortest length their pattern takes
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a1" * 18,
    "github_pat_" + "B_" * 20,
    "xoxb-12345-67890",
    "sk_live_" + "x" * 20,
    "rk_live_" + "Y" * 20,
    "AIza" + "z-" * 17 + "z",
    "sk-" + "_" * 20,
    "wgk_" + "-" * 20,
]
texts = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join),
    # Dense shapes the fragments rarely form: digit runs with separators, short JWTs.
    st.text(alphabet="0123456789 -.AB()+", max_size=60),
    st.text(alphabet="0123456789ABCDGW ", max_size=40),
    st.lists(st.sampled_from(["1", "23", "456", "7890", " ", "-", "x"]), max_size=30).map("".join),
    st.lists(st.sampled_from(["eyJ", "ab", "c", ".", "-", "_"]), max_size=30).map("".join),
)


def covered(screen: Screen, text: str, span: tuple[int, int]) -> bool:
    return any(a < span[1] and span[0] < b for a, b in screen.spans(text))


def assert_covers(screen: Screen, shapes: tuple[re.Pattern[str], ...], text: str) -> None:
    for shape in shapes:
        for m in shape.finditer(text):
            if m.end() > m.start():
                assert covered(screen, text, m.span()), (shape.pattern, text, m.span())


@pytest.mark.parametrize("name", sorted(BUILTIN))
@settings(max_examples=300, deadline=None)
@given(text=texts, prefix=texts)
def test_every_shape_match_is_under_a_screen_match(name: str, text: str, prefix: str) -> None:
    screen = build_screen([DetectorSet.build([name])])
    assert screen is not None
    assert_covers(screen, SHAPES[name], text)
    # Inside a longer text (other rows, message headers) the same holds.
    assert_covers(screen, SHAPES[name], prefix + "\x00\x00\x03\xed" + text + "\n" + prefix)
    # Short texts are screened by one alternation, long ones by a search per screen.
    assert_covers(screen, SHAPES[name], "," * 130 + text)


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_every_detector_hit_is_under_a_screen_match(text: str) -> None:
    detectors = DetectorSet.build(BUILTIN, [r"EMP-\d{6}"])
    screen = build_screen([detectors])
    assert screen is not None
    for start, end, _name in detectors.find(text):
        assert covered(screen, text, (start, end))


@pytest.mark.parametrize(
    "text",
    [
        "mail Alice.Smith+x@Example.co.uk now",
        "card 4111-1111-1111-1111.",
        "iban DE89 3704 0044 0532 0130 00 Bank",
        "GB82WEST12345698765432",
        "tel +1 (415) 555-2671",
        "tel 415.555.2671",
        "ssn 123-45-6789",
        "nino AB123456C",
        "nir 2 84 12 76 451 089 93",
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig-nature_",
        "key AKIAIOSFODNN7EXAMPLE",
        "key xoxb-abcdefghij",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "token wgt_" + "a" * 30,
        "key sk-" + "a" * 20,
        "key sk_live_" + "a" * 20,
        "key ghp_" + "a" * 36,
        "key github_pat_" + "a" * 40,
        "key AIza" + "a" * 35,
    ],
)
def test_known_values_are_screened(text: str) -> None:
    detectors = DetectorSet.build(BUILTIN)
    screen = build_screen([detectors])
    assert screen is not None
    hits = detectors.find(text)
    assert hits
    for start, end, _name in hits:
        assert covered(screen, text, (start, end))


def test_ordinary_text_is_not_screened() -> None:
    screen = build_screen([DetectorSet.build(BUILTIN, [r"EMP-\d{6}"])])
    assert screen is not None
    assert not screen.could_match("x" * 1000 + "\n")
    assert not screen.could_match("42\torder shipped to Lyon\t2026-05-01 12:00:00\t1234.50\n")


@pytest.mark.parametrize(
    ("pattern", "screenable"),
    [
        (r"EMP-\d{6}", True),
        (r"(?i)emp-\d+", True),
        (r"[^x]{3}|a*?b", True),
        (r"(?x) E M P # comment", True),
        (r"^EMP", False),  # anchors see the value's edges, not the run's
        (r"EMP$", False),
        (r"\bEMP\b", False),
        (r"(?<!\d)\d{6}", False),
        (r"(?=E)EMP", False),
        (r"(a)\1", False),
        (r"(?P<n>a)?(?(n)b|c)", False),
        (r"(?>a+)b", False),
        (r"a++b", False),
        (r"a*", False),  # matches the empty string
        (r"x|", False),
    ],
)
def test_custom_patterns_are_screened_only_when_context_free(
    pattern: str, screenable: bool
) -> None:
    screen = build_screen([DetectorSet.build(["email"], [pattern])])
    assert (screen is not None) is screenable


def test_case_insensitive_custom_pattern_keeps_its_flags() -> None:
    screen = build_screen([DetectorSet.build([], [r"(?i)emp-\d{6}"])])
    assert screen is not None
    assert screen.could_match("id Emp-123456")
    assert screen.could_match("id \u212amp-12".replace("\u212a", "e") + "3456")
    unicode = build_screen([DetectorSet.build([], [r"(?i)k\d"])])
    assert unicode is not None and unicode.could_match("\u212a1")  # Unicode case folding


def test_no_detectors_no_screen() -> None:
    assert build_screen([]) is None
    assert build_screen([DetectorSet.build([])]) is None


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_fragment_shape_is_under_a_screen_match(name: str) -> None:
    # The property tests above draw from these; here each is checked every run.
    screen = build_screen([DetectorSet.build([name])])
    assert screen is not None
    for fragment in FRAGMENTS:
        for text in (fragment, f" {fragment} ", f"{fragment.lower()}\t", "," * 130 + fragment):
            assert_covers(screen, SHAPES[name], text)

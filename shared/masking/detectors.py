"""Value detectors: where in a string a sensitive value is.

Each detector is a regular expression for the shape plus, where one exists, the check that
makes the shape mean something (Luhn for card numbers, ISO 7064 mod-97 for IBANs), so a
16-digit order number that fails Luhn is left alone. `find` returns non-overlapping spans,
leftmost first and longest at a tie, each naming its detector.

What each one recognises:
- email: local@domain.tld (case-insensitive).
- card: 13 to 19 digits, optionally grouped by spaces or dashes, passing Luhn.
- iban: two letters, two check digits, 11 to 30 alphanumerics (optionally in groups of
  four), passing mod-97.
- phone: international `+CC ...` numbers of 8 to 15 digits, and North American
  `(555) 123-4567` / `555-123-4567` / `555.123.4567`.
- national_id: US SSN `123-45-6789` (not 000/666/9xx areas, 00 group or 0000 serial),
  UK National Insurance numbers `AB 12 34 56 C`, and the French NIR (13 digits + key 97).
- jwt: three base64url segments whose first two start with `eyJ` (a JSON object).
- api_key: well-known secret prefixes (AWS `AKIA`/`ASIA`, GitHub `ghp_`/`gho_`/`ghs_`/
  `ghu_`/`ghr_`/`github_pat_`, Slack `xox?-`, Stripe `sk_live_`/`rk_live_`, Google `AIza`,
  OpenAI-style `sk-`, Wardgate's own `wgt_`/`wgr_`/`wgk_`, and PEM private-key headers).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Span = tuple[int, int, str]  # start, end, detector name


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits."""
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616 IBAN check: move the first four characters to the end, letters to
    numbers (A=10 ... Z=35), the number mod 97 is 1."""
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isascii() or not compact.isalnum():
        return False
    if not (compact[:2].isalpha() and compact[2:4].isdigit()):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _digits(s: str) -> str:
    return "".join(ch for ch in s if "0" <= ch <= "9")


_EMAIL = re.compile(
    r"(?<![\w.%+-])[a-z0-9](?:[a-z0-9._%+-]{0,63})@[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)*\.[a-z]{2,24}(?![a-z0-9-])",
    re.IGNORECASE | re.ASCII,
)
_CARD = re.compile(r"(?<![\d.-])\d(?:[ -]?\d){12,18}(?![\d])", re.ASCII)
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])", re.ASCII)
_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?![\d])", re.ASCII)
_PHONE_NANP = re.compile(r"(?<![\w(+-])(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?![\d-])", re.ASCII)
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])", re.ASCII)
_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])",
    re.ASCII,
)
_NIR = re.compile(r"(?<![\d])[12] ?\d{2} ?\d{2} ?\d{2} ?\d{3} ?\d{3} ?\d{2}(?![\d])", re.ASCII)
_JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*", re.ASCII)
_API_KEY = re.compile(
    r"(?<![A-Za-z0-9_])(?:"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{40,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|(?:sk|rk)_live_[A-Za-z0-9]{20,}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|sk-[A-Za-z0-9_-]{20,}"
    r"|wg[tkr]_[A-Za-z0-9_-]{20,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r")(?![A-Za-z0-9_])",
    re.ASCII,
)


def _plain(pattern: re.Pattern[str]) -> Callable[[str], Iterable[tuple[int, int]]]:
    def find(text: str) -> Iterable[tuple[int, int]]:
        return (m.span() for m in pattern.finditer(text))

    return find


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        if luhn_valid(_digits(m.group())):
            yield m.span()


def _ibans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        candidate = m.group()
        # The greedy shape may have swallowed a following capitalised word: shorten to the
        # longest prefix that checks out.
        for end in range(len(candidate), 14, -1):
            if (
                candidate[end - 1] != " "
                and (end == len(candidate) or not candidate[end].isalnum())
                and iban_valid(candidate[:end])
            ):
                yield m.start(), m.start() + end
                break


def _phones(text: str) -> Iterable[tuple[int, int]]:
    for m in _PHONE_INTL.finditer(text):
        if 8 <= len(_digits(m.group())) <= 15:
            yield m.span()
    yield from (m.span() for m in _PHONE_NANP.finditer(text))


def _nir_valid(raw: str) -> bool:
    digits = _digits(raw)
    return len(digits) == 15 and 97 - int(digits[:13]) % 97 == int(digits[13:])


def _national_ids(text: str) -> Iterable[tuple[int, int]]:
    yield from (m.span() for m in _SSN.finditer(text))
    yield from (m.span() for m in _NINO.finditer(text))
    yield from (m.span() for m in _NIR.finditer(text) if _nir_valid(m.group()))


BUILTIN: dict[str, Callable[[str], Iterable[tuple[int, int]]]] = {
    "email": _plain(_EMAIL),
    "card": _cards,
    "iban": _ibans,
    "phone": _phones,
    "national_id": _national_ids,
    "jwt": _plain(_JWT),
    "api_key": _plain(_API_KEY),
}


@dataclass(frozen=True, slots=True)
class DetectorSet:
    """Detectors to run together; custom patterns report as detector "regex"."""

    names: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def build(cls, names: Iterable[str], patterns: Iterable[str] = ()) -> DetectorSet:
        names = tuple(dict.fromkeys(names))
        unknown = [n for n in names if n not in BUILTIN]
        if unknown:
            raise ValueError(f"unknown detectors {unknown}: use {', '.join(BUILTIN)}")
        return cls(names, tuple(re.compile(p) for p in patterns))

    def find(self, text: str) -> list[Span]:
        found: list[Span] = []
        for name in self.names:
            found.extend((s, e, name) for s, e in BUILTIN[name](text) if e > s)
        for pattern in self.patterns:
            found.extend(
                (m.start(), m.end(), "regex") for m in pattern.finditer(text) if m.end() > m.start()
            )
        if len(found) > 1:
            found.sort(key=lambda span: (span[0], span[0] - span[1]))
            kept: list[Span] = []
            end = -1
            for span in found:
                if span[0] >= end:
                    kept.append(span)
                    end = span[1]
            found = kept
        return found

"""A prefilter for the detectors: which stretches of a long text could hold a hit.

The wire rewriter (`shared.pgwire.masking`) would otherwise parse every DataRow/CopyData
and run each detector over each value. A `Screen` runs a few regular expressions, at C
speed, over the text of many messages at once; a message that no screen match overlaps
cannot hold a detector hit and passes untouched.

Soundness rests on one property of every screen pattern S built for a detector D:

    every string D can report (in any surrounding text) contains a substring S matches,
    whatever text surrounds it, and S never matches the empty string.

Then, if a value holds a hit at [s, e), S matches at some t in [s, e) of any longer text
containing the value, and `finditer` reports a match overlapping [s, e): while no reported
match has reached past t, the next search starts at or before t, so it finds a match
starting at or before t (S matches at t); a non-empty match starting at or before t either
ends after t, overlapping the hit, or ends at or before t and the search goes on. That
needs a backtracking search with no atomic groups or possessive repeats, and no
assertions: what a lookaround or anchor sees differs between a value alone and the value
inside a run of messages. Validation (Luhn, mod-97, digit counts) stays with the detector:
a screen only finds candidates. Texts shorter than `_SHORT` are searched with one
alternation of the built-in screens (the union of their matches; one search costs less
than many there).

- Built-in detectors get hand-written screens (below), each a shorter necessary part of
  the detector's pattern chosen to start with a literal or a small class, which Python's
  `re` searches fast. They are ASCII-only and case-sensitive like their patterns, so they
  match the same characters in any text.
- A custom pattern is its own screen when it has none of those constructs and cannot
  match the empty string (`EMP-\\d{6}` is); it keeps its flags. A pattern with an
  assertion, a backreference, a conditional, an atomic group or a possessive repeat gets
  no screen, and neither does its detector set: every value then takes the full path.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.masking.detectors import BUILTIN, DetectorSet

# The parser behind `re` (private: any surprise from it means "no screen").
_sre_parser: Any
_sre_constants: Any
try:
    _sre_parser = importlib.import_module("re._parser")
    _sre_constants = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - another Python
    _sre_parser = _sre_constants = None

# One pattern for the digit-led detectors, from the first digit of each match: card
# \d([ -]?\d){12,18}: its first 13 digits; French NIR [12]( ?\d\d){3}( ?\d{3}){2} ?\d\d: the
# same shape (at most one space before each digit); IBAN [A-Z]{2}\d\d( ?[A-Z0-9]){11,30}:
# from its check digits on; UK NINO [A-Z]{2} ?\d\d ?\d\d ?\d\d ?[A-D]: from its first digit.
# One pattern, led by one class, is searched much faster than four alternatives.
_DIGIT_LED = r"[0-9](?:(?:[ -]?[0-9]){12}|[0-9] ?[0-9]{2} ?[0-9]{2} ?[A-D]|[0-9](?: ?[A-Z0-9]){11})"
# Necessary parts of each built-in detector's matches (see detectors.py for the patterns):
_BUILTIN_SCREENS: dict[str, tuple[str, ...]] = {
    # local@domain: "@" then the domain's first character [a-z0-9] (case-insensitive).
    "email": (r"@[A-Za-z0-9]",),
    "card": (_DIGIT_LED,),
    "iban": (_DIGIT_LED,),
    # +CC numbers start "+" [1-9]; North American ones end \d{3}[.-]\d{4}.
    "phone": (r"\+[1-9]", r"-[0-9]{4}", r"\.[0-9]{4}"),
    # SSN \d{3}-\d\d-\d{4}; NINO and NIR as above.
    "national_id": (
        r"-[0-9]{2}-[0-9]{4}",
        _DIGIT_LED,
    ),
    "jwt": (r"eyJ[A-Za-z0-9_-]{4,}\.eyJ",),
    # The api_key alternatives, grouped by a literal each contains (a literal start is
    # searched fast): gh?_/github_pat_/?k_live_/wg?_ end "_" + 20 or more of
    # [A-Za-z0-9_-]; AKIA/ASIA hold "IA" + 16 [0-9A-Z]; xox?- without its x ("xxxx" is
    # searched slowly for "xox").
    "api_key": (
        r"_[A-Za-z0-9_-]{20}",
        r"IA[0-9A-Z]{16}",
        r"AIza[0-9A-Za-z_-]{35}",
        r"ox[abposr]-[A-Za-z0-9-]{10}",
        r"sk-[A-Za-z0-9_-]{20}",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    ),
}
assert set(_BUILTIN_SCREENS) == set(BUILTIN), "every built-in detector needs a screen"


def _plain_tree(items: Any) -> bool:
    """Only literals, classes, groups, alternation and backtracking repeats: no assertion,
    backreference, conditional, atomic group or possessive repeat (nor anything newer)."""
    c = _sre_constants
    for op, av in items:
        if op in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN):
            continue
        if op is c.BRANCH:
            if not all(_plain_tree(branch) for branch in av[1]):
                return False
        elif op is c.SUBPATTERN:
            if not _plain_tree(av[3]):
                return False
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            if not _plain_tree(av[2]):
                return False
        else:
            return False
    return True


@functools.lru_cache(maxsize=256)  # parsed once, not at every session open
def _context_free(pattern: re.Pattern[str]) -> bool:
    """The pattern matches the same strings wherever they stand, never the empty string,
    and a backtracking search finds a match wherever one starts."""
    if _sre_parser is None or not isinstance(pattern.pattern, str):
        return False
    try:
        parsed = _sre_parser.parse(pattern.pattern, pattern.flags)
        return bool(parsed.getwidth()[0] >= 1 and _plain_tree(parsed))
    except Exception:  # a parser we do not know: no screen
        return False


# Below this many characters one alternation of the built-in screens is cheaper than a
# search per screen (each search has a fixed cost); above it the separate searches, most of
# them led by a literal, are faster.
_SHORT = 128


@dataclass(frozen=True, slots=True)
class Screen:
    """Patterns whose matches cover every detector hit (see the module docstring).
    `short`: the same language in fewer patterns, for short texts."""

    patterns: tuple[re.Pattern[str], ...]
    short: tuple[re.Pattern[str], ...]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where a hit could be: every match of every pattern (unsorted)."""
        patterns = self.short if len(text) < _SHORT else self.patterns
        return [m.span() for pattern in patterns for m in pattern.finditer(text)]

    def could_match(self, text: str) -> bool:
        patterns = self.short if len(text) < _SHORT else self.patterns
        return any(pattern.search(text) is not None for pattern in patterns)


def build_screen(detector_sets: Iterable[DetectorSet]) -> Screen | None:
    """A screen for all the sets together, or None when one of them cannot be screened."""
    sources: dict[str, None] = {}
    custom: dict[tuple[str, int], re.Pattern[str]] = {}
    for detectors in detector_sets:
        for name in detectors.names:
            sources.update(dict.fromkeys(_BUILTIN_SCREENS[name]))
        for pattern in detectors.patterns:
            if not _context_free(pattern):
                return None
            custom[(pattern.pattern, pattern.flags)] = pattern
    if not sources and not custom:
        return None
    # Custom patterns keep their own flags (an inline global flag cannot go in an
    # alternation); the built-in sources have none.
    builtin = tuple(re.compile(s) for s in sources)
    combined = (re.compile("|".join(f"(?:{s})" for s in sources)),) if sources else ()
    return Screen(builtin + tuple(custom.values()), combined + tuple(custom.values()))


__all__ = ["Screen", "build_screen"]

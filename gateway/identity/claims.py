"""From verified claims to a Wardgate user: name, groups, and workload trust matching (pure).

A person's user name comes from one configured claim (`preferred_username` by default); a
missing or unusable claim refuses the sign-in rather than falling back to another claim,
since a fallback would let a user choose which claim names them. Groups are the configured
groups claim (a list of strings, or one string) plus `claim_groups` rules (claim value glob
-> group). Workload tokens become a machine user when every claim of a trust entry matches.

Claim patterns (`glob_match`) are path globs, not shell globs: a claim value such as
`acme/app` or `refs/tags/v1.2` is a path of `/`-separated segments, and

- `*` matches one or more characters within one segment: never `/`, never nothing;
- `?` matches one character within a segment, `[abc]`/`[a-z]`/`[!abc]` one of a set;
- `**`, as a whole segment, matches one or more whole segments (not nothing);
- everything else matches itself, case-sensitively;
- a value with a `.` or `..` segment, or with a control or format character (newline, NUL,
  bidirectional overrides...), matches no pattern at all, even a literal one;
- the whole value must match, not a part of it.

So `acme/*` matches `acme/app` but not `acme/`, `acme/app/x`, `acme/app/../../evil/x` or
`acme/x\n`; `refs/tags/v*` does not match `refs/tags/v1/../../heads/main`; `acme/**`
matches `acme/app/sub`. `pattern_problem` refuses, at configuration time, a pattern that
could not mean what it says (`**` inside a segment, `.`/`..` segments, control characters).
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
MAX_GROUPS = 256


class ClaimsError(Exception):
    """The claims cannot name a user."""


class ClaimGroupRule(Protocol):
    claim: str
    value: str
    group: str


class TrustRule(Protocol):
    name: str
    issuer: str
    audience: str
    claims: dict[str, str | list[str]]


def user_name(claims: Mapping[str, Any], claim: str) -> str:
    value = claims.get(claim)
    if not isinstance(value, str) or not USER_NAME_RE.match(value):
        raise ClaimsError(f"the {claim!r} claim is missing or not a usable user name")
    return value


def groups_from(
    claims: Mapping[str, Any], groups_claim: str, rules: Iterable[ClaimGroupRule] = ()
) -> tuple[str, ...]:
    raw = claims.get(groups_claim)
    groups: list[str] = []
    if isinstance(raw, str):
        groups.append(raw)
    elif isinstance(raw, list):
        groups.extend(g for g in raw if isinstance(g, str))
    for rule in rules:
        value = claims.get(rule.claim)
        values = value if isinstance(value, list) else [value]
        if any(_matches(v, rule.value) for v in values):
            groups.append(rule.group)
    unique = sorted(set(g for g in groups if g))
    return tuple(unique[:MAX_GROUPS])


def _matches(value: object, pattern: str) -> bool:
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        return False
    if not isinstance(value, str | int | float):
        return False
    try:
        text = str(value)
    except ValueError:  # an int beyond Python's digit limit
        return False
    return glob_match(text, pattern)


def _unprintable(ch: str) -> bool:
    # Cc control, Cf format (bidi overrides, zero-width), Cs/Co/Cn, line/paragraph separators.
    return unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` is not a usable claim pattern, or None (see the module docstring)."""
    if not pattern:
        return "an empty pattern matches nothing"
    if any(_unprintable(ch) for ch in pattern):
        return "a pattern cannot contain control or format characters"
    for segment in pattern.split("/"):
        if segment in (".", ".."):
            return f"a {segment!r} segment never matches"
        if "**" in segment and segment != "**":
            return "'**' must be a whole segment (e.g. acme/**), use '*' within one"
    try:
        _compiled(pattern)
    except re.error:
        return "a character class [...] is malformed (e.g. a range z-a)"
    return None


def glob_match(value: str, pattern: str) -> bool:
    """Whether the claim value `value` matches `pattern` (see the module docstring)."""
    if not value or any(_unprintable(ch) for ch in value):
        return False
    segments = value.split("/")
    if any(s in (".", "..") for s in segments):
        return False
    if pattern_problem(pattern) is not None:
        return False  # configuration refuses these; fail closed if one slips through
    return _match_segments(segments, _compiled(pattern))


# A segment pattern: literal text, "?" (one character), a class (one character of a set),
# or "*" (one or more characters). Matched by a set of reachable positions, O(tokens x
# length), so no pattern can backtrack exponentially on a long claim value.
_Token = tuple[str, str] | tuple[str, re.Pattern[str]]
_Segment = tuple[_Token, ...] | None  # None: "**"


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> tuple[_Segment, ...]:
    return tuple(
        None if segment == "**" else _segment_tokens(segment) for segment in pattern.split("/")
    )


def _segment_tokens(segment: str) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            tokens.append(("lit", "".join(literal)))
            literal.clear()

    i = 0
    while i < len(segment):
        ch = segment[i]
        i += 1
        if ch in "*?":
            flush()
            tokens.append(("star" if ch == "*" else "one", ch))
            continue
        end = -1
        if ch == "[":
            start = i + 1 if segment[i : i + 1] == "!" else i
            end = segment.find("]", start + 1)  # a "]" first in the set is itself
        if end < 0:
            literal.append(ch)  # also an unclosed "[", as in fnmatch
            continue
        body = segment[i:end]
        i = end + 1
        negate = body.startswith("!")
        body = body[1:] if negate else body
        # Escape what re would read as set operations or escapes; keep ranges.
        body = re.sub(r"([&~|\\^\[])", r"\\\1", body)
        flush()
        tokens.append(("set", re.compile(f"[{'^' if negate else ''}{body}]", re.DOTALL)))
    flush()
    return tuple(tokens)


def _segment_matches(value: str, tokens: tuple[_Token, ...]) -> bool:
    reach = {0}
    for kind, data in tokens:
        if kind == "star":
            start = min(reach)
            reach = set(range(start + 1, len(value) + 1))
        elif kind == "one":
            reach = {p + 1 for p in reach if p < len(value)}
        elif kind == "lit":
            assert isinstance(data, str)
            reach = {p + len(data) for p in reach if value.startswith(data, p)}
        else:
            assert isinstance(data, re.Pattern)
            reach = {p + 1 for p in reach if p < len(value) and data.fullmatch(value[p])}
        if not reach:
            return False
    return len(value) in reach


def _match_segments(values: Sequence[str], patterns: Sequence[_Segment]) -> bool:
    # done[i]: patterns[j:] match values[i:], for j from the last pattern segment back to 0.
    n = len(values)
    done = [False] * n + [True]
    # first_text[i]: the first segment at or after i with text (n if none).
    first_text = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        first_text[i] = i if values[i] else first_text[i + 1]
    for pattern in reversed(patterns):
        if pattern is None:
            # `**` covers values[i:k], k > i, with some text in it: k > first_text[i].
            later = [False] * (n + 2)  # later[x]: done[k] for some k >= x
            for x in range(n, -1, -1):
                later[x] = done[x] or later[x + 1]
            done = [first_text[i] < n and later[first_text[i] + 1] for i in range(n)] + [False]
        else:
            done = [done[i + 1] and _segment_matches(values[i], pattern) for i in range(n)] + [
                False
            ]
    return done[0]


def trust_matches(claims: Mapping[str, Any], rule: TrustRule) -> str | None:
    """None when every claim of `rule` matches, else the name of the first that does not."""
    for name, wanted in rule.claims.items():
        patterns = wanted if isinstance(wanted, list) else [wanted]
        if not any(_matches(claims.get(name), p) for p in patterns):
            return name
    return None

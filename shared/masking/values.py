"""Masking one value: which rules cover a column, and what a masked value looks like.

Replacements never contain a quote, backslash, comma, brace, parenthesis, tab or newline,
so a substring masked inside JSON text, an array or record literal, or a COPY text/CSV line
leaves that syntax valid. Strategies:

- redact: whole values become `[redacted]`, detected substrings `[<detector>]`, e.g.
  `[email]`;
- partial: `****` followed by the last four characters (`****1234`); four or fewer
  characters become `****`;
- token: `tok_` + 16 hex digits of HMAC-SHA256(key, value). The key is per connection, so
  equal values give equal tokens within a connection (joins, GROUP BY, DISTINCT work) and
  tokens cannot be compared across connections or reversed without the key.

Types that would reject such text (numbers, uuid, dates, booleans, bytea, arrays, records,
...) get a type-valid value instead: a keyed integer of the column's width (token, for
int2/int4/int8), a keyed UUID (token, for uuid), and SQL NULL otherwise. `typed_mask`
returns that; the wire rewriter knows each column's type.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import uuid
from collections import Counter
from dataclasses import dataclass

from shared.masking.detectors import DetectorSet
from shared.masking.spec import MaskRule, MaskSpec, Strategy

REDACTED = "[redacted]"
Counts = Counter[tuple[str, str]]  # (column, detector or "column") -> values masked

# The text output of these types is one scalar whose syntax rejects our replacements.
STRICT_OIDS = frozenset(
    {
        16,  # bool
        17,  # bytea
        20,  # int8
        21,  # int2
        23,  # int4
        24,  # regproc
        26,  # oid
        28,  # xid
        700,  # float4
        701,  # float8
        790,  # money
        1082,  # date
        1083,  # time
        1114,  # timestamp
        1184,  # timestamptz
        1186,  # interval
        1266,  # timetz
        1560,  # bit
        1562,  # varbit
        1700,  # numeric
        2950,  # uuid
        869,  # inet
        650,  # cidr
        829,  # macaddr
        774,  # macaddr8
        3220,  # pg_lsn
        18,  # "char": one byte
    }
)
# Text-like types: their text and binary forms are the same UTF-8 string.
TEXT_OIDS = frozenset({25, 1043, 1042, 19, 705, 142})
JSON_OID, JSONB_OID = 114, 3802
INT_WIDTH = {21: 2, 23: 4, 20: 8}
UUID_OID = 2950


def _glob_matches(pattern: str, column: str, qualified: tuple[str, ...], loose: bool) -> bool:
    """`qualified` are the catalog names of the column (table.column, schema.table.column),
    so a pattern also matches a table column renamed by an alias."""
    if "." not in pattern:
        return fnmatch.fnmatchcase(column, pattern) or any(
            fnmatch.fnmatchcase(q.rsplit(".", 1)[-1], pattern) for q in qualified
        )
    if loose and fnmatch.fnmatchcase(column, pattern.rsplit(".", 1)[-1]):
        return True
    return any(fnmatch.fnmatchcase(q, pattern) for q in qualified)


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """How one result column is masked: a whole-value rule, detectors, or nothing."""

    label: str  # for counts: the column's name (table.name when known)
    whole: MaskRule | None
    scan: tuple[tuple[MaskRule, DetectorSet], ...]

    @property
    def active(self) -> bool:
        return self.whole is not None or bool(self.scan)


class Masker:
    """The compiled rules of one session."""

    def __init__(self, spec: MaskSpec) -> None:
        self.spec = spec
        self._key = spec.token_key
        self._detectors = {
            r.name: DetectorSet.build(r.detectors, r.patterns) for r in spec.rules if r.scans
        }
        self.counts: Counts = Counter()
        self._everywhere = self.plan("", ())

    @property
    def detector_sets(self) -> tuple[DetectorSet, ...]:
        """The detectors of every rule that scans, for a prefilter (`shared.masking.screen`)."""
        return tuple(self._detectors.values())

    @property
    def everywhere(self) -> ColumnPlan:
        """The plan for a value whose column is unknown (COPY, notices, errors)."""
        return self._everywhere

    def plan(
        self, column: str, qualified: tuple[str, ...] = (), *, loose: bool = False
    ) -> ColumnPlan:
        """Rules for a column named `column` (lower case); `qualified` are its
        `table.column` / `schema.table.column` names when the catalog knows them. `loose`:
        the column comes from a table the catalog lookup did not see (created since), so a
        `table.column` pattern matches on its column part alone (fail closed)."""
        whole: MaskRule | None = None
        scan: list[tuple[MaskRule, DetectorSet]] = []
        for rule in self.spec.rules:
            covers = not rule.columns or (
                bool(column or qualified)
                and any(_glob_matches(p, column, qualified, loose) for p in rule.columns)
            )
            if rule.whole_column:
                if whole is None and covers:
                    whole = rule
            elif covers:
                scan.append((rule, self._detectors[rule.name]))
        label = qualified[0] if qualified else column
        return ColumnPlan(label or "?", whole, tuple(scan))

    # ---- strategies ------------------------------------------------------------------

    def token(self, value: str | bytes) -> str:
        raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        return "tok_" + hmac.new(self._key, raw, hashlib.sha256).hexdigest()[:16]

    def replacement(self, value: str, strategy: Strategy, detector: str) -> str:
        if strategy is Strategy.TOKEN:
            return self.token(value)
        if strategy is Strategy.PARTIAL:
            tail = "".join(ch for ch in value if ch.isalnum())[-4:]
            return "****" + tail if len(value) > 4 else "****"
        return REDACTED if detector == "column" else f"[{detector}]"

    def typed_mask(
        self, type_oid: int, raw: bytes, strategy: Strategy, binary: bool
    ) -> bytes | None:
        """A type-valid masked value for a column whose type rejects text; None is NULL."""
        if strategy is Strategy.TOKEN:
            width = INT_WIDTH.get(type_oid)
            # Keyed on the canonical text, so text and binary results mask alike.
            canonical = raw
            if binary and width is not None and len(raw) == width:
                canonical = str(int.from_bytes(raw, "big", signed=True)).encode()
            elif binary and type_oid == UUID_OID and len(raw) == 16:
                canonical = str(uuid.UUID(bytes=raw)).encode()
            digest = hmac.new(self._key, canonical, hashlib.sha256).digest()
            if width is not None:
                number = int.from_bytes(digest[:width], "big") >> 1  # non-negative
                return (
                    number.to_bytes(width, "big", signed=True) if binary else str(number).encode()
                )
            if type_oid == UUID_OID:
                value = uuid.UUID(bytes=digest[:16], version=4)
                return value.bytes if binary else str(value).encode()
        return None

    # ---- values ----------------------------------------------------------------------

    def mask_whole(self, value: str, rule: MaskRule, label: str) -> str:
        self.counts[(label, "column")] += 1
        return self.replacement(value, rule.strategy, "column")

    def scan_text(
        self, text: str, plan: ColumnPlan, *, json: bool = False
    ) -> tuple[str, MaskRule | None]:
        """Replace detected substrings; (new text, the first rule that masked something).

        With `json`, a match outside a JSON string (a number) is widened to the whole
        number and replaced by a quoted string, so the document stays valid JSON."""
        hit: MaskRule | None = None
        for rule, detectors in plan.scan:
            spans = detectors.find(text)
            if not spans:
                continue
            strings = _json_string_spans(text) if json else None
            out: list[str] = []
            last = 0
            for start, end, name in spans:
                quote = False
                if strings is not None and not _inside(strings, start):
                    start, end = _widen_number(text, start, end)
                    quote = True
                if start < last:
                    continue
                repl = self.replacement(text[start:end], rule.strategy, name)
                out.append(text[last:start])
                out.append(f'"{repl}"' if quote else repl)
                last = end
                self.counts[(plan.label, name)] += 1
                hit = hit or rule
            out.append(text[last:])
            text = "".join(out)
        return text, hit


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


def _json_string_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _JSON_STRING.finditer(text)]


def _inside(spans: list[tuple[int, int]], index: int) -> bool:
    return any(s < index < e for s, e in spans)


def _widen_number(text: str, start: int, end: int) -> tuple[int, int]:
    for m in _JSON_NUMBER.finditer(text):
        if m.start() <= start and end <= m.end():
            return m.span()
        if m.start() > start:
            break
    return start, end

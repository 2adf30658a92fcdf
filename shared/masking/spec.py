"""The masking rules of one session, as resolved by the gateway for one identity and
connection and sent to the agent in OpenSession.

A rule masks:
- with `columns` and no detectors: the whole value of every matching column;
- with `detectors`/`patterns` and no columns: every substring those detectors find, in any
  column (and in COPY output, notices and errors);
- with both: the detected substrings, only in the matching columns.

Column globs are lower case; `name` matches a column of any table (and an expression's
output name), `table.name` / `schema.table.name` a table column resolved through the
catalog (by table OID and attribute number, so an alias does not escape it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Strategy(enum.IntEnum):
    REDACT = 1  # the value becomes a fixed marker
    PARTIAL = 2  # all but the last four characters hidden: ****1234
    TOKEN = 3  # a keyed HMAC token: equal values mask alike, so joins/GROUP BY still work


DETECTORS = ("email", "card", "iban", "phone", "national_id", "jwt", "api_key")


@dataclass(frozen=True, slots=True)
class MaskRule:
    name: str
    strategy: Strategy
    columns: tuple[str, ...] = ()
    detectors: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()  # custom regular expressions (Python `re` syntax)

    @property
    def whole_column(self) -> bool:
        return bool(self.columns) and not (self.detectors or self.patterns)

    @property
    def scans(self) -> bool:
        return bool(self.detectors or self.patterns)


@dataclass(frozen=True, slots=True)
class MaskSpec:
    rules: tuple[MaskRule, ...] = ()
    # HMAC key of the token strategy, derived per connection from the gateway's secret.
    token_key: bytes = field(default=b"", repr=False)

    @property
    def empty(self) -> bool:
        return not self.rules

    @property
    def column_globs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for r in self.rules for c in r.columns))

"""Masking of server-to-client PostgreSQL bytes, as they stream (sans-I/O).

`ResultMasker.feed(bytes) -> bytes` takes the server's bytes in chunks of any size and
returns what may go to the client. Rules it keeps:

1. Framing is its own: a partial message waits in a carry buffer. Messages it does not
   rewrite (ParameterStatus, ParseComplete, CopyInResponse, ...) are passed on at once,
   even in pieces, never buffered whole. A message it must rewrite (RowDescription,
   DataRow, CopyData in copy-out, ErrorResponse, NoticeResponse, NotificationResponse,
   FunctionCallResponse) is buffered whole up to `max_message` bytes; a bigger one ends the
   session with FATAL 54000 (program_limit_exceeded) instead of being held or passed
   unmasked, and nothing more is forwarded (`failed`).
2. RowDescription names each column's type OID and format; the DataRows that follow are
   rewritten with `shared.masking.Masker`: lengths recomputed, NULLs kept NULL, text-like
   values (text, varchar, bpchar, name, json/jsonb, xml, and in text format arrays,
   records and user types) masked in place, other types given a type-valid value or NULL
   (see `shared.masking.values`). Binary int2/4/8 are scanned as their decimal digits.
   A DataRow with no RowDescription before it (a portal re-executed after
   PortalSuspended keeps the last one; a client that skips Describe gets none) is masked
   blind: values with a detector hit, and every value when column rules apply, become NULL.
   After Describe(statement) the formats are unknown (Bind chooses them later): values of
   covered non-text columns are then withheld (NULL) rather than guessed.
3. Column rules match by name and by catalog identity: `catalog` maps (table OID,
   attribute number) to `table.column` / `schema.table.column` for every table column whose
   name the rules' globs can match, so an alias does not escape a rule. A table column the
   catalog does not list (a table created after the lookup) matches `table.column` rules on
   its column name alone: over-masking rather than leaking.
4. COPY TO STDOUT carries no column names. Rules without columns (pure detectors) scan each
   text/CSV row as one line (replacements contain no delimiter, quote or newline) and null
   binary-format fields with a hit. Under rules with columns, lineage (rule 8) names the
   columns: a masked one's text/CSV fields are replaced (NULL when derived), its binary
   fields become NULL (binary COPY names no types to write a masked value in). Where it
   cannot (options it does not read, no lineage), the rows are dropped and the copy ends
   with ErrorResponse 42501 instead of CopyDone.
5. ErrorResponse/NoticeResponse texts and notification payloads go through the detectors:
   a constraint error's DETAIL quotes the offending value.
6. Counts of masked values per (column, detector) accumulate in `masker.counts`; after each
   ReadyForQuery that follows masking, `report_due` is set for the driver to send them.
7. Parsing only what the rules need: a run of whole CopyData (text/CSV copy-out) or
   DataRow messages is first screened as one text by `shared.masking.screen`; messages no
   screen match overlaps hold no detector hit and pass as they are (not parsed, not
   copied). The rest, and whatever cannot be screened (binary COPY, whole-value rules,
   binary integers, custom patterns with assertions), take the per-value path above, so
   output and counts are the same either way.
8. Lineage (`units`, on sessions with column rules): the client side queues each result's
   `StatementMask` (`shared.masking.planner`), and this masker moves the queue along with
   the server's messages (`shared.pgwire.follow.ResultUnits`). Each RowDescription is
   planned with its statement's mask: a column derived from a masked column is masked
   whole (redacted), one that is a masked column by its rule; DataRows of an Execute whose
   mask differs from the last RowDescription's are planned again; COPY text/CSV rows are
   masked per field (`shared.pgwire.copyrows`); errors and notices of a statement reading
   a masked column lose their texts; an unresolved part's notice is sent once per mask;
   notification payloads are withheld (any session may have sent a masked value).
"""

from __future__ import annotations

import bisect
import struct
from collections import Counter
from collections.abc import Mapping, Sequence

from shared.masking.lineage import (
    NOTHING,
    ColumnMask,
    StatementMask,
    column_rules,
    derived_rule,
)
from shared.masking.screen import build_screen
from shared.masking.spec import MaskRule, Strategy
from shared.masking.values import (
    INT_WIDTH,
    JSON_OID,
    JSONB_OID,
    REDACTED,
    STRICT_OIDS,
    TEXT_OIDS,
    ColumnPlan,
    Counts,
    Masker,
)
from shared.pgwire import copyrows
from shared.pgwire.backend import error_response, notice_response
from shared.pgwire.follow import ResultUnits

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
_HEAD = struct.Struct("!cI")
_I32 = struct.Struct("!i")
_U16 = struct.Struct("!H")
_I16 = struct.Struct("!h")
_FIELD_TAIL = struct.Struct("!IhIhih")
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
# Messages rewritten whole; d (CopyData) only while a copy-out runs.
_INSPECTED = frozenset(b"TDHdcCEIZNAVsn")
_USER_OID_MIN = 16384
SQLSTATE_TOO_BIG = "54000"
SQLSTATE_COPY_REFUSED = "42501"


_MAX_DESCRIBED = 256  # row shapes remembered per session


class MaskingFailed(Exception):
    """The server's bytes cannot be masked safely; the session must end."""


class _Column:
    __slots__ = ("binary", "oid", "plan")

    # binary None: unknown. A RowDescription answering Describe(statement) (it follows a
    # ParameterDescription) says text for every column; the Bind that follows may ask for
    # binary results all the same.
    def __init__(self, plan: ColumnPlan, oid: int, binary: bool | None) -> None:
        self.plan = plan
        self.oid = oid
        self.binary = binary


def _encode(type_: bytes, body: bytes) -> bytes:
    return _HEAD.pack(type_, len(body) + 4) + body


class ResultMasker:
    def __init__(
        self,
        masker: Masker,
        *,
        catalog: Mapping[tuple[int, int], tuple[str, ...]] | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        prefilter: bool = True,
        units: ResultUnits | None = None,
    ) -> None:
        self.masker = masker
        # Lineage (rule 8): the mask of each result's statement, queued by the client side.
        self.units = units
        self._mask: StatementMask = NOTHING  # the one `_columns` were planned with
        self._last_description: tuple[bytes, bool] | None = None
        self._rows_followed = units is None  # DataRows checked against their mask
        self._noticed: set[StatementMask] = set()
        self._copy_mask: StatementMask = NOTHING
        self._copy_columns: list[MaskRule | None] = []
        rules = column_rules(masker.spec)
        self._derived = derived_rule(rules[0]) if rules else None
        self.max_message = max_message
        self._catalog = catalog or {}
        self._buf = bytearray()
        self._passthrough = 0  # bytes of an uninspected message still to pass on
        self._columns: list[_Column] | None = None
        self._rows_active = bool(masker.spec.rules)  # blind until a RowDescription
        self._copy: str | None = None  # "text" | "binary" | "refused" during copy-out
        self._copy_header = False
        self._column_rules = any(r.columns for r in masker.spec.rules)
        self.report_due = False
        self.failed: str | None = None
        self._blind = masker.everywhere
        self._prev_type = 0  # type byte of the last message passed
        self._described: dict[
            tuple[bytes, bool, StatementMask | None], tuple[list[_Column], bool, bool]
        ] = {}
        self._need = 5  # bytes `_buf` must hold before the next message can be read
        # The prefilter: runs of CopyData (text copy-out) and DataRow (when every scanned
        # column can be screened) are screened whole and pass untouched unless a screen
        # match overlaps a message (see `_flagged`). None: some detector cannot be screened,
        # or prefilter=False; every message then takes the full path.
        self._screen = build_screen(masker.detector_sets) if prefilter else None
        self._rows_screened = not self._column_rules
        self._run_type = self._screened_type()

    # ---- driver interface ------------------------------------------------------------

    def take_counts(self) -> Counts:
        counts = self.masker.counts
        self.masker.counts = Counter()
        self.report_due = False
        return counts

    def take_report(self) -> tuple[tuple[str, str, int], ...]:
        """The counts since the last report, as (column, detector, count), sorted."""
        return tuple(sorted((c, d, n) for (c, d), n in self.take_counts().items()))

    def feed(self, data: bytes) -> bytes:
        """What of the server's bytes may go on now. Untouched stretches are not copied:
        when nothing in `data` changes and no message is held back, `data` itself is
        returned."""
        if self.failed is not None:
            return b""
        start = 0
        if self._passthrough:
            start = min(self._passthrough, len(data))
            self._passthrough -= start
            if start == len(data):
                return data
        elif self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return b""
            data = bytes(self._buf)
            self._buf.clear()
        out: list[bytes | memoryview] = []
        view = memoryview(data)
        n = len(data)
        pos = start
        clean = 0  # data[clean:pos] passes unchanged; it is added to `out` lazily
        try:
            while n - pos >= 5:
                type_byte = data[pos]
                length = _I32.unpack_from(data, pos + 1)[0]
                if length < 4:
                    raise MaskingFailed(f"server message of impossible length {length}")
                total = length + 1
                starts: list[int] = []
                if type_byte == 0x44 and not self._rows_followed:
                    self._follow_rows()
                if type_byte == self._run_type:
                    end, starts = self._gather(data, pos, type_byte)
                # Without a complete first message, the single-message path below refuses
                # or waits for it.
                if starts:
                    kind = bytes((type_byte,))
                    for i in self._flagged(view, starts, end, type_byte):
                        first = starts[i]
                        last = starts[i + 1] if i + 1 < len(starts) else end
                        pos = first  # what precedes it is cleared, should this one fail
                        rewritten = self._message(kind, bytes(view[first + 5 : last]))
                        if rewritten is not None:
                            out.append(view[clean:first])
                            out.append(rewritten)
                            clean = last
                    pos = end
                    self._prev_type = type_byte
                    continue
                inspected = type_byte in _INSPECTED and not (
                    (type_byte == 0x44 and not self._rows_active)  # D with nothing to mask
                    or (type_byte == 0x64 and self._copy is None)  # d outside copy-out
                )
                if not inspected:
                    take = min(total, n - pos)
                    pos += take
                    self._passthrough = total - take
                    self._prev_type = type_byte
                    continue
                if length - 4 > self.max_message:
                    raise MaskingFailed(
                        f"a server message of {length - 4} bytes exceeds the masking limit "
                        f"of {self.max_message} bytes"
                    )
                if n - pos < total:
                    self._need = total
                    break
                rewritten = self._message(bytes((type_byte,)), bytes(view[pos + 5 : pos + total]))
                if rewritten is not None:
                    out.append(view[clean:pos])
                    out.append(rewritten)
                    clean = pos + total
                pos += total
                self._prev_type = type_byte
                self._run_type = self._screened_type()
            else:
                self._need = 5
        except (MaskingFailed, struct.error, IndexError, ValueError) as exc:
            self.failed = str(exc)
            self._buf.clear()
            if pos > clean:
                out.append(view[clean:pos])
            out.append(
                error_response(
                    SQLSTATE_TOO_BIG if "limit" in str(exc) else "XX000",
                    f"wardgate masking: {exc}",
                    severity="FATAL",
                )
            )
            return b"".join(out)
        if pos < n:
            self._buf += view[pos:]
        if clean == 0 and pos == n:
            return data
        out.append(view[clean:pos])
        return b"".join(out)

    # ---- the prefilter ---------------------------------------------------------------

    def _screened_type(self) -> int:
        """The message type whose runs the screen may pass whole (-1: none now)."""
        if self._screen is None:
            return -1
        if self._copy == "text":
            return 0x64
        if self._copy is None and self._rows_active and self._rows_screened:
            return 0x44
        return -1

    def _gather(self, data: bytes, pos: int, type_byte: int) -> tuple[int, list[int]]:
        """The run of complete, well-sized messages of type `type_byte` from `pos` on:
        (its end, their starts). It stops before anything else, so a message the full path
        would refuse is refused only after the run before it has gone out, as it would be."""
        n = len(data)
        starts: list[int] = []
        limit = self.max_message + 4
        unpack = _I32.unpack_from
        # A DataRow of the wrong width goes to the full path, which refuses it. (A run's
        # column lengths are not walked: a row whose lengths overrun its body passes when
        # nothing in it could be a hit, where the full path would end the session.)
        width = len(self._columns) if type_byte == 0x44 and self._columns is not None else -1
        while n - pos >= 5 and data[pos] == type_byte:
            length = unpack(data, pos + 1)[0]
            if length < 4 or length > limit or n - pos <= length:
                break
            if width >= 0 and (length < 6 or _U16.unpack_from(data, pos + 5)[0] != width):
                break
            starts.append(pos)
            pos += length + 1
        return pos, starts

    def _flagged(self, view: memoryview, starts: list[int], end: int, type_byte: int) -> list[int]:
        """Indexes of the messages in `starts` that could hold a detector hit, in order.

        Every value the full path scans is a stretch of its message's bytes, decoded alone
        (UTF-8, surrogateescape); a screen match overlapping no message whose values read
        as the same stretch of the screened text clears it (see `shared.masking.screen`;
        headers and neighbours only add matches).
        """
        screen = self._screen
        assert screen is not None
        base = starts[0]
        if type_byte == 0x64:
            # A CopyData text row is one value. Latin-1 makes one character per byte, and
            # cheaply: a row of ASCII reads the same either way. Other rows are screened
            # alone, decoded as the full path decodes them.
            text = str(view[base:end], "latin-1")
            flagged = self._overlapped(screen.spans(text), starts, base)
            if not text.isascii():  # the length bytes of headers often are not
                ends = [*starts[1:], end]
                for i, first in enumerate(starts):
                    if text[first + 5 - base : ends[i] - base].isascii() or i in flagged:
                        continue
                    row = str(view[first + 5 : ends[i]], "utf-8", "surrogateescape")
                    if screen.could_match(row):
                        flagged.add(i)
            return sorted(flagged)
        # DataRows: their length fields are often not ASCII, values mostly are. When the run
        # decodes one character per byte, no byte joined its neighbours into a character,
        # so each value reads as the same stretch of the run's text. Otherwise a multi-byte
        # character may straddle a length field: such a row's values are screened one by
        # one, each decoded alone as the full path decodes it.
        text = str(view[base:end], "utf-8", "surrogateescape")
        if len(text) == end - base:
            return sorted(self._overlapped(screen.spans(text), starts, base))
        ends = [*starts[1:], end]
        indexes: list[int] = []
        for i, (first, last) in enumerate(zip(starts, ends, strict=True)):
            body = str(view[first + 5 : last], "utf-8", "surrogateescape")
            if len(body) == last - first - 5:
                if screen.could_match(body):
                    indexes.append(i)
            elif self._values_could_match(view, first + 5, last):
                indexes.append(i)
        return indexes

    def _values_could_match(self, view: memoryview, pos: int, end: int) -> bool:
        """Whether a value of the DataRow body view[pos:end] could hold a hit (or the row
        is malformed, which the full path refuses)."""
        screen = self._screen
        assert screen is not None
        count = _U16.unpack_from(view, pos)[0]
        pos += 2
        for _ in range(count):
            if end - pos < 4:
                return True
            size = _I32.unpack_from(view, pos)[0]
            pos += 4
            if size == -1:
                continue
            if not 0 <= size <= end - pos:
                return True
            if screen.could_match(str(view[pos : pos + size], "utf-8", "surrogateescape")):
                return True
            pos += size
        return pos != end

    @staticmethod
    def _overlapped(spans: list[tuple[int, int]], starts: list[int], base: int) -> set[int]:
        """Indexes of the messages (at `starts`, text offset `base`) the spans overlap."""
        flagged: set[int] = set()
        if spans:
            offsets = [s - base for s in starts]
            for first, last in spans:
                lo = bisect.bisect_right(offsets, first) - 1
                hi = bisect.bisect_left(offsets, last) - 1
                flagged.update(range(lo, hi + 1))
        return flagged

    # ---- messages --------------------------------------------------------------------

    def _message(self, type_: bytes, body: bytes) -> bytes | None:
        """The rewritten message, or None to pass the original."""
        if type_ == b"D":
            return self._data_row(body)
        if type_ == b"d":
            return self._copy_data(body)
        units = self.units
        if units is None:
            return self._result_message(type_, body)
        # The mask of the rows to come can change only here, with a server message.
        self._rows_followed = False
        mask = units.current()
        if type_ == b"T":
            self._mask = mask
        elif type_ == b"H":
            self._copy_mask = mask
        out = self._result_message(type_, body)
        units.server(type_)
        if type_ in (b"E", b"N") and mask.reads:
            return self._withheld(type_, body)
        if type_ in (b"T", b"H") and mask.notice and mask not in self._noticed:
            if len(self._noticed) < _MAX_DESCRIBED:
                self._noticed.add(mask)
            note = notice_response("01000", mask.notice, severity="NOTICE")
            return note + (out if out is not None else _encode(type_, body))
        return out

    def _result_message(self, type_: bytes, body: bytes) -> bytes | None:
        if type_ == b"T":
            self._describe(body)
            return None
        if type_ == b"H":
            self._copy = "binary" if body[:1] == b"\x01" else "text"
            self._copy_header = False
            if self._column_rules:
                self._copy = self._copy_mode(body)
            return None
        if type_ == b"c":
            if self._copy == "refused":
                return b""  # the ErrorResponse at CommandComplete replaces CopyDone too
            self._copy = None
            return None
        if type_ == b"C":
            if self._copy == "refused":
                self._copy = None
                self._end_result()
                return error_response(
                    SQLSTATE_COPY_REFUSED,
                    "wardgate masking: COPY TO cannot apply column masking rules "
                    "(COPY output names no columns); use SELECT",
                    severity="ERROR",
                )
            self._copy = None
            self._end_result()
            return None
        if type_ in (b"E", b"N"):
            if type_ == b"E":
                self._copy = None
                self._end_result()
            return self._report_fields(type_, body)
        if type_ in (b"I",):
            self._end_result()
            return None
        if type_ == b"Z":
            self._end_result()
            if self.masker.counts:
                self.report_due = True
            return None
        if type_ == b"A":
            return self._notification(body)
        if type_ == b"V":
            return self._function_result(body)
        return None  # s: PortalSuspended keeps the description for the next Execute

    def _copy_mode(self, body: bytes) -> str:
        """Under column rules: `text` when lineage says no column derives from a masked
        one, `columns` when each row can be masked per column, else `refused`."""
        mask = self._copy_mask
        if self.units is None:
            return "refused"
        if not mask.masked:
            return "text" if body[:1] == b"\x00" else "binary"
        binary = body[:1] == b"\x01"
        if mask.copy is not None and binary == (mask.copy[0] == "binary"):
            width = _U16.unpack_from(body, 1)[0]
            self._copy_columns = [self._copy_column(m) for m in mask.for_width(width)]
            return "binary columns" if binary else "columns"
        return "refused"

    def _copy_column(self, mask: ColumnMask) -> MaskRule | None:
        """The whole-value rule a COPY field is masked by (detectors scan the row after)."""
        if mask.derived:
            return self._derived
        if mask.direct:
            return self.masker.plan("", mask.direct).whole
        return None

    def _follow_rows(self) -> None:
        """DataRows of an Execute after a Describe of another statement, or after a
        RowDescription of the previous one: planned again with this result's mask."""
        assert self.units is not None
        self._rows_followed = True
        mask = self.units.current()
        if mask is self._mask or mask == self._mask:
            return
        self._mask = mask
        if self._columns is not None and self._last_description is not None:
            self._describe(*self._last_description, keep=True)

    def _end_result(self) -> None:
        self._columns = None
        self._rows_active = bool(self.masker.spec.rules)  # blind until described
        self._rows_screened = not self._column_rules  # blind values: scanned as they are

    def _describe(self, body: bytes, formats_known: bool | None = None, keep: bool = False) -> None:
        # A session's results repeat a few row shapes; each RowDescription is planned once
        # per mask (plans depend only on its bytes, the catalog, the rules and the mask).
        if formats_known is None:
            formats_known = self._prev_type != 0x74  # not after ParameterDescription
        self._last_description = (body, formats_known)
        key = (body, formats_known, self._mask if self.units is not None else None)
        known = self._described.get(key)
        if known is None:
            known = self._plan_rows(body, formats_known)
            if len(self._described) < _MAX_DESCRIBED:
                self._described[key] = known
        self._columns, self._rows_active, self._rows_screened = known
        self._run_type = self._screened_type()

    def _plan_rows(self, body: bytes, formats_known: bool) -> tuple[list[_Column], bool, bool]:
        count = _U16.unpack_from(body, 0)[0]
        pos = 2
        columns: list[_Column] = []
        masks = self._mask.for_width(count) if self.units is not None else None
        for index in range(count):
            end = body.index(b"\0", pos)
            name = body[pos:end].decode("utf-8", "replace").lower()
            table, attnum, oid, _size, _mod, fmt = _FIELD_TAIL.unpack_from(body, end + 1)
            pos = end + 1 + _FIELD_TAIL.size
            qualified = self._catalog.get((table, attnum), ())
            # A table column the catalog lookup did not list: its table (or this column) is
            # newer than the lookup, so `table.column` rules match on the column alone.
            loose = table != 0 and not qualified
            plan = self.masker.plan(name, qualified, loose=loose)
            if masks is not None:
                plan = self._lineage_plan(plan, name, qualified, loose, masks[index])
            columns.append(_Column(plan, oid, fmt == 1 if formats_known else None))
        if pos != len(body):
            raise MaskingFailed("RowDescription with trailing bytes")
        # Screenable when every covered value is scanned as its own bytes: not a whole-value
        # rule (always masked, counted), nor a binary integer (scanned as its decimal digits).
        screened = all(
            c.plan.whole is None and not (c.binary is True and c.oid in INT_WIDTH)
            for c in columns
            if c.plan.active
        )
        return columns, any(c.plan.active for c in columns), screened

    def _lineage_plan(
        self,
        plan: ColumnPlan,
        name: str,
        qualified: tuple[str, ...],
        loose: bool,
        mask: ColumnMask,
    ) -> ColumnPlan:
        """A derived value is masked whole by redaction; a direct one as the table column
        it is (its rules by the column's catalog names)."""
        if mask.derived and self._derived is not None:
            return ColumnPlan(plan.label, self._derived, ())
        if mask.direct:
            return self.masker.plan(name, (*qualified, *mask.direct), loose=loose)
        return plan

    # ---- rows ------------------------------------------------------------------------

    def _data_row(self, body: bytes) -> bytes | None:
        count = _U16.unpack_from(body, 0)[0]
        columns = self._columns
        if columns is not None and len(columns) != count:
            raise MaskingFailed(
                f"DataRow of {count} columns after a RowDescription of {len(columns)}"
            )
        pos = 2
        n = len(body)
        parts: list[bytes] = [body[:2]]
        changed = False
        for index in range(count):
            size = _I32.unpack_from(body, pos)[0]
            pos += 4
            if size == -1:
                parts.append(b"\xff\xff\xff\xff")
                continue
            if not 0 <= size <= n - pos:
                raise MaskingFailed(f"DataRow column {index}: length {size} runs past the body")
            raw = body[pos : pos + size]
            pos += size
            if columns is None:
                new = self._blind_value(raw)
            else:
                column = columns[index]
                new = self._value(raw, column) if column.plan.active else raw
            if new is raw:
                parts.append(body[pos - size - 4 : pos])
                continue
            changed = True
            parts.append(b"\xff\xff\xff\xff" if new is None else _I32.pack(len(new)) + new)
        if pos != n:
            raise MaskingFailed("DataRow with trailing bytes")
        return _encode(b"D", b"".join(parts)) if changed else None

    def _blind_value(self, raw: bytes) -> bytes | None:
        # Lineage saying no column of this result derives from a masked one: detectors only.
        lineage_clear = self.units is not None and not self.units.current().masked
        if self._column_rules and not lineage_clear:
            self.masker.counts[("?", "column")] += 1
            return None
        return self._unknown_format(raw, self._blind)

    def _value(self, raw: bytes, column: _Column) -> bytes | None:
        masker = self.masker
        plan = column.plan
        oid = column.oid
        if column.binary is None:
            if oid in TEXT_OIDS or oid == JSON_OID:
                binary = False  # the same bytes in either format
            elif oid == JSONB_OID:
                binary = raw[:1] == b"\x01"  # jsonb text never starts with a control byte
            else:
                return self._unknown_format(raw, plan)
        else:
            binary = column.binary
        json = oid in (JSON_OID, JSONB_OID)
        stringy = oid in TEXT_OIDS or json or (not binary and oid not in STRICT_OIDS)
        if binary and oid == JSONB_OID:
            if raw[:1] != b"\x01":
                stringy = False  # a jsonb version we cannot read: typed (NULL) masks only
            prefix, raw_text = b"\x01", raw[1:]
        else:
            prefix, raw_text = b"", raw
        if plan.whole is not None:
            rule = plan.whole
            whole_string = oid in TEXT_OIDS or json or (not binary and oid >= _USER_OID_MIN)
            masker.counts[(plan.label, "column")] += 1
            if whole_string and stringy:
                text = raw_text.decode("utf-8", "surrogateescape")
                repl = masker.replacement(text, rule.strategy, "column")
                if json:
                    repl = f'"{repl}"'
                return prefix + repl.encode()
            return masker.typed_mask(oid, raw, rule.strategy, binary)
        if stringy:
            text = raw_text.decode("utf-8", "surrogateescape")
            # JSON cast to text (and array literals, which quote alike) keep their syntax too.
            structured = json or (text[:1] in ("{", "[") and text[-1:] in ("}", "]"))
            new, hit = masker.scan_text(text, plan, json=structured)
            if hit is None:
                return raw
            return prefix + new.encode("utf-8", "surrogateescape")
        if binary and oid in INT_WIDTH:
            text = str(int.from_bytes(raw, "big", signed=True))
        else:
            text = raw.decode("utf-8", "surrogateescape")
        _new, hit = masker.scan_text(text, plan)
        if hit is None:
            return raw
        return masker.typed_mask(oid, raw, hit.strategy, binary)

    def _unknown_format(self, raw: bytes, plan: ColumnPlan) -> bytes | None:
        """A value whose format we cannot tell: withheld when a rule covers it."""
        if plan.whole is not None:
            self.masker.counts[(plan.label, "column")] += 1
            return None
        _text, hit = self.masker.scan_text(raw.decode("utf-8", "surrogateescape"), plan)
        return None if hit is not None else raw

    # ---- COPY ------------------------------------------------------------------------

    def _copy_data(self, body: bytes) -> bytes | None:
        if self._copy == "refused":
            return b""
        if self._copy == "columns":
            return self._copy_row(body)
        if self._copy == "binary columns":
            return self._binary_copy(body, self._copy_columns)
        if self._copy == "text":
            text = body.decode("utf-8", "surrogateescape")
            new, hit = self.masker.scan_text(text, self._copy_plan())
            return None if hit is None else _encode(b"d", new.encode("utf-8", "surrogateescape"))
        return self._binary_copy(body)

    def _copy_row(self, body: bytes) -> bytes | None:
        """One text/CSV row: masked fields replaced (NULL for a derived value), then the
        row scanned by the detectors as in the text path."""
        fmt, delimiter, header = self._copy_mask.copy or ("text", "\t", False)
        text = body.decode("utf-8", "surrogateescape")
        if header and not self._copy_header:
            self._copy_header = True  # the column names
            return None
        spans = copyrows.field_spans(text, fmt, delimiter)
        rules = self._copy_columns
        if len(spans) != len(rules):
            raise MaskingFailed(f"COPY row of {len(spans)} fields for {len(rules)} columns")
        fields: dict[int, str] = {}
        for index, rule in enumerate(rules):
            if rule is None:
                continue
            self.masker.counts[(rule.name, "column")] += 1
            if rule is self._derived:
                fields[index] = copyrows.null(fmt)
                continue
            start, end = spans[index]
            value = self.masker.replacement(text[start:end], rule.strategy, "column")
            fields[index] = copyrows.literal(value, fmt, delimiter)
        new = copyrows.rewrite(text, spans, fields) if fields else text
        scanned, hit = self.masker.scan_text(new, self._copy_plan())
        if hit is None and not fields:
            return None
        return _encode(b"d", scanned.encode("utf-8", "surrogateescape"))

    def _copy_plan(self) -> ColumnPlan:
        return ColumnPlan("copy", None, self._blind.scan)

    def _binary_copy(
        self, body: bytes, rules: Sequence[MaskRule | None] | None = None
    ) -> bytes | None:
        """One binary COPY row: a field with a detector's hit, and with `rules` (under
        column rules) every field of a masked column, becomes NULL. Binary COPY names no
        types, so no masked value can be written in a column's own binary form."""
        pos = 0
        parts: list[bytes] = []
        if not self._copy_header:
            if not body.startswith(_COPY_SIGNATURE):
                raise MaskingFailed("binary COPY without its signature")
            ext = _I32.unpack_from(body, len(_COPY_SIGNATURE) + 4)[0]
            pos = len(_COPY_SIGNATURE) + 8 + ext
            parts.append(body[:pos])
            self._copy_header = True
        changed = False
        plan = self._copy_plan()
        while pos < len(body):
            count = _I16.unpack_from(body, pos)[0]
            parts.append(body[pos : pos + 2])
            pos += 2
            if count == -1:
                continue  # trailer
            if rules is not None and count != len(rules):
                raise MaskingFailed(f"COPY row of {count} fields for {len(rules)} columns")
            for index in range(count):
                size = _I32.unpack_from(body, pos)[0]
                pos += 4
                rule = rules[index] if rules is not None else None
                if rule is not None:
                    self.masker.counts[(rule.name, "column")] += 1
                if size == -1:
                    parts.append(b"\xff\xff\xff\xff")
                    continue
                if not 0 <= size <= len(body) - pos:
                    raise MaskingFailed("binary COPY row split across messages")
                raw = body[pos : pos + size]
                pos += size
                if rule is not None:
                    parts.append(b"\xff\xff\xff\xff")
                    changed = True
                    continue
                _text, hit = self.masker.scan_text(raw.decode("utf-8", "surrogateescape"), plan)
                if hit is None:
                    parts.append(body[pos - size - 4 : pos])
                else:
                    parts.append(b"\xff\xff\xff\xff")
                    changed = True
        return _encode(b"d", b"".join(parts)) if changed else None

    # ---- texts the server writes -----------------------------------------------------

    def _withheld(self, type_: bytes, body: bytes) -> bytes:
        """An error or notice of a statement that reads a masked column, its texts withheld:
        severity, SQLSTATE, position and the names of schema, table, column, type and
        constraint stay; message, detail, hint and context (which quote values) do not."""
        parts: list[bytes] = []
        pos = 0
        while body[pos] != 0:
            code = body[pos : pos + 1]
            end = body.index(b"\0", pos + 1)
            if code in (b"S", b"V", b"C", b"P", b"s", b"t", b"c", b"d", b"n"):
                parts.append(body[pos : end + 1])
            pos = end + 1
        self.masker.counts[("error" if type_ == b"E" else "notice", "column")] += 1
        message = (
            "wardgate masking: the server's text is withheld: the statement reads a masked "
            "column and the text may quote its values"
        )
        parts.append(b"M" + message.encode() + b"\0\0")
        return _encode(type_, b"".join(parts))

    def _report_fields(self, type_: bytes, body: bytes) -> bytes | None:
        if not self._blind.scan:
            return None
        label = "error" if type_ == b"E" else "notice"
        plan = ColumnPlan(label, None, self._blind.scan)
        parts: list[bytes] = []
        pos = 0
        changed = False
        while body[pos] != 0:
            code = body[pos : pos + 1]
            end = body.index(b"\0", pos + 1)
            value = body[pos + 1 : end]
            if code not in (b"S", b"V", b"C", b"P", b"p", b"L", b"R", b"F"):
                new, hit = self.masker.scan_text(value.decode("utf-8", "surrogateescape"), plan)
                if hit is not None:
                    value = new.encode("utf-8", "surrogateescape")
                    changed = True
            parts.append(code + value + b"\0")
            pos = end + 1
        parts.append(b"\0")
        return _encode(type_, b"".join(parts)) if changed else None

    def _notification(self, body: bytes) -> bytes | None:
        channel_end = body.index(b"\0", 4)
        payload_end = body.index(b"\0", channel_end + 1)
        if self.units is not None and payload_end > channel_end + 1:
            # Under column rules a payload is withheld: any session may have sent a masked
            # value in it (`pg_notify('c', card)`), and nothing here tells which did.
            self.masker.counts[("notification", "column")] += 1
            return _encode(b"A", body[: channel_end + 1] + b"\0")
        if not self._blind.scan:
            return None
        payload = body[channel_end + 1 : payload_end].decode("utf-8", "surrogateescape")
        new, hit = self.masker.scan_text(
            payload, ColumnPlan("notification", None, self._blind.scan)
        )
        if hit is None:
            return None
        return _encode(
            b"A", body[: channel_end + 1] + new.encode("utf-8", "surrogateescape") + b"\0"
        )

    def _function_result(self, body: bytes) -> bytes | None:
        size = _I32.unpack_from(body, 0)[0]
        if size == -1:
            return None
        if self._column_rules:
            self.masker.counts[("function", "column")] += 1
            return _encode(b"V", b"\xff\xff\xff\xff")
        value = body[4 : 4 + size].decode("utf-8", "surrogateescape")
        _new, hit = self.masker.scan_text(value, ColumnPlan("function", None, self._blind.scan))
        return None if hit is None else _encode(b"V", b"\xff\xff\xff\xff")


__all__ = ["DEFAULT_MAX_MESSAGE", "REDACTED", "MaskingFailed", "ResultMasker", "Strategy"]

"""The agent's lineage step: a `StatementMask` for each statement the client sends.

Sans-I/O apart from one awaited callable (`ask`: run a catalog query on the agent's side
connection, rows in text format). The relay calls `client_data` with the client's bytes
before it forwards them, so each result's mask is queued (`ResultUnits`) before the server
can answer. Rules:

1. Simple Query: each statement of the string gets its mask, in order. Parse: the
   prepared statement's mask; Bind: the portal takes its statement's (planned again when
   the catalog changed or its TTL passed since, as the server plans it again); Describe
   and Execute
   queue the statement's or portal's mask; Close forgets it.
2. Lineage (`shared.lineage`) runs with `SessionCatalog` behind it: names it lacks are
   asked in one query per round (views and function bodies name more: up to MAX_ROUNDS).
   Masks are cached per statement shape (the text with constants replaced by parameters:
   pgbench's `WHERE aid = 42` and `= 43` are one shape; not COPY, whose options are
   constants, nor SET search_path) for the catalog's generation and its TTL; a statement that may
   change the catalog (anything but queries, DML, COPY, cursors, transaction control and
   settings) drops the catalog after it. The session's last `SET search_path` / `RESET`
   is sent with each catalog lookup, so unqualified names resolve as in the session.
3. Cursors: DECLARE c CURSOR FOR q remembers q's mask under c; FETCH from c returns it;
   CLOSE forgets it. FETCH from a cursor this session did not declare here (one declared
   through a PL/pgSQL function, say) is masked fail closed.
4. Fail closed: what reads data lineage cannot follow (`FailClosedCatalog`: functions in
   other languages, built-ins that run SQL text, the statistics relations) is masked whole;
   text that does not parse, an unknown statement or portal, and a catalog
   that cannot be asked (`ask` raising) all give `UNRESOLVED`.
5. A notice for an unresolved part goes out once per statement shape (the masker keeps the
   masks it told about).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import normalize
from pglast.stream import RawStream

from shared.lineage import Lineage, analyze_statement
from shared.lineage.catalog import CACHE_TTL, SessionCatalog, lookup_sql
from shared.masking.catalog import FailClosedCatalog
from shared.masking.lineage import (
    NOTHING,
    UNPARSED,
    UNRESOLVED,
    StatementMask,
    statement_mask,
    tainted_writes,
)
from shared.masking.spec import MaskSpec
from shared.pgwire.follow import ClientFrames, ResultUnits

MAX_ROUNDS = 4
MAX_TEXTS = 512  # statement texts whose masks are kept
MAX_TEXT = 16384  # longer texts are analysed each time, not kept

Ask = Callable[[str], Awaitable[Sequence[Sequence[str | None]]]]

_KEEPS_CATALOG = (
    ast.SelectStmt,
    ast.InsertStmt,
    ast.UpdateStmt,
    ast.DeleteStmt,
    ast.MergeStmt,
    ast.CopyStmt,
    ast.DeclareCursorStmt,
    ast.FetchStmt,
    ast.ClosePortalStmt,
    ast.ExplainStmt,
    ast.TransactionStmt,
    ast.VariableSetStmt,
    ast.VariableShowStmt,
    ast.PrepareStmt,
    ast.ExecuteStmt,
    ast.DeallocateStmt,
    ast.ListenStmt,
    ast.UnlistenStmt,
    ast.NotifyStmt,
    ast.LockStmt,
)


@dataclass(frozen=True, slots=True)
class Planned:
    """One statement: its mask, and what it does to the session's cursors."""

    mask: StatementMask
    cursor: str | None = None  # "declare" | "fetch" | "close"
    name: str = ""  # the cursor ("" with close: all)


def copy_format(stmt: Any) -> tuple[str, str, bool] | None:
    """(format, delimiter, header) of COPY ... TO STDOUT when its rows can be read per
    column here (text or CSV with the default quote, escape and NULL, or binary); None
    otherwise."""
    fmt, delimiter, header = "text", "", False
    for option in stmt.options or ():
        name = option.defname
        value = getattr(option.arg, "sval", None)
        if name == "format" and value in ("text", "csv", "binary"):
            fmt = value
        elif name == "delimiter" and isinstance(value, str) and len(value) == 1:
            delimiter = value
        elif name == "header":
            flag = getattr(option.arg, "boolval", None)
            header = bool(flag) if flag is not None else value in ("true", "on", "1", None)
        else:
            return None
    if fmt == "binary":
        return (fmt, "", False) if not (delimiter or header) else None
    return fmt, delimiter or ("," if fmt == "csv" else "\t"), header and fmt == "csv"


_STAND_IN = re.compile(r"EXECUTE (wardgate_opaque_\d+):")
_LOST = Planned(UNRESOLVED)  # a statement or portal this session did not see prepared


def _text(stmt: Any) -> str:
    try:
        return str(RawStream()(stmt)).lower()
    except Exception:  # a node the deparser does not take: assume the worst
        return "set_config"


def _shape(text: str) -> str | None:
    """The text with its constants replaced by parameters: statements of one shape have
    one lineage (constants carry no column). None: not kept."""
    if len(text) > MAX_TEXT:
        return None
    try:
        return str(normalize(text))
    except Exception:  # text the server rejects too
        return None


class LineagePlanner:
    def __init__(
        self, spec: MaskSpec, ask: Ask, clock: Callable[[], float], units: ResultUnits
    ) -> None:
        self.spec = spec
        self.units = units
        self.catalog = SessionCatalog(clock)
        self._lineage_catalog = FailClosedCatalog(self.catalog)
        self._ask = ask
        self._path = ""  # the session's last SET/RESET of search_path
        self._tainted: set[str] = set()  # tables filled with masked data (lineage rule 6)
        self._frames = ClientFrames()
        # shape -> (catalog generation, when, plans)
        self._texts: dict[str, tuple[int, float, tuple[Planned, ...]]] = {}
        self._clock = clock
        self._statements: dict[str, Planned] = {}  # prepared statement -> its plan
        self._portals: dict[str, Planned] = {}
        # prepared statement -> (its text, catalog generation and time its plan was made)
        self._sources: dict[str, tuple[str, int, float]] = {}
        self._cursors: dict[str, StatementMask] = {}

    async def client_data(self, data: bytes) -> None:
        for message in self._frames.feed(data):
            kind = message.kind
            if kind == "Q":
                planned = await self.plan(message.text)
                self.units.query(tuple(self._apply(p) for p in planned) or (NOTHING,))
            elif kind == "P":
                await self._prepare(message.name, message.text)
            elif kind == "B":
                source = self._sources.get(message.target)
                # The server plans a prepared statement again after the catalog changed (a
                # view replaced): so is its mask, at Bind.
                if source is not None and (
                    source[1] != self.catalog.generation or self._clock() - source[2] > CACHE_TTL
                ):
                    await self._prepare(message.target, source[0])
                self._portals[message.name] = self._statements.get(message.target, _LOST)
            elif kind == "D":
                names = self._statements if message.name[0] == "S" else self._portals
                self.units.describe(self._peek(names.get(message.name[1:], _LOST)))
            elif kind == "E":
                # A prepared DECLARE/FETCH/CLOSE acts at each Execute of its portal.
                self.units.execute(self._apply(self._portals.get(message.name, _LOST)))
            elif kind == "C":
                names = self._statements if message.name[0] == "S" else self._portals
                names.pop(message.name[1:], None)
                if message.name[0] == "S":
                    self._sources.pop(message.name[1:], None)
            elif kind == "S":
                self.units.sync()

    async def _prepare(self, name: str, text: str) -> None:
        planned = await self.plan(text)
        # One statement per Parse (the server refuses more).
        self._statements[name] = planned[0] if len(planned) == 1 else _LOST
        self._sources[name] = (text, self.catalog.generation, self._clock())
        if len(self._sources) > MAX_TEXTS * 4:  # a client that never closes statements
            del self._sources[next(iter(self._sources))]

    def _peek(self, planned: Planned) -> StatementMask:
        if planned.cursor == "fetch":
            return self._cursors.get(planned.name, UNRESOLVED)
        return planned.mask

    def _apply(self, planned: Planned) -> StatementMask:
        """The statement runs: its cursor effects, and the mask of its result."""
        if planned.cursor == "declare":
            self._cursors[planned.name] = planned.mask
            return NOTHING
        if planned.cursor == "fetch":
            return self._cursors.get(planned.name, UNRESOLVED)
        if planned.cursor == "close":
            if planned.name:
                self._cursors.pop(planned.name, None)
            else:
                self._cursors.clear()
            return NOTHING
        return planned.mask

    async def plan(self, text: str) -> tuple[Planned, ...]:
        shape = _shape(text)
        cached = self._texts.get(shape) if shape is not None else None
        # Kept for the catalog's TTL too: another session may replace a view meanwhile.
        if (
            cached is not None
            and cached[0] == self.catalog.generation
            and self._clock() - cached[1] <= CACHE_TTL
        ):
            return cached[2]
        try:
            statements = [raw.stmt for raw in parse_sql(text)]
        except Exception:  # the server refuses it too, reading nothing: its error is its own
            return (Planned(UNPARSED),)
        try:
            planned = await self._analyse(statements)
        except Exception:  # a catalog that cannot be asked, lineage that fails: mask
            return tuple(Planned(UNRESOLVED) for _ in statements)
        changes = False
        keep = shape is not None
        for stmt in statements:
            if isinstance(stmt, ast.VariableSetStmt) and (
                stmt.name in (None, "search_path") or stmt.name.lower() == "search_path"
            ):
                self._path = str(RawStream()(stmt))
                self.catalog.clear()
                self._texts.clear()
                keep = False  # it takes effect each time it runs
            elif not isinstance(stmt, _KEEPS_CATALOG):
                changes = True
            elif isinstance(stmt, ast.CopyStmt):
                keep = False  # its options (a delimiter) are constants the shape drops
        if changes:
            self.catalog.clear()
            self._texts.clear()
        elif keep and shape is not None:
            if len(self._texts) >= MAX_TEXTS:
                del self._texts[next(iter(self._texts))]
            self._texts[shape] = (self.catalog.generation, self._clock(), planned)
        return planned

    async def _analyse(self, statements: list[Any]) -> tuple[Planned, ...]:
        catalog = self.catalog
        for _ in range(MAX_ROUNDS):
            planned = tuple(self._one(s) for s in statements)
            if not catalog.wanting:
                return planned
            relations, functions = catalog.take_wanted()
            lookup = lookup_sql(relations, functions)
            # The session's search_path, sent with each lookup: a side connection opened
            # again after a failure has it too.
            rows = await self._ask(f"{self._path}; {lookup}" if self._path else lookup)
            catalog.learn(rows, relations, functions)
        planned = tuple(self._one(s) for s in statements)
        catalog.take_wanted()  # still wanting: the unresolved parts fail closed
        return planned

    def _taint(self, stmt: Any, lineage: Lineage, mask: StatementMask) -> None:
        """Copies of masked data this statement makes, for the statements after it."""
        tables = tainted_writes(lineage, self.spec) - self._tainted
        if isinstance(stmt, ast.InsertStmt) and stmt.selectStmt is not None:
            # INSERT into a table the catalog does not show (a temporary one): lineage
            # records no write; what its query reads decides.
            query = statement_mask(
                analyze_statement(stmt.selectStmt, self._lineage_catalog), self.spec
            )
            target: Any = stmt.relation
            if query.masked and target is not None and target.relname:
                tables.add(str(target.relname).lower())
            tables -= self._tainted
        if tables:
            self._tainted |= tables
            self._texts.clear()
        # set_config with a masked value: settings read back are masked from now on.
        catalog = self._lineage_catalog
        if mask.reads and not catalog.settings_tainted and "set_config" in _text(stmt):
            catalog.settings_tainted = True
            self._texts.clear()

    def _reason(self, text: str) -> str:
        """An opaque part's own words instead of lineage's for the EXECUTE standing in."""
        match = _STAND_IN.match(text)
        if match is None:
            return text
        return self._lineage_catalog.reason(match.group(1)) or text

    def _one(self, stmt: Any) -> Planned:
        if isinstance(stmt, ast.VariableShowStmt) and self._lineage_catalog.settings_tainted:
            return Planned(UNRESOLVED)
        if isinstance(stmt, ast.DoStmt):
            return Planned(UNRESOLVED)  # its notices and errors may quote what it reads
        if isinstance(stmt, ast.FetchStmt):
            if stmt.ismove:
                return Planned(NOTHING)
            return Planned(NOTHING, "fetch", stmt.portalname or "")
        if isinstance(stmt, ast.ClosePortalStmt):
            return Planned(NOTHING, "close", stmt.portalname or "")
        lineage = analyze_statement(stmt, self._lineage_catalog)
        if lineage.unresolved:
            lineage = dataclasses.replace(
                lineage, unresolved=tuple(self._reason(r) for r in lineage.unresolved)
            )
        copy = None
        if isinstance(stmt, ast.CopyStmt) and not stmt.is_from:
            copy = copy_format(stmt)
        mask = statement_mask(lineage, self.spec, copy, frozenset(self._tainted))
        self._taint(stmt, lineage, mask)
        if isinstance(stmt, ast.DeclareCursorStmt):
            return Planned(mask, "declare", stmt.portalname or "")
        return Planned(mask)

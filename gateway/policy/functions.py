"""What user-defined functions do, as the catalog says: the guardrails' view past the parser.

Pure and sans-I/O. The parser sees `SELECT app.bump()` as a read; only the server knows that
`app.bump` is a VOLATILE plpgsql function that inserts. So on a session with guardrails the
gateway asks the server's catalog (pg_proc joined with pg_namespace and pg_language, over a
second connection the agent opens with the session's own credential and startup settings:
`gateway.protocols.pgfunctions`) about the functions a statement calls, and a call that may
reach a *writer* makes the statement a write (`Facts.writers`, `gateway.policy.rules`).

The rules this module keeps:

1. A writer is a function that is not built in (its OID is at or above 16384, the first
   one PostgreSQL gives to objects created after initdb: extension and user functions) and
   that is VOLATILE (procedures always are), or is written in an untrusted language other
   than C (plpython3u, plperlu...: they reach files and the network whatever they declare).
   STABLE and IMMUTABLE SQL and PL functions cannot change data: PostgreSQL runs their
   queries read-only. Built-in functions are judged by name (`gateway.policy.writes`).
2. Resolution is conservative: the server picks among all functions of that name in the
   schemas of its search_path by argument types, which the gateway cannot know, so a call
   counts as a writer when *any* candidate is one. Candidates of `name(...)` are the
   functions of that name in every schema of every search_path the session may have had:
   the server's own (`current_schemas(true)` on the lookup connection, which logs in as the
   session does; every one a lookup of the session reported), plus each schema a SET search_path or set_config('search_path', ...) of
   the session named ("$user" is the session's user). A search_path the gateway cannot
   read (set_config with a value that is not a constant, SET ROLE, which changes "$user")
   makes every schema a candidate. `schema.name(...)` has the candidates of that schema;
   `pg_temp.name` those of every temporary schema.
3. The catalog's answers are cached per session, per function name, for CACHE_TTL seconds
   (a change made by another session is seen within that time), and dropped at once after a
   statement of the session that may change functions: DDL (CREATE/ALTER/DROP FUNCTION,
   schemas, extensions...), DO and dynamic SQL. (DDL a function runs inside itself is seen
   like another session's, within CACHE_TTL.) A statement in the same query string after one of
   those is judged as if every function it calls were a writer: the answer it would need
   does not exist yet. A SET search_path earlier in the string widens the candidates of the
   statements after it at once.
4. Fail closed: when the catalog cannot be asked, the statement is refused.

What this does not see: functions called by views, rules, triggers, row-level security
policies, casts, operators, default values or aggregates' transition functions. Database
privileges stay the last line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from gateway.policy.facts import Facts
from gateway.policy.rules import Decision, SessionGuard

FIRST_NORMAL_OID = 16384  # PostgreSQL's FirstNormalObjectId: below it, built in at initdb
CACHE_TTL = 10.0  # seconds a function's catalog entry is trusted (changes by other sessions)
MAX_CANDIDATE_PATHS = 32  # more distinct search_path schemas than this: every schema
# Languages PostgreSQL runs in-process without a sandbox but whose functions need a
# superuser to create; their declared volatility is taken as given (rule 1).
_UNCHECKED_LANGUAGES = frozenset({"c", "internal"})


@dataclass(frozen=True, slots=True)
class FunctionInfo:
    """One pg_proc row, as much of it as the decision needs."""

    schema: str
    name: str
    volatility: str  # i, s or v
    language: str
    trusted: bool  # pg_language.lanpltrusted
    builtin: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def writes(self) -> bool:
        if self.builtin:
            return False
        untrusted = not self.trusted and self.language not in _UNCHECKED_LANGUAGES
        return self.volatility == "v" or untrusted


@dataclass(frozen=True, slots=True)
class CatalogAnswer:
    """What one lookup returned: the functions of the names asked, and the search path."""

    functions: tuple[FunctionInfo, ...]
    path: tuple[str, ...]  # current_schemas(true) on the lookup connection
    user: str  # current_user, for "$user"


def _hex(text: str) -> str:
    return text.encode("utf-8").hex()


def lookup_sql(names: Iterable[str]) -> str:
    """The catalog query for these function names (hex-encoded: no quoting to get wrong,
    whatever the server's standard_conforming_strings)."""
    values = ", ".join(f"convert_from(decode('{_hex(n)}', 'hex'), 'UTF8')" for n in sorted(names))
    return _LOOKUP_SQL.replace("NAMES", values or "NULL")


_LOOKUP_SQL = (
    "SELECT 'f', n.nspname::text, p.proname::text, p.provolatile::text, l.lanname::text,"
    " l.lanpltrusted::text, (p.oid < 16384)::text"  # FIRST_NORMAL_OID
    " FROM pg_catalog.pg_proc p"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " JOIN pg_catalog.pg_language l ON l.oid = p.prolang"
    " WHERE p.proname::text = ANY (ARRAY[NAMES]::text[])"
    " UNION ALL SELECT 'p', s::text, NULL, NULL, NULL, NULL, NULL"
    " FROM unnest(pg_catalog.current_schemas(true)) s"
    " UNION ALL SELECT 'u', current_user::text, NULL, NULL, NULL, NULL, NULL"
)


_TRUE = frozenset({"t", "true"})  # boolean::text is 'true'; the output format 't'


def parse_answer(rows: Sequence[Sequence[str | None]]) -> CatalogAnswer:
    """The rows of `lookup_sql`, in text format."""
    functions: list[FunctionInfo] = []
    path: list[str] = []
    user = ""
    for row in rows:
        tag, first = row[0], row[1] or ""
        if tag == "f":
            functions.append(
                FunctionInfo(
                    schema=first,
                    name=row[2] or "",
                    volatility=row[3] or "v",
                    language=row[4] or "",
                    trusted=row[5] in _TRUE,
                    builtin=row[6] in _TRUE,
                )
            )
        elif tag == "p":
            path.append(first)
        elif tag == "u":
            user = first
    return CatalogAnswer(tuple(functions), tuple(path), user)


def _name_of(call: tuple[str, ...]) -> str:
    return call[-1] if call else ""


@dataclass
class SessionFunctions:
    """One session's knowledge of its functions and search paths (rules 2 and 3)."""

    functions: dict[str, tuple[float, tuple[FunctionInfo, ...]]] = field(default_factory=dict)
    # Every default search path a lookup reported (an ALTER ROLE/DATABASE ... SET search_path
    # changes it for the lookups, not for the running session: both count); None: no lookup.
    server_path: set[str] | None = None
    user: str = ""
    named: set[str] = field(default_factory=set)  # schemas SET search_path named
    any_schema: bool = False  # the search path could be anything
    user_in_path: bool = False  # a SET named "$user"

    def observe(self, facts: Sequence[Facts]) -> None:
        """A statement string is about to run: follow its search_path changes, and forget
        what the catalog said when it may change functions (rule 3)."""
        self.widen(facts)
        if any(_changes_functions(f) for f in facts):
            self.functions.clear()

    def widen(self, facts: Sequence[Facts]) -> None:
        """Add the schemas the statements may put on the search path (rule 2)."""
        for f in facts:
            if "identity_change" in f.flags or f.opaque:
                self.any_schema = True  # "$user" may change, or anything may
            for schema in f.search_path:
                if schema is None:
                    self.any_schema = True
                elif schema == "$user":
                    self.user_in_path = True
                else:
                    self.named.add(schema)
        if len(self.named) > MAX_CANDIDATE_PATHS:
            self.any_schema = True

    def missing(self, facts: Sequence[Facts], now: float) -> set[str]:
        """Function names the statements call that the cache cannot answer."""
        names = {_name_of(c) for f in facts for c in f.calls}
        return {
            n
            for n in names
            if n and (n not in self.functions or now - self.functions[n][0] > CACHE_TTL)
        }

    def learn(self, answer: CatalogAnswer, names: Iterable[str], now: float) -> None:
        self.server_path = (self.server_path or set()) | set(answer.path)
        self.user = answer.user
        by_name: dict[str, list[FunctionInfo]] = {n: [] for n in names}
        for info in answer.functions:
            by_name.setdefault(info.name, []).append(info)
        for name, infos in by_name.items():
            self.functions[name] = (now, tuple(infos))

    def _schemas(self) -> set[str] | None:
        if self.any_schema or self.server_path is None:
            return None
        schemas = self.server_path | self.named
        if self.user_in_path:
            schemas.add(self.user)
        return schemas

    def writers(self, facts: Facts) -> frozenset[str]:
        """The writers (schema.name) the statement's calls may reach; every call counts when
        the cache has no answer for it (the caller looked up what it could)."""
        schemas = self._schemas()
        out: set[str] = set()
        for call in facts.calls:
            name = _name_of(call)
            entry = self.functions.get(name)
            if entry is None:
                out.add(".".join(call))
                continue
            for info in entry[1]:
                if not info.writes or not _reachable(call, info, schemas):
                    continue
                out.add(info.qualified)
        return frozenset(out)


def _reachable(call: tuple[str, ...], info: FunctionInfo, schemas: set[str] | None) -> bool:
    if len(call) >= 2:
        schema = call[-2]
        if schema == "pg_temp":
            return info.schema.startswith("pg_temp_")
        return info.schema == schema
    if info.schema.startswith("pg_temp_"):
        return False  # never found by an unqualified name
    return schemas is None or info.schema in schemas


def worst_writers(facts: Facts) -> frozenset[str]:
    """Every call a writer: what a statement would be if the catalog said the worst."""
    return frozenset(".".join(c) for c in facts.calls)


def _changes_functions(f: Facts) -> bool:
    """DDL, or code the gateway cannot read (a DO block, dynamic SQL)."""
    return "ddl" in f.kinds or f.opaque


class FunctionCheck:
    """A session's guardrails with the catalog behind them: `check` is `SessionGuard.check`,
    with the volatile user functions each statement calls found and taken as writes.

    `ask` runs the catalog query (`lookup_sql`) for the session and returns its rows in text
    format; it raises `LookupFailed` when it cannot. The catalog is asked only when its
    answer could change the decision (when the statement would be decided alike with every
    call a writer, nothing is asked), and only for names the session's cache lacks.
    """

    def __init__(
        self,
        ask: Callable[[str], Awaitable[Sequence[Sequence[str | None]]]],
        clock: Callable[[], float],
    ) -> None:
        self._ask = ask
        self._clock = clock
        self.state = SessionFunctions()

    async def check(self, guard: SessionGuard, sql: str) -> Decision:
        plain = guard.check(sql)
        if plain.effect == "deny" or not any(
            s.facts is not None and s.facts.calls for s in plain.statements
        ):
            self._ran(plain)
            return plain
        worst = guard.check(sql, writers=_with_worst)
        if (worst.effect, worst.rules) == (plain.effect, plain.rules):
            self._ran(plain)
            return plain
        facts = [s.facts for s in plain.statements if s.facts is not None]
        now = self._clock()
        names = self.state.missing(facts, now)
        if names:
            try:
                rows = await self._ask(lookup_sql(names))
            except LookupFailed as exc:
                reason = (
                    "the functions this statement calls cannot be looked up in the catalog "
                    f"({exc}); it is refused as if they wrote"
                )
                return Decision("deny", reason, ())
            self.state.learn(parse_answer(rows), names, now)
        decision = guard.check(sql, writers=self._annotate)
        self._ran(decision)
        return decision

    def _ran(self, decision: Decision) -> None:
        if decision.effect != "deny":
            self.state.observe([s.facts for s in decision.statements if s.facts is not None])

    def _annotate(self, facts: Sequence[Facts]) -> list[Facts]:
        self.state.widen(facts)  # a SET search_path earlier in the string counts already
        out: list[Facts] = []
        changed = False  # an earlier statement of the string may change what functions are
        for f in facts:
            found = worst_writers(f) if changed else self.state.writers(f)
            f = replace(f, writers=found)
            out.append(f)
            changed = changed or _changes_functions(f)
        return out


def _with_worst(facts: Sequence[Facts]) -> list[Facts]:
    return [replace(f, writers=worst_writers(f)) for f in facts]


class LookupFailed(Exception):
    """The catalog could not be asked (no agent, the server refused, a time limit)."""

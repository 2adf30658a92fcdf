"""Lineage: which table columns each result column of a SQL statement derives from (sans-I/O).

Pure: a pglast tree and a `Catalog` in, a `Lineage` out; no sockets, no asyncio. The gateway
uses it to refuse statements whose clauses let a reader infer masked values
(`gateway.policy.lineage`); the agent will use it to mask computed result columns.

What it follows, per statement:

* result columns: through every expression, operator, function, cast, CASE/COALESCE,
  aggregate (and its ORDER BY and FILTER), window function (and its PARTITION/ORDER),
  scalar/ARRAY/IN subquery, FROM subquery, CTE (recursive ones to a fixed point), set
  operation (column i of each branch), LATERAL, VALUES, whole-row references (`t`, `t.*`,
  `row_to_json(t)`), `SELECT *`, views (their definition, from the catalog) and LANGUAGE sql
  functions (their body, from the catalog; in expressions and in FROM);
* row-selecting clauses (`Lineage.uses`): WHERE, JOIN ON/USING/NATURAL, GROUP BY (grouping
  sets too), HAVING, ORDER BY, DISTINCT (ON), window PARTITION BY/ORDER BY, an aggregate's
  FILTER and ORDER BY, ON CONFLICT ... WHERE, LIMIT/OFFSET, TABLESAMPLE, the arguments of
  set-returning functions (in FROM or the select list), in the statement, its
  subqueries, and the views and SQL functions it reaches (DO blocks and built-ins that read
  data named by text, `query_to_xml`, `dblink`..., are a use of `UNKNOWN`); each use says
  whether it is a plain lookup (`col = $1`, `col IN ('a', 'b')`), a NULL test, a join key
  (`a.col = b.col`), a plain grouping key, or anything else;
* statements: SELECT, VALUES, INSERT/UPDATE/DELETE/MERGE ... RETURNING, COPY (query) TO,
  COPY table [(cols)] TO, DECLARE CURSOR, PREPARE, EXPLAIN, CREATE TABLE AS / SELECT INTO /
  INSERT ... SELECT / UPDATE ... SET (`Lineage.writes`: data copied elsewhere).

Fail closed: what it cannot resolve (a relation or column the catalog lacks, a view or
function nested too deep or recursive, EXECUTE of a prepared statement, a FROM item it does
not know) carries `ANY` in its `Source` (`UNKNOWN`: any column of any table) and a reason in
`Lineage.unresolved`; a function it cannot see into (not LANGUAGE sql) is taken as derived
from all its arguments, so a masked column or a whole row passed to it taints its result.
Out of reach: what a non-SQL function reads by itself, triggers, rules, and timing.

The API the agent's masking step calls, per statement (cache it per statement shape, as the
gateway does, and drop the cache after DDL):

    lineage = analyze_statement(stmt, catalog)   # or analyze(sql, catalog) for a string
    for column in lineage.columns:               # in RowDescription order
        for source in column.sources:            # Source(schema, table, column); ANY parts
            ...                                  #   match every rule (fail closed)
            column.direct(source)                # the value is the source's own (mask by
                                                 #   the rule's strategy) or derived (whole)
            column.path(source)                  # "hex_out <- encode(card, 'hex') <- accounts.card"

`catalog` implements `Catalog` (`relation(schema, name)`, `functions(schema, name)`), with
unqualified names resolved through the session's search_path; `MemoryCatalog` holds answers
already fetched. The agent can answer it from pg_class/pg_attribute/pg_get_viewdef and
pg_proc on its own connection; the gateway's version is `gateway.protocols.pglineage`.
"""

from shared.lineage.analyze import analyze, analyze_statement
from shared.lineage.model import (
    ANY,
    UNKNOWN,
    Catalog,
    ClauseUse,
    Flow,
    Function,
    Lineage,
    MemoryCatalog,
    Relation,
    ResultColumn,
    Source,
    Step,
    Write,
    direct,
)

__all__ = [
    "ANY",
    "UNKNOWN",
    "Catalog",
    "ClauseUse",
    "Flow",
    "Function",
    "Lineage",
    "MemoryCatalog",
    "Relation",
    "ResultColumn",
    "Source",
    "Step",
    "Write",
    "analyze",
    "analyze_statement",
    "direct",
]

"""In-process cost of the masked columns' inference check per statement (`python -m bench.lineage`).

For a few statement shapes, with constants that change on every call (as applications send
them), prints microseconds of CPU per statement for:

- `facts`: `statement_facts`, what the guardrails already pay per statement (shape cache on);
- `check (cached)`: `LineageCheck.check` on a session whose catalog and shape cache are warm:
  the added cost on a session with column masking rules;
- `lineage (no cache)`: one full parse and analysis, what a new shape costs once (plus the
  catalog round trip, not counted here).

The catalog is answered from memory. Nothing here is asserted anywhere; it is for
before/after comparisons on one machine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gateway.policy.facts import statement_facts
from gateway.policy.lineage_check import LineageCheck
from gateway.policy.masking import MaskingRuleConfig
from shared.lineage import MemoryCatalog, Relation, analyze

ROUNDS = 2000
SHAPES = {
    "pgbench select": "SELECT abalance FROM pgbench_accounts WHERE aid = {n}",
    "join + order": (
        "SELECT a.aid, b.bbalance FROM pgbench_accounts a JOIN pgbench_branches b"
        " ON b.bid = a.bid WHERE a.aid > {n} ORDER BY a.aid LIMIT 10"
    ),
    "cte + aggregate": (
        "WITH t AS (SELECT bid, sum(abalance) s FROM pgbench_accounts WHERE aid < {n}"
        " GROUP BY bid) SELECT bid, s FROM t ORDER BY s DESC"
    ),
}
CATALOG = (
    MemoryCatalog()
    .add(Relation("public", "pgbench_accounts", ("aid", "bid", "abalance", "filler")))
    .add(Relation("public", "pgbench_branches", ("bid", "bbalance", "filler")))
)
MASKING = (MaskingRuleConfig(name="filler", columns=["*.filler"]),)


async def _ask(sql: str) -> Sequence[Sequence[str | None]]:
    rows: list[tuple[str | None, ...]] = []
    for (schema, name), r in CATALOG.relations.items():
        cols = json.dumps(r.columns)
        rows.append(("r", None, name, schema, name, cols, None))
    return rows


def _run(coro: Coroutine[Any, Any, object]) -> object:
    """A coroutine that awaits nothing (warm caches), run without an event loop's overhead."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the check awaited the catalog: caches were not warm")


def _per_call(run: Callable[[int], object]) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for n in range(ROUNDS):
            run(n)
        best = min(best, time.process_time() - start)
    return best / ROUNDS * 1e6


def main() -> None:
    check = LineageCheck(_ask, time.monotonic)
    loop = asyncio.new_event_loop()
    print(f"{'statement':<18} {'facts':>8} {'check (cached)':>15} {'lineage (no cache)':>19}")
    for label, template in SHAPES.items():
        rules = check.rules(MASKING)
        loop.run_until_complete(check.check(rules, template.format(n=0)))  # warm the catalog

        def facts(n: int, template: str = template) -> object:
            return statement_facts(template.format(n=n))

        def checked(n: int, template: str = template) -> object:
            return _run(check.check(check.rules(MASKING), template.format(n=n)))

        def fresh(n: int, template: str = template) -> object:
            return analyze(template.format(n=n), CATALOG)

        print(
            f"{label:<18} {_per_call(facts):>6.1f}us {_per_call(checked):>13.1f}us"
            f" {_per_call(fresh):>17.1f}us"
        )
    loop.close()


if __name__ == "__main__":
    main()

"""How every command prints what the gateway answered.

Three shapes, one style:

- lists: a table with a header row (`table`), rendered by rich;
- one object (`show` commands): `label:  value` lines, nested mappings indented (`record`);
- `-o json` / `-o yaml` (`--json` is an alias of `-o json`): exactly the API's data, times as
  the API wrote them (ISO 8601), for scripts (`structured`).

People read times as "3 min ago" or "in 2 h"; scripts get the ISO time from json/yaml.

Output that is not a terminal (a pipe, a file, a test) is plain text: no ANSI codes, and the
table is as wide as its content instead of the 80 columns rich assumes, so ids and long values
are never cut or wrapped (people copy ids out of these tables). On a terminal, id columns
keep their full width and the other columns wrap.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import click
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("json", "yaml")
Row = dict[str, Any]  # one object of the API's JSON
# Piped output: wide enough that no row of a table wraps in practice.
PIPE_WIDTH = 100_000
_NARROW = 8  # what a wrapped text column still gets on a narrow terminal


def output_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add `-o/--output json|yaml` and `--json` (an alias of `-o json`) to a command.

    The command receives one keyword, `output`: "json", "yaml", or None for the human layout.
    """

    @functools.wraps(fn)
    def command(*args: Any, output: str | None, as_json: bool, **kwargs: Any) -> Any:
        return fn(*args, output="json" if as_json else output, **kwargs)

    command = click.option("--json", "as_json", is_flag=True, help="Same as -o json.")(command)
    return click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        help="Print the gateway's data as JSON or YAML instead of a table.",
    )(command)


def structured(data: Any, output: str | None) -> bool:
    """Print `data` as JSON or YAML when asked to; False: the caller prints the human layout."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return True
    if output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip())
        return True
    return False


# ---- values ---------------------------------------------------------------------------


def _parse_time(value: str | dt.datetime) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        when = value
    else:
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def relative(value: str | dt.datetime | None, now: dt.datetime | None = None) -> str:
    """`3 min ago`, `in 2 h`, `just now`; `-` for no time; text that is no time as it is."""
    if value is None or value == "":
        return "-"
    when = _parse_time(value)
    if when is None:
        return str(value)
    delta = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if abs(delta) < 5:
        return "just now"
    return f"in {_span(delta)}" if delta > 0 else f"{_span(-delta)} ago"


def timestamp(value: str | dt.datetime | None, now: dt.datetime | None = None) -> str:
    """For `show` layouts: the relative time and the exact one, `3 min ago (2026-...Z)`."""
    if value is None or value == "":
        return "-"
    when = _parse_time(value)
    if when is None:
        return str(value)
    exact = when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{relative(when, now)} ({exact})"


def clock(value: str | dt.datetime | None) -> str:
    """Time of day (UTC), for events inside one session: `14:03:07`."""
    when = _parse_time(value) if value else None
    return when.astimezone(dt.UTC).strftime("%H:%M:%S") if when else cell(value)


def duration(seconds: float | None) -> str:
    return "-" if seconds is None else _span(max(seconds, 0))


def size(n: int | None) -> str:
    """Bytes for people: `512 B`, `3.4 KiB`, `12.0 MiB`."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def cell(value: Any) -> str:
    """A value as table or record text: `-` for nothing, yes/no, lists comma-joined."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, Mapping):  # k=v pairs; a list inside one stays one word
        return " ".join(
            f"{k}={','.join(map(cell, v)) if isinstance(v, list | tuple) else cell(v)}"
            for k, v in value.items()
            if v not in (None, "", [], {})
        )
    return str(value)


# ---- tables ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its header and how to get the cell from a row of the API's data."""

    header: str
    value: str | Callable[[Row], Any]
    ident: bool = False  # an id: never wrapped, never shortened (people copy it)
    justify: Literal["left", "right"] = "left"

    def text(self, row: Row) -> str:
        got = row.get(self.value) if isinstance(self.value, str) else self.value(row)
        return cell(got)


def col(header: str, key: str, *, ident: bool = False) -> Column:
    return Column(header, key, ident=ident)


def num(header: str, key: str) -> Column:
    return Column(header, key, justify="right")


def when(header: str, key: str) -> Column:
    """A time column, read as `3 min ago`."""
    return Column(header, lambda row: relative(row.get(key)))


def _is_tty() -> bool:
    return sys.stdout.isatty()


def render_table(rows: Sequence[Row], columns: Sequence[Column], *, tty: bool = False) -> str:
    """The table as text (ANSI styled only when `tty`), trailing blanks stripped."""
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    texts = [[c.text(r) for c in columns] for r in rows]
    least = 0  # the narrowest the table can be with its ids whole
    for i, c in enumerate(columns):
        longest = max([len(c.header), *(len(t[i]) for t in texts)])
        least += (longest if c.ident else min(longest, _NARROW)) + 2
        table.add_column(
            c.header,
            justify=c.justify,
            no_wrap=c.ident,
            overflow="fold",
            min_width=longest if c.ident else None,
        )
    for t in texts:
        table.add_row(*(Text(v) for v in t))  # Text: data is never read as rich markup
    # A terminal narrower than the ids: wider lines (the terminal wraps them) beat cut ids.
    width = max(shutil.get_terminal_size().columns, least) if tty else PIPE_WIDTH
    console = Console(
        file=io.StringIO(),
        width=width,
        force_terminal=tty,
        color_system="standard" if tty else None,
        highlight=False,
        emoji=False,
        markup=False,
    )
    with console.capture() as captured:
        console.print(table)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def table(rows: Sequence[Row], columns: Sequence[Column]) -> None:
    """Print rows as a table with a header row (just the header when there are none)."""
    click.echo(render_table(rows, columns, tty=_is_tty()))


def section(title: str, rows: Sequence[Row], columns: Sequence[Column]) -> None:
    """A titled table inside a `show` layout; nothing when there are no rows."""
    if not rows:
        return
    click.echo(f"\n{title}:")
    for line in render_table(rows, columns, tty=_is_tty()).splitlines():
        click.echo(f"  {line}".rstrip())


# ---- records --------------------------------------------------------------------------


def render_record(fields: Sequence[tuple[str, Any]], indent: int = 0) -> str:
    """`label:  value` lines, values aligned; a mapping value becomes an indented block and
    a multi-line value keeps its lines, indented under the value column."""
    shown = [(k, v) for k, v in fields]
    if not shown:
        return ""
    pad = max(len(k) for k, _ in shown) + 2
    lines: list[str] = []
    prefix = " " * indent
    for label, value in shown:
        if isinstance(value, Mapping) and value:
            lines.append(f"{prefix}{label}:")
            lines.append(render_record(list(value.items()), indent + 2))
            continue
        text = cell(value).splitlines() or ["-"]
        lines.append(f"{prefix}{label + ':':<{pad}}{text[0]}".rstrip())
        lines.extend(f"{prefix}{' ' * pad}{more}".rstrip() for more in text[1:])
    return "\n".join(lines)


def record(fields: Sequence[tuple[str, Any]]) -> None:
    click.echo(render_record(fields))

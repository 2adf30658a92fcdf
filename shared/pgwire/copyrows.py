"""Fields of one COPY ... TO row in text or CSV format, to mask them one by one (pure).

PostgreSQL sends one row per CopyData message in copy-out, ending in a newline. Text
format: fields are split by the delimiter, which never appears unescaped inside one. CSV
(default quote `"` and escape `"`): a quoted field may hold the delimiter, quotes (doubled)
and newlines. A NULL is `\\N` in text and an empty unquoted field in CSV.
"""

from __future__ import annotations


def field_spans(row: str, fmt: str, delimiter: str) -> list[tuple[int, int]]:
    """(start, end) of each field of `row` (its trailing newline excluded)."""
    end = len(row) - 1 if row.endswith("\n") else len(row)
    if fmt == "text":
        spans: list[tuple[int, int]] = []
        start = 0
        while True:
            cut = row.find(delimiter, start, end)
            if cut < 0:
                spans.append((start, end))
                return spans
            spans.append((start, cut))
            start = cut + 1
    spans = []
    start = 0
    quoted = False
    i = 0
    while i < end:
        ch = row[i]
        if quoted:
            if ch == '"':
                if i + 1 < end and row[i + 1] == '"':
                    i += 1
                else:
                    quoted = False
        elif ch == '"':
            quoted = True
        elif ch == delimiter:
            spans.append((start, i))
            start = i + 1
        i += 1
    if quoted:
        raise ValueError("a CSV row ends inside a quoted field")
    spans.append((start, end))
    return spans


def null(fmt: str) -> str:
    return "\\N" if fmt == "text" else ""


def literal(value: str, fmt: str, delimiter: str) -> str:
    """`value` as a field of that format."""
    if fmt == "text":
        return (
            value.replace("\\", "\\\\")
            .replace(delimiter, "\\" + delimiter)
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    if any(c in value for c in (delimiter, '"', "\n", "\r")) or value in ("", "\\."):
        return '"' + value.replace('"', '""') + '"'
    return value


def rewrite(row: str, spans: list[tuple[int, int]], fields: dict[int, str]) -> str:
    """`row` with the fields at these indexes replaced (already formatted)."""
    out: list[str] = []
    last = 0
    for index in sorted(fields):
        start, end = spans[index]
        out.append(row[last:start])
        out.append(fields[index])
        last = end
    out.append(row[last:])
    return "".join(out)

"""asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/), sans-I/O.

A recording is a header line (JSON object) and one JSON array per event:
`[seconds since start, code, text]`, with code "o" (output to the terminal), "i" (input
typed) or "r" (resize, text "COLSxROWS"). Bytes are decoded incrementally as UTF-8, so a
character split across two reads is kept whole; undecodable bytes become U+FFFD.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Header:
    width: int
    height: int
    timestamp: int
    term: str = ""
    title: str = ""


@dataclass(frozen=True, slots=True)
class CastEvent:
    time: float
    code: str  # "o" | "i" | "r"
    text: str


class CastEncoder:
    """Turns terminal traffic into asciicast lines (each ending in a newline)."""

    def __init__(self, header: Header, start: float) -> None:
        self._start = start
        self._decoders = {
            "o": codecs.getincrementaldecoder("utf-8")("replace"),
            "i": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        self._last = 0.0
        self.header = header

    def header_line(self) -> str:
        h = self.header
        data: dict[str, Any] = {
            "version": 2,
            "width": h.width,
            "height": h.height,
            "timestamp": h.timestamp,
        }
        if h.term:
            data["env"] = {"TERM": h.term}
        if h.title:
            data["title"] = h.title
        return json.dumps(data) + "\n"

    def _line(self, now: float, code: str, text: str) -> str:
        # Monotonic event times even if the clock steps.
        t = max(self._last, now - self._start)
        self._last = t
        return json.dumps([round(t, 6), code, text], ensure_ascii=False) + "\n"

    def output(self, now: float, data: bytes) -> str:
        text = self._decoders["o"].decode(data)
        return self._line(now, "o", text) if text else ""

    def input(self, now: float, data: bytes) -> str:
        text = self._decoders["i"].decode(data)
        return self._line(now, "i", text) if text else ""

    def resize(self, now: float, cols: int, rows: int) -> str:
        return self._line(now, "r", f"{cols}x{rows}")


class CastError(ValueError):
    pass


def parse(text: str) -> tuple[dict[str, Any], Iterator[CastEvent]]:
    """The header and the events of an asciicast v2 file."""
    lines = text.splitlines()
    if not lines:
        raise CastError("empty recording")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as exc:
        raise CastError(f"bad header: {exc}") from None
    if not isinstance(header, dict) or header.get("version") != 2:
        raise CastError("not an asciicast v2 recording")

    def events() -> Iterator[CastEvent]:
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                t, code, data = json.loads(line)
            except (json.JSONDecodeError, ValueError) as exc:
                raise CastError(f"line {n}: {exc}") from None
            yield CastEvent(float(t), str(code), str(data))

    return header, events()

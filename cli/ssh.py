"""`wardgate sessions replay`: terminal recordings of SSH sessions, played back or exported."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from cli import client as cl
from shared.recording.asciicast import CastError, parse


def _fetch(ref: cl.GatewayRef, session_id: str, channel: int | None) -> tuple[dict[str, Any], str]:
    with ref.http() as http:
        listed = cl.check(http.get(f"/v1/sessions/{session_id}/recordings"))
        if not listed:
            raise click.ClickException(f"session {session_id} has no terminal recording")
        chosen = listed[0] if channel is None else None
        for item in listed:
            if channel is not None and item["channel"] == channel:
                chosen = item
        if chosen is None:
            channels = ", ".join(str(i["channel"]) for i in listed)
            raise click.ClickException(f"no recording of channel {channel} (channels: {channels})")
        response = http.get(f"/v1/sessions/{session_id}/recordings/{chosen['channel']}")
        if not response.is_success:
            cl.check(response)
        return chosen, response.text


def play(text: str, *, speed: float, max_idle: float, out: Any = None) -> None:
    """Write the recording's output to `out` (the terminal) with its timing, sped up."""
    out = out or sys.stdout
    _, events = parse(text)
    last = 0.0
    for event in events:
        if event.code != "o":
            continue
        delay = min(event.time - last, max_idle) / speed
        last = event.time
        if delay > 0:
            time.sleep(delay)  # playback pacing, as the session was typed
        out.write(event.text)
        out.flush()


def replay(
    ref: cl.GatewayRef,
    session_id: str,
    *,
    channel: int | None,
    speed: float,
    max_idle: float,
    export: Path | None,
) -> None:
    info, text = _fetch(ref, session_id, channel)
    if export is not None:
        export.write_text(text)
        click.echo(
            f"wrote {export} (channel {info['channel']}, {info['bytes']} bytes, "
            f"sha256 {info['sha256']}, verified against the audit log)",
            err=True,
        )
        return
    try:
        play(text, speed=speed, max_idle=max_idle)
    except CastError as exc:
        raise click.ClickException(f"recording unreadable: {exc}") from None

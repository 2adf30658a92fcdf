"""Keyset paging for lists that grow while they are read (sessions).

A cursor names the last row of a page by its sort key, (started_at, id); it is opaque to
clients (base64url of JSON), so the key may change without breaking them. A malformed cursor
is the client's mistake: 422, not a 500.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json

from fastapi import HTTPException

MAX_PAGE = 1000


def encode_cursor(at: dt.datetime, row_id: str) -> str:
    raw = json.dumps([at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, row_id = json.loads(raw)
        when = dt.datetime.fromisoformat(at)
        if when.tzinfo is None or not isinstance(row_id, str):
            raise ValueError("not a cursor")
    except (binascii.Error, ValueError, TypeError) as exc:
        raise HTTPException(
            422, "cursor: not one this gateway handed out (take it from the Link header)"
        ) from exc
    return when, row_id

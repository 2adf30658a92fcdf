"""What the MCP door hands a model: result values as JSON, refusals in the server's words."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.mcp import Loopback, _jsonable, _refusal


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (7, 7),
        (1.5, 1.5),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (decimal.Decimal("12345678901234567890.0001"), "12345678901234567890.0001"),
        (dt.date(2026, 12, 8), "2026-12-08"),
        (dt.datetime(2026, 12, 8, 1, 2, 3, tzinfo=dt.UTC), "2026-12-08T01:02:03+00:00"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (b"\x00\x01", {"base64": "AAE="}),
        ({"a": [decimal.Decimal("1.0")]}, {"a": ["1.0"]}),
        ((1, 2), [1, 2]),
    ],
)
def test_values_become_json(value: Any, expected: Any) -> None:
    assert _jsonable(value) == expected


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary()
    | st.decimals()
    | st.datetimes()
    | st.uuids(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(_VALUES)
def test_every_value_encodes_as_strict_json(value: Any) -> None:
    json.dumps(_jsonable(value), allow_nan=False)


def test_an_error_without_diagnostics_keeps_its_text() -> None:
    exc = psycopg.errors.InsufficientPrivilege("read-only access: DELETE writes data")
    assert _refusal(exc) == "read-only access: DELETE writes data"


def test_a_refused_connection_names_the_doors_reason() -> None:
    exc = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "FATAL:  user 'bot' has no access to connection 'pg-hidden'"
    )
    assert _refusal(exc) == "connection refused: user 'bot' has no access to connection 'pg-hidden'"


@pytest.mark.parametrize(
    ("listen", "host"),
    [("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("", "127.0.0.1"), ("10.0.0.5", "10.0.0.5")],
)
def test_the_loopback_dials_the_address_the_gateway_listens_on(listen: str, host: str) -> None:
    assert Loopback.of((listen, 8443), Path("ca.pem")).host == host

"""The HTTP API bounds request bodies before reading them, and never echoes input in a 422
(a real gateway process; bodies declared, chunked and malformed)."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest

from gateway.api.limits import API_BODY, AUTH_BODY
from tests.fixtures.wardgate import GatewayProc, Wardgate

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    wg = Wardgate(tmp_path_factory.mktemp("limits"))
    try:
        yield wg.gateway()
    finally:
        wg.close()


def test_a_large_declared_body_is_refused_unread(gw: GatewayProc) -> None:
    rss = psutil.Process(gw.pid).memory_info().rss
    with gw.api() as api:
        r = api.post("/v1/auth/workload", content=b"x" * (64 * 1024 * 1024))
    assert r.status_code == 413 and r.json() == {"detail": f"request body over {AUTH_BODY} bytes"}
    # 64 MiB sent, not buffered (before the limit 256 MiB grew the gateway by 263 MB)
    assert psutil.Process(gw.pid).memory_info().rss - rss < 32 * 1024 * 1024


def test_a_chunked_body_is_cut_at_the_limit(gw: GatewayProc) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(200):
            yield b"y" * 8192  # 1.6 MB, no Content-Length

    with gw.api() as api:
        r = api.post("/v1/auth/password", content=chunks())
    assert r.status_code == 413


def test_an_admin_body_has_room_and_a_limit(gw: GatewayProc) -> None:
    with gw.api() as api:
        fits = api.post("/v1/apply", json={"connections": [], "pad": "z" * (AUTH_BODY * 4)})
        assert fits.status_code != 413, fits.text
        over = api.post("/v1/apply", content=b"{" + b" " * API_BODY + b"}")
        assert over.status_code == 413


def test_a_validation_error_says_where_not_what(gw: GatewayProc) -> None:
    secret = "wgt_this-must-not-come-back-0123456789abcdef"
    with gw.api() as api:
        # the token in a field of the wrong type: FastAPI's own answer would quote it
        body = {"user": "alice", "password": {"token": secret}, "code": "123456"}
        r = api.post("/v1/auth/password", json=body)
    assert r.status_code == 422, r.text
    assert secret not in r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "password"]]
    assert all(set(e) == {"loc", "msg", "type"} for e in r.json()["detail"])  # no "input"


def test_the_api_answers_after_the_refusals(gw: GatewayProc) -> None:
    with gw.api() as api:
        assert api.get("/v1/health").status_code == 200

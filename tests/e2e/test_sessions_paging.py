"""More sessions than one page: the API pages them (Link: rel="next"), the CLI follows.

A real gateway process; 2,345 session records are written into its SQLite store beside it
(opening that many real sessions would test the protocols, not the paging).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest

from gateway.store import SessionRecord, Store
from tests.fixtures.wardgate import GatewayProc, Wardgate

pytestmark = pytest.mark.e2e

COUNT = 2345
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Wardgate, GatewayProc]]:
    wg = Wardgate(tmp_path_factory.mktemp("paging"))
    try:
        gw = wg.gateway()
        with Store.open(f"sqlite:///{gw.data_dir / 'wardgate.db'}") as store:
            for n in range(COUNT):
                # Every fifth shares its predecessor's start: the id breaks those ties.
                at = T0 + dt.timedelta(seconds=n - n % 5 // 4)
                store.sessions.create(
                    SessionRecord(f"s{n:05d}", "alice", "db1", "postgres", "192.0.2.1:1", at)
                )
        yield wg, gw
    finally:
        wg.close()


def test_the_api_pages_with_a_link_to_the_next_page(paged: tuple[Wardgate, GatewayProc]) -> None:
    _, gw = paged
    seen: list[str] = []
    pages = 0
    with gw.api() as api:
        response = api.get("/v1/sessions", params={"limit": 5000, "connection": "db1"})
        while True:
            assert response.status_code == 200, response.text
            pages += 1
            seen += [s["id"] for s in response.json()]
            following = response.links.get("next", {}).get("url")
            if following is None:
                break
            assert "connection=db1" in following  # the filters stay on every page
            response = api.get(following)
        assert pages == 3  # 1000 + 1000 + 345: a page is at most 1000
        assert seen == sorted(seen, reverse=True) and len(set(seen)) == COUNT
        bad = api.get("/v1/sessions", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 422
        assert "cursor: not one this gateway handed out" in bad.text


@pytest.mark.parametrize(
    ("args", "count"), [((), 50), (("--limit", "1500"), 1500), (("--all",), COUNT)]
)
def test_the_cli_follows_the_pages(
    paged: tuple[Wardgate, GatewayProc], args: tuple[str, ...], count: int
) -> None:
    wg, gw = paged
    out = wg.cli(gw, "sessions", "list", *args, "-o", "json")
    assert out.returncode == 0, out.stderr
    ids = [s["id"] for s in json.loads(out.stdout)]
    assert len(ids) == count and len(set(ids)) == count
    assert ids[0] == f"s{COUNT - 1:05d}" and ids == sorted(ids, reverse=True)

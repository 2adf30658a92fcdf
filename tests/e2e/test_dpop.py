"""DPoP-bound service accounts end to end (RFC 9449): two gateway members on one PostgreSQL
store; the CLI creates a service account that requires DPoP; its API key works with proofs
by its key (API and the MCP door, through the official MCP client) and is refused alone,
with a proof by another key, and with a proof used before, on either member.
"""

from __future__ import annotations

import asyncio
import ssl
import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from joserfc.jwk import ECKey
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.crypto import SecretBox
from shared.dpop import make_proof
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import WARDGATE, GatewayProc, Wardgate

pytestmark = pytest.mark.e2e


def _get(gw: GatewayProc, path: str, key: str, proof: str | None) -> httpx.Response:
    headers = {"Authorization": f"DPoP {key}"}
    if proof is not None:
        headers["DPoP"] = proof
    with gw.api() as api:
        return api.get(path, headers=headers)


def _proof(gw: GatewayProc, key: ECKey, path: str, token: str) -> str:
    return make_proof(key, method="GET", url=f"{gw.url}{path}", access_token=token)


def _refused(r: httpx.Response, words: str) -> None:
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert 'error="invalid_dpop_proof"' in challenge, challenge
    assert words in r.json()["detail"], r.text


async def _mcp_tools(gw: GatewayProc, token: str, key: ECKey) -> Any:
    async def prove(request: httpx2.Request) -> None:
        request.headers["DPoP"] = make_proof(
            key, method=request.method, url=str(request.url), access_token=token
        )

    verify = ssl.create_default_context(cafile=str(gw.ca_path))
    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"DPoP {token}"},
            verify=verify,
            timeout=60,
            event_hooks={"request": [prove]},
        ) as http,
        streamable_http_client(f"{gw.url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await session.call_tool("list_connections", {})


def test_a_dpop_bound_key_works_with_its_key_only(
    wardgate: Wardgate, postgres_db: PostgresServer
) -> None:
    shared = {"store": postgres_db.url(), "secret_key": SecretBox.generate_key()}
    first = wardgate.gateway(**shared)
    second = wardgate.gateway(**shared)

    made = wardgate.cli(first, "service-account", "create", "bound-bot", "--dpop")
    assert made.returncode == 0, made.stderr
    issued = wardgate.cli(first, "service-account", "key", "bound-bot", "--scope", "pg-*")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    key, other = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")

    # The first valid proof binds the key; later proofs by it pass on either member.
    proof = _proof(first, key, "/v1/whoami", token)
    r = _get(first, "/v1/whoami", token, proof)
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "bound-bot"
    r = _get(second, "/v1/whoami", token, _proof(second, key, "/v1/whoami", token))
    assert r.status_code == 200, r.text

    # A proof is good once, across members: the jti cache is in the store.
    _refused(_get(first, "/v1/whoami", token, proof), "used before")
    second_url_proof = _proof(second, key, "/v1/whoami", token)
    assert _get(second, "/v1/whoami", token, second_url_proof).status_code == 200
    _refused(_get(second, "/v1/whoami", token, second_url_proof), "used before")

    # The token alone, as a bearer or without a proof, and a proof by another key: refused.
    with first.api(token) as api:
        r = api.get("/v1/whoami")
    _refused(r, "DPoP-bound")
    _refused(_get(first, "/v1/whoami", token, None), "DPoP proof header is required")
    _refused(
        _get(first, "/v1/whoami", token, _proof(first, other, "/v1/whoami", token)),
        "another key",
    )
    # A proof for another URL is no proof for this one.
    _refused(_get(first, "/v1/whoami", token, _proof(first, key, "/v1/health", token)), "htu")

    # The MCP door checks the same way: the official client, a fresh proof per request.
    result = asyncio.run(_mcp_tools(first, token, key))
    assert not result.is_error, result
    with pytest.raises(ExceptionGroup, match="unhandled errors") as raised:
        asyncio.run(_mcp_tools(first, token, other))
    assert "Server returned an error response" in repr(raised.value)
    # What the MCP client was told, in HTTP: the door's 401 and challenge.
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    with first.api() as api:
        r = api.post(
            "/mcp",
            json=initialize,
            headers={
                "Authorization": f"DPoP {token}",
                "DPoP": make_proof(
                    other, method="POST", url=f"{first.url}/mcp", access_token=token
                ),
                "Accept": "application/json, text/event-stream",
            },
        )
    assert r.status_code == 401, r.text
    assert 'error="invalid_dpop_proof"' in r.headers["www-authenticate"]

    refusals = [e for e in first.audit("auth.rejected") if "another key" in str(e)]
    assert refusals, first.audit("auth.rejected")
    assert token not in str(first.audit())


def test_the_cli_keeps_a_key_for_a_dpop_bound_api_key(wardgate: Wardgate, tmp_path: Path) -> None:
    gw = wardgate.gateway(identity={"credentials": {"dpop_window": 30}})
    assert wardgate.cli(gw, "service-account", "create", "cli-bot", "--dpop").returncode == 0
    issued = wardgate.cli(gw, "service-account", "key", "cli-bot", "--scope", "pg-*")
    token = issued.stdout.strip()
    config = tmp_path / "cli-config"
    env = {**gw.client_env(), "WARDGATE_CONFIG_DIR": str(config)}
    env.pop("WARDGATE_TOKEN")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WARDGATE, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    login = cli("login", "--token", token)
    assert login.returncode == 0, login.stderr
    assert "as cli-bot" in login.stderr
    key_file = config / "dpop-key.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    for _ in range(2):  # a fresh proof each time: no replay
        who = cli("whoami")
        assert who.returncode == 0, who.stderr
        assert "cli-bot" in who.stdout
    # The key is bound to this CLI's key: another CLI (another key) with the token is refused.
    key_file.unlink()
    refused = cli("whoami")
    assert refused.returncode != 0
    assert "another key" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

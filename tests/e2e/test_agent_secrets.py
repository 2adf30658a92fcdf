"""Agents declared with their secret in the gateway's config (`agents[].secret`): the key is
known before the gateway starts (compose, Helm), the config stays the truth across restarts,
and it never brings back an agent an administrator revoked."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from gateway.tls import fingerprint
from shared.agentkey import AgentKey
from tests.fixtures.wardgate import GatewayProc, Proc, ProcessDied, Wardgate, wait_for

pytestmark = pytest.mark.e2e


def key_for(gw: GatewayProc, secret: str) -> str:
    return AgentKey(
        "dc1", secret, "127.0.0.1", gw.agent_port, fingerprint(gw.ca_path.read_bytes())
    ).format()


def stopped(agent: Proc) -> str:
    wait_for(lambda: agent.proc is not None and agent.proc.poll() is not None, "the agent to stop")
    return agent.log()


def test_a_configured_secret_is_the_agents_and_follows_the_config(
    wardgate: Wardgate, tmp_path: Path
) -> None:
    secret_file = tmp_path / "dc1.secret"
    first = secrets.token_urlsafe(32)
    secret_file.write_text(first + "\n")
    gw = wardgate.gateway(agents=[{"name": "dc1", "secret": f"file:{secret_file}"}])
    # No key printed: its operator has it already. The name as a word: the CA's fingerprint, in
    # hex, may hold "dc1" by chance.
    assert not re.search(r"\bdc1\b", gw.log())
    agent = wardgate.agent(gw, key_for(gw, first), wait="dc1")
    agent.stop()

    rotated = secrets.token_urlsafe(32)  # the Secret changed: the next start takes it
    secret_file.write_text(rotated)
    gw.restart()
    assert "rejected" in stopped(wardgate.agent(gw, key_for(gw, first)))
    wardgate.agent(gw, key_for(gw, rotated), wait="dc1").stop()


def test_a_revoked_agent_stays_revoked_whatever_the_config_says(
    wardgate: Wardgate, tmp_path: Path
) -> None:
    secret_file = tmp_path / "dc1.secret"
    secret_file.write_text(secrets.token_urlsafe(32))
    gw = wardgate.gateway(agents=[{"name": "dc1", "secret": f"file:{secret_file}"}])
    with gw.api() as api:
        assert api.delete("/v1/agents/dc1").status_code in (200, 204)
    secret_file.write_text(new := secrets.token_urlsafe(32))
    gw.restart()
    assert "rejected" in stopped(wardgate.agent(gw, key_for(gw, new)))
    assert "is revoked" in gw.log()


@pytest.mark.parametrize(
    ("secret", "says"),
    [("file:/nonexistent/dc1.secret", "No such file"), ("not a secret!", "url-safe base64")],
)
def test_a_secret_that_cannot_be_used_stops_the_gateway_with_one_line(
    wardgate: Wardgate, secret: str, says: str
) -> None:
    with pytest.raises(ProcessDied):
        wardgate.gateway(agents=[{"name": "dc1", "secret": secret}])
    (gw,) = [p for p in wardgate.procs if isinstance(p, GatewayProc)]
    log = gw.log()
    assert "agents[0] (dc1):" in log and says in log, log
    assert "Traceback" not in log

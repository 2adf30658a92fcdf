"""deploy/compose.yaml's fleet, run as processes: PostgreSQL, two `wardgate gateway` members
reading deploy/gateway.example.yaml with the files deploy/fleet-secrets.sh makes, placed where
compose mounts them, and the agent started the way the compose file starts it. (The machine that
runs the tests has no Docker daemon; this runs the same config, secrets and commands.)"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.members import Member, served_certificate, start_member_proc
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import (
    WARDGATE,
    Proc,
    Wardgate,
    _env,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RUN_SECRETS = "/run/secrets/"
DATA_DIR = "/var/lib/wardgate"


def compose_mounts() -> dict[str, Path]:
    """Where compose mounts each secret in a gateway container: target -> file on the host."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    files = {name: spec["file"] for name, spec in compose["secrets"].items()}
    member = compose["services"]["gateway-1"]
    return {s["target"]: Path(files[s["source"]]) for s in member["secrets"]}


def place(text: str, secrets: Path, data_dir: Path) -> str:
    return text.replace(RUN_SECRETS, f"{secrets}/").replace(DATA_DIR, str(data_dir))


def start_member(
    wardgate: Wardgate, secrets: Path, n: int, *, agents: bool
) -> tuple[Member, dict[str, Any]]:
    data_dir = wardgate.tmp / f"member{n}"
    data_dir.mkdir()
    # The secrets compose mounts into the data directory (SSH host key and user CA).
    for target, source in compose_mounts().items():
        if target.startswith(DATA_DIR):
            shutil.copy(secrets / source.name, data_dir / Path(target).name)
    config = yaml.safe_load(place((DEPLOY / "gateway.example.yaml").read_text(), secrets, data_dir))
    public, agent_port = free_port(), free_port()
    config.update(listen=f"127.0.0.1:{public}", agent_listen=f"127.0.0.1:{agent_port}")
    if not agents:
        config.pop("agents")
    config_path = data_dir / "gateway.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = _env()
    env.pop("WARDGATE_ADMIN_TOKEN", None)  # the config's admin_token file is the one
    member = Member(
        args=[*WARDGATE, "gateway", "--config", str(config_path)],
        log_path=data_dir / "gateway.log",
        env=env,
        config_path=config_path,
        data_dir=data_dir,
        public_port=public,
        agent_port=agent_port,
        token=(secrets / "admin_token").read_text().strip(),
        fleet_ca=secrets / "ca.crt",
    )
    return start_member_proc(wardgate, member, f"member {n}"), config


@pytest.fixture
def fleet_secrets(tmp_path: Path, postgres_db: PostgresServer) -> Path:
    secrets = tmp_path / "secrets"
    subprocess.run(
        ["sh", DEPLOY / "fleet-secrets.sh", secrets], check=True, capture_output=True, timeout=60
    )
    # The store URL points at compose's `db`; here it is the test's PostgreSQL.
    (secrets / "store_url").write_text(postgres_db.url() + "\n")
    return secrets


def test_two_members_share_the_store_and_one_identity(
    wardgate: Wardgate, fleet_secrets: Path
) -> None:
    members = [start_member(wardgate, fleet_secrets, n, agents=False)[0] for n in (1, 2)]
    expected_cert = ssl.PEM_cert_to_DER_cert((fleet_secrets / "tls.crt").read_text())
    host_key = (fleet_secrets / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    user_ca = (fleet_secrets / "ssh_user_ca_ed25519_key.pub").read_text().split()[:2]
    for member in members:
        # The certificate from the secret, verified against the fleet CA with the host name.
        assert served_certificate(member.public_port, fleet_secrets / "ca.crt") == expected_cert
        with member.api() as api:  # the admin token from the secret file
            assert api.get("/v1/ssh/host-key").json()["public_key"].split() == host_key
            assert api.get("/v1/ssh/user-ca").json()["public_key"].split() == user_ca
    # One store: what one member writes, the other reads.
    with members[0].api() as api:
        made = api.post("/v1/agents", json={"name": "probe", "pool": "probe"})
        assert made.status_code == 201, made.text
    assert "probe" in members[1].agents()


def test_the_declared_agent_starts_with_its_secret_file(
    wardgate: Wardgate, fleet_secrets: Path
) -> None:
    member, _ = start_member(wardgate, fleet_secrets, 1, agents=True)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    # The agent's own command line from compose, run by sh as in its container.
    script = place(compose["services"]["agent"]["command"][0], fleet_secrets, wardgate.tmp)
    script = script.replace("$$", "$").replace("@gateway-1:8444", f"@127.0.0.1:{member.agent_port}")
    script = script.replace("exec wardgate ", "exec " + " ".join(WARDGATE) + " ")
    agent = Proc(args=["sh", "-c", script], log_path=wardgate.tmp / "agent.log", env=_env())
    wardgate.procs.append(agent)
    agent.start()
    wait_for(
        lambda: member.agents().get("dc1", {}).get("connected") is True or not agent.alive(),
        "agent dc1 to connect",
    )
    assert agent.alive(), agent.log()

"""The Helm chart's members run as processes: the rendered ConfigMap, Secrets and environment put
where the StatefulSet's volume mounts and env say (what the kubelet would do), and a real
`wardgate gateway` started on them. That checks that the config and the mounts agree: every file
the config names is one the pod gets. (No cluster here; the manifests themselves are checked
against the Kubernetes schemas in test_manifests.py.)"""

from __future__ import annotations

import re
import secrets as random
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.deploy.members import Member, served_certificate, start_member_proc
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import WARDGATE, Wardgate, _env, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "wardgate"
POD_PATHS = re.compile(r"(?<![\w/])(/etc/wardgate|/var/lib/wardgate)")  # paths in the pod


def render(values: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name="wardgate", namespace="access")
    docs = [d for text in manifests.values() for d in yaml.safe_load_all(text) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def materialise(
    objects: dict[tuple[str, str], dict[str, Any]],
    cluster_secrets: dict[str, dict[str, str]],
    root: Path,
    pod_name: str,
) -> tuple[Path, dict[str, str]]:
    """Lay the member pod's files under `root` and return its config path and environment."""
    pod = objects[("StatefulSet", "wardgate")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_maps = {name: o["data"] for (kind, name), o in objects.items() if kind == "ConfigMap"}
    for mount in container["volumeMounts"]:
        target = root / mount["mountPath"].lstrip("/")
        volume = volumes.get(mount["name"], {})
        if "secret" in volume:
            files = cluster_secrets[volume["secret"]["secretName"]]
        elif "configMap" in volume:
            files = config_maps[volume["configMap"]["name"]]
        else:  # the data volume and /tmp: empty directories
            target.mkdir(parents=True, exist_ok=True)
            continue
        if "subPath" in mount:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files[mount["subPath"]])  # KeyError: the Secret lacks the key
        else:
            target.mkdir(parents=True, exist_ok=True)
            for key, text in files.items():
                (target / key).write_text(text)
    env: dict[str, str] = {}
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[var["name"]] = cluster_secrets[ref["name"]][ref["key"]].strip()
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = pod_name
        elif "value" in var:
            env[var["name"]] = var["value"]
    config_path = root / "etc/wardgate/gateway.yaml"
    config_path.write_text(POD_PATHS.sub(lambda m: f"{root}{m[1]}", config_path.read_text()))
    return config_path, env


def start_pod(
    wardgate: Wardgate,
    objects: dict[tuple[str, str], dict[str, Any]],
    cluster_secrets: dict[str, dict[str, str]],
    pod_name: str,
    fleet_ca: Path | None,
    token: str,
) -> Member:
    root = wardgate.tmp / pod_name
    config_path, env = materialise(objects, cluster_secrets, root, pod_name)
    config = yaml.safe_load(config_path.read_text())
    public, agent_port = free_port(), free_port()
    config.update(listen=f"127.0.0.1:{public}", agent_listen=f"127.0.0.1:{agent_port}")
    config_path.write_text(yaml.safe_dump(config))
    data_dir = root / "var/lib/wardgate"
    member = Member(
        args=[*WARDGATE, "gateway", "--config", str(config_path)],
        log_path=root / "gateway.log",
        env=_env(**env, WARDGATE_ADMIN_TOKEN=token),
        config_path=config_path,
        data_dir=data_dir,
        public_port=public,
        agent_port=agent_port,
        token=token,
        fleet_ca=fleet_ca or data_dir / "tls" / "ca.pem",
    )
    return start_member_proc(wardgate, member, pod_name)


def test_the_default_values_start_a_gateway(wardgate: Wardgate) -> None:
    token = f"wgt_{random.token_urlsafe(32)}"
    member = start_pod(wardgate, render({}), {}, "wardgate-0", None, token)
    assert member.agents() == {}  # the API answers, on SQLite in the member's volume
    assert (member.data_dir / "wardgate.db").exists()


def test_fleet_members_start_on_the_identity_secret(
    wardgate: Wardgate, tmp_path: Path, postgres_db: PostgresServer
) -> None:
    made = tmp_path / "made"
    subprocess.run(
        ["sh", ROOT / "deploy" / "fleet-secrets.sh", made],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (made / "store_url").write_text(postgres_db.url())
    # `kubectl create secret generic wardgate-identity --from-file=...` as the guide says.
    identity = {p.name: p.read_text() for p in made.iterdir() if p.name != "ca.key"}
    fleet = yaml.safe_load((CHART / "values-fleet.yaml").read_text())
    fleet["agents"] = []  # the declared agents are tested with compose's config
    objects = render(fleet)
    cluster = {"wardgate-identity": identity}
    token = identity["admin_token"].strip()
    members = [
        start_pod(wardgate, objects, cluster, f"wardgate-{n}", made / "ca.crt", token)
        for n in (0, 1)
    ]
    expected = served_certificate(members[0].public_port, made / "ca.crt")
    assert served_certificate(members[1].public_port, made / "ca.crt") == expected
    host_key = identity["ssh_host_ed25519_key.pub"].split()[:2]
    for member in members:
        with member.api() as api:
            assert api.get("/v1/ssh/host-key").json()["public_key"].split() == host_key
    with members[0].api() as api:
        assert api.post("/v1/agents", json={"name": "probe"}).status_code == 201
    assert "probe" in members[1].agents()  # one store

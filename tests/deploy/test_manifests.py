"""The deployment files, checked by real validators: the compose file against the compose
specification's schema (check-jsonschema's vendored copy), the Helm chart rendered by Helm's own
engine (helm-python-sdk binds Helm's Go SDK; no helm binary is needed) and every manifest checked
against the Kubernetes API schemas (kubernetes-validate, strict: unknown fields are errors)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from gateway.config import GatewayConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "wardgate"
CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
# The oldest Kubernetes release still supported upstream when this was written, and the newest
# the validator knows: the manifests must be valid for both.
KUBE_VERSIONS = ["1.31.0", kubernetes_validate.latest_version()]
# Custom resources have no schema in the Kubernetes API; they are checked by shape below.
CUSTOM_KINDS = {"ServiceMonitor"}
FLEET_VALUES = yaml.safe_load((CHART / "values-fleet.yaml").read_text())
VALUES = {"defaults": {}, "values-fleet.yaml": FLEET_VALUES}


def render(values: dict[str, Any], namespace: str = "access") -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name="wardgate", namespace=namespace)


def documents(manifests: dict[str, str]) -> Iterator[dict[str, Any]]:
    for text in manifests.values():
        for doc in yaml.safe_load_all(text):
            if doc:
                yield doc


def by_kind(values: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in documents(render(values))}


def check_jsonschema(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHECK_JSONSCHEMA, *map(str, args)], capture_output=True, text=True, timeout=120
    )


# ---- compose ---------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    result = check_jsonschema("--builtin-schema", "vendor.compose-spec", DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout


def test_the_compose_validator_refuses_a_broken_file(tmp_path: Path) -> None:
    """The check above is not vacuous: the same validator refuses a misspelt key and a
    dependency condition the specification does not have."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        "services:\n  db:\n    image: postgres:16\n    restart_policy: always\n"
        "  app:\n    image: app\n    depends_on: {db: {condition: service_ready}}\n"
    )
    result = check_jsonschema("--builtin-schema", "vendor.compose-spec", broken)
    assert result.returncode == 1
    assert "restart_policy" in result.stdout
    assert "service_ready" in result.stdout


def test_compose_runs_two_gateways_over_a_healthy_postgresql_with_restart_policies() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "gateway-1", "gateway-2", "agent"}
    assert services["db"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
    for name in ("gateway-1", "gateway-2"):
        gateway = services[name]
        assert gateway["depends_on"] == {"db": {"condition": "service_healthy"}}
        assert "/readyz" in " ".join(gateway["healthcheck"]["test"])
        mounted = {s["source"] for s in gateway["secrets"]}
        assert {"tls_cert", "tls_key", "ca_cert", "ssh_host_key", "ssh_user_ca"} <= mounted
        assert {"secret_key", "agent_dc1", "store_url"} <= mounted
    # Two members publish different host ports; the agent waits for a ready gateway and reads
    # its secret from the same file the gateway config declares.
    assert services["gateway-1"]["ports"] != services["gateway-2"]["ports"]
    agent = services["agent"]
    assert agent["depends_on"] == {"gateway-1": {"condition": "service_healthy"}}
    assert {s["source"] for s in agent["secrets"]} == {"agent_dc1", "ca_cert"}
    assert "/run/secrets/agent_dc1" in agent["command"][0]


def test_the_compose_gateway_config_loads() -> None:
    raw = yaml.safe_load((DEPLOY / "gateway.example.yaml").read_text())
    cfg = GatewayConfig.model_validate(raw)
    assert cfg.store == "file:/run/secrets/store_url"
    assert [a.name for a in cfg.agents] == ["dc1"]


def test_fleet_secrets_are_made_once_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    script = DEPLOY / "fleet-secrets.sh"
    subprocess.run(["sh", script, out, "gw.example"], check=True, capture_output=True, timeout=60)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    expected = {"secret_key", "admin_token", "agent_dc1", "db_password", "store_url", "ca.crt"}
    assert expected | {"tls.crt", "tls.key", "ssh_host_ed25519_key"} <= set(first)
    assert first["admin_token"].startswith(b"wgt_")
    assert first["store_url"].decode().startswith("postgresql+psycopg://wardgate:")
    assert (out.stat().st_mode & 0o777) == 0o700
    again = subprocess.run(["sh", script, out], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # nothing regenerated
    sans = subprocess.run(
        ["openssl", "x509", "-in", out / "tls.crt", "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:gateway-1" in sans and "DNS:gw.example" in sans


# ---- Helm ------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_rendered_manifest_is_valid_kubernetes(values: dict[str, Any], kube: str) -> None:
    docs = list(documents(render(values)))
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, kube, strict=True)  # raises ValidationError


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_helm_lint_finds_nothing_to_warn_about(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; 1 (info) is only "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_the_kubernetes_validator_refuses_a_misspelt_field() -> None:
    """Strict validation is not vacuous: an unknown field in a rendered manifest is an error."""
    statefulset = by_kind({})[("StatefulSet", "wardgate")]
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBE_VERSIONS[-1], strict=True)


def test_defaults_start_one_gateway_without_any_secret() -> None:
    objects = by_kind({})
    assert set(objects) == {
        ("ConfigMap", "wardgate-config"),
        ("Service", "wardgate"),
        ("Service", "wardgate-members"),
        ("StatefulSet", "wardgate"),
        ("PodDisruptionBudget", "wardgate"),
    }
    pod = objects[("StatefulSet", "wardgate")]["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "secret" in v]
    config = yaml.safe_load(objects[("ConfigMap", "wardgate-config")]["data"]["gateway.yaml"])
    cfg = GatewayConfig.model_validate(config)  # loads as the gateway would
    assert cfg.secret_key is None and cfg.store is None  # SQLite on the member's volume


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "replicas=2 needs a PostgreSQL store"),
        ({"replicas": 3, "store": "sqlite:////var/lib/wardgate/w.db"}, "needs a PostgreSQL store"),
        (
            {"replicas": 2, "store": "postgresql+psycopg://u:p@db/w"},
            "replicas=2 needs one identity for the fleet: set identity.secretName",
        ),
        (
            {"agents": [{"name": "dc1", "secretName": "s", "secretKey": "k", "run": True}]},
            "agent dc1 runs in the cluster (run: true) and needs the fleet CA",
        ),
    ],
)
def test_what_cannot_work_is_refused_at_render(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"execution error") as refused:
        render(values)
    assert message in str(refused.value)


def test_values_are_checked_against_the_chart_schema() -> None:
    with pytest.raises(helm.HelmError, match="replicas"):
        render({"replicas": "three"})
    with pytest.raises(helm.HelmError, match="additional"):
        render({"replicaCount": 3})  # a misspelt key is an error, not silently ignored


def test_fleet_members_have_stable_names_probes_and_no_root() -> None:
    objects = by_kind(FLEET_VALUES)
    statefulset = objects[("StatefulSet", "wardgate")]
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["serviceName"] == "wardgate-members"
    pod = statefulset["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["WARDGATE_MEMBER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/livez",
        "port": "public",
        "scheme": "HTTPS",
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]
    # The fleet identity from one Secret; each agent's secret from its own.
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"wardgate-identity", "wardgate-agents"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/lib/wardgate/ssh_host_ed25519_key" in mounts
    assert "/var/lib/wardgate/ssh_user_ca_ed25519_key" in mounts
    # The agent-facing Services: load-balanced, and headless to reach every member.
    assert objects[("Service", "wardgate-members")]["spec"]["clusterIP"] == "None"
    assert objects[("PodDisruptionBudget", "wardgate")]["spec"]["maxUnavailable"] == 1
    monitor = objects[("ServiceMonitor", "wardgate")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    members = objects[("Service", "wardgate-members")]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= members.items()


def test_agents_run_from_their_declared_secret() -> None:
    objects = by_kind(FLEET_VALUES)
    agents = sorted(name for kind, name in objects if kind == "Deployment")
    assert agents == ["wardgate-agent-dc1-a", "wardgate-agent-dc1-b"]  # edge runs elsewhere
    pod = objects[("Deployment", "wardgate-agent-dc1-a")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["agent", "--ca", "/etc/wardgate/ca/ca.crt"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WARDGATE_AGENT_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "wardgate-agents",
        "key": "dc1-a",
    }
    key = env["WARDGATE_AGENT_KEY"]["value"]
    assert key == "wardgate://dc1-a:$(WARDGATE_AGENT_SECRET)@wardgate:8444"


def test_the_fleet_gateway_config_loads() -> None:
    config_map = by_kind(FLEET_VALUES)[("ConfigMap", "wardgate-config")]
    cfg = GatewayConfig.model_validate(yaml.safe_load(config_map["data"]["gateway.yaml"]))
    assert cfg.store == "env:WARDGATE_STORE_URL"
    assert [(a.name, a.pool) for a in cfg.agents] == [
        ("dc1-a", "dc1"),
        ("dc1-b", "dc1"),
        ("edge", "edge"),
    ]

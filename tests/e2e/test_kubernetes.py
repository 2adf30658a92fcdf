"""Kubernetes end to end: the real `kubectl` and `kubernetes` client, through gateway and
agent processes, to the kube-apiserver TEST DOUBLE (tests/fixtures/kube_apiserver.py)."""

from __future__ import annotations

import base64
import gc
import json
import os
import socket
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from shared.kubeapi import MASKED_B64
from tests.fixtures.kube_apiserver import FILE_IN_POD, KubeApiServerDouble, connect_and_log_in
from tests.fixtures.wardgate import GatewayProc, Wardgate, free_port, wait_for

pytestmark = pytest.mark.e2e

KUBECTL = "/usr/bin/kubectl"


def kubectl(kubeconfig: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), HOME=str(kubeconfig.parent))
    return subprocess.run(
        [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_double_serves_kubectl_directly(
    kube_apiserver: KubeApiServerDouble, tmp_path: Path
) -> None:
    """The baseline the gateway tests compare against: kubectl straight to the double."""
    config = tmp_path / "direct.kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "double",
                        "cluster": {
                            "server": kube_apiserver.url,
                            "certificate-authority": str(kube_apiserver.ca_path),
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": kube_apiserver.token}}],
                "contexts": [{"name": "direct", "context": {"cluster": "double", "user": "u"}}],
                "current-context": "direct",
            }
        )
    )
    out = kubectl(config, "get", "pods", "-o", "name")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pod/web-1", "pod/web-2"]
    out = kubectl(config, "exec", "web-1", "--", "sh", "-c", "exit 3")
    assert out.returncode == 3, out.stderr
    assert kube_apiserver.requests_to("/pods")[0]["headers"]["authorization"].startswith("Bearer")


# ---- through the gateway -------------------------------------------------------------

KUBE_POLICY = {
    "rules": [
        {
            "name": "no-delete-in-prod",
            "effect": "deny",
            "message": "deleting in prod needs a change ticket",
            "match": {"verbs": ["delete", "deletecollection"], "namespaces": ["prod"]},
        },
        {
            "name": "no-exec-in-prod",
            "effect": "deny",
            "match": {"subresources": ["exec", "attach"], "namespaces": ["prod"]},
        },
        {
            "name": "no-patch-in-prod",
            "effect": "deny",
            "message": "prod changes go through the pipeline",
            "match": {"verbs": ["patch"], "namespaces": ["prod"]},
        },
        {
            "name": "no-port-forward-in-prod",
            "effect": "deny",
            "match": {"subresources": ["portforward"], "namespaces": ["prod"]},
        },
    ],
    "masking": [{"secrets": True, "env": ["*PASSWORD*"]}],
}


@dataclass
class KubeSetup:
    gw: GatewayProc
    kubeconfig: Path
    env: dict[str, str]
    double: KubeApiServerDouble

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, *args], env=self.env, capture_output=True, text=True, timeout=60, check=False
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [KUBECTL, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip


VIEWERS = [{"name": "viewers", "groups": ["viewers"],
            "grants": [{"connection": "k8s", "access": "read-only"}]}]  # fmt: skip


@pytest.fixture
def kube(kube_apiserver: KubeApiServerDouble, wardgate: Wardgate, tmp_path: Path) -> KubeSetup:
    # The double first, so it is stopped last: after the agent's pooled connections to it.
    gw = wardgate.gateway(kubernetes=KUBE_POLICY, roles=VIEWERS)
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    kubeconfig = connect_and_log_in(wardgate, gw, kube_apiserver, tmp_path, impersonate="true")
    env = gw.client_env()
    env.update(KUBECONFIG=str(kubeconfig), HOME=str(tmp_path))
    return KubeSetup(gw, kubeconfig, env, kube_apiserver)


def test_kubectl_get_and_list_through_the_gateway(kube: KubeSetup) -> None:
    out = kube.kubectl("get", "pods", "-o", "name")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["pod/web-1", "pod/web-2"]
    out = kube.kubectl("get", "pod", "api-1", "-n", "prod", "-o", "json")
    assert out.returncode == 0, out.stderr
    pod = json.loads(out.stdout)
    assert pod["metadata"]["name"] == "api-1"
    # The configured env var is masked, the others pass.
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env == {"LOG_LEVEL": "info", "DB_PASSWORD": "********"}
    # The cluster saw the agent's credential and the Wardgate user, never the client's token.
    seen = kube.double.requests_to("/pods")[-1]["headers"]
    assert seen["authorization"] == f"Bearer {kube.double.token}"
    assert seen["impersonate-user"] == "admin"


def test_secret_data_is_masked(kube: KubeSetup) -> None:
    out = kube.kubectl("get", "secret", "db", "-o", "json")
    assert out.returncode == 0, out.stderr
    secret = json.loads(out.stdout)
    assert base64.b64decode(secret["data"]["password"]) == b"********"
    assert "s3cr3t" not in out.stdout
    out = kube.kubectl("get", "secrets", "-o", "json")
    assert out.returncode == 0, out.stderr
    assert "czNjcjN0" not in out.stdout  # base64 of the value's start
    assert json.loads(out.stdout)["items"][0]["data"]["password"] == MASKED_B64
    # The session log counts what the agent masked.
    masked = _responses(kube, lambda d: bool(d.get("masked")), count=2)
    assert len(masked) == 2 and all(e["data"]["masked"] == 1 for e in masked)


def test_delete_in_prod_is_denied_with_a_status_403(kube: KubeSetup) -> None:
    out = kube.kubectl("delete", "pod", "api-1", "-n", "prod")
    assert out.returncode != 0
    assert "Forbidden" in out.stderr
    assert "deleting in prod needs a change ticket" in out.stderr
    assert ("prod", "api-1") in kube.double.pods
    assert not [r for r in kube.double.requests if r["method"] == "DELETE"]
    out = kube.kubectl("delete", "pod", "web-2")
    assert out.returncode == 0, out.stderr
    assert ("default", "web-2") not in kube.double.pods


def test_watch_streams_events(kube: KubeSetup) -> None:
    with kube.popen("get", "pods", "-w", "-o", "name") as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "pod/web-1"
            assert proc.stdout.readline().strip() == "pod/web-2"
            wait_for(lambda: kube.double._watchers, "kubectl to start watching")
            kube.double.add_pod("default", "new-1")
            assert proc.stdout.readline().strip() == "pod/new-1"
        finally:
            proc.kill()


def test_logs_follow_streams_lines(kube: KubeSetup) -> None:
    with kube.popen("logs", "-f", "web-1") as proc:
        try:
            assert proc.stdout is not None
            # The double keeps the stream open after these lines: they arrive while it streams.
            assert proc.stdout.readline() == "starting\n"
            assert proc.stdout.readline() == "ready\n"
            assert proc.poll() is None
        finally:
            proc.kill()
    # The follower left: its session ends and says so.
    follows = {e["session"] for e in kube.gw.audit("k8s.request") if e["data"]["subresource"]}
    assert follows
    ended = wait_for(
        lambda: [e for e in kube.gw.audit("k8s.response") if e["session"] in follows],
        "the followed log's session to end",
    )
    assert ended[0]["data"]["error"] == "client went away"


def test_a_large_log_streams_with_bounded_memory(kube: KubeSetup, wardgate: Wardgate) -> None:
    size = 128 << 20
    agent = next(p for p in wardgate.procs if "agent" in p.args)
    watched = {"gateway": kube.gw.pid, "agent": agent.pid}
    baseline = {name: _rss(pid) for name, pid in watched.items()}
    peak = dict(baseline)
    received = 0
    next_sample = 0
    with kube.gw.api() as api, api.stream(
        "GET", "/k8s/k8s/api/v1/namespaces/default/pods/chatty/log",
        params={"limitBytes": str(size)}, timeout=120,
    ) as r:  # fmt: skip
        assert r.status_code == 200
        for chunk in r.iter_raw():
            received += len(chunk)
            if received >= next_sample:  # sample by volume moved, not by time
                next_sample += 8 << 20
                for name, pid in watched.items():
                    peak[name] = max(peak[name], _rss(pid))
    assert received == size
    growth = {name: (peak[name] - baseline[name]) >> 20 for name in watched}
    print(f"\n128 MiB of logs through the gateway: RSS growth MiB {growth}")
    for name, mib in growth.items():
        assert mib < 64, f"{name} RSS grew {mib} MiB while streaming {size >> 20} MiB"

    # The volume is in the session log.
    done = _responses(kube, lambda d: d["bytes"] == size)
    assert len(done) == 1 and done[0]["data"]["status"] == 200


def _responses(
    kube: KubeSetup, where: Callable[[dict[str, Any]], bool], count: int = 1
) -> list[dict[str, Any]]:
    """The k8s.response events whose data match `where`, once `count` of them are in the log:
    a response is recorded after its client has it, so a test waits for its event."""

    def found() -> list[dict[str, Any]] | None:
        events = [e for e in kube.gw.audit("k8s.response") if where(e["data"])]
        return events if len(events) >= count else None

    return list(wait_for(found, f"{count} k8s.response event(s)"))


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def test_exec_runs_a_command_and_returns_its_exit_status(kube: KubeSetup) -> None:
    out = kube.kubectl("exec", "web-1", "--", "echo", "hello", "from", "the", "pod")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from the pod\n"
    out = kube.kubectl("exec", "web-1", "--", "sh", "-c", "exit 3")
    assert out.returncode == 3, out.stderr
    seen = kube.double.requests_to("/exec")[-1]["headers"]
    assert seen["impersonate-user"] == "admin"
    assert seen["authorization"] == f"Bearer {kube.double.token}"
    execs = [e["data"] for e in kube.gw.audit("k8s.request") if e["data"]["subresource"] == "exec"]
    assert ["sh", "-c", "exit 3"] in [e["command"] for e in execs]
    # The terminal output is in the session log, as asciicast v2.
    recorded = wait_for(
        lambda: [e for e in kube.gw.audit("k8s.exec.output") if "hello" in e["data"]["asciicast"]],
        "the exec recording",
    )
    header, *events = recorded[0]["data"]["asciicast"].splitlines()
    assert json.loads(header)["version"] == 2
    assert [json.loads(e)[1:] for e in events] == [["o", "hello from the pod\n"]]


def test_kubectl_cp_from_a_pod(kube: KubeSetup, tmp_path: Path) -> None:
    target = tmp_path / "copied.txt"
    out = kube.kubectl("cp", "web-1:/tmp/notes.txt", str(target))
    assert out.returncode == 0, out.stderr
    assert target.read_bytes() == FILE_IN_POD


def test_exec_denied_by_policy(kube: KubeSetup) -> None:
    out = kube.kubectl("exec", "api-1", "-n", "prod", "--", "echo", "hi")
    assert out.returncode != 0
    assert "no-exec-in-prod" in out.stderr
    assert not kube.double.requests_to("/exec")


def test_kubeconfig_credential_and_errors_in_kubernetes_status(
    kube: KubeSetup, tmp_path: Path
) -> None:
    """A connection whose cluster credential is a kubeconfig file on the agent; and the
    gateway's own refusals arrive as `Status` objects."""
    agent_kubeconfig = tmp_path / "agent-kubeconfig"
    agent_kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": kube.double.url,
                            "certificate-authority": str(kube.double.ca_path),
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": kube.double.token}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    kube.gw.create_connection(
        name="k8s-kc",
        type="kubernetes",
        host="unused.invalid",
        port=443,
        options={"auth": "kubeconfig", "kubeconfig": str(agent_kubeconfig)},
    )
    with kube.gw.api() as api:
        r = api.get("/k8s/k8s-kc/api/v1/namespaces/default/pods")
        assert r.status_code == 200, r.text
        assert [p["metadata"]["name"] for p in r.json()["items"]] == ["web-1", "web-2"]
        # impersonation is off on this connection
        assert "impersonate-user" not in kube.double.requests_to("/pods")[-1]["headers"]
        r = api.get("/k8s/nope/api/v1/pods")
        assert (r.status_code, r.json()["kind"], r.json()["reason"]) == (404, "Status", "NotFound")
    with kube.gw.api(token="wgt_not-a-real-credential-000000000000000000000") as api:
        r = api.get("/k8s/k8s/api/v1/pods", headers={"Impersonate-User": "root"})
        assert (r.status_code, r.json()["reason"]) == (401, "Unauthorized")
    assert not [r for r in kube.double.requests if "impersonate-user" in r["headers"]
                and r["headers"]["impersonate-user"] == "root"]  # fmt: skip


def test_read_only_grant_reads_and_is_impersonated_with_its_groups(kube: KubeSetup) -> None:
    with kube.gw.api() as api:
        made = api.post("/v1/service-accounts", json={"name": "viewer", "groups": ["viewers"]})
        assert made.status_code == 201, made.text
        issued = api.post("/v1/service-accounts/viewer/keys", json={"scopes": ["k8s"]})
        assert issued.status_code == 201, issued.text
    with kube.gw.api(token=issued.json()["key"]) as api:
        r = api.get("/k8s/k8s/api/v1/namespaces/default/pods/web-1")
        assert r.status_code == 200, r.text
        seen = kube.double.requests_to("/pods/web-1")[-1]
        assert seen["headers"]["impersonate-user"] == "viewer"
        assert seen["impersonate_groups"] == ["viewers"]
        r = api.delete("/k8s/k8s/api/v1/namespaces/default/pods/web-1")
        assert r.status_code == 403
        assert "read-only access allows only get, list and watch" in r.json()["message"]
    assert ("default", "web-1") in kube.double.pods


def test_python_client_and_audit(kube: KubeSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import client, config, watch
    from kubernetes.stream import stream

    # The client runs the exec credential plugin in this process's environment.
    for name in ("WARDGATE_TOKEN", "PYTHONPATH"):
        monkeypatch.setenv(name, kube.env[name] if name in kube.env else str(Path.cwd()))

    # The client is only partly typed: its untyped entry points are called through Any.
    loader: Any = config.new_client_from_config
    api_client = loader(config_file=str(kube.kubeconfig))
    v1: Any = client.CoreV1Api(api_client)
    watcher: Any = watch.Watch
    streamer: Any = stream
    try:
        names = [p.metadata.name for p in v1.list_namespaced_pod("default").items]
        assert names == ["web-1", "web-2"]
        events = watcher().stream(v1.list_namespaced_pod, "default", timeout_seconds=30)
        first = next(events)
        assert first["type"] == "ADDED"
        events.close()
        # The client left: the gateway ends the session, the agent the upstream watch.
        wait_for(lambda: not kube.double._watchers, "the upstream watch to end")
        ws = streamer(
            v1.connect_get_namespaced_pod_exec, "web-1", "default",
            command=["sh", "-c", "exit 5"], stderr=True, stdin=False, stdout=True, tty=False,
            _preload_content=False,
        )  # fmt: skip
        try:
            ws.run_forever(timeout=30)
            assert ws.returncode == 5
        finally:
            ws.close()
            # websocket-client skips closing its socket when the server closed first (as
            # the API server does after an exec): close it, or it lingers until collected.
            ws.sock.shutdown()
        # The client keeps an error response's connection out of its pool (closing the pool
        # misses it, and it would hold the gateway's stop): its frames must go, here, where
        # the unclosed-socket warning they cause is expected.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                v1.delete_namespaced_pod("api-1", "prod")
            except client.ApiException as exc:
                status, body = exc.status, str(exc.body)
            else:
                pytest.fail("deleting in prod was not denied")
            gc.collect()
        assert status == 403
        assert json.loads(body)["kind"] == "Status"
    finally:
        api_client.close()
    requests = kube.gw.audit("k8s.request")
    verbs = {(e["data"]["verb"], e["data"]["resource"], e["data"]["decision"]) for e in requests}
    assert ("list", "pods", "allow") in verbs
    assert ("watch", "pods", "allow") in verbs
    assert ("delete", "pods", "deny") in verbs
    assert ("create", "pods", "allow") in verbs  # exec
    assert all(e["actor"] == "admin" for e in requests)
    assert _responses(kube, lambda d: d["status"] == 200 and d["bytes"] > 0)
    assert _responses(kube, lambda d: d["status"] == 403)


# ---- writes: apply, create, patch ------------------------------------------------------

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: default
data:
  mode: {mode}
"""

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: batch-1
  namespace: default
spec:
  containers:
  - name: app
    image: example/batch:1
"""


def _writes(kube: KubeSetup, method: str) -> list[dict[str, Any]]:
    return [r for r in kube.double.requests if r["method"] == method]


def test_apply_server_side_then_client_side_and_create(kube: KubeSetup, tmp_path: Path) -> None:
    manifest = tmp_path / "settings.yaml"
    manifest.write_text(CONFIGMAP.format(mode="blue"))
    out = kube.kubectl("apply", "--server-side", "-f", str(manifest))
    assert out.returncode == 0, out.stderr
    assert "configmap/settings serverside-applied" in out.stdout
    assert kube.double.configmaps[("default", "settings")]["data"] == {"mode": "blue"}
    (ssa,) = _writes(kube, "PATCH")
    # Body and content type reach the API server as kubectl sent them.
    assert ssa["headers"]["content-type"] == "application/apply-patch+yaml"
    assert yaml.safe_load(ssa["body"])["data"] == {"mode": "blue"}
    assert "fieldManager=kubectl" in ssa["query"]

    # Client-side apply: kubectl computes a strategic merge patch against the live object.
    manifest.write_text(CONFIGMAP.format(mode="green"))
    out = kube.kubectl("apply", "-f", str(manifest))
    assert out.returncode == 0, out.stderr
    assert "configmap/settings configured" in out.stdout
    live = kube.double.configmaps[("default", "settings")]
    assert live["data"] == {"mode": "green"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in live["metadata"]["annotations"]
    csa = _writes(kube, "PATCH")[-1]
    assert csa["headers"]["content-type"] == "application/strategic-merge-patch+json"
    assert json.loads(csa["body"])["data"] == {"mode": "green"}

    # A new object: client-side apply creates it (POST), as does `kubectl create -f`.
    pod = tmp_path / "pod.yaml"
    pod.write_text(POD)
    out = kube.kubectl("apply", "-f", str(pod))
    assert out.returncode == 0, out.stderr
    assert "pod/batch-1 created" in out.stdout
    assert kube.double.pods[("default", "batch-1")]["spec"]["containers"][0]["image"] == (
        "example/batch:1"
    )
    other = tmp_path / "other.yaml"
    other.write_text(CONFIGMAP.format(mode="red").replace("settings", "other"))
    out = kube.kubectl("create", "-f", str(other))
    assert out.returncode == 0, out.stderr
    assert kube.double.configmaps[("default", "other")]["data"] == {"mode": "red"}
    created = _writes(kube, "POST")
    assert [r["headers"]["content-type"] for r in created] == ["application/json"] * 2

    requests = kube.gw.audit("k8s.request")
    seen = {(e["data"]["verb"], e["data"]["resource"], e["data"]["name"]) for e in requests}
    assert ("patch", "configmaps", "settings") in seen
    assert ("create", "pods", "") in seen
    assert ("create", "configmaps", "") in seen


def test_patch_strategic_merge_json_and_denied_in_prod(kube: KubeSetup) -> None:
    out = kube.kubectl("patch", "pod", "web-1", "-p", '{"metadata":{"labels":{"tier":"web"}}}')
    assert out.returncode == 0, out.stderr
    out = kube.kubectl(
        "patch", "pod", "web-1", "--type=merge", "-p", '{"metadata":{"labels":{"team":"a"}}}'
    )
    assert out.returncode == 0, out.stderr
    out = kube.kubectl(
        "patch", "pod", "web-1", "--type=json", "-o", "jsonpath={.metadata.labels}",
        "-p", '[{"op":"replace","path":"/metadata/labels/team","value":"b"}]',
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"team": "b", "tier": "web"}
    types = [r["headers"]["content-type"] for r in _writes(kube, "PATCH")]
    assert types == [
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
        "application/json-patch+json",
    ]

    out = kube.kubectl(
        "patch", "pod", "api-1", "-n", "prod", "-p", '{"metadata":{"labels":{"x":"y"}}}'
    )
    assert out.returncode != 0
    assert "Forbidden" in out.stderr
    assert "prod changes go through the pipeline" in out.stderr
    assert not [r for r in _writes(kube, "PATCH") if "/namespaces/prod/" in r["path"]]
    assert "labels" not in kube.double.pods[("prod", "api-1")]["metadata"]
    requests = kube.gw.audit("k8s.request")
    decisions = {
        (e["data"]["verb"], e["data"]["namespace"], e["data"]["decision"]) for e in requests
    }
    assert ("patch", "default", "allow") in decisions
    assert ("patch", "prod", "deny") in decisions
    assert _responses(kube, lambda d: d["status"] == 403)


# ---- port-forward: SPDY/3.1 inside a WebSocket ---------------------------------------


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


def test_port_forward_round_trips_and_is_denied_in_prod(kube: KubeSetup) -> None:
    local = free_port()
    with kube.popen("port-forward", "pod/web-1", f"{local}:7000") as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline()
            assert f"Forwarding from 127.0.0.1:{local} -> 7000" in line, proc.stderr.read()
            # Two local connections: two pairs of SPDY streams in the one tunnel; the
            # second is larger than SPDY's 64 KiB initial window.
            assert _round_trip(local, b"hello through the tunnel") == b"hello through the tunnel"
            big = bytes(range(256)) * 1024
            assert _round_trip(local, big) == big
        finally:
            proc.kill()
    assert kube.double.forwarded == [("web-1", "7000"), ("web-1", "7000")]
    (upgrade,) = kube.double.requests_to("/portforward")
    assert upgrade["headers"]["sec-websocket-protocol"] == "SPDY/3.1+portforward.k8s.io"
    assert upgrade["headers"]["impersonate-user"] == "admin"

    out = kube.kubectl("port-forward", "-n", "prod", "pod/api-1", f"{free_port()}:7000")
    assert out.returncode != 0
    assert "Wardgate policy denies create pods/portforward" in out.stderr, out.stderr
    assert "no-port-forward-in-prod" in out.stderr
    assert len(kube.double.requests_to("/portforward")) == 1
    requests = kube.gw.audit("k8s.request")
    seen = {(e["data"]["verb"], e["data"]["subresource"], e["data"]["namespace"],
             e["data"]["decision"]) for e in requests}  # fmt: skip
    assert ("create", "portforward", "default", "allow") in seen
    assert ("create", "portforward", "prod", "deny") in seen


def test_exec_over_a_plain_spdy_upgrade(kube: KubeSetup) -> None:
    """kubectl's SPDY/3.1 fallback (forced here) is relayed as raw bytes after the 101."""
    kube.env["KUBECTL_REMOTE_COMMAND_WEBSOCKETS"] = "false"
    out = kube.kubectl("exec", "web-1", "--", "echo", "over", "spdy")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "over spdy\n"
    out = kube.kubectl("exec", "web-1", "--", "sh", "-c", "exit 4")
    assert out.returncode == 4, out.stderr
    seen = kube.double.requests_to("/exec")
    assert [r["method"] for r in seen] == ["POST", "POST"]  # no WebSocket was tried
    assert seen[-1]["headers"]["upgrade"] == "SPDY/3.1"
    assert seen[-1]["headers"]["impersonate-user"] == "admin"
    assert seen[-1]["headers"]["authorization"] == f"Bearer {kube.double.token}"
    execs = [e["data"] for e in kube.gw.audit("k8s.request") if e["data"]["subresource"] == "exec"]
    assert [(e["command"], e["decision"]) for e in execs] == [
        (["echo", "over", "spdy"], "allow"),
        (["sh", "-c", "exit 4"], "allow"),
    ]
    ends = _responses(kube, lambda d: d["status"] == 101, count=2)
    assert [e["data"]["status"] for e in ends] == [101, 101]
    # The policy holds on this path too: a Status 403 names the rule, nothing reaches the pod.
    out = kube.kubectl("exec", "api-1", "-n", "prod", "--", "echo", "hi")
    assert out.returncode != 0
    assert "no-exec-in-prod" in out.stderr
    assert len(kube.double.requests_to("/exec")) == 2

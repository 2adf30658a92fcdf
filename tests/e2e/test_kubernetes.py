"""Kubernetes end to end: the real `kubectl` and `kubernetes` client, through gateway and
agent processes, to the kube-apiserver TEST DOUBLE (tests/fixtures/kube_apiserver.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.kube_apiserver import KubeApiServerDouble

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

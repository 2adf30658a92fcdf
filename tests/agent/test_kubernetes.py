"""The agent's cluster credential loading and the headers it sends to the API server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agent.protocols.kubernetes import (
    Upstream,
    UpstreamConfigError,
    _upstream_headers,
    load_upstream,
)
from gateway.tls import ensure_self_signed
from shared.kubeapi import RequestHead
from shared.tunnel.frames import Target


def target(options: dict[str, str], secrets: dict[str, str | bytes] | None = None) -> Target:
    return Target("k8s", "kubernetes", "10.0.0.1", 6443, options, secrets or {})


def test_token_credential(tmp_path: Path) -> None:
    ca = ensure_self_signed(tmp_path).ca_path
    up = load_upstream(target({"certificate_authority": str(ca)}, {"token": b"tok"}))
    assert (up.server, up.authorization) == ("https://10.0.0.1:6443", "Bearer tok")


def test_kubeconfig_credential_is_read_with_the_kubernetes_loaders(tmp_path: Path) -> None:
    tls = ensure_self_signed(tmp_path)
    path = tmp_path / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": "https://kube.example:6443/",
                            "certificate-authority": str(tls.ca_path),
                        },
                    },
                ],
                "users": [
                    {"name": "tok", "user": {"token": "from-kubeconfig"}},
                    {
                        "name": "cert",
                        "user": {
                            "client-certificate": str(tls.cert_path),
                            "client-key": str(tls.key_path),
                        },
                    },
                ],
                "contexts": [
                    {"name": "a", "context": {"cluster": "c", "user": "tok"}},
                    {"name": "b", "context": {"cluster": "c", "user": "cert"}},
                ],
                "current-context": "a",
            }
        )
    )
    up = load_upstream(target({"auth": "kubeconfig", "kubeconfig": str(path)}))
    assert (up.server, up.authorization) == ("https://kube.example:6443", "Bearer from-kubeconfig")
    up = load_upstream(target({"auth": "kubeconfig", "kubeconfig": str(path), "context": "b"}))
    assert up.authorization is None  # a client certificate, loaded into the TLS context


@pytest.mark.parametrize(
    ("options", "secrets", "message"),
    [
        ({}, {}, "needs a `token` \\(or `password`\\) secret"),
        ({"auth": "kubeconfig"}, {}, "needs the `kubeconfig` option"),
        ({"auth": "kubeconfig", "kubeconfig": "/nonexistent"}, {}, "kubeconfig credential"),
        ({"auth": "in-cluster"}, {}, "in-cluster credential"),
        ({"auth": "magic"}, {}, "unknown auth"),
    ],
)
def test_bad_credentials_name_the_source(
    options: dict[str, str], secrets: dict[str, str | bytes], message: str
) -> None:
    with pytest.raises(UpstreamConfigError, match=message):
        load_upstream(target(options, secrets))


def test_headers_carry_the_agent_credential_and_the_impersonated_identity(tmp_path: Path) -> None:
    import ssl

    up = Upstream("https://k", ssl.create_default_context(), "Bearer cluster")
    client_headers = (
        ("authorization", "Bearer wgt_x"),
        ("impersonate-user", "root"),
        ("accept", "application/vnd.kubernetes.protobuf,application/json"),
    )
    head = RequestHead(
        "GET", "/api/v1/pods", headers=client_headers,
        impersonate_user="alice", impersonate_groups=("dev", "ops"), mask_secrets=True,
    )  # fmt: skip
    headers = _upstream_headers(head, up, target({"impersonate": "true"}))
    assert ("authorization", "Bearer cluster") in headers
    assert [v for k, v in headers if k == "impersonate-user"] == ["alice"]
    assert [v for k, v in headers if k == "impersonate-group"] == ["dev", "ops"]
    assert ("accept", "application/json") in headers  # masking reads JSON, never protobuf
    prefixed = _upstream_headers(head, up, target({"impersonate": "true",
                                                   "impersonate_prefix": "wardgate:"}))  # fmt: skip
    assert [v for k, v in prefixed if k.startswith("impersonate")] == [
        "wardgate:alice", "wardgate:dev", "wardgate:ops"]  # fmt: skip
    plain = _upstream_headers(head, up, target({}))
    assert not [k for k, _ in plain if k.startswith("impersonate")]


def test_port_forward_subprotocol_is_offered_and_accepted_verbatim() -> None:
    """`SPDY/3.1+portforward.k8s.io` is not an RFC 7230 token; websockets alone refuses it."""
    from websockets.client import ClientProtocol
    from websockets.datastructures import Headers
    from websockets.exceptions import NegotiationError
    from websockets.uri import parse_uri

    from agent.protocols.kubernetes import _KubeClientProtocol

    offered = ["SPDY/3.1+portforward.k8s.io", "v5.channel.k8s.io"]
    protocol = ClientProtocol(parse_uri("wss://cluster/api"))
    protocol.__class__ = _KubeClientProtocol
    protocol.available_subprotocols = offered  # type: ignore[assignment]
    assert protocol.connect().headers["Sec-WebSocket-Protocol"] == ", ".join(offered)
    answer = Headers({"Sec-WebSocket-Protocol": "SPDY/3.1+portforward.k8s.io"})
    assert protocol.process_subprotocol(answer) == "SPDY/3.1+portforward.k8s.io"
    assert protocol.process_subprotocol(Headers()) is None
    for bad in ("SPDY/3.1+other", "v5.channel.k8s.io, SPDY/3.1+portforward.k8s.io"):
        with pytest.raises(NegotiationError):
            protocol.process_subprotocol(Headers({"Sec-WebSocket-Protocol": bad}))

"""`wardgate kube`: kubectl through the gateway, as yourself.

    wardgate kube login CONNECTION     adds a context to your kubeconfig whose cluster is
                                       https://GATEWAY/k8s/CONNECTION (gateway CA included)
                                       and whose user runs `wardgate kube credential`
    wardgate kube credential CONN      the exec credential plugin kubectl runs: prints an
                                       ExecCredential with a fresh short-lived credential
                                       valid for that one connection

No cluster credential ever reaches the laptop: kubectl holds minutes-long Wardgate
credentials, and kubectl re-runs the plugin when one expires.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from cli import client as cl

EXEC_API_VERSION = "client.authentication.k8s.io/v1"


def _kubeconfig_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0])
    return Path.home() / ".kube" / "config"


def _plugin_command() -> tuple[str, list[str]]:
    """How kubectl should start this CLI again: the installed script, or this interpreter."""
    script = Path(sys.argv[0])
    if script.name == "wardgate" and script.exists():
        return str(script.resolve()), []
    return sys.executable, ["-m", "cli.main"]


def _upsert(entries: list[dict[str, Any]], name: str, key: str, value: dict[str, Any]) -> None:
    for entry in entries:
        if entry.get("name") == name:
            entry[key] = value
            return
    entries.append({"name": name, key: value})


@click.group()
def kube() -> None:
    """kubectl through the gateway (Kubernetes connections)."""


@kube.command("login")
@click.argument("connection")
@click.option("--kubeconfig", type=click.Path(path_type=Path), help="Default: $KUBECONFIG.")
@click.option("--context", "context_name", help="Context name (default: wardgate-CONNECTION).")
@click.option("--namespace", help="Default namespace of the context.")
@click.option("--no-switch", is_flag=True, help="Do not make it the current context.")
@cl.gateway_options
def login(
    connection: str,
    kubeconfig: Path | None,
    context_name: str | None,
    namespace: str | None,
    no_switch: bool,
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Write a kubeconfig context that reaches CONNECTION through the gateway."""
    ref = cl.resolve(gateway, token, ca)
    with ref.http() as http:
        conn = cl.check(http.get(f"/v1/connections/{connection}"))
        if conn.get("type") != "kubernetes":
            raise click.ClickException(
                f"connection {connection!r} is of type {conn.get('type')!r}, not kubernetes"
            )
        ca_pem = ref.ca_pem or http.get("/v1/ca.pem").content
    ca_path = cl.ca_file(ca_pem)
    name = context_name or f"wardgate-{connection}"
    path = _kubeconfig_path(kubeconfig)
    doc: dict[str, Any] = {}
    if path.exists():
        doc = yaml.safe_load(path.read_text()) or {}
    doc.setdefault("apiVersion", "v1")
    doc.setdefault("kind", "Config")
    for key in ("clusters", "users", "contexts"):
        doc[key] = doc.get(key) or []
    command, args = _plugin_command()
    args += ["kube", "credential", connection, "--gateway", ref.url]
    if ca or os.environ.get("WARDGATE_CA"):
        args += ["--ca", str(Path(ca or os.environ["WARDGATE_CA"]).resolve())]
    _upsert(
        doc["clusters"],
        name,
        "cluster",
        {"server": f"{ref.url}/k8s/{connection}", "certificate-authority": str(ca_path)},
    )
    _upsert(
        doc["users"],
        name,
        "user",
        {
            "exec": {
                "apiVersion": EXEC_API_VERSION,
                "command": command,
                "args": args,
                "interactiveMode": "Never",
                "provideClusterInfo": False,
            }
        },
    )
    context: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    _upsert(doc["contexts"], name, "context", context)
    if not no_switch:
        doc["current-context"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    click.echo(f"kubeconfig {path}: context {name!r} reaches {connection} via {ref.url}")


@kube.command("credential")
@click.argument("connection")
@cl.gateway_options
def credential(connection: str, gateway: str | None, token: str | None, ca: str | None) -> None:
    """Print an ExecCredential for kubectl (the kubeconfig's exec plugin runs this)."""
    ref = cl.resolve(gateway, token, ca)
    if not ref.token:
        raise click.ClickException("not logged in: run `wardgate login` first")
    with ref.http() as http:
        minted = cl.check(http.post("/v1/credentials/connection", json={"connection": connection}))
    expires = str(minted["expires_at"]).replace("+00:00", "Z")
    api_version = EXEC_API_VERSION
    info = os.environ.get("KUBERNETES_EXEC_INFO")
    if info:
        with contextlib.suppress(ValueError):
            api_version = json.loads(info).get("apiVersion") or api_version
    click.echo(
        json.dumps(
            {
                "apiVersion": api_version,
                "kind": "ExecCredential",
                "status": {"token": minted["token"], "expirationTimestamp": expires},
            }
        )
    )

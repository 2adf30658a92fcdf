"""SSH from the command line.

wardgate ssh CONNECTION [SSH OPTIONS] [-- COMMAND]
    runs OpenSSH's ssh to CONNECTION through the gateway: the gateway's host key is
    pinned in a Wardgate-owned known_hosts file (fetched over the verified HTTPS API),
    and a short-lived per-connection credential is handed to ssh through SSH_ASKPASS
    (never on the command line). Keys registered with `ssh-keys add` are tried first;
    while a certificate from `wardgate ssh-cert` is valid, ssh signs in with it instead.
wardgate ssh-cert [--key FILE] (also `wardgate login --ssh-key FILE`)
    has the gateway's SSH user CA sign your public key: FILE-cert.pub, next to the key.
wardgate ssh-keys add [FILE] | list | remove ID-OR-FINGERPRINT
wardgate sessions replay ID [--speed N] [--export FILE.cast]
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import click
from cryptography.hazmat.primitives.serialization import SSHCertificate, load_ssh_public_identity

from cli import client as cl
from cli import output as out
from shared.recording.asciicast import CastError, parse


def _fetch(ref: cl.GatewayRef, session_id: str, channel: int | None) -> tuple[dict[str, Any], str]:
    with ref.http() as http:
        listed = cl.check(http.get(f"/v1/sessions/{session_id}/recordings"))
        if not listed:
            raise click.ClickException(f"session {session_id} has no terminal recording")
        chosen = listed[0] if channel is None else None
        for item in listed:
            if channel is not None and item["channel"] == channel:
                chosen = item
        if chosen is None:
            channels = ", ".join(str(i["channel"]) for i in listed)
            raise click.ClickException(f"no recording of channel {channel} (channels: {channels})")
        response = http.get(f"/v1/sessions/{session_id}/recordings/{chosen['channel']}")
        if not response.is_success:
            cl.check(response)
        return chosen, response.text


def play(text: str, *, speed: float, max_idle: float, out: Any = None) -> None:
    """Write the recording's output to `out` (the terminal) with its timing, sped up."""
    out = out or sys.stdout
    _, events = parse(text)
    last = 0.0
    for event in events:
        if event.code != "o":
            continue
        delay = min(event.time - last, max_idle) / speed
        last = event.time
        if delay > 0:
            time.sleep(delay)  # playback pacing, as the session was typed
        out.write(event.text)
        out.flush()


def replay(
    ref: cl.GatewayRef,
    session_id: str,
    *,
    channel: int | None,
    speed: float,
    max_idle: float,
    export: Path | None,
) -> None:
    info, text = _fetch(ref, session_id, channel)
    if export is not None:
        export.write_text(text)
        click.echo(
            f"wrote {export} (channel {info['channel']}, {info['bytes']} bytes, "
            f"sha256 {info['sha256']}, verified against the audit log)",
            err=True,
        )
        return
    try:
        play(text, speed=speed, max_idle=max_idle)
    except CastError as exc:
        raise click.ClickException(f"recording unreadable: {exc}") from None


# ---- wardgate ssh / ssh-keys -------------------------------------------------------------


_ASKPASS = "#!/bin/sh\nprintf '%s\\n' \"$WARDGATE_SSH_CREDENTIAL\"\n"


def trust_gateway(ref: cl.GatewayRef) -> tuple[str, int, Path]:
    """Pin the gateway's SSH host key in Wardgate's own known_hosts; host, port, file."""
    url = urlsplit(ref.url)
    host, port = url.hostname or "localhost", url.port or 443
    with ref.http() as http:
        key = cl.check(http.get("/v1/ssh/host-key"))
    known = cl.config_dir() / "known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    name = f"[{host}]:{port}"
    lines = known.read_text().splitlines() if known.exists() else []
    lines = [line for line in lines if line.split(" ", 1)[0] != name]
    lines.append(f"{name} {key['public_key']}")
    known.write_text("\n".join(lines) + "\n")
    return host, port, known


def ssh_command(ref: cl.GatewayRef, args: tuple[str, ...]) -> list[str]:
    """The ssh command line and, as a side effect, trust and askpass files in place."""
    if not ref.token:
        raise click.UsageError("no credential: pass --token, set WARDGATE_TOKEN, or log in")
    host, port, known = trust_gateway(ref)
    options, command = list(args), []
    if "--" in options:
        at = options.index("--")
        options, command = options[:at], options[at + 1 :]
    # A command or a script gets only the remote side's output: ssh's sign-in chatter (the
    # gateway's keyboard-interactive banner) goes to stderr at log level INFO. ssh keeps an
    # option's first value, so the user's own LogLevel (or -v) before this one wins.
    quiet = [] if interactive(command) else ["-o", "LogLevel=ERROR"]
    return [
        "ssh",
        "-p",
        str(port),
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        *options,
        *quiet,
        host,
        *command,
    ]


def interactive(command: list[str]) -> bool:
    """A login shell on a terminal: the one kind of run that shows ssh's sign-in banner."""
    return not command and sys.stdin.isatty() and sys.stdout.isatty()


# ---- SSH user certificates (issue 7) ------------------------------------------------------

CERT_KEY_FILE = "ssh-cert-key"  # in the config dir: which key `ssh-cert` last certified
DEFAULT_KEY = Path.home() / ".ssh" / "id_ed25519"


def key_paths(path: Path) -> tuple[Path, Path, Path]:
    """A private or public key file -> (private key, public key, certificate) paths."""
    private = path.with_suffix("") if path.suffix == ".pub" else path
    return private, Path(f"{private}.pub"), Path(f"{private}-cert.pub")


def issue_cert(ref: cl.GatewayRef, key: Path, validity: int | None = None) -> str:
    """Have the gateway sign KEY's public key; write KEY-cert.pub; a line saying so."""
    private, public, cert_path = key_paths(key)
    if not public.exists():
        raise click.ClickException(f"no public key {public} (ssh-keygen -t ed25519 makes one)")
    body: dict[str, Any] = {"public_key": public.read_text()}
    if validity is not None:
        body["validity_seconds"] = validity
    with ref.http() as http:
        issued = cl.check(http.post("/v1/ssh/certificates", json=body))
    cert_path.write_text(issued["certificate"] + "\n")
    marker = cl.config_dir() / CERT_KEY_FILE
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{private}\n")
    user, until = issued["principals"][0], issued["valid_before"]
    return f"SSH certificate {cert_path} for {user}, valid until {until}"


def current_cert() -> tuple[Path, Path, str] | None:
    """The key `ssh-cert` last certified, its certificate and principal, while valid."""
    marker = cl.config_dir() / CERT_KEY_FILE
    if not marker.exists():
        return None
    private, _, cert_path = key_paths(Path(marker.read_text().strip()))
    try:
        cert = load_ssh_public_identity(cert_path.read_bytes())
    except (OSError, ValueError):
        return None
    now = dt.datetime.now(dt.UTC).timestamp()
    if not isinstance(cert, SSHCertificate) or not cert.valid_principals:
        return None
    if not private.exists() or not cert.valid_after <= now < cert.valid_before:
        return None
    return private, cert_path, cert.valid_principals[0].decode()


def run_ssh(ref: cl.GatewayRef, connection: str, args: tuple[str, ...]) -> None:
    argv = ssh_command(ref, args)
    cert = current_cert()
    if cert is not None:
        # ssh keeps an option's first value: these go before the user's own.
        private, cert_path, user = cert
        argv[1:1] = ["-o", f"User={user}:{connection}", "-i", str(private)]
        argv[1:1] = ["-o", f"CertificateFile={cert_path}"]
        os.execvp("ssh", argv)  # noqa: S606 - becomes ssh itself
    with ref.http() as http:
        minted = cl.check(http.post("/v1/credentials/connection", json={"connection": connection}))
    askpass = cl.config_dir() / "ssh-askpass"
    if not askpass.exists():
        askpass.write_text(_ASKPASS)
    askpass.chmod(0o700)
    argv[1:1] = ["-o", f"User={minted['user']}:{connection}"]
    env = dict(
        os.environ,
        SSH_ASKPASS=str(askpass),
        SSH_ASKPASS_REQUIRE="force",
        WARDGATE_SSH_CREDENTIAL=str(minted["token"]),
    )
    os.execvpe("ssh", argv, env)  # noqa: S606 - becomes ssh itself


@click.command(
    "ssh", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("connection")
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
@cl.gateway_options
def ssh(
    connection: str,
    ssh_args: tuple[str, ...],
    gateway: str | None,
    token: str | None,
    ca: str | None,
) -> None:
    """Run ssh to CONNECTION through the gateway (ssh options, then -- COMMAND)."""
    run_ssh(cl.resolve(gateway, token, ca), connection, ssh_args)


@click.command("ssh-cert")
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: str(DEFAULT_KEY),
    help="Your SSH key (private or .pub; default ~/.ssh/id_ed25519).",
)
@click.option("--validity", type=int, help="Seconds (at most 8 h and your credential's lifetime).")
@cl.gateway_options
def ssh_cert(
    key: Path, validity: int | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Have the gateway's SSH user CA sign your key (KEY-cert.pub, used by `wardgate ssh`)."""
    click.echo(issue_cert(cl.resolve(gateway, token, ca), key, validity), err=True)


@click.group("ssh-keys")
def ssh_keys() -> None:
    """Your SSH public keys for signing in to the gateway's SSH endpoint."""


@ssh_keys.command("add")
@click.argument(
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=lambda: str(Path.home() / ".ssh" / "id_ed25519.pub"),
)
@click.option("--user", help="Administrators: register the key for this user.")
@cl.gateway_options
def ssh_keys_add(
    path: Path, user: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Register a public key (default ~/.ssh/id_ed25519.pub)."""
    body: dict[str, Any] = {"public_key": path.read_text()}
    if user:
        body["user"] = user
    with cl.resolve(gateway, token, ca).http() as http:
        added = cl.check(http.post("/v1/ssh-keys", json=body))
    click.echo(f"{added['fingerprint']} registered for {added['user']} (id {added['id']})")


SSH_KEY_COLUMNS = [
    out.col("ID", "id", ident=True),
    out.col("USER", "user"),
    out.col("FINGERPRINT", "fingerprint", ident=True),
    out.when("ADDED", "created_at"),
    out.col("COMMENT", "comment"),
]


@ssh_keys.command("list")
@click.option("--user")
@out.output_options
@cl.gateway_options
def ssh_keys_list(
    user: str | None, output: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """List registered keys (yours; administrators: everyone's, or --user)."""
    with cl.resolve(gateway, token, ca).http() as http:
        keys = cl.check(http.get("/v1/ssh-keys", params={"user": user} if user else {}))
    if not out.structured(keys, output):
        out.table(keys, SSH_KEY_COLUMNS)


@ssh_keys.command("remove")
@click.argument("key")
@click.option("--user")
@cl.gateway_options
def ssh_keys_remove(
    key: str, user: str | None, gateway: str | None, token: str | None, ca: str | None
) -> None:
    """Remove a key by id or fingerprint."""
    with cl.resolve(gateway, token, ca).http() as http:
        cl.check(http.delete(f"/v1/ssh-keys/{quote(key)}", params={"user": user} if user else {}))
    click.echo(f"removed {key}")

"""scp throughput: straight to sshd, through an OpenSSH ProxyJump bastion, through Wardgate.

The run's `sshd` (the `ssh -L` bastion, see `bench.bastion`) is also the scp target:

- **direct**: `scp -P SSHD` with the generated client key;
- **bastion** (reported in the `ssh_tunnel` column): `scp -J user@127.0.0.1:SSHD`, so the
  bytes cross two SSH layers, the way people reach a private host through a bastion;
- **Wardgate**: `scp -P GATEWAY -o User=admin:bench-ssh` with the admin token as password
  (SSH_ASKPASS); the agent logs in to the sshd with the injected client key, pinned host key.

Each run copies one file of random bytes up (to the sshd's directory) and back down, and
checks the sha256 of both copies; MB/s is 10^6 bytes per wall-clock second of the scp process.
OpenSSH's scp uses its default sftp mode.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import BenchError, run_checked
from bench.routes import DIRECT, SSH_TUNNEL, WARDGATE, Route

SSH_CONNECTION = "bench-ssh"
_COMMON = ["-q", "-F", "/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=no"]


@dataclass(frozen=True, slots=True)
class ScpTargets:
    root: Path  # the bastion's directory: keys, config, and the files copied
    sshd_port: int
    gateway_port: int
    known_hosts: Path
    askpass: Path
    token: str


def sshd_port(root: Path) -> int:
    for line in (root / "sshd_config").read_text().splitlines():
        if line.startswith("Port "):
            return int(line.split()[1])
    raise BenchError(f"no Port in {root / 'sshd_config'}")


def setup(root: Path, gated: Route, work_dir: Path) -> ScpTargets:
    """Register the bastion's sshd as an ssh connection in Wardgate; the scp routes."""
    port = sshd_port(root)
    host_pub = (root / "host_key.pub").read_text().split()
    gateway_pub = (
        Path(gated.tls["sslrootcert"]).parent.parent / "ssh_host_ed25519_key.pub"
    ).read_text()
    known = work_dir / "scp_known_hosts"
    known.write_text(
        f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n"
        f"[127.0.0.1]:{gated.port} {' '.join(gateway_pub.split()[:2])}\n"
    )
    askpass = work_dir / "scp_askpass"
    askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$WARDGATE_BENCH_SECRET"\n')
    askpass.chmod(0o700)
    spec = {
        "name": SSH_CONNECTION,
        "type": "ssh",
        "host": "127.0.0.1",
        "port": port,
        "username": getpass.getuser(),
        "private_key": f"file:{root / 'client_key'}",
        "host_key": f"{host_pub[0]} {host_pub[1]}",
    }
    verify = ssl.create_default_context(cafile=gated.tls["sslrootcert"])
    with httpx.Client(
        base_url=f"https://127.0.0.1:{gated.port}",
        headers={"Authorization": f"Bearer {gated.password}"},
        verify=verify,
        timeout=30,
    ) as api:
        answer = api.post("/v1/connections", json=spec)
        if answer.status_code not in (201, 409):
            raise BenchError(f"creating {SSH_CONNECTION}: {answer.status_code} {answer.text}")
    return ScpTargets(root, port, gated.port, known, askpass, gated.password)


def _argv(targets: ScpTargets, route: str) -> tuple[list[str], str]:
    """scp's options for a route and the remote host prefix."""
    user = getpass.getuser()
    trust = ["-o", f"UserKnownHostsFile={targets.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    key = ["-i", str(targets.root / "client_key"), "-o", "IdentitiesOnly=yes"]
    if route == DIRECT:
        return [*_COMMON, *trust, *key, "-P", str(targets.sshd_port)], f"{user}@127.0.0.1"
    if route == SSH_TUNNEL:
        # A config file, because ssh hands -F (not -i/-o) on to the ProxyJump hop.
        config = targets.known_hosts.with_name("scp_ssh_config")
        host = (
            "  HostName 127.0.0.1\n"
            f"  Port {targets.sshd_port}\n"
            f"  User {user}\n"
            f"  IdentityFile {targets.root / 'client_key'}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {targets.known_hosts}\n"
            "  StrictHostKeyChecking yes\n"
            "  LogLevel ERROR\n"
        )
        config.write_text(f"Host bastion\n{host}Host target\n{host}  ProxyJump bastion\n")
        return ["-q", "-F", str(config)], "target"
    if route == WARDGATE:
        login = ["-o", f"User=admin:{SSH_CONNECTION}", "-o", "PubkeyAuthentication=no"]
        return [*_COMMON, *trust, *login, "-P", str(targets.gateway_port)], "127.0.0.1"
    raise ValueError(route)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def copy(targets: ScpTargets, route: str, nbytes: int, work_dir: Path) -> tuple[float, float]:
    """Upload then download ``nbytes``; MB/s of each, both copies checked by sha256."""
    src = work_dir / f"scp-{nbytes}.bin"
    if not src.exists() or src.stat().st_size != nbytes:
        with src.open("wb") as fh:
            for start in range(0, nbytes, 1 << 20):
                fh.write(os.urandom(min(1 << 20, nbytes - start)))
    want = _sha256(src)
    remote = targets.root / f"scp-{route}.bin"
    back = work_dir / f"scp-{route}-back.bin"
    options, host = _argv(targets, route)
    env = dict(
        os.environ,
        SSH_ASKPASS=str(targets.askpass),
        SSH_ASKPASS_REQUIRE="force",
        WARDGATE_BENCH_SECRET=targets.token,
    )
    rates = []
    for args, out in (
        ([str(src), f"{host}:{remote}"], remote),
        ([f"{host}:{remote}", str(back)], back),
    ):
        started = time.perf_counter()
        run_checked(["scp", *options, *args], env=env, timeout=600, what=f"scp via {route}")
        rates.append(nbytes / (time.perf_counter() - started) / 1e6)
        if _sha256(out) != want:
            raise BenchError(f"scp via {route}: {out} differs from what was sent")
    remote.unlink(missing_ok=True)
    back.unlink(missing_ok=True)
    return rates[0], rates[1]

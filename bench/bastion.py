"""The `ssh -L` baseline: an OpenSSH `sshd` on loopback as the bastion, and a tunnel through it.

Keys (ed25519, host and client) are generated for the run; the server accepts only the client
key, for root (the harness runs as root on CI machines) or for the current user:

    ssh -N -L LOCAL:127.0.0.1:PGPORT -p SSHD_PORT -i KEY root@127.0.0.1

This is how people reach a private database through a bastion today, so it is the baseline
the issue's targets are stated against. The cipher is OpenSSH's default choice.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import BenchError, Proc, free_port, run_checked, running, wait_for

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
ATTEMPTS = 3  # a free port can be taken before sshd or ssh binds it


@dataclass(frozen=True, slots=True)
class Tunnel:
    """A live `ssh -L`: ``local_port`` reaches the target through ``sshd``."""

    local_port: int
    ssh: Proc
    sshd: Proc


def _programs() -> tuple[str, str, str]:
    ssh = shutil.which("ssh")
    keygen = shutil.which("ssh-keygen")
    if not os.access(SSHD, os.X_OK) or ssh is None or keygen is None:
        raise BenchError(
            f"OpenSSH not found ({SSHD}, ssh, ssh-keygen): install the Debian packages "
            "`openssh-server` and `openssh-client` (`make deps`)"
        )
    return SSHD, ssh, keygen


def sshd_config(
    root: Path, port: int, user: str, *, tty: bool = False, extra: Sequence[str] = ()
) -> Path:
    """An sshd_config in `root` for a loopback sshd that admits only `user` by public key
    (`root/host_key`, `root/authorized_keys`). `extra` lines come first: sshd keeps the first
    value it reads for a keyword, so they override the defaults below. Shared with the test
    suite's sshd (tests/fixtures/sshd.py)."""
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                *extra,
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {root / 'host_key'}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                f"AllowUsers {user}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "StrictModes no",
                "UsePAM no",
                "AllowTcpForwarding yes",
                f"PermitTTY {'yes' if tty else 'no'}",
                "X11Forwarding no",
                "Subsystem sftp internal-sftp",  # scp (sftp mode): bench.scp, the SSH tests
                "PrintMotd no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    return config


@contextlib.contextmanager
def ssh_tunnel(
    root: Path, target_port: int, ready: Callable[[int], bool], *, timeout: float = 30.0
) -> Iterator[Tunnel]:
    """Run sshd and `ssh -L` to 127.0.0.1:``target_port``; yield once ``ready(local_port)``.

    ``ready`` is a real login through the tunnel, so the yielded tunnel is known to work.
    """
    sshd_bin, ssh_bin, keygen = _programs()
    root.mkdir()
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    for key in ("host_key", "client_key"):
        options = ["-q", "-t", "ed25519", "-N", "", "-C", f"wardgate-bench-{key}"]
        run_checked([keygen, *options, "-f", str(root / key)], timeout=30, what="ssh-keygen")
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    user = getpass.getuser()

    with contextlib.ExitStack() as stack:
        sshd, port = _start_sshd(stack, root, sshd_bin, user)
        for attempt in range(ATTEMPTS):
            local_port = free_port()
            forward = f"127.0.0.1:{local_port}:127.0.0.1:{target_port}"
            args = [ssh_bin, "-N", "-L", forward, "-p", str(port), "-i", str(root / "client_key")]
            args += ["-F", "/dev/null", *(f"-o{option}" for option in _SSH_OPTIONS)]
            ssh = stack.enter_context(
                running(Proc("ssh -L", [*args, f"{user}@127.0.0.1"], root / f"ssh{attempt}.log"))
            )

            def through_tunnel(ssh: Proc = ssh, local_port: int = local_port) -> bool:
                ssh.check_alive()
                sshd.check_alive()
                return ready(local_port)

            try:
                wait_for(through_tunnel, "a login through ssh -L", timeout=timeout, interval=0.1)
            except BenchError:
                # ExitOnForwardFailure: a taken local port ends ssh; anything else is fatal.
                if attempt == ATTEMPTS - 1 or ssh.alive():
                    raise
                continue
            yield Tunnel(local_port, ssh, sshd)
            return


_SSH_OPTIONS = (
    "BatchMode=yes",
    "IdentitiesOnly=yes",
    "StrictHostKeyChecking=no",
    "UserKnownHostsFile=/dev/null",
    "ExitOnForwardFailure=yes",
    "LogLevel=ERROR",
)


def _start_sshd(
    stack: contextlib.ExitStack, root: Path, sshd_bin: str, user: str
) -> tuple[Proc, int]:
    """Start sshd on a free port (retried if it was taken meanwhile); it and its port."""
    for attempt in range(ATTEMPTS):
        port = free_port()
        config = sshd_config(root, port, user)
        sshd = stack.enter_context(
            running(
                Proc("sshd", [sshd_bin, "-D", "-e", "-f", str(config)], root / f"sshd{attempt}.log")
            )
        )

        def listening(sshd: Proc = sshd) -> bool:
            sshd.check_alive()
            return (root / "sshd.pid").exists()  # written once the listener is bound

        try:
            wait_for(listening, "sshd to listen")
        except BenchError:
            if attempt == ATTEMPTS - 1 or "Address already in use" not in sshd.log_tail():
                raise
            continue
        return sshd, port
    raise AssertionError("unreachable")

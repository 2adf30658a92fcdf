"""What an SSH session may do on a connection (sans-I/O).

Per connection, in its options (strings, like every connection option):

    ssh_shell       who may open an interactive shell      default: all
    ssh_exec        who may run commands (`ssh host cmd`)   default: all
    ssh_sftp        who may open the sftp subsystem         default: all
    ssh_forwarding  who may forward local ports (-L)        default: none
    ssh_deny_exec   command patterns refused, one shell glob per line

A "who" value is `all`, `none`, or a comma-separated list of Wardgate role names; the
bootstrap admin is in every list. legacy `scp` (scp -O) runs as exec (`scp -t`/`scp -f`),
so it needs exec; OpenSSH's default scp uses the sftp subsystem. Agent forwarding, X11 and
remote forwarding are always refused: they would let the target reach back into the client.

Exec patterns are matched against the whole command line after collapsing whitespace, and
against each `;`, `&&`, `||` or `|` separated part of it. This is a guardrail, not a
sandbox: a shell can always build a command that no pattern names (`sh -c "$(echo ...)"`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ACTIONS = ("shell", "exec", "sftp", "forwarding")
DEFAULTS = {"shell": "all", "exec": "all", "sftp": "all", "forwarding": "none"}
_SPLIT = re.compile(r";|&&|\|\||\|")


@dataclass(frozen=True, slots=True)
class SshDecision:
    allowed: bool
    reason: str = ""
    rule: str = ""


ALLOWED = SshDecision(True)


def _who(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def may(
    action: str, options: Mapping[str, str], roles: Iterable[str], *, is_admin: bool = False
) -> SshDecision:
    """Whether a subject with `roles` may open `action` on a connection with `options`."""
    value = options.get(f"ssh_{action}", DEFAULTS[action]).strip()
    if value == "all":
        return ALLOWED
    if value != "none" and (is_admin or set(_who(value)) & set(roles)):
        return ALLOWED
    return SshDecision(False, f"{action} is not allowed on this connection", f"ssh_{action}")


def deny_patterns(options: Mapping[str, str]) -> tuple[str, ...]:
    raw = options.get("ssh_deny_exec", "")
    return tuple(p.strip() for p in raw.splitlines() if p.strip())


def check_exec(command: str, options: Mapping[str, str]) -> SshDecision:
    """Refuse a command matching one of the connection's deny patterns."""
    patterns = deny_patterns(options)
    if not patterns:
        return ALLOWED
    whole = " ".join(command.split())
    parts = [whole, *(" ".join(p.split()) for p in _SPLIT.split(command))]
    for pattern in patterns:
        norm = " ".join(pattern.split())
        for part in parts:
            if part and fnmatch.fnmatchcase(part, norm):
                return SshDecision(
                    False, f"command refused by pattern {norm!r}", f"ssh_deny_exec:{norm}"
                )
    return ALLOWED

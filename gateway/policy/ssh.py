"""What an SSH session may do on a connection (sans-I/O).

Per connection, in its options (strings, like every connection option):

    ssh_shell       who may open an interactive shell      default: all
    ssh_exec        who may run commands (`ssh host cmd`)   default: all
    ssh_sftp        who may open the sftp subsystem         default: all
    ssh_forwarding  who may forward local ports (-L)        default: none
    ssh_deny_exec   command patterns refused, one shell glob per line
    ssh_review_exec command patterns held for approval, one shell glob per line
    ssh_review      the review terms for them: a policy rule's `review:` block written as a
                    YAML flow mapping, `{approvers: {groups: [ops]}, required: 1, timeout: 300}`

A "who" value is `all`, `none`, or a comma-separated list of Wardgate role names; the
bootstrap admin is in every list. legacy `scp` (scp -O) runs as exec (`scp -t`/`scp -f`),
so it needs exec; OpenSSH's default scp uses the sftp subsystem. Agent forwarding, X11 and
remote forwarding are always refused: they would let the target reach back into the client.

Exec patterns are matched against the whole command line after collapsing whitespace, and
against each `;`, `&&`, `||` or `|` separated part of it. This is a guardrail, not a
sandbox: a shell can always build a command that no pattern names (`sh -c "$(echo ...)"`).

Deny wins over review: a command matching both is refused. A held exec waits for the same
`ReviewService` as a held PostgreSQL statement (segregation of duties is the service's).
An interactive shell cannot hold a typed line, so there a line matching a review pattern is
refused like a denied one (run it as `ssh host CMD` to ask for approval).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import yaml
from pydantic import ValidationError

from gateway.policy.approval import ReviewTerms
from gateway.policy.errors import problems

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
    return _patterns(options, "ssh_deny_exec")


def _patterns(options: Mapping[str, str], key: str) -> tuple[str, ...]:
    raw = options.get(key, "")
    return tuple(p.strip() for p in raw.splitlines() if p.strip())


def review_patterns(options: Mapping[str, str]) -> tuple[str, ...]:
    return _patterns(options, "ssh_review_exec")


def _match(command: str, patterns: tuple[str, ...]) -> str | None:
    """The first pattern (whitespace collapsed) matching the command or one of its parts."""
    if not patterns:
        return None
    whole = " ".join(command.split())
    parts = [whole, *(" ".join(p.split()) for p in _SPLIT.split(command))]
    for pattern in patterns:
        norm = " ".join(pattern.split())
        if any(part and fnmatch.fnmatchcase(part, norm) for part in parts):
            return norm
    return None


def check_exec(command: str, options: Mapping[str, str]) -> SshDecision:
    """Refuse a command matching one of the connection's deny patterns."""
    hit = _match(command, deny_patterns(options))
    if hit is None:
        return ALLOWED
    return SshDecision(False, f"command refused by pattern {hit!r}", f"ssh_deny_exec:{hit}")


@dataclass(frozen=True, slots=True)
class ExecReview:
    """A command that must be approved before it runs, and on which terms."""

    reason: str
    rule: str
    terms: ReviewTerms


def review_terms(options: Mapping[str, str]) -> ReviewTerms:
    """The connection's `ssh_review` terms; ValueError says what is wrong with them."""
    raw = options.get("ssh_review", "").strip()
    if not raw:
        raise ValueError(
            "ssh_review_exec needs ssh_review terms, e.g. '{approvers: {groups: [ops]}}'"
        )
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"ssh_review is not a YAML mapping: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("ssh_review must be a mapping like a rule's review: block")
    try:
        return ReviewTerms.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"ssh_review: {problems(exc, 'ssh_review')}") from None


def check_review(command: str, options: Mapping[str, str]) -> ExecReview | None:
    """The review a command needs, or None. ValueError when the terms are unreadable
    (the caller refuses the command: without terms nobody could approve it)."""
    hit = _match(command, review_patterns(options))
    if hit is None:
        return None
    return ExecReview(
        f"command needs approval (pattern {hit!r})", f"ssh_review_exec:{hit}", review_terms(options)
    )


def validate_options(options: Mapping[str, str]) -> None:
    """Refuse, at apply time, review patterns without readable terms."""
    if review_patterns(options) or options.get("ssh_review", "").strip():
        review_terms(options)


class TypedLine:
    """Best-effort check of command lines typed into an interactive shell (sans-I/O).

    Follows what the user types into a PTY: printable characters build the line, Backspace
    removes one, Ctrl-U and Ctrl-C clear it. At Enter the line is judged with `check_exec`;
    a denied line is not entered: the Enter is replaced by Ctrl-U (which makes the shell's
    line editor drop the line). A line matching a review pattern is refused the same way:
    a typed line cannot be held. Arrow keys, Tab completion, history and other escape
    sequences make the line on the screen unknowable from the keys alone: such a line is
    let through. So this stops the plain typing of a denied command, nothing cleverer; the
    recording has every keystroke either way.
    """

    KILL_LINE = b"\x15"

    def __init__(self, options: Mapping[str, str]) -> None:
        self._options = options
        self._line: list[str] = []
        self._uncertain = False
        self._escape = False

    def _judge(self, line: str) -> SshDecision:
        decision = check_exec(line, self._options)
        if not decision.allowed:
            return decision
        hit = _match(line, review_patterns(self._options))
        if hit is None:
            return ALLOWED
        return SshDecision(
            False,
            f"command needs approval (pattern {hit!r}); a typed line cannot be held, "
            "run it as `ssh HOST COMMAND` to ask for approval",
            f"ssh_review_exec:{hit}",
        )

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[str, SshDecision]]]:
        """The bytes to forward, and each refused line with its decision."""
        out = bytearray()
        refused: list[tuple[str, SshDecision]] = []
        for byte in data:
            char = bytes((byte,))
            if self._escape:
                # Inside an escape sequence: it ends at a letter or '~'.
                if chr(byte).isalpha() or char == b"~":
                    self._escape = False
                out += char
                continue
            if char in (b"\r", b"\n"):
                line = "".join(self._line)
                decision = ALLOWED if self._uncertain else self._judge(line)
                self._line, self._uncertain = [], False
                if decision.allowed:
                    out += char
                else:
                    out += self.KILL_LINE
                    refused.append((line, decision))
                continue
            if char == b"\x1b":
                self._escape, self._uncertain = True, True
            elif char in (b"\x7f", b"\x08"):
                if self._line:
                    self._line.pop()
            elif char in (b"\x15", b"\x03"):
                self._line, self._uncertain = [], False
            elif char == b"\t" or byte < 0x20:
                self._uncertain = True
            else:
                self._line.append(chr(byte) if byte < 0x80 else "\ufffd")
            out += char
        return bytes(out), refused

"""Who may open which SSH channel, and which commands are refused (gateway/policy/ssh.py)."""

from __future__ import annotations

import pytest

from gateway.policy.ssh import check_exec, may


def test_defaults_allow_shell_exec_sftp_but_not_forwarding() -> None:
    for action in ("shell", "exec", "sftp"):
        assert may(action, {}, ()).allowed
    assert not may("forwarding", {}, ()).allowed


def test_roles_lists_and_none() -> None:
    options = {"ssh_shell": "ops, dba", "ssh_forwarding": "ops", "ssh_sftp": "none"}
    assert may("shell", options, ("dba",)).allowed
    assert not may("shell", options, ("dev",)).allowed
    assert may("forwarding", options, ("ops",)).allowed
    assert not may("sftp", options, ("ops",)).allowed
    assert may("shell", options, (), is_admin=True).allowed
    assert not may("sftp", options, (), is_admin=True).allowed


def test_deny_patterns_match_the_command_and_each_part() -> None:
    options = {"ssh_deny_exec": "rm -rf *\nshutdown*\n\n"}
    assert not check_exec("rm   -rf /", options).allowed
    assert not check_exec("echo hi; shutdown -h now", options).allowed
    assert not check_exec("true && rm -rf /tmp/x", options).allowed
    decision = check_exec("ls | shutdown", options)
    assert decision.rule == "ssh_deny_exec:shutdown*"
    assert check_exec("ls -l", options).allowed
    assert check_exec("anything", {}).allowed


def test_typed_lines_are_checked_at_enter_best_effort() -> None:
    from gateway.policy.ssh import TypedLine

    typed = TypedLine({"ssh_deny_exec": "rm -rf *"})
    out, refused = typed.feed(b"rm -rf /x\r")
    assert out == b"rm -rf /x\x15"
    assert refused[0][0] == "rm -rf /x" and not refused[0][1].allowed
    out, refused = typed.feed(b"rm -rf /y\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7fls\r")
    assert out.endswith(b"ls\r") and refused == []
    out, refused = typed.feed(b"\x1b[A\r")  # history: the line is unknowable, let through
    assert out == b"\x1b[A\r" and refused == []
    out, refused = typed.feed(b"rm -r\x03rm -rf /z\n")
    assert out.endswith(b"\x15") and refused[0][0] == "rm -rf /z"


REVIEWED = {
    "ssh_deny_exec": "systemctl stop *",
    "ssh_review_exec": "systemctl *\nsudo *",
    "ssh_review": "{approvers: {groups: [ops], users: [alice]}, required: 2, timeout: 60}",
}


def test_review_patterns_hold_commands_with_the_connection_terms() -> None:
    from gateway.policy.ssh import check_review

    held = check_review("echo go && sudo  reboot", REVIEWED)
    assert held is not None
    assert held.rule == "ssh_review_exec:sudo *"
    assert held.terms.approvers.groups == ("ops",) and held.terms.approvers.users == ("alice",)
    assert (held.terms.required, held.terms.timeout) == (2, 60)
    assert check_review("ls -l", REVIEWED) is None
    assert check_review("sudo x", {}) is None
    # Deny wins: the caller checks deny patterns first, and both match here.
    assert not check_exec("systemctl stop nginx", REVIEWED).allowed
    assert check_review("systemctl stop nginx", REVIEWED) is not None


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ("", "needs ssh_review terms"),
        ("[ops]", "must be a mapping"),
        ("{approvers: {groups: [ops]}, required: 0}", "required"),
        ("{required: 1}", "needs approvers"),
        ("{approvers: {groups: [ops]}, colour: red}", "colour"),
        ("{approvers: [", "not a YAML mapping"),
    ],
)
def test_unreadable_review_terms_are_refused(terms: str, message: str) -> None:
    from gateway.policy.ssh import check_review, validate_options

    options = {"ssh_review_exec": "sudo *", "ssh_review": terms}
    with pytest.raises(ValueError, match=message):
        validate_options(options)
    with pytest.raises(ValueError, match=message):
        check_review("sudo ls", options)
    validate_options({"ssh_deny_exec": "rm *"})  # nothing to check


def test_typed_lines_needing_review_are_refused_in_a_shell() -> None:
    from gateway.policy.ssh import TypedLine

    typed = TypedLine(REVIEWED)
    out, refused = typed.feed(b"sudo ls\r")
    assert out == b"sudo ls\x15"
    assert refused[0][1].rule == "ssh_review_exec:sudo *"
    assert "cannot be held" in refused[0][1].reason
    out, refused = typed.feed(b"ls\r")
    assert out == b"ls\r" and refused == []

"""Who may open which SSH channel, and which commands are refused (gateway/policy/ssh.py)."""

from __future__ import annotations

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

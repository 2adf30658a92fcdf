"""The SSH front door's login-name parsing, its hint banner and the scp direction."""

from __future__ import annotations

import pytest

from gateway.protocols.ssh import parse_username, scp_direction, target_hint


@pytest.mark.parametrize(
    ("login", "parsed"),
    [
        ("alice:web-1", ("alice", "web-1")),
        ("alice:web-1:extra", ("alice", "web-1:extra")),  # the connection keeps the rest
        ("alice@corp:db", ("alice@corp", "db")),
        ("alice", None),
        ("alice:", None),
        (":web-1", None),
        ("", None),
    ],
)
def test_the_login_name_names_user_and_connection(
    login: str, parsed: tuple[str, str] | None
) -> None:
    assert parse_username(login) == parsed


def test_the_hint_echoes_only_a_plain_login_name() -> None:
    assert "ssh -p PORT alice:CONNECTION@HOST" in target_hint("alice")
    # Said before authentication: anything unusual in the name is not echoed back.
    weird = target_hint("al\x1b[31mice")
    assert "\x1b" not in weird and "ssh -p PORT USER:CONNECTION@HOST" in weird
    assert all(line.startswith("wardgate: ") for line in target_hint("bob").splitlines())


@pytest.mark.parametrize(
    ("command", "upload"),
    [
        ("scp -t /tmp", True),
        ("scp -r -t /tmp/dir", True),
        ("scp -f /etc/hostname", False),
        ("scp -pf file", False),
        ("ls -t", None),
        ("scp 'unterminated", None),
        ("", None),
    ],
)
def test_scp_direction(command: str, upload: bool | None) -> None:
    assert scp_direction(command) is upload

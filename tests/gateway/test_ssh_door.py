"""The SSH front door's login-name parsing, its hint banner, the scp direction and the
recordings' file modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.protocols.ssh import _CastFile, parse_username, scp_direction, target_hint
from shared.recording.asciicast import Header


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


def test_a_recording_is_private_to_the_gateways_user(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask must not make a recording readable by others
    try:
        cast = _CastFile(tmp_path / "recordings" / "s1.cast", Header(80, 24, 0))
        cast.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "recordings").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "recordings" / "s1.cast").stat().st_mode) == 0o600

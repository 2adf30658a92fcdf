"""The gateway's data directory is private to its user, and a configured admin token is the
operator's: never written to the log (a real gateway process, started under umask 022)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.fixtures.wardgate import ADMIN_TOKEN, Wardgate

pytestmark = pytest.mark.e2e


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_permissive_umask_leaves_the_data_private_and_the_token_unlogged(
    tmp_path: Path,
) -> None:
    wg = Wardgate(tmp_path)
    old = os.umask(0o022)  # inherited by the gateway process
    try:
        gw = wg.gateway()  # WARDGATE_ADMIN_TOKEN is set: a configured token
    finally:
        os.umask(old)
    try:
        assert gw.healthy()
        assert _mode(gw.data_dir) == 0o700
        databases = list(gw.data_dir.glob("wardgate.db*"))
        assert databases and all(_mode(db) == 0o600 for db in databases), databases
        assert _mode(gw.ca_path.parent) == 0o700  # tls/: the CA and gateway keys
        assert ADMIN_TOKEN not in gw.log(tail=10_000)
    finally:
        wg.close()

"""`python -m bench.audit` end to end with tiny sizes: members start together, append, and the
chain they wrote together verifies. No number is asserted (they depend on the machine)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def test_two_members_append_to_one_chain_that_verifies() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.audit", "--members", "1,2", "--seconds", "0.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = re.findall(r"^\s+([12])\s+(\d+)\s+[\d.]+ms\s+[\d.]+ms$", run.stdout, re.MULTILINE)
    assert [members for members, _ in rows] == ["1", "2"], run.stdout
    assert all(int(events) > 0 for _, events in rows)
    assert run.stdout.rstrip().endswith("chain: intact"), run.stdout

"""`wardgate audit verify-export`: a session export (gateway/store/export.py) built from events
a real SQLite store wrote, checked by the CLI as a subprocess: intact, a recording with no
event to hold its hash, a file that is not an export, a file that is not there."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from gateway.store import Store, export
from tests.fixtures.wardgate import WARDGATE

CAST = b'{"version": 2, "width": 80, "height": 24}\n[0.1, "o", "hello"]\n'


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WARDGATE, "audit", "verify-export", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _export(tmp_path: Path) -> Path:
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as store:
        store.audit.append("session.open", actor="alice", session_id="s1", data={"c": "web-1"})
        store.audit.append("test.other", actor="bob", data={"elsewhere": True})
        sha = hashlib.sha256(CAST).hexdigest()
        held = store.audit.append(
            "ssh.recording", actor="alice", session_id="s1", data={"channel": 0, "sha256": sha}
        )
        events = store.audit.list_all(session_id="s1")
    path = tmp_path / "export.json"
    path.write_bytes(export.build({"id": "s1"}, events, [export.Recording(0, held.seq, CAST)]))
    return path


def test_an_intact_export_says_what_was_checked(tmp_path: Path) -> None:
    out = _verify(_export(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "session export intact: 2 events, 1 recordings checked\n"


def test_a_recording_whose_event_was_left_out_fails(tmp_path: Path) -> None:
    path = _export(tmp_path)
    doc = json.loads(path.read_bytes())
    doc["events"] = [e for e in doc["events"] if e["kind"] != "ssh.recording"]
    path.write_text(json.dumps(doc))
    out = _verify(path)
    assert out.returncode == 1
    assert "session export TAMPERED: recording of channel 0: no ssh.recording event 3" in out.stderr


def test_a_file_that_is_not_an_export_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}')
    out = _verify(path)
    assert out.returncode == 1
    assert out.stderr.splitlines()[0].endswith(
        "not a session export (format 'wardgate-session-export/1' expected)"
    )
    assert "Traceback" not in out.stderr
    missing = _verify(tmp_path / "absent.json")
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr

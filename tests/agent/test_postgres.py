"""The agent's TLS contexts towards PostgreSQL servers: built once, rebuilt for a new CA file."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from agent.protocols.postgres import _client_tls
from gateway.tls import ensure_self_signed
from shared.tunnel.frames import Target


def _target(**options: str) -> Target:
    return Target(connection="db", type="postgres", host="127.0.0.1", port=5432, options=options)


def test_encrypt_only_modes_share_one_context_that_verifies_nothing() -> None:
    contexts = {id(_client_tls(_target(), mode)) for mode in ("prefer", "require", "allow")}
    assert len(contexts) == 1
    ctx = _client_tls(_target(), "require")
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_a_verifying_context_is_reused_until_its_ca_file_changes(tmp_path: Path) -> None:
    ca = ensure_self_signed(tmp_path / "one").ca_path
    target = _target(sslrootcert=str(ca))
    full = _client_tls(target, "verify-full")
    assert _client_tls(target, "verify-full") is full
    assert full.check_hostname and full.verify_mode == ssl.CERT_REQUIRED
    verify_ca = _client_tls(target, "verify-ca")
    assert verify_ca is not full and not verify_ca.check_hostname
    # A CA file replaced in place (rotation) is read again.
    ca.write_bytes(ensure_self_signed(tmp_path / "two").ca_path.read_bytes())
    stat = ca.stat()
    os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _client_tls(target, "verify-full") is not full

"""`wardgate dev`'s admin token: kept in the data dir and reused while the store holds it
valid, so a restart does not break shells and ~/.pgpass entries made with it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.app import ADMIN_USER, BOOTSTRAP_LABEL, Gateway
from gateway.config import GatewayConfig
from gateway.crypto import hash_token
from gateway.store import Store


@pytest.fixture(autouse=True)
def no_configured_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARDGATE_ADMIN_TOKEN", raising=False)


def test_dev_token_is_kept_while_valid_and_replaced_once_revoked(tmp_path: Path) -> None:
    cfg = GatewayConfig(data_dir=tmp_path)
    kept = tmp_path / "admin-token"
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as store:
        first = Gateway(cfg, admin_token_file=kept)._bootstrap_admin(store)
        assert first is not None and kept.read_text().strip() == first
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600

        again = Gateway(cfg, admin_token_file=kept)._bootstrap_admin(store)
        assert again == first
        found = store.find_token(hash_token(first))
        assert found is not None and found[0].revoked_at is None

        store.revoke_tokens_labelled(ADMIN_USER, BOOTSTRAP_LABEL)
        fresh = Gateway(cfg, admin_token_file=kept)._bootstrap_admin(store)
        assert fresh not in (None, first) and kept.read_text().strip() == fresh


def test_production_restart_mints_nothing(tmp_path: Path) -> None:
    cfg = GatewayConfig(data_dir=tmp_path)
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as store:
        assert Gateway(cfg)._bootstrap_admin(store) is not None
        assert Gateway(cfg)._bootstrap_admin(store) is None

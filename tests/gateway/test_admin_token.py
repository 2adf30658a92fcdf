"""`wardgate dev`'s admin token: kept in the data dir and reused while the store holds it
valid, so a restart does not break shells and ~/.pgpass entries made with it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.app import ADMIN_USER, BOOTSTRAP_LABEL, Gateway
from gateway.config import ConfigError, GatewayConfig
from gateway.crypto import hash_token
from gateway.store import Store


@pytest.fixture(autouse=True)
def no_configured_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARDGATE_ADMIN_TOKEN", raising=False)


def test_dev_token_is_kept_while_valid_and_replaced_once_revoked(tmp_path: Path) -> None:
    cfg = GatewayConfig(data_dir=tmp_path)
    kept = tmp_path / "admin-token"
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as store:
        first, origin = Gateway(cfg, admin_token_file=kept)._bootstrap_admin(store)
        assert first is not None and kept.read_text().strip() == first and origin == "minted"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600

        assert Gateway(cfg, admin_token_file=kept)._bootstrap_admin(store) == (first, "kept")
        found = store.identity.find_token(hash_token(first))
        assert found is not None and found[0].revoked_at is None

        store.identity.revoke_tokens_labelled(ADMIN_USER, BOOTSTRAP_LABEL)
        fresh, origin = Gateway(cfg, admin_token_file=kept)._bootstrap_admin(store)
        assert fresh not in (None, first) and kept.read_text().strip() == fresh
        assert origin == "minted"


def test_production_restart_mints_nothing(tmp_path: Path) -> None:
    cfg = GatewayConfig(data_dir=tmp_path)
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as store:
        token, origin = Gateway(cfg)._bootstrap_admin(store)
        assert token is not None and origin == "minted"
        assert Gateway(cfg)._bootstrap_admin(store) == (None, None)


def test_a_configured_token_is_used_and_never_called_minted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "wgt_" + "k" * 40
    monkeypatch.setenv("WARDGATE_ADMIN_TOKEN", token)
    cfg = GatewayConfig(data_dir=tmp_path)
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as store:
        assert Gateway(cfg)._bootstrap_admin(store) == (token, "configured")
        assert store.identity.find_token(hash_token(token)) is not None


@pytest.mark.parametrize(
    "configured",
    [
        "not-a-wardgate-token-at-all-0123456789",
        "wgt_short",
        "wgt_" + "x" * 251,
        "wgt_ with spaces " * 3,
    ],
)
def test_a_malformed_configured_token_is_refused_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configured: str
) -> None:
    monkeypatch.setenv("WARDGATE_ADMIN_TOKEN", configured)
    cfg = GatewayConfig(data_dir=tmp_path)
    with (
        Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as store,
        pytest.raises(ConfigError, match="must be wgt_ followed by 32 to 250 printable") as info,
    ):
        Gateway(cfg)._bootstrap_admin(store)
    assert configured not in str(info.value)  # a secret, even a malformed one, is not echoed

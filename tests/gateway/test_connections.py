"""Declarative connections: apply is idempotent, literals are sealed, display hides them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.connections import ConnectionError_, apply, describe
from gateway.connspec import ConnectionSpec
from gateway.crypto import SecretBox
from gateway.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        yield s
    finally:
        s.close()


def spec(**kw: object) -> ConnectionSpec:
    base: dict[str, object] = {
        "name": "pg-main",
        "type": "postgres",
        "host": "10.0.0.5",
        "port": 5432,
        "database": "app",
        "username": "app_rw",
        "password": "env:APP_DB_PASSWORD",
    }
    base.update(kw)
    return ConnectionSpec.model_validate(base)


def test_apply_creates_then_reports_unchanged_then_updated(store: Store) -> None:
    assert apply(store, None, [spec()]) == [{"name": "pg-main", "status": "created"}]
    assert apply(store, None, [spec()]) == [{"name": "pg-main", "status": "unchanged"}]
    assert apply(store, None, [spec(port=6432)]) == [{"name": "pg-main", "status": "updated"}]
    record = store.connections.get("pg-main")
    assert record is not None
    assert record.options == {"database": "app", "username": "app_rw"}
    assert record.secrets == {"password": "env:APP_DB_PASSWORD"}
    assert record.pool == "default"


def test_literal_secret_is_sealed_and_reapplying_it_changes_nothing(store: Store) -> None:
    box = SecretBox.from_config(SecretBox.generate_key())
    apply(store, box, [spec(password="hunter2")])
    record = store.connections.get("pg-main")
    assert record is not None
    sealed = record.secrets["password"]
    assert SecretBox.is_sealed(sealed) and "hunter2" not in sealed
    assert box.open(sealed, context="pg-main/password") == b"hunter2"
    assert apply(store, box, [spec(password="hunter2")])[0]["status"] == "unchanged"
    assert describe(record)["secrets"] == {"password": "(encrypted)"}


def test_literal_secret_without_a_key_is_refused_before_anything_is_written(store: Store) -> None:
    with pytest.raises(ConnectionError_, match="secret_key"):
        apply(store, None, [spec(name="a", password="env:X"), spec(name="b", password="plain")])
    assert store.connections.list_all() == []


def test_duplicate_names_are_refused(store: Store) -> None:
    with pytest.raises(ConnectionError_, match="duplicate"):
        apply(store, None, [spec(), spec()])


def test_bad_names_and_ports_are_refused_by_the_spec() -> None:
    with pytest.raises(ValueError, match="lowercase"):
        spec(name="Bad Name")
    with pytest.raises(ValueError):
        spec(port=70000)
    with pytest.raises(ValueError):
        ConnectionSpec.model_validate({"name": "x", "host": "h", "port": 1, "typo": 1})


def test_gateway_config_accepts_the_same_connections_format(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "listen: 127.0.0.1:9443\n"
        "connections:\n"
        "  - name: cache\n    type: tcp\n    host: 10.0.0.7\n    port: 6379\n"
    )
    cfg = load_config(path, data_dir=tmp_path)
    assert cfg.listen == "127.0.0.1:9443"
    assert cfg.agent_listen == "0.0.0.0:8444"
    assert [c.name for c in cfg.connections] == ["cache"]
    assert cfg.store_url().startswith("sqlite:///")
    with pytest.raises(ValueError, match="HOST:PORT"):
        load_config(None, listen="nowhere")

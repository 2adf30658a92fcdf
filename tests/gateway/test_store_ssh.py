"""SSH public keys in the store (migration 0005), on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import AlreadyExists, NotFound, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as opened:
        opened.identity.ensure_user("alice")
        opened.identity.ensure_user("bob")
        yield opened


def test_a_key_belongs_to_one_user_and_is_found_by_fingerprint(store: Store) -> None:
    added = store.ssh_keys.add("alice", "SHA256:abc", "ssh-ed25519 AAAA", "laptop")
    assert store.ssh_keys.find("SHA256:abc") == added
    assert store.ssh_keys.list_all("alice") == [added]
    assert store.ssh_keys.list_all("bob") == []
    with pytest.raises(AlreadyExists):
        store.ssh_keys.add("bob", "SHA256:abc", "ssh-ed25519 AAAA")
    with pytest.raises(NotFound):
        store.ssh_keys.add("nobody", "SHA256:def", "ssh-ed25519 BBBB")


def test_removal_by_id_or_fingerprint_only_for_the_owner(store: Store) -> None:
    one = store.ssh_keys.add("alice", "SHA256:one", "ssh-ed25519 AAAA")
    store.ssh_keys.add("alice", "SHA256:two", "ssh-ed25519 BBBB")
    assert not store.ssh_keys.remove("bob", one.id)
    assert store.ssh_keys.remove("alice", one.id)
    assert store.ssh_keys.remove("alice", "SHA256:two")
    assert store.ssh_keys.find("SHA256:two") is None

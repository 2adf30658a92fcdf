"""One identity for the fleet (gateway/fleet/membership.py `share_identity`) on real stores."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.crypto import SecretBox
from gateway.fleet.membership import OTHER_KEY, share_identity
from gateway.store import Store
from tests.fixtures.postgres import PostgresServer

HOST_KEY = "ssh_host_ed25519_key"
FILES = [
    "tls/ca.pem",
    "tls/ca.key",
    HOST_KEY,
    HOST_KEY + ".pub",
    "ssh_user_ca_ed25519_key",
    "ssh_user_ca_ed25519_key.pub",
]


def share(store: Store, box: SecretBox, data_dir: Path, member: str) -> None:
    data_dir.mkdir(mode=0o700, exist_ok=True)  # as the gateway makes it before
    share_identity(
        store,
        box,
        data_dir,
        member=member,
        tls_hostnames=[],
        tls_configured=False,
        host_key_file=HOST_KEY,
    )


def test_members_racing_to_create_the_identity_all_end_with_the_winners(
    postgres_db: PostgresServer, tmp_path: Path
) -> None:
    box = SecretBox.from_config(SecretBox.generate_key())
    dirs = [tmp_path / f"member{i}" for i in range(4)]
    stores = [Store.open(postgres_db.url()) for _ in dirs]
    try:
        with ThreadPoolExecutor(len(dirs)) as pool:
            list(pool.map(lambda i: share(stores[i], box, dirs[i], f"m{i}"), range(len(dirs))))
    finally:
        for store in stores:
            store.close()
    for name in FILES:
        assert len({(d / name).read_bytes() for d in dirs}) == 1, name
    assert (dirs[0] / HOST_KEY).stat().st_mode & 0o777 == 0o600
    assert (dirs[0] / "tls/ca.key").stat().st_mode & 0o777 == 0o600


def test_a_member_with_another_key_is_refused(postgres_db: PostgresServer, tmp_path: Path) -> None:
    with Store.open(postgres_db.url()) as store:
        share(store, SecretBox(b"k" * 32), tmp_path / "first", "m0")
        with pytest.raises(ConfigError, match=OTHER_KEY):
            share(store, SecretBox(b"o" * 32), tmp_path / "second", "m1")
        assert not (tmp_path / "second" / HOST_KEY).exists()


def test_a_sqlite_store_shares_nothing(tmp_path: Path) -> None:
    with Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}") as store:
        share(store, SecretBox(b"k" * 32), tmp_path / "data", "m0")
        assert store.members.identity("tls-ca") is None
    assert list((tmp_path / "data").iterdir()) == []

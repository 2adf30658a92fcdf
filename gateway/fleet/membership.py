"""The fleet: every gateway process is a member in the store, and all show one identity.

Membership (``Membership``). A member registers when it starts (id, agent-facing and public
address, version), heartbeats every ``fleet.heartbeat_interval`` seconds (default 2 s), and
on each beat reaps the members whose last heartbeat is older than ``fleet.member_timeout``
(default 10 s): it marks them gone and ends the sessions they served ("gateway lost"), with
the audit events, in one transaction (``gateway/store/members.py``). A member killed
outright therefore has its sessions closed in the store at most timeout + one interval
after its last heartbeat: 12 s with the defaults. A member reaps only once its own
heartbeats have succeeded for a whole timeout, so members that lost the store together get
as long to come back as a silent member gets. A member that stops cleanly leaves at once.
A member that finds it was reaped while it still ran (paused, or cut off from the store for
longer than the timeout) ends its own live sessions, which the store already calls lost,
and registers again.

Identity (``share_identity``). With a PostgreSQL store, members share it and must look
like one server to clients and agents: one TLS CA (each member's leaf certificate is signed
by it), one SSH host key, one SSH user CA. Files the config names are used as they are
(``tls.cert``/``tls.key``); the rest is kept in the store sealed with ``secret_key``. The
first member to start offers its own (its data directory's, generated there if absent),
insert-if-absent: a member that loses the race takes the winner's, as does every member
after it, writing it to its data directory where the TLS and SSH code reads it. A SQLite
store is one host's: nothing is shared and nothing changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway import sshca
from gateway.config import ConfigError, FleetConfig
from gateway.crypto import SecretBox, SecretBoxError
from gateway.store import Store
from gateway.store.members import MemberRecord
from gateway.tls import ensure_self_signed
from shared.version import __version__

log = logging.getLogger(__name__)

NEEDS_KEY = (
    "a PostgreSQL store is shared by gateway members, which keep one identity in it sealed "
    "with secret_key: set secret_key (or WARDGATE_SECRET_KEY) to the same key on every member"
)
OTHER_KEY = (
    "the fleet identity in the store was sealed with another secret_key: give this member "
    "the secret_key of the other members"
)


def new_member_id(worker: int | None = None) -> str:
    """This process's member id: the host's name (a pod's name in Kubernetes), `wN` for
    worker N of `gateway --workers`, and a random suffix, so a restarted process is a new
    member and the old one is reaped."""
    tag = "" if worker is None else f"-w{worker}"
    return f"{socket.gethostname()[:48]}{tag}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class _Item:
    """One identity item: files under the data directory, with their modes."""

    name: str
    files: tuple[tuple[str, int], ...]
    make: Callable[[], object]  # creates the files where they are missing


def share_identity(
    store: Store,
    box: SecretBox | None,
    data_dir: Path,
    *,
    member: str,
    tls_hostnames: Sequence[str],
    tls_configured: bool,
    host_key_file: str,
) -> None:
    """Make the data directory's identity files the fleet's (see the module docstring).
    Raises ConfigError when the store is shared and `box` is missing or not the fleet's."""
    if store.dialect != "postgresql":
        return
    if box is None:
        raise ConfigError(NEEDS_KEY)
    items = [
        _Item(
            "ssh-host-key",
            ((host_key_file, 0o600), (host_key_file + ".pub", 0o644)),
            lambda: sshca.ensure_ed25519_key(data_dir / host_key_file, "wardgate-gateway"),
        ),
        _Item(
            "ssh-user-ca",
            ((sshca.USER_CA_FILE, 0o600), (sshca.USER_CA_FILE + ".pub", 0o644)),
            lambda: sshca.load_user_ca(data_dir),
        ),
    ]
    if not tls_configured:
        items.append(
            _Item(
                "tls-ca",
                (("tls/ca.key", 0o600), ("tls/ca.pem", 0o644)),
                lambda: ensure_self_signed(data_dir, tls_hostnames),
            )
        )
    for item in items:
        _share(store, box, data_dir, item, member)


def _share(store: Store, box: SecretBox, data_dir: Path, item: _Item, member: str) -> None:
    context = f"fleet/{item.name}"
    sealed = store.members.identity(item.name)
    if sealed is None:
        item.make()
        local = {rel: (data_dir / rel).read_text() for rel, _ in item.files}
        offer = box.seal(json.dumps(local, sort_keys=True).encode(), context=context)
        sealed = store.members.offer_identity(item.name, offer, by=member)
    try:
        kept = json.loads(box.open(sealed, context=context))
    except SecretBoxError:
        raise ConfigError(OTHER_KEY) from None
    for rel, mode in item.files:
        path = data_dir / rel
        text = kept[rel]
        if path.exists() and path.read_text() == text:
            continue
        if path.exists():
            log.warning("%s: replacing this member's %s with the fleet's", item.name, path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write(path, text, mode)


def _write(path: Path, text: str, mode: int) -> None:
    """Whole or not at all, and private from the first byte."""
    tmp = path.with_name(f".{path.name}.fleet")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(text)
    tmp.replace(path)


class Membership:
    """This process as a member: registration, heartbeats, reaping the lost, leaving."""

    def __init__(
        self,
        store: Store,
        member_id: str,
        config: FleetConfig,
        *,
        on_reaped: Callable[[], Awaitable[object]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_reaped` ends this member's live sessions: the store called them lost."""
        self._store = store
        self.id = member_id
        self._config = config
        self._on_reaped = on_reaped
        self._clock = clock
        self._addresses: tuple[str, str] = ("", "")
        # Since when every heartbeat of this member succeeded (None: the last one failed).
        # It reaps others only after a whole timeout of them: members that lost the store
        # together with it get as long to come back as a silent member gets.
        self._steady_since: float | None = None

    async def join(self, *, agent_address: str, public_address: str) -> MemberRecord:
        self._addresses = (agent_address, public_address)
        joined = await self._register()
        self._steady_since = self._clock()
        return joined

    async def _register(self) -> MemberRecord:
        agent_address, public_address = self._addresses
        return await self._store.io.write(
            self._store.members.register,
            self.id,
            agent_address=agent_address,
            public_address=public_address,
            version=__version__,
        )

    async def run(self) -> None:
        """Beat and reap every interval until cancelled; a store that fails is retried at
        the next beat (the other members reap this one if that lasts past the timeout)."""
        while True:
            await asyncio.sleep(self._config.heartbeat_interval)
            try:
                await self.beat()
            except Exception as exc:  # never let the heartbeat stop: the fleet would reap us
                self._steady_since = None
                log.warning("member %s: heartbeat failed: %s", self.id, exc)

    async def beat(self) -> None:
        """One heartbeat, then reap the lost members if this one has been steady."""
        store = self._store
        now = self._clock()
        if not await store.io.write(store.members.heartbeat, self.id):
            log.error(
                "member %s was reaped by another member (no heartbeat for %g s): ending its "
                "sessions and joining again",
                self.id,
                self._config.member_timeout,
            )
            await self._on_reaped()
            await self._register()
        if self._steady_since is None:
            self._steady_since = now
        if now - self._steady_since < self._config.member_timeout:
            return
        for lost in await store.io.write(
            store.members.reap, self._config.member_timeout, by=self.id
        ):
            log.warning(
                "member %s lost (last heartbeat %s): %d of its sessions ended",
                lost.member,
                lost.heartbeat_at.isoformat(),
                len(lost.sessions),
            )

    async def leave(self) -> None:
        """Leave the fleet; sessions still open in the store end as "gateway stopped"."""
        left_open = await self._store.io.write(self._store.members.leave, self.id)
        if left_open:
            log.warning("member %s left %d sessions open: ended", self.id, len(left_open))

"""The SSH front door and the agent's SSH half, joined by an in-memory tunnel: a paramiko
client signs in with a registered key, the door relays through shared/relay.py to the
agent's code, which reaches a real OpenSSH sshd. How each side ending ends the session."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import paramiko
import pytest

from agent.protocols import ssh as agent_ssh
from gateway.agents.registry import AgentRegistry
from gateway.audit import Auditor
from gateway.policy.grants import AccessPolicy, Grant, Role
from gateway.protocols.ssh import SshFrontDoor, fingerprint, load_host_key
from gateway.sessions import SessionBroker
from gateway.store import ConnectionRecord, Store
from shared.tasks import TaskOwner
from shared.tunnel.frames import ResetCode
from tests.fixtures.sshd import Sshd, keygen
from tests.fixtures.tunnel_agent import LocalRegistry
from tests.fixtures.wardgate import wait_for

ACCESS = AccessPolicy([Role("ops", groups=frozenset({"ops"}), grants=(Grant("web-1", "admin"),))])


@dataclasses.dataclass
class Rig:
    port: int
    key: paramiko.PKey
    host_key: paramiko.PKey
    store: Store
    registry: LocalRegistry
    broker: SessionBroker

    def client(self, connection: str = "web-1") -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[127.0.0.1]:{self.port}", "ssh-ed25519", self.host_key)
        client.connect(
            "127.0.0.1", self.port, username=f"alice:{connection}", pkey=self.key,
            allow_agent=False, look_for_keys=False, timeout=30,
        )  # fmt: skip
        return client

    def closed_sessions(self) -> list[Any]:
        return [s for s in self.store.sessions.list_all() if s.status != "open"]


@pytest.fixture
async def rig(tmp_path: Path, sshd: Sshd) -> AsyncIterator[Rig]:
    store = Store.open(f"sqlite:///{tmp_path / 'wg.db'}")
    store.identity.ensure_user("alice", groups=("ops",))
    keygen(tmp_path / "alice")
    key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "alice"))
    store.ssh_keys.add("alice", fingerprint(key), f"{key.get_name()} {key.get_base64()}")
    store.connections.upsert(
        ConnectionRecord(
            name="web-1", type="ssh", pool="default", host="127.0.0.1", port=sshd.port,
            options={"username": sshd.user, "host_key": sshd.host_fingerprint},
            secrets={"private_key": f"file:{sshd.client_key}"},
        )
    )  # fmt: skip
    auditor = Auditor(store)
    registry = LocalRegistry(agent_ssh.serve)
    broker = SessionBroker(store, cast(AgentRegistry, registry), auditor, None, ACCESS)
    host_key = load_host_key(tmp_path)
    door = SshFrontDoor(
        host_key, store, cast(Any, None), broker, auditor,
        access=ACCESS, recordings=tmp_path / "recordings",
    )  # fmt: skip
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    connections = TaskOwner("ssh-door")

    async def accept() -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, addr = await loop.sock_accept(listener)
            connections.spawn(door.plain(sock, f"{addr[0]}:{addr[1]}"), name=str(addr))

    acceptor = connections.spawn(accept(), name="accept")
    try:
        yield Rig(listener.getsockname()[1], key, host_key, store, registry, broker)
    finally:
        acceptor.cancel()
        await connections.aclose()
        await registry.aclose()
        await broker.aclose()
        await auditor.aclose()
        listener.close()
        store.close()


def run(client: paramiko.SSHClient, command: str) -> tuple[bytes, bytes, int]:
    chan = client.get_transport().open_session()  # type: ignore[union-attr]
    chan.exec_command(command)
    out, err = bytearray(), bytearray()
    while not (chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready()):
        if chan.recv_ready():
            out += chan.recv(65536)
        elif chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        elif chan.closed:
            break
        else:
            chan.status_event.wait(0.05)
    out += chan.makefile("rb").read()
    err += chan.makefile_stderr("rb").read()
    return bytes(out), bytes(err), chan.recv_exit_status()


async def until(check: Callable[[], bool], what: str) -> None:
    """The store and the agent's threads have no event to wait on: poll, with a deadline."""
    await asyncio.to_thread(wait_for, check, what)


async def test_exec_relays_output_and_status_and_the_hang_up_ends_the_session_cleanly(
    rig: Rig,
) -> None:
    client = await asyncio.to_thread(rig.client)
    try:
        out, err, status = await asyncio.to_thread(
            run, client, "echo out-$((6*7)); echo err >&2; exit 3"
        )
    finally:
        await asyncio.to_thread(client.close)
    assert (out, err, status) == (b"out-42\n", b"err\n", 3)
    await until(lambda: len(rig.closed_sessions()) == 1, "the session to end")
    (session,) = rig.closed_sessions()
    assert (session.status, session.error) == ("closed", None)
    # The client's hang-up reached the agent as a close, not as a lost or reset session.
    (agent_end,) = rig.registry.agent_ends.values()
    await until(lambda: all(rig.registry.served.values()), "the agent's side to finish")
    assert agent_end.finished and agent_end.end_reason is None


async def test_an_agent_that_fails_ends_the_session_and_tells_the_client_why(rig: Rig) -> None:
    client = await asyncio.to_thread(rig.client)
    try:
        chan = await asyncio.to_thread(client.get_transport().open_session)  # type: ignore[union-attr]
        await asyncio.to_thread(chan.exec_command, "echo started; sleep 60")
        started = await asyncio.to_thread(chan.recv, 64)
        assert started == b"started\n"
        (agent_end,) = rig.registry.agent_ends.values()
        await agent_end.reset(ResetCode.TARGET_UNREACHABLE, "the SSH server went away")
        status = await asyncio.to_thread(chan.recv_exit_status)
        err = await asyncio.to_thread(chan.makefile_stderr("rb").read)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(client.close)
    assert status == 255
    assert b"wardgate: session ended: the SSH server went away" in err
    await until(lambda: len(rig.closed_sessions()) == 1, "the session to end")
    (session,) = rig.closed_sessions()
    assert (session.status, session.error) == ("failed", "the SSH server went away")


async def test_a_session_that_cannot_open_is_explained_on_the_channel(rig: Rig) -> None:
    client = await asyncio.to_thread(rig.client, "nope")
    try:
        out, err, status = await asyncio.to_thread(run, client, "echo never")
    finally:
        await asyncio.to_thread(client.close)
    assert (out, status) == (b"", 1)
    assert err.startswith(b"wardgate: connection 'nope' does not exist"), err

"""The agent process: dial out, authenticate, serve sessions, reconnect on loss.

Lifecycle of one connection attempt:
    channel (TLS with the pinned CA, or plaintext when both sides allow it)
    -> Control call with the agent's name and secret in metadata
    -> Hello / Welcome
    -> serve: OpenSession orders spawn one owned task each; pings both ways
    -> on loss: close the channel (its sessions end with it), back off with jitter, retry
A rejected key or a Goodbye(SUPERSEDED) ends the agent with an error instead: retrying
would not help, and two processes sharing one key must not flap.

Fleet: the key's address is the seed. Each Welcome (and each later Members frame) names the
live gateway members; the agent runs one such connection loop per member, each with its
own backoff (capped at RECONNECT_CAP seconds, so a restarted member has its agents back
within that), adding loops for new members and stopping those of members gone once their
connection ends. agent/fleet.py holds the rules; this module only does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from agent.fleet import Fleet, MemberState
from agent.protocols import kubernetes, postgres, ssh, tcp
from agent.secrets import SecretUnavailable, resolve
from shared.agentkey import AgentKey, split_address
from shared.backoff import Backoff
from shared.tasks import TaskOwner
from shared.tlsutil import PinMismatch, fetch_pinned_ca
from shared.tunnel.frames import (
    MEMBERS_CAPABILITY,
    SIGNAL_DONE_CAPABILITY,
    SILENT_PINGS,
    WINDOW_CAPABILITY,
    Goodbye,
    Hello,
    Members,
    OpenResult,
    OpenSession,
    Ping,
    Pong,
    ResetCode,
    Target,
    Welcome,
)
from shared.tunnel.rpc import (
    METADATA_AGENT,
    METADATA_SECRET,
    ClientControl,
    ProtocolViolation,
    TunnelClient,
    insecure_channel,
    secure_channel,
)
from shared.tunnel.stream import TunnelStream
from shared.version import __version__

log = logging.getLogger(__name__)

Serve = Callable[[TunnelStream, Target], Awaitable[None]]
PROTOCOLS: dict[str, Serve] = {
    "tcp": tcp.serve,
    "postgres": postgres.serve,
    "ssh": ssh.serve,
    "kubernetes": kubernetes.serve,
}
WELCOME_TIMEOUT = 15.0
# The longest wait between two attempts to reach one member (full jitter below it): a
# member restarted or added gets its agents back within this once it accepts connections.
RECONNECT_CAP = 5.0


class AgentFatal(Exception):
    """Retrying cannot help: the key was rejected, or another agent took over the key."""


class _ConnectionLost(Exception):
    pass


@dataclass
class AgentStatus:
    connected: asyncio.Event = field(default_factory=asyncio.Event)  # to any member
    connects: int = 0
    pool: str | None = None
    sessions: int = 0
    # Per dialled address: connected or not, the member reached, connects, last error.
    members: dict[str, MemberState] = field(default_factory=dict)


class Agent:
    def __init__(
        self,
        key: AgentKey,
        *,
        ca_pem: bytes | None = None,
        insecure: bool = False,
        protocols: dict[str, Serve] | None = None,
    ) -> None:
        if key.insecure and not insecure:
            raise AgentFatal("the key asks for plaintext; pass --insecure to allow it")
        self.key = key
        self.insecure = insecure
        self._ca_pem = ca_pem
        self.protocols = dict(protocols or PROTOCOLS)
        self.instance_id = secrets.token_hex(6)
        self.fleet = Fleet(key.address)
        self.status = AgentStatus(members=self.fleet.states)
        self._nonce = itertools.count(1)
        self._changed = asyncio.Event()  # replaced at each change: see _notify
        self._loops: asyncio.TaskGroup | None = None
        self._loop_tasks: set[asyncio.Task[None]] = set()
        self._stopping = False  # run() was cancelled: a loop's failure now is the stop's

    @property
    def target(self) -> str:
        return self.key.address

    async def _root_certificates(self, address: str) -> bytes | None:
        if self._ca_pem is None and self.key.ca_fingerprint:
            # Any member shows the fleet's chain: fetch it from the one being dialled.
            host, port = split_address(address)
            self._ca_pem = await asyncio.to_thread(
                fetch_pinned_ca, host, port, self.key.ca_fingerprint
            )
        return self._ca_pem

    def _notify(self) -> None:
        """Wake every loop waiting on the fleet's state."""
        self._changed.set()
        self._changed = asyncio.Event()
        if self.fleet.any_connected:
            self.status.connected.set()
        else:
            self.status.connected.clear()

    async def _wait_change(self, longest: float | None = None) -> None:
        """Until the fleet's state changes, or `longest` seconds."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(longest):
                await changed.wait()

    def _learn(self, members: tuple[str, ...]) -> None:
        usable = []
        for address in members:
            try:
                split_address(address)
            except ValueError as exc:
                log.warning("agent %s: ignoring member %r: %s", self.key.name, address[:80], exc)
            else:
                usable.append(address)
        changes = self.fleet.learn(usable)
        for address in sorted(changes.start):
            self._start_loop(address)
        if changes.retire:
            log.info("agent %s: members gone: %s", self.key.name, ", ".join(changes.retire))
        self._notify()

    def _start_loop(self, address: str) -> None:
        assert self._loops is not None
        self.fleet.started(address)
        task = self._loops.create_task(self._loop(address), name=f"agent/{self.key.name}/{address}")
        self._loop_tasks.add(task)
        task.add_done_callback(self._loop_tasks.discard)

    async def run(self) -> None:
        """Serve until cancelled or a fatal error; reconnects on every other failure."""
        try:
            async with asyncio.TaskGroup() as loops:
                self._loops = loops
                self._start_loop(self.fleet.seed)
                try:
                    # Here, not in the group's exit, so that a cancel is seen as a stop
                    # (`task.cancelling()` cannot tell: 3.11's TaskGroup leaves it raised).
                    while self._loop_tasks:
                        await asyncio.wait(set(self._loop_tasks))
                except asyncio.CancelledError:
                    self._stopping = True
                    raise
        except* AgentFatal as group:
            raise group.exceptions[0] from None
        finally:
            self._loops = None

    async def _loop(self, address: str) -> None:
        """One member's connection loop, with its own backoff; ends when the member leaves
        the list (after its connection ends)."""
        backoff = Backoff(cap=RECONNECT_CAP)
        while self.fleet.finish(address):
            if not self.fleet.may_dial(address):
                await self._wait_change()
                continue
            error = ""
            try:
                await self._connect_once(address, backoff)
            except AgentFatal:
                raise
            except (_ConnectionLost, grpc.RpcError, OSError, ProtocolViolation, PinMismatch) as exc:
                error = str(exc) or type(exc).__name__
                log.warning("agent %s: connection to %s lost: %s", self.key.name, address, error)
            except Exception as exc:  # an unexpected failure must not end the agent
                error = str(exc) or type(exc).__name__
                log.exception("agent %s: unexpected failure: %s", self.key.name, exc)
            finally:
                self.fleet.disconnected(address, error)
                self._notify()
            if self._stopping:
                # gRPC may report our own cancel (a stop) as a failed call: not a lost
                # gateway to dial again.
                raise asyncio.CancelledError
            delay = backoff.next_delay()
            log.info("agent %s: reconnecting to %s in %.2fs", self.key.name, address, delay)
            deadline = asyncio.get_running_loop().time() + delay
            # Sleep out the backoff, but stop at once when the member leaves the list.
            while self.fleet.wants(address):
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                await self._wait_change(left)
        log.info("agent %s: stopped dialling %s (no longer a member)", self.key.name, address)

    def _channel(self, address: str, roots: bytes | None) -> grpc.aio.Channel:
        host, _ = split_address(address)
        # A member dialled by its own address presents the fleet's certificate, issued for
        # the key's host name: verify it for that name (the CA stays pinned).
        name = self.key.host if host != self.key.host else None
        return secure_channel(address, roots, server_name=name)

    async def _connect_once(self, address: str, backoff: Backoff) -> None:
        if self.insecure and (self.key.insecure or not self.key.ca_fingerprint):
            channel = insecure_channel(address)
        else:
            channel = self._channel(address, await self._root_certificates(address))
        sessions = TaskOwner(f"agent/{self.key.name}/sessions")
        control: ClientControl | None = None
        try:
            client = TunnelClient(
                channel, [(METADATA_AGENT, self.key.name), (METADATA_SECRET, self.key.secret)]
            )
            control = client.open_control()
            try:
                await control.write(
                    Hello(
                        agent_name=self.key.name,
                        version=__version__,
                        # "masking": this agent applies Target.masking (an agent
                        # without it is never given a masked session); "window" and
                        # "signal-done": it keeps session windows and answers signals
                        # (OpenSession.window, .signal_acks).
                        capabilities=(
                            *sorted(self.protocols),
                            "masking",
                            WINDOW_CAPABILITY,
                            SIGNAL_DONE_CAPABILITY,
                            MEMBERS_CAPABILITY,
                        ),
                        instance_id=self.instance_id,
                    )
                )
                async with asyncio.timeout(WELCOME_TIMEOUT):
                    welcome = await control.read()
            except grpc.RpcError as exc:
                self._raise_if_fatal(exc)
                raise
            if not isinstance(welcome, Welcome):
                raise _ConnectionLost(f"expected Welcome, got {welcome!r}")
            self.status.pool = welcome.pool
            self.status.connects += 1
            self.fleet.connected(address, welcome.member)
            backoff.reset()
            log.info(
                "agent %s: connected to %s (member %s, pool %s, gateway %s)",
                self.key.name,
                address,
                welcome.member or "-",
                welcome.pool,
                welcome.gateway_version,
            )
            self._learn(welcome.members)
            interval = max(welcome.ping_interval_ms / 1000, 0.05)
            await self._serve(control, client, sessions, interval)
        finally:
            if control is not None:
                control.cancel()
            await sessions.aclose()
            await channel.close(None)

    @staticmethod
    def _raise_if_fatal(exc: grpc.RpcError) -> None:
        code = exc.code() if hasattr(exc, "code") else None
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise AgentFatal(f"agent key rejected by the gateway: {exc.details()}") from None
        if code is grpc.StatusCode.FAILED_PRECONDITION:
            raise AgentFatal(f"gateway refused this agent: {exc.details()}") from None

    async def _serve(
        self,
        control: ClientControl,
        client: TunnelClient,
        sessions: TaskOwner,
        interval: float,
    ) -> None:
        last_heard = time.monotonic()

        limit = SILENT_PINGS * interval

        async def pinger() -> None:
            # Woken at the ping or at the moment the gateway has been silent too long.
            next_ping = time.monotonic() + interval
            while True:
                now = time.monotonic()
                if now - last_heard >= limit:
                    raise _ConnectionLost(f"gateway silent for {limit:g}s")
                if now >= next_ping:
                    await control.write(Ping(next(self._nonce)))
                    next_ping = now + interval
                await asyncio.sleep(min(next_ping, last_heard + limit) - time.monotonic())

        async def reader() -> None:
            nonlocal last_heard
            while True:
                frame = await control.read()
                if frame is None:
                    raise _ConnectionLost("gateway closed the control stream")
                last_heard = time.monotonic()
                if isinstance(frame, OpenSession):
                    sessions.spawn(self._session(client, frame), name=frame.session_id)
                elif isinstance(frame, Ping):
                    await control.write(Pong(frame.nonce))
                elif isinstance(frame, Members):
                    self._learn(frame.addresses)
                elif isinstance(frame, Goodbye):
                    if frame.code is ResetCode.SUPERSEDED:
                        raise AgentFatal(
                            "another agent connected with this key; this one stops "
                            "(give each agent its own key)"
                        )
                    raise _ConnectionLost(f"gateway said goodbye: {frame.message}")

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(pinger(), name="pinger")
                tg.create_task(reader(), name="reader")
        except* AgentFatal as group:
            raise group.exceptions[0] from None
        except* grpc.RpcError as group:
            first = group.exceptions[0]
            assert isinstance(first, grpc.RpcError)
            self._raise_if_fatal(first)
            raise _ConnectionLost(str(first)) from None
        except* (_ConnectionLost, ProtocolViolation) as group:
            raise _ConnectionLost(str(group.exceptions[0])) from None

    async def _session(self, client: TunnelClient, order: OpenSession) -> None:
        stream = await client.open_session(order.session_id)
        stream.negotiate(order.window, order.signal_acks, order.data_reports)
        self.status.sessions += 1
        try:
            serve = self.protocols.get(order.target.type)
            if serve is None:
                await stream.send_open_result(
                    OpenResult(
                        False,
                        ResetCode.UNSUPPORTED,
                        f"this agent does not serve {order.target.type!r} connections",
                    )
                )
                return
            try:
                target = _with_resolved_secrets(order.target)
            except SecretUnavailable as exc:
                await stream.send_open_result(
                    OpenResult(False, ResetCode.SECRET_UNAVAILABLE, str(exc))
                )
                return
            await serve(stream, target)
        except asyncio.CancelledError:
            await stream.reset(ResetCode.AGENT_SHUTDOWN, "agent shutting down")
            raise
        finally:
            self.status.sessions -= 1
            await stream.aclose()


def _with_resolved_secrets(target: Target) -> Target:
    resolved: dict[str, str | bytes] = {
        name: resolve(name, source) for name, source in target.secrets.items()
    }
    return dataclasses.replace(target, secrets=resolved)

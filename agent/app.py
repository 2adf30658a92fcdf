"""The agent process: dial out, authenticate, serve sessions, reconnect on loss.

Lifecycle of one connection attempt:
    channel (TLS with the pinned CA, or plaintext when both sides allow it)
    -> Control call with the agent's name and secret in metadata
    -> Hello / Welcome
    -> serve: OpenSession orders spawn one owned task each; pings both ways
    -> on loss: close the channel (its sessions end with it), back off with jitter, retry
A rejected key or a Goodbye(SUPERSEDED) ends the agent with an error instead: retrying
would not help, and two processes sharing one key must not flap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from agent.protocols import kubernetes, postgres, ssh, tcp
from agent.secrets import SecretUnavailable, resolve
from shared.agentkey import AgentKey
from shared.backoff import Backoff
from shared.tasks import TaskOwner
from shared.tlsutil import fetch_pinned_ca
from shared.tunnel.frames import (
    SIGNAL_DONE_CAPABILITY,
    SILENT_PINGS,
    WINDOW_CAPABILITY,
    Goodbye,
    Hello,
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


class AgentFatal(Exception):
    """Retrying cannot help: the key was rejected, or another agent took over the key."""


class _ConnectionLost(Exception):
    pass


@dataclass
class AgentStatus:
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    connects: int = 0
    pool: str | None = None
    sessions: int = 0


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
        self.status = AgentStatus()
        self._backoff = Backoff()
        self._nonce = itertools.count(1)

    @property
    def target(self) -> str:
        host = f"[{self.key.host}]" if ":" in self.key.host else self.key.host
        return f"{host}:{self.key.port}"

    async def _root_certificates(self) -> bytes | None:
        if self._ca_pem is None and self.key.ca_fingerprint:
            self._ca_pem = await asyncio.to_thread(
                fetch_pinned_ca, self.key.host, self.key.port, self.key.ca_fingerprint
            )
        return self._ca_pem

    async def run(self) -> None:
        """Serve until cancelled or a fatal error; reconnects on every other failure."""
        while True:
            try:
                await self._connect_once()
            except AgentFatal:
                raise
            except (_ConnectionLost, grpc.RpcError, OSError, ProtocolViolation) as exc:
                log.warning("agent %s: connection to %s lost: %s", self.key.name, self.target, exc)
            except Exception as exc:  # an unexpected failure must not end the agent
                log.exception("agent %s: unexpected failure: %s", self.key.name, exc)
            self.status.connected.clear()
            delay = self._backoff.next_delay()
            log.info("agent %s: reconnecting in %.2fs", self.key.name, delay)
            await asyncio.sleep(delay)

    async def _connect_once(self) -> None:
        if self.insecure and (self.key.insecure or not self.key.ca_fingerprint):
            channel = insecure_channel(self.target)
        else:
            channel = secure_channel(self.target, await self._root_certificates())
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
            self.status.connected.set()
            self._backoff.reset()
            log.info(
                "agent %s: connected to %s (pool %s, gateway %s)",
                self.key.name,
                self.target,
                welcome.pool,
                welcome.gateway_version,
            )
            interval = max(welcome.ping_interval_ms / 1000, 0.05)
            await self._serve(control, client, sessions, interval)
        finally:
            self.status.connected.clear()
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
        stream.negotiate(order.window, order.signal_acks)
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

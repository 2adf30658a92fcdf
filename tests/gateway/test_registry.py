"""The registry orders the session features an agent announces, and only those."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.agents.registry import AgentConn, AgentRegistry
from shared.tunnel.codec import encode_session_bytes
from shared.tunnel.frames import (
    SESSION_WINDOW,
    SIGNAL_DONE_CAPABILITY,
    WINDOW_CAPABILITY,
    OpenResult,
    OpenSession,
    Target,
)
from shared.tunnel.session import Role
from shared.tunnel.stream import TunnelStream


class Wire:
    """A wire whose reads are the frames queued by the test."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def read(self) -> bytes | None:
        return await self.inbox.get()

    async def write(self, message: bytes) -> None:
        return None

    async def finish(self) -> None:
        return None


async def open_with(
    capabilities: set[str], kind: str, window: int = SESSION_WINDOW
) -> tuple[OpenSession, TunnelStream]:
    """Open a session of type `kind` on an agent announcing `capabilities`: the order it was
    sent and the stream as the gateway then drives it."""
    registry = AgentRegistry(ping_interval=10, open_timeout=5, session_window=window)
    agent = AgentConn("a", "default", b"", "i", "v", frozenset({kind, *capabilities}), "peer")
    registry.register(agent)
    wire = Wire()
    stream = TunnelStream("s1", Role.GATEWAY, wire)
    await wire.inbox.put(encode_session_bytes(OpenResult(True)))
    async with asyncio.TaskGroup() as tg:
        opening = tg.create_task(registry.open("s1", Target("c", kind, "h", 1), "default"))
        order: Any = await agent.outbox.get()
        assert registry.claim("a", "s1", stream)
    opened, _ = opening.result()
    assert opened is stream
    return order, stream


@pytest.mark.parametrize("kind", ["postgres", "tcp"])
async def test_an_agent_with_the_features_gets_a_window_and_signal_answers(kind: str) -> None:
    order, stream = await open_with({WINDOW_CAPABILITY, SIGNAL_DONE_CAPABILITY}, kind)
    assert (order.window, order.signal_acks) == (SESSION_WINDOW, True)
    assert (stream.state.window, stream.state.signal_acks) == (SESSION_WINDOW, True)


async def test_an_older_agent_keeps_grpc_flow_control_and_takes_no_answers() -> None:
    order, stream = await open_with(set(), "postgres")
    assert (order.window, order.signal_acks) == (0, False)
    assert (stream.state.window, stream.state.signal_acks) == (0, False)


async def test_ssh_and_kubernetes_sessions_keep_grpc_flow_control() -> None:
    order, _ = await open_with({WINDOW_CAPABILITY, SIGNAL_DONE_CAPABILITY}, "ssh")
    assert (order.window, order.signal_acks) == (0, True)


async def test_the_window_is_the_gateways_setting_and_zero_turns_it_off() -> None:
    features = {WINDOW_CAPABILITY, SIGNAL_DONE_CAPABILITY}
    order, stream = await open_with(features, "postgres", window=4 * 1024 * 1024)
    assert order.window == stream.state.window == 4 * 1024 * 1024
    order, stream = await open_with(features, "postgres", window=0)
    assert order.window == stream.state.window == 0

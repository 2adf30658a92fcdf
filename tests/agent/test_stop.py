"""An agent asked to stop stops, even when its gateway connection turns the cancellation
into a connection error (gRPC reports a cancelled call as an RpcError, and the loop takes
that for a lost gateway to dial again)."""

from __future__ import annotations

import asyncio

import pytest

from agent.app import Agent
from shared.agentkey import AgentKey, new_secret
from shared.backoff import Backoff
from shared.tasks import TaskOwner


async def test_a_cancelled_agent_stops_when_its_connection_fails_on_the_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent = Agent(AgentKey("a", new_secret(), "127.0.0.1", 1, None, True), insecure=True)
    dialled = asyncio.Event()
    swallow = [True]  # off at the end: a failing test must not leave the agent running

    async def connect_once(address: str, backoff: Backoff) -> None:
        dialled.set()
        try:
            await asyncio.Event().wait()  # connected, until cancelled
        except asyncio.CancelledError:
            if not swallow[0]:
                raise
            raise OSError("stream cancelled") from None  # what a gRPC read may do instead

    monkeypatch.setattr(agent, "_connect_once", connect_once)
    running = TaskOwner("test").spawn(agent.run(), name="agent")
    async with asyncio.timeout(5):
        await dialled.wait()
    running.cancel()
    try:
        # Not `await running` under a timeout: its cancel would be swallowed the same way.
        done, _ = await asyncio.wait({running}, timeout=5)
        assert done == {running}, "the agent went on dialling after it was cancelled"
        assert running.cancelled()
    finally:
        swallow[0] = False
        running.cancel()
        await asyncio.wait({running}, timeout=5)

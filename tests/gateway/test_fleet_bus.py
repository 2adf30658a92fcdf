"""The fleet bus over a real PostgreSQL: messages reach every member, the listener survives
losing its connection, and a failing handler costs only its own message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from gateway.fleet.bus import MAX_PAYLOAD, Bus, conninfo
from shared.tasks import TaskOwner
from tests.fixtures.postgres import PostgresServer

DEADLINE = 30.0


@pytest.fixture
async def tasks() -> AsyncIterator[TaskOwner]:
    owner = TaskOwner("test")
    yield owner
    await owner.aclose()


def inbox(bus: Bus, channel: str) -> asyncio.Queue[str]:
    received: asyncio.Queue[str] = asyncio.Queue()

    async def handler(payload: str) -> None:
        received.put_nowait(payload)

    bus.subscribe(channel, handler)
    return received


async def started(bus: Bus, tasks: TaskOwner) -> Bus:
    tasks.spawn(bus.run(), name="bus")
    async with asyncio.timeout(DEADLINE):
        await bus.wait_listening()
    return bus


def dsn(db: PostgresServer) -> str:
    return conninfo(sa.make_url(db.url()))


async def test_a_message_reaches_every_member_listening(
    postgres_db: PostgresServer, tasks: TaskOwner
) -> None:
    first, second = Bus(dsn(postgres_db)), Bus(dsn(postgres_db))
    mine, theirs = inbox(first, "news"), inbox(second, "news")
    await started(first, tasks)
    await started(second, tasks)
    await first.publish("news", "hello")
    async with asyncio.timeout(DEADLINE):
        assert await theirs.get() == "hello"
        assert await mine.get() == "hello"  # the sender listens too
    await first.aclose()
    await second.aclose()


async def test_the_listener_comes_back_after_its_connection_is_killed(
    postgres_db: PostgresServer, tasks: TaskOwner
) -> None:
    bus = Bus(dsn(postgres_db))
    received = inbox(bus, "news")
    await started(bus, tasks)
    with postgres_db.connect() as admin:
        killed = admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = current_database() and query like 'listen%'"
        ).fetchall()
    assert killed == [(True,)]
    async with asyncio.timeout(DEADLINE):
        while True:  # a message sent while the listener is down is lost: send until heard
            await bus.publish("news", "again")
            try:
                async with asyncio.timeout(0.5):
                    assert await received.get() == "again"
                break
            except TimeoutError:
                continue
    await bus.aclose()


async def test_a_failing_handler_costs_only_its_message(
    postgres_db: PostgresServer, tasks: TaskOwner
) -> None:
    bus = Bus(dsn(postgres_db))
    received: asyncio.Queue[str] = asyncio.Queue()

    async def handler(payload: str) -> None:
        if payload == "bad":
            raise RuntimeError("a handler's bug")
        received.put_nowait(payload)

    bus.subscribe("news", handler)
    await started(bus, tasks)
    await bus.publish("news", "bad")
    await bus.publish("news", "good")
    async with asyncio.timeout(DEADLINE):
        assert await received.get() == "good"
    await bus.aclose()


async def test_a_message_too_long_for_notify_is_refused_before_sending() -> None:
    bus = Bus("postgresql://nobody@127.0.0.1:1/none")  # never reached
    with pytest.raises(ValueError, match="at most"):
        await bus.publish("news", "x" * (MAX_PAYLOAD + 1))

"""The store's async face (gateway/store/writer.py): one writer thread, in order, never undone."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.store.writer import AsyncFace, Writer


async def test_writes_run_on_one_thread_in_submission_order() -> None:
    writer = Writer()
    seen: list[tuple[int, str]] = []

    def job(n: int) -> int:
        seen.append((n, threading.current_thread().name))
        return n * 2

    try:
        results = await asyncio.gather(*(writer.run(job, n) for n in range(50)))
    finally:
        writer.close()
    assert results == [n * 2 for n in range(50)]
    assert [n for n, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"store-writer"}


async def test_a_failed_write_raises_in_its_caller_and_the_writer_goes_on() -> None:
    writer = Writer()

    def fail() -> None:
        raise ValueError("refused")

    try:
        with pytest.raises(ValueError, match="refused"):
            await writer.run(fail)
        assert await writer.run(lambda: "next") == "next"
    finally:
        writer.close()


async def test_a_write_whose_caller_stops_waiting_still_lands() -> None:
    writer = Writer()
    release = threading.Event()
    landed: list[str] = []
    try:
        async with asyncio.TaskGroup() as tg:
            busy = tg.create_task(writer.run(release.wait))  # holds the writer thread
            caller = tg.create_task(writer.run(landed.append, "end of session"))
            await asyncio.sleep(0)  # one loop turn, no timed wait: both tasks have submitted
            caller.cancel()  # cancels its future at once; the job, queued behind `busy`, stays
            release.set()
            await busy
        await writer.run(lambda: None)  # everything submitted before it has run
    finally:
        release.set()
        writer.close()
    assert caller.cancelled()
    assert landed == ["end of session"]


async def test_close_runs_what_is_queued_and_refuses_more() -> None:
    writer = Writer()
    done: list[int] = []
    await writer.run(done.append, 1)
    writer.close()
    assert done == [1]
    with pytest.raises(RuntimeError, match="closed"):
        await writer.run(done.append, 2)


async def test_reads_run_inline_on_sqlite_and_in_a_thread_on_postgresql() -> None:
    writer = Writer()
    here = threading.current_thread()
    try:
        sqlite = AsyncFace("sqlite", writer)
        postgres = AsyncFace("postgresql", writer)
        assert await sqlite.read(threading.current_thread) is here
        assert await postgres.read(threading.current_thread) is not here
        assert await sqlite.scan(threading.current_thread) is not here
        assert (await sqlite.write(threading.current_thread)).name == "store-writer"
    finally:
        writer.close()

"""The review webhook against a real local HTTP server: signed, retried, never blocking."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.reviews.webhook import EVENT_HEADER, SIGNATURE_HEADER, Webhook, verify
from tests.fixtures.wardgate import free_port

SECRET = "hook-secret-for-tests"


class Receiver:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        self.delivered = threading.Event()  # set at the first 2xx answer


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    sink = Receiver(failures=2)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with sink.lock:
                status = 500 if len(sink.received) < sink.failures else 204
                sink.received.append((dict(self.headers.items()), body, status))
            if status < 300:
                sink.delivered.set()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_failed_deliveries_are_retried_and_every_attempt_is_signed(
    receiver: tuple[Receiver, str],
) -> None:
    sink, url = receiver
    failed: list[tuple[str, str]] = []

    async def on_failure(event: str, error: str) -> None:
        failed.append((event, error))

    hook = Webhook(url, SECRET, attempts=4, on_failure=on_failure)
    try:
        hook.send("review.created", {"review": {"id": "rv_1"}})  # returns at once
        assert await asyncio.to_thread(sink.delivered.wait, 30)
    finally:
        await hook.aclose()
    assert [status for *_, status in sink.received] == [500, 500, 204]
    for headers, body, _ in sink.received:
        assert headers[EVENT_HEADER] == "review.created"
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert json.loads(body) == {"event": "review.created", "review": {"id": "rv_1"}}
    assert failed == []


async def test_an_unreachable_receiver_is_reported_after_the_last_attempt() -> None:
    failed: list[tuple[str, str]] = []
    reported = asyncio.Event()

    async def on_failure(event: str, error: str) -> None:
        failed.append((event, error))
        reported.set()

    hook = Webhook(
        f"http://127.0.0.1:{free_port()}/hook", SECRET, attempts=2, on_failure=on_failure
    )
    try:
        hook.send("review.decided", {"review": {"id": "rv_2"}})
        async with asyncio.timeout(30):
            await reported.wait()
    finally:
        await hook.aclose()
    assert failed[0][0] == "review.decided" and "Connect" in failed[0][1]

"""Thread helpers for the SSH relay, used by both halves (gateway and agent).

paramiko blocks, so each side runs it in threads; these are the two pieces both need:

- `Credit`: a `SendWindow` a reader thread waits on before sending a channel's data, and
  the event loop refills when the peer's WindowAdjust arrives.
- `Worker`: one thread per channel that carries out that channel's frames in order
  (writes, requests, EOF, close), so the event loop only queues and never waits on a slow
  channel.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from shared.sshwire.window import SendWindow

log = logging.getLogger(__name__)

_STOP = object()


class Credit:
    def __init__(self) -> None:
        self._window = SendWindow()
        self._cv = threading.Condition()
        self._closed = False

    def take(self, n: int) -> bool:
        """Wait until `n` bytes may be sent and count them; False once closed."""
        with self._cv:
            self._cv.wait_for(lambda: self._closed or self._window.can_send(n))
            if self._closed:
                return False
            self._window.consume(n)
            return True

    def grant(self, increment: int) -> None:
        with self._cv:
            self._window.adjust(increment)
            self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class Worker:
    """A named thread running `handle(item)` for each queued item, in order."""

    def __init__(self, name: str, handle: Callable[[Any], bool | None]) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handle = handle
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def stop(self) -> None:
        self._queue.put(_STOP)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                if self._handle(item):  # True: this channel is done
                    return
            except Exception:
                log.exception("%s: failed on %s", self._thread.name, type(item).__name__)

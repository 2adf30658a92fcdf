"""A slowloris against the public port, and what it costs a new client
(`python -m bench.slowloris [--connections N] [--addresses A]`).

`Slowloris` opens N connections spread over A loopback source addresses (127.0.0.2...), each
sending, in turn, three bytes that do not yet name a protocol, or the start of an SSH banner,
a TLS ClientHello or a PostgreSQL startup packet followed by one byte per interval, never
finishing; a thread keeps them
trickling and notes which the gateway closed. tests/e2e/test_slowloris.py drives it too.

The benchmark starts PostgreSQL, gateway and agent (bench/wardgate.py, the gateway's default
limits), times a new psycopg client's connect + `SELECT 1` through the gateway with no
slowloris, then with N trickling connections, and prints both with the gateway's counts of
admitted, refused and expired connections. Nothing here is asserted; it is for before/after
comparisons on one machine (run it with PYTHONPATH set to an export of another commit).
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import socket
import ssl
import statistics
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import psycopg

# The start of a first packet, and what is trickled after it: too few bytes to name a protocol
# (and nothing more), then SSH, TLS and PostgreSQL first packets far from complete.
STARTS: dict[str, tuple[bytes, bytes]] = {
    "partial": (b"\x00\x00\x00", b""),  # a PostgreSQL packet's length, half of it
    "ssh": (b"SSH-2.0-", b"x"),  # a banner line that never ends
    "tls": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\x00"),  # a 512-byte ClientHello
    "postgres": (struct.pack("!II", 4096, 196608) + b"user\x00", b"a"),  # a 4 KB startup packet
}


class Slowloris:
    """`count` trickling connections to 127.0.0.1:`port`; `start()`, then `stop()`."""

    def __init__(
        self,
        port: int,
        count: int,
        *,
        sources: Sequence[str] = ("127.0.0.2",),
        kinds: Sequence[str] = tuple(STARTS),
        interval: float = 0.5,
    ) -> None:
        self.port = port
        self.count = count
        self.sources = sources
        self.kinds = kinds
        self.interval = interval
        self.kind_of: dict[socket.socket, str] = {}
        self.closed: dict[str, int] = dict.fromkeys(kinds, 0)  # by kind: closed by the gateway
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def start(self) -> Slowloris:
        for n in range(self.count):
            kind = self.kinds[n % len(self.kinds)]
            sock = socket.socket()
            sock.bind((self.sources[n % len(self.sources)], 0))
            sock.connect(("127.0.0.1", self.port))
            sock.setblocking(False)
            with contextlib.suppress(OSError):  # refused at once: seen by the thread
                sock.send(STARTS[kind][0])
            self.kind_of[sock] = kind
            self._open.add(sock)
        self._thread.start()
        return self

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._open)

    def _gone(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._open:
                self._open.discard(sock)
                self.closed[self.kind_of[sock]] += 1
        sock.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in list(self._open):
                selector.register(sock, selectors.EVENT_READ, sock)
            next_byte = time.monotonic() + self.interval
            while not self._stop.is_set() and self._open:
                for key, _ in selector.select(max(0.0, next_byte - time.monotonic())):
                    sock = key.data
                    try:
                        gone = not sock.recv(4096)  # the gateway's answer, or its close
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        selector.unregister(sock)
                        self._gone(sock)
                if time.monotonic() >= next_byte:
                    next_byte += self.interval
                    for sock in list(self._open):
                        try:
                            sock.send(STARTS[self.kind_of[sock]][1])
                        except BlockingIOError:
                            pass
                        except OSError:
                            selector.unregister(sock)
                            self._gone(sock)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        with self._lock:
            for sock in self._open:
                sock.close()
            self._open.clear()


@contextlib.contextmanager
def slowloris(port: int, count: int, **options: object) -> Iterator[Slowloris]:
    loris = Slowloris(port, count, **options)  # type: ignore[arg-type]
    try:
        yield loris.start()
    finally:
        loris.stop()


def connect_time(conninfo: str) -> float:
    """Seconds for a new client to connect, authenticate and run `SELECT 1`."""
    started = time.perf_counter()
    with psycopg.connect(conninfo, connect_timeout=60) as conn:
        conn.execute("SELECT 1")
    return time.perf_counter() - started


def frontdoor_metrics(port: int, ca_path: Path, token: str) -> dict[str, float]:
    """The gateway's `wardgate_frontdoor_*` samples (none from a gateway without them)."""
    answer = httpx.get(
        f"https://127.0.0.1:{port}/v1/metrics",
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(ca_path)),
        timeout=60,
    )
    if answer.status_code != 200:
        return {}
    samples = {}
    for line in answer.text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("wardgate_frontdoor_"):
            samples[name.removeprefix("wardgate_frontdoor_")] = float(value)
    return samples


def main(argv: list[str] | None = None) -> int:
    from psycopg.conninfo import make_conninfo

    from bench.postgres import postgres, scratch
    from bench.procs import BenchError
    from bench.wardgate import CONNECTION, USER, wardgate

    parser = argparse.ArgumentParser(prog="python -m bench.slowloris", description=__doc__)
    parser.add_argument("--connections", type=int, default=2000, help="trickling connections")
    parser.add_argument("--addresses", type=int, default=32, help="source addresses they use")
    parser.add_argument("--samples", type=int, default=10, help="connects timed per case")
    parser.add_argument(
        "--kinds", default=",".join(STARTS), help=f"what they send, of {', '.join(STARTS)}"
    )
    args = parser.parse_args(argv)
    sources = [f"127.0.0.{2 + n}" for n in range(args.addresses)]
    with scratch("wardgate-slowloris-") as root:
        try:
            with (
                postgres(root / "pg", max_connections=50, scale=1) as pg,
                wardgate(root / "wg", pg) as stack,
            ):
                conninfo = make_conninfo(
                    host="127.0.0.1",
                    port=stack.public_port,
                    user=USER,
                    password=stack.token,
                    dbname=CONNECTION,
                    sslmode="verify-full",
                    sslrootcert=str(stack.ca_path),
                )
                connect_time(conninfo)  # warm: the first session's agent path
                quiet = [connect_time(conninfo) for _ in range(args.samples)]
                kinds = args.kinds.split(",")
                with slowloris(
                    stack.public_port, args.connections, sources=sources, kinds=kinds
                ) as loris:
                    trickling = [connect_time(conninfo) for _ in range(args.samples)]
                    still_open = loris.open
                    counts = frontdoor_metrics(stack.public_port, stack.ca_path, stack.token)
                print(f"connect + SELECT 1 through the gateway, median of {args.samples}:")
                print(f"  no slowloris:               {statistics.median(quiet) * 1000:8.1f} ms")
                print(
                    f"  {args.connections} trickling connections ({args.kinds}): "
                    f"{statistics.median(trickling) * 1000:8.1f} ms "
                    f"(max {max(trickling) * 1000:.1f} ms; {still_open} still open, "
                    f"closed by the gateway meanwhile: {loris.closed})"
                )
                for name, value in counts.items():
                    print(f"  gateway: {name} {value:g}")
        except BenchError as exc:
            print(f"bench.slowloris: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Faults end to end: bad keys, impostors, junk on the public port, hostile and dying peers.

Every test runs the real processes (gateway, agents, `wardgate tcp`) and asserts what each
party sees: the exit code and message of a refused agent, the reason `wardgate tcp` prints,
the audit events, the session records, and that the gateway keeps serving everyone else.
The two tests that must misbehave on purpose (a session stream for a session nobody ordered,
a frame larger than the gRPC limit) drive the tunnel protocol by hand from the test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import socket
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from grpc import aio

from shared.agentkey import AgentKey, new_secret
from shared.agentkey import parse as parse_key
from shared.pb import tunnel_pb2_grpc as pb_grpc
from shared.tasks import TaskOwner
from shared.tunnel.codec import decode_session, encode_session
from shared.tunnel.frames import (
    MAX_GRPC_MESSAGE,
    MAX_PAYLOAD,
    Data,
    Hello,
    OpenResult,
    OpenSession,
    Ping,
    Pong,
    Reset,
    ResetCode,
    SessionFrame,
    SessionHello,
    Welcome,
)
from shared.tunnel.rpc import (
    CHANNEL_OPTIONS,
    METADATA_AGENT,
    METADATA_SECRET,
    TunnelClient,
    secure_channel,
)
from shared.tunnel.stream import SessionReset
from tests.fixtures.servers import PATTERN
from tests.fixtures.wardgate import (
    ADMIN_TOKEN,
    GatewayProc,
    Proc,
    Wardgate,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.e2e

# ---- helpers ---------------------------------------------------------------------------


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


def roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        return read_until_closed(c)


def echo_once(sock: socket.socket, payload: bytes) -> bytes:
    """Send `payload` on an open echo session and read exactly as many bytes back."""
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = sock.recv(65536)
        assert data, f"session closed after {len(got)} of {len(payload)} echoed bytes"
        got += data
    return got


def wait_exit(proc: Proc, what: str) -> int:
    wait_for(lambda: not proc.alive(), what)
    assert proc.proc is not None
    return proc.proc.returncode


def holds(condition: Callable[[], bool], what: str, duration: float) -> None:
    """Observe `condition` for `duration` seconds: it must stay true the whole time."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert condition(), f"no longer true: {what}"
        time.sleep(0.1)


def cli_errors(proc: Proc, name: str) -> list[str]:
    """The reasons `wardgate tcp NAME` printed for failed connections."""
    prefix = f"wardgate tcp: {name}: "
    return [
        line.removeprefix(prefix)
        for line in proc.log(tail=1000).splitlines()
        if line.startswith(prefix)
    ]


def wait_cli_errors(proc: Proc, name: str, count: int = 1) -> list[str]:
    def printed() -> list[str] | None:
        errors = cli_errors(proc, name)
        return errors if len(errors) == count else None

    errors: list[str] = wait_for(printed, f"wardgate tcp to print {count} reason(s)")
    return errors


def sessions(gw: GatewayProc, connection: str) -> list[dict[str, Any]]:
    with gw.api() as api:
        r = api.get("/v1/sessions", params={"connection": connection})
        r.raise_for_status()
        return list(r.json())


def ended_sessions(gw: GatewayProc, connection: str, count: int) -> list[dict[str, Any]]:
    def ended() -> list[dict[str, Any]] | None:
        rows = sessions(gw, connection)
        return rows if len(rows) == count and all(r["ended_at"] for r in rows) else None

    rows: list[dict[str, Any]] = wait_for(ended, f"{count} ended sessions of {connection}")
    return rows


def with_identity(key: str, *, name: str | None = None, secret: str | None = None) -> AgentKey:
    parsed = parse_key(key)
    return dataclasses.replace(parsed, name=name or parsed.name, secret=secret or parsed.secret)


def assert_secrets_absent(gw: GatewayProc, *secrets: str) -> None:
    audit = json.dumps(gw.audit())
    log = gw.log_path.read_text(errors="replace")
    for secret in secrets:
        assert secret not in audit, "an agent secret reached the audit log"
        assert secret not in log, "an agent secret reached the gateway log"


def assert_serving(gw: GatewayProc, port: int) -> None:
    """The gateway answers its health check and carries a session end to end."""
    assert gw.healthy()
    payload = os.urandom(100_000)
    assert roundtrip(port, payload) == payload


def assert_no_tracebacks(*procs: Proc) -> None:
    """Faults are handled, not crashed through: no process logged an unhandled exception."""
    for proc in procs:
        log = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
        assert "Traceback" not in log, f"{proc.args[3:5]} logged a traceback:\n{log[-3000:]}"


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def queued(sock: socket.socket) -> int:
    """Bytes waiting in the kernel for `sock` to read: watched without reading them."""
    (n,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))
    return int(n)


@pytest.fixture
def echo_port(wardgate: Wardgate, tmp_path: Path) -> int:
    """An echo target in its own process (stopped with the test's other processes)."""
    port = free_port()
    server_proc(wardgate, tmp_path, "echo", str(port))
    return port


def server_proc(wardgate: Wardgate, tmp: Path, *args: str) -> Proc:
    """Start a tests.fixtures.servers target; it stops with the test's other processes."""
    mode = args[0]
    proc = Proc(
        [sys.executable, "-m", "tests.fixtures.servers", *args],
        tmp / f"{mode}-server.log",
        dict(os.environ),
    )
    wardgate.procs.append(proc)
    proc.start()
    wait_for(lambda: "ready" in proc.log() or not proc.alive(), f"the {mode} server")
    assert proc.alive(), proc.log()
    return proc


# ---- 1, 2: agent identity ----------------------------------------------------------------


def test_wrong_and_revoked_agent_keys_are_rejected_and_audited_without_the_secret(
    wardgate: Wardgate, echo_port: int
) -> None:
    gw = wardgate.gateway()
    good = gw.create_agent("edge", pool="default")
    wrong = with_identity(good, secret=new_secret())
    revoked = gw.create_agent("retired", pool="default")
    with gw.api() as api:
        api.delete("/v1/agents/retired").raise_for_status()

    for key in (wrong.format(), revoked):
        proc = wardgate.agent(gw, key)
        assert wait_exit(proc, "the refused agent to exit") == 2, proc.log()
        assert "agent key rejected" in proc.log()
        assert parse_key(key).secret not in proc.log()

    rejected = gw.audit("agent.rejected")
    assert [(e["actor"], e["data"]["reason"]) for e in rejected] == [
        ("edge", "wrong secret"),
        ("retired", "revoked agent"),
    ]
    assert_secrets_absent(gw, wrong.secret, parse_key(revoked).secret, parse_key(good).secret)

    # The refusals cost the gateway nothing: the rightful agent connects and serves.
    assert gw.healthy()
    agent = wardgate.agent(gw, good, wait="edge")
    gw.create_connection(name="echo", host="127.0.0.1", port=echo_port)
    _, port = wardgate.tcp(gw, "echo")
    assert_serving(gw, port)
    assert not gw.agents()["retired"]["connected"]
    assert_no_tracebacks(gw, agent)


def test_agent_and_user_credentials_never_stand_for_each_other(
    wardgate: Wardgate, echo_port: int
) -> None:
    gw = wardgate.gateway()
    key = gw.create_agent("edge", pool="default")
    agent_secret = parse_key(key).secret
    # An agent's key is no client credential, whole or its secret alone.
    for presented in (agent_secret, key):
        with gw.api(token=presented) as api:
            assert api.get("/v1/whoami").status_code == 401
            assert api.get("/v1/connections").status_code == 401
    # A user's credential is no agent secret, not even an administrator's.
    impostor = wardgate.agent(gw, with_identity(key, secret=ADMIN_TOKEN).format())
    assert wait_exit(impostor, "the agent with a user's token to exit") == 2
    assert "agent key rejected" in impostor.log()
    assert [e["data"]["reason"] for e in gw.audit("agent.rejected")] == ["wrong secret"]
    assert_secrets_absent(gw, agent_secret)
    assert ADMIN_TOKEN not in json.dumps(gw.audit())
    # configured (WARDGATE_ADMIN_TOKEN), so never printed (issue 15: only a minted one is)
    assert ADMIN_TOKEN not in gw.log_path.read_text()
    # Each still works where it belongs.
    agent = wardgate.agent(gw, key, wait="edge")
    gw.create_connection(name="echo", host="127.0.0.1", port=echo_port)
    _, port = wardgate.tcp(gw, "echo")
    assert_serving(gw, port)
    assert_no_tracebacks(gw, agent)


def test_impostor_name_is_rejected_and_a_shared_key_keeps_only_the_newest_process(
    wardgate: Wardgate,
) -> None:
    gw = wardgate.gateway()
    alpha = gw.create_agent("alpha")
    beta = gw.create_agent("beta")

    # beta's (valid) secret under alpha's name proves nothing about alpha.
    impostor = wardgate.agent(gw, with_identity(beta, name="alpha").format())
    assert wait_exit(impostor, "the impostor to exit") == 2, impostor.log()
    assert "agent key rejected" in impostor.log()
    [event] = gw.audit("agent.rejected")
    assert (event["actor"], event["data"]["reason"]) == ("alpha", "wrong secret")
    assert not gw.agents()["alpha"]["connected"]

    first = wardgate.agent(gw, alpha, wait="alpha")
    first_peer = gw.agents()["alpha"]["peer"]
    second = wardgate.agent(gw, alpha)
    assert wait_exit(first, "the superseded agent to exit") == 2, first.log()
    assert "another agent connected with this key" in first.log()
    wait_for(
        lambda: gw.agents()["alpha"]["connected"] and gw.agents()["alpha"]["peer"] != first_peer,
        "the second process to hold the key",
    )
    second_peer = gw.agents()["alpha"]["peer"]

    # No flapping: over three ping intervals the second process stays, alone.
    holds(
        lambda: second.alive() and gw.agents()["alpha"]["peer"] == second_peer,
        "the second agent process stays connected",
        duration=3.0,
    )
    connected = [e for e in gw.audit("agent.connected") if e["actor"] == "alpha"]
    assert len(connected) == 2
    assert connected[1]["data"]["superseded"] == connected[0]["data"]["instance"]
    assert_secrets_absent(gw, parse_key(alpha).secret, parse_key(beta).secret)
    assert gw.healthy()


# ---- 3: the public port ------------------------------------------------------------------


def test_unknown_protocols_on_the_public_port_are_refused_and_audited(
    wardgate: Wardgate,
) -> None:
    gw = wardgate.gateway()
    garbage = b"\x7fWHAT\x00\x01 is this?\r\n"
    with socket.create_connection(("127.0.0.1", gw.public_port), timeout=15) as s:
        s.sendall(garbage)
        assert read_until_closed(s) == b""  # an orderly close, not a reset

    request = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.public_port), timeout=15) as s:
        s.sendall(request)
        answer = read_until_closed(s)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"HTTPS only" in body

    refused = gw.audit("frontdoor.refused")
    assert [(e["data"]["protocol"], e["data"]["first_bytes"]) for e in refused] == [
        ("unknown", garbage[:8].hex()),
        ("http-plain", request[:8].hex()),
    ]
    assert refused[0]["data"]["reason"] == "unknown protocol"
    assert gw.healthy()


# ---- 4, 5: a hand-driven agent -----------------------------------------------------------


def _channel(gw: GatewayProc, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS) -> Any:
    creds = grpc.ssl_channel_credentials(root_certificates=gw.ca_path.read_bytes())
    return aio.secure_channel(f"127.0.0.1:{gw.agent_port}", creds, options=list(options))


async def test_session_stream_for_an_unknown_session_is_reset_and_audited(
    wardgate: Wardgate,
) -> None:
    gw = wardgate.gateway()
    key = parse_key(gw.create_agent("edge"))
    agent = wardgate.agent(gw, key.format(), wait="edge")

    offers = [
        ("edge", key.secret, True),  # the real agent's identity, but nobody ordered this session
        ("edge", new_secret(), False),
        ("nobody", new_secret(), False),
    ]
    channel = secure_channel(f"127.0.0.1:{gw.agent_port}", gw.ca_path.read_bytes())
    try:
        for name, secret, _ in offers:
            client = TunnelClient(channel, [(METADATA_AGENT, name), (METADATA_SECRET, secret)])
            stream = await client.open_session("made-up-session-id")
            try:
                async with asyncio.timeout(15):
                    event = await stream.receive()
            finally:
                await stream.aclose()
            assert isinstance(event, SessionReset), event
            assert event.code is ResetCode.UNKNOWN_SESSION
            assert event.by_peer
    finally:
        await channel.close()

    events = await asyncio.to_thread(gw.audit, "tunnel.unknown_session")
    assert [(e["actor"], e["data"]["authenticated"]) for e in events] == [
        (name, authenticated) for name, _, authenticated in offers
    ]
    await asyncio.to_thread(assert_secrets_absent, gw, *(s for _, s, _ in offers))
    assert await asyncio.to_thread(gw.healthy)
    assert agent.alive()
    assert (await asyncio.to_thread(gw.agents))["edge"]["connected"]


class RawAgent:
    """An agent driven frame by frame from the test, with none of the real one's guard rails."""

    def __init__(self, channel: Any, key: AgentKey) -> None:
        self.key = key
        self.metadata = ((METADATA_AGENT, key.name), (METADATA_SECRET, key.secret))
        self.stub = pb_grpc.AgentTunnelStub(channel)
        self.client = TunnelClient(channel, self.metadata)
        self.orders: asyncio.Queue[OpenSession] = asyncio.Queue()

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[RawAgent]:
        control = self.client.open_control()
        tasks = TaskOwner("raw-agent")
        try:
            await control.write(Hello(self.key.name, "raw-test", capabilities=("tcp",)))
            async with asyncio.timeout(15):
                welcome = await control.read()
            assert isinstance(welcome, Welcome), welcome
            # Answering the gateway's pings is what keeps this agent healthy.
            tasks.spawn(self._read_control(control), name="control")
            yield self
        finally:
            await tasks.aclose()
            control.cancel()

    async def _read_control(self, control: Any) -> None:
        while (frame := await control.read()) is not None:
            if isinstance(frame, Ping):
                await control.write(Pong(frame.nonce))
            elif isinstance(frame, OpenSession):
                self.orders.put_nowait(frame)

    async def accept(self) -> tuple[Any, str]:
        """Take the next OpenSession order: open its stream and report the target reached."""
        async with asyncio.timeout(20):
            order = await self.orders.get()
        call = self.stub.Session(metadata=self.metadata)
        await call.write(encode_session(SessionHello(order.session_id)))
        await call.write(encode_session(OpenResult(ok=True)))
        return call, order.session_id


async def read_frame(call: Any) -> SessionFrame | None:
    async with asyncio.timeout(15):
        message = await call.read()
    return None if message is aio.EOF else decode_session(message)


def client_session(port: int, payload: bytes) -> bytes:
    """A client that says something, then reads until the CLI closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        c.sendall(payload)
        return read_until_closed(c)


async def test_oversized_frames_fail_only_their_own_session(
    wardgate: Wardgate, echo_port: int
) -> None:
    gw = wardgate.gateway()
    raw_key = parse_key(gw.create_agent("raw", pool="raw"))
    gw.create_connection(name="via-raw", agent="raw", host="127.0.0.1", port=echo_port)
    real = await asyncio.to_thread(
        wardgate.agent, gw, gw.create_agent("real", pool="default"), wait="real"
    )
    gw.create_connection(name="echo", host="127.0.0.1", port=echo_port)
    raw_cli, raw_port = await asyncio.to_thread(wardgate.tcp, gw, "via-raw")
    _, echo_cli_port = await asyncio.to_thread(wardgate.tcp, gw, "echo")

    # Our own send limit is lifted so the gateway, not our gRPC stack, meets the big frame.
    options = [(k, v) for k, v in CHANNEL_OPTIONS if k != "grpc.max_send_message_length"]
    options.append(("grpc.max_send_message_length", 4 * MAX_GRPC_MESSAGE))
    channel = _channel(gw, options)
    try:
        async with RawAgent(channel, raw_key).connected() as raw:
            await asyncio.to_thread(gw.wait_agent, "raw")

            # 1. Over MAX_PAYLOAD but within the gRPC limit: the session state machine
            #    refuses it and resets the session, naming the protocol error.
            async with asyncio.TaskGroup() as tg:
                client = tg.create_task(asyncio.to_thread(client_session, raw_port, b"hello"))
                call, _ = await raw.accept()
                assert await read_frame(call) == Data(b"hello")
                await call.write(encode_session(Data(b"x" * (MAX_PAYLOAD + 1))))
                reply = await read_frame(call)
                assert isinstance(reply, Reset), reply
                assert reply.code is ResetCode.PROTOCOL_ERROR
                assert f"exceeds {MAX_PAYLOAD}" in reply.message
                call.cancel()
            assert client.result() == b""

            # 2. Over the gRPC message limit: grpc refuses the message and fails the stream.
            async with asyncio.TaskGroup() as tg:
                client = tg.create_task(asyncio.to_thread(client_session, raw_port, b"hello"))
                call, _ = await raw.accept()
                assert await read_frame(call) == Data(b"hello")
                await call.write(encode_session(Data(b"y" * (MAX_GRPC_MESSAGE + 1))))
                with pytest.raises(aio.AioRpcError) as failed:
                    await read_frame(call)
                assert failed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert client.result() == b""

            errors = await asyncio.to_thread(wait_cli_errors, raw_cli, "via-raw", 2)
            assert errors == [
                f"agent 'raw' broke the tunnel protocol: {reply.message}",
                "session lost on agent 'raw': tunnel stream ended without Close",
            ]
            rows = await asyncio.to_thread(ended_sessions, gw, "via-raw", 2)
            assert [(r["status"], r["error"]) for r in rows] == [
                ("failed", errors[1]),  # newest first
                ("failed", errors[0]),
            ]
            assert all(r["agent"] == "raw" for r in rows)

            # Only those sessions failed: the raw agent's control stream survived both,
            # and a real agent's session goes through.
            assert (await asyncio.to_thread(gw.agents))["raw"]["connected"]
            await asyncio.to_thread(assert_serving, gw, echo_cli_port)
            assert_no_tracebacks(gw, real, raw_cli)
    finally:
        await channel.close()


# ---- 6: a client that stops reading -------------------------------------------------------


def test_every_byte_of_a_half_closed_session_arrives(wardgate: Wardgate, echo_port: int) -> None:
    """Send, half-close, read to the end: the echo comes back whole every time. The relay
    cancelled its pending tunnel read at a clean end, which cancelled the agent's gRPC call
    with our last data and Close still queued (1 in 4 of these lost their tail)."""
    gw = wardgate.gateway()
    wardgate.agent(gw, gw.create_agent("default"), wait="default")
    gw.create_connection(name="echo", host="127.0.0.1", port=echo_port)
    _, port = wardgate.tcp(gw, "echo")
    lengths = []
    for _ in range(40):
        payload = os.urandom(300_000)
        echoed = roundtrip(port, payload)
        lengths.append(len(echoed))
        assert echoed == payload, f"echoed {len(echoed)} of 300000 bytes (runs: {lengths})"
    ended = ended_sessions(gw, "echo", 40)
    assert {(r["status"], r["error"]) for r in ended} == {("closed", None)}


def test_a_client_that_stops_reading_keeps_memory_bounded(
    wardgate: Wardgate, echo_port: int, tmp_path: Path
) -> None:
    size = 512 << 20
    blast_port = free_port()
    blast = server_proc(wardgate, tmp_path, "blast", str(blast_port), str(size))
    gw = wardgate.gateway()
    agent = wardgate.agent(gw, gw.create_agent("default"), wait="default")
    gw.create_connection(name="bulk", host="127.0.0.1", port=blast_port)
    gw.create_connection(name="echo", host="127.0.0.1", port=echo_port)
    _, bulk_port = wardgate.tcp(gw, "bulk")
    _, echo_cli_port = wardgate.tcp(gw, "echo")
    assert roundtrip(echo_cli_port, b"warm") == b"warm"

    watched = {"gateway": gw.pid, "agent": agent.pid}
    baseline = {name: rss(pid) for name, pid in watched.items()}
    peak = dict(baseline)

    def sample() -> None:
        for name, pid in watched.items():
            peak[name] = max(peak[name], rss(pid))

    with socket.create_connection(("127.0.0.1", bulk_port), timeout=60) as bulk:
        history: list[tuple[float, int, int]] = []

        def stalled() -> bool:
            # Stalled = for two seconds nothing more reached our socket and neither
            # process grew: every buffer on the way is full and the target is held back.
            sample()
            now = time.monotonic()
            history.append((now, queued(bulk), sum(rss(pid) for pid in watched.values())))
            recent = [h for h in history if h[0] >= now - 2.0]
            if history[0][0] > now - 2.0 or recent[0][1] == 0:
                return False
            return len({q for _, q, _ in recent}) == 1 and (
                max(m for _, _, m in recent) - min(m for _, _, m in recent) < 4 << 20
            )

        wait_for(stalled, "the unread session to stall", timeout=45, interval=0.25)
        held = history[-1][1]
        assert "sent" not in blast.log(), "the target finished: nothing held it back"

        # The stalled session holds nobody else up.
        payload = os.urandom(300_000)
        assert roundtrip(echo_cli_port, payload) == payload

        received = 0
        next_sample = 0
        while data := bulk.recv(1 << 20):
            start = received % len(PATTERN)
            probe = min(len(data), 64)
            assert data[:probe] == (PATTERN[start:] + PATTERN)[:probe], f"corrupt at {received}"
            received += len(data)
            if received >= next_sample:
                sample()
                next_sample += 32 << 20
    assert received == size
    wait_for(lambda: f"sent {size}" in blast.log(), "the target to report the full transfer")
    growth = {name: (peak[name] - baseline[name]) >> 20 for name in watched}
    print(
        f"\nstalled reader: {held >> 10} KiB waited in its socket; "
        f"RSS growth MiB while stalled, then draining 512 MiB: {growth}"
    )
    for name, mib in growth.items():
        assert mib < 100, f"{name} RSS grew {mib} MiB"
    assert_no_tracebacks(gw, agent)


# ---- 7, 8: an agent dies, the gateway restarts ---------------------------------------------


def test_agent_killed_mid_session_fails_only_its_sessions_and_comes_back(
    wardgate: Wardgate, echo_port: int
) -> None:
    gw = wardgate.gateway()
    keys = {name: gw.create_agent(name, pool="default") for name in ("one", "two")}
    procs = {name: wardgate.agent(gw, key, wait=name) for name, key in keys.items()}
    gw.create_connection(name="echo", host="127.0.0.1", port=echo_port)
    cli, port = wardgate.tcp(gw, "echo")

    def carrying() -> dict[str, int]:
        return {name: a["active_sessions"] for name, a in gw.agents().items()}

    with socket.create_connection(("127.0.0.1", port), timeout=30) as doomed:
        assert echo_once(doomed, b"first") == b"first"

        def placed() -> dict[str, int] | None:
            loads = carrying()
            return loads if sorted(loads.values()) == [0, 1] else None

        loads: dict[str, int] = wait_for(placed, "the first session to be placed")
        victim = next(name for name, n in loads.items() if n == 1)
        other = "two" if victim == "one" else "one"
        # `wardgate tcp` opens the session on accept; routing then prefers the idle agent.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as survivor:
            assert echo_once(survivor, b"second") == b"second"
            assert carrying() == {victim: 1, other: 1}

            procs[victim].kill()
            assert read_until_closed(doomed) == b""
            [reason] = wait_cli_errors(cli, "echo")
            assert reason.startswith(f"session lost on agent {victim!r}: "), reason
            # The other agent's session never noticed.
            assert echo_once(survivor, b"still here") == b"still here"
            survivor.shutdown(socket.SHUT_WR)
            assert read_until_closed(survivor) == b""

    rows = ended_sessions(gw, "echo", 2)
    by_agent = {r["agent"]: r for r in rows}
    assert by_agent[victim]["status"] == "failed"
    assert by_agent[victim]["error"] == reason
    assert by_agent[other]["status"] == "closed"
    assert by_agent[other]["error"] is None
    gw.wait_agent(victim, connected=False)
    assert gw.agents()[other]["connected"]
    assert_serving(gw, port)
    assert_no_tracebacks(gw, procs[other], cli)

    # Restarted with the same key, the killed agent rejoins its pool.
    wardgate.agent(gw, keys[victim], wait=victim)
    assert gw.healthy()


def test_agent_reconnects_on_its_own_after_a_gateway_restart(
    wardgate: Wardgate, echo_port: int
) -> None:
    gw = wardgate.gateway()
    agent = wardgate.agent(gw, gw.create_agent("default"), wait="default")
    gw.create_connection(name="echo", host="127.0.0.1", port=echo_port)
    _, port = wardgate.tcp(gw, "echo")
    assert roundtrip(port, b"before") == b"before"
    pid = agent.pid

    gw.restart()
    gw.wait_agent("default")
    assert agent.alive() and agent.pid == pid
    # The same `wardgate tcp` and the same agent process serve a new session.
    assert_serving(gw, port)
    assert [e["actor"] for e in gw.audit("agent.connected")] == ["default", "default"]
    assert len(gw.audit("gateway.stopped")) == 1
    assert_no_tracebacks(gw, agent)


# ---- 9, 10: sessions that cannot open -----------------------------------------------------


def test_unreachable_target_names_the_connection_and_keeps_the_agent(
    wardgate: Wardgate,
) -> None:
    gw = wardgate.gateway()
    agent = wardgate.agent(gw, gw.create_agent("default"), wait="default")
    closed_port = free_port()
    gw.create_connection(name="dead-end", host="127.0.0.1", port=closed_port)
    cli, port = wardgate.tcp(gw, "dead-end")

    with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
        assert read_until_closed(c) == b""
    [reason] = wait_cli_errors(cli, "dead-end")
    assert reason.startswith("connection 'dead-end': cannot reach "), reason
    assert f"127.0.0.1:{closed_port}" in reason

    [failed] = gw.audit("session.failed")
    assert failed["data"]["error"].startswith(reason)  # the close reason is cut to 120 chars
    [row] = ended_sessions(gw, "dead-end", 1)
    assert (row["status"], row["id"]) == ("failed", failed["session"])
    assert agent.alive()
    assert gw.agents()["default"]["connected"]
    assert gw.healthy()
    assert_no_tracebacks(gw, agent, cli)


def test_no_agent_for_the_pool_names_the_pool(wardgate: Wardgate) -> None:
    gw = wardgate.gateway()
    wardgate.agent(gw, gw.create_agent("default"), wait="default")  # of another pool
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.setblocking(False)
        gw.create_connection(
            name="orphan", agent="nowhere", host="127.0.0.1", port=target.getsockname()[1]
        )
        cli, port = wardgate.tcp(gw, "orphan")

        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            c.sendall(b"anyone?")
            assert read_until_closed(c) == b""
        [reason] = wait_cli_errors(cli, "orphan")
        assert reason == "no agent of pool 'nowhere' is connected"
        [failed] = gw.audit("session.failed")
        assert failed["data"]["error"] == reason
        [row] = ended_sessions(gw, "orphan", 1)
        assert (row["status"], row["error"], row["id"]) == ("failed", reason, failed["session"])
        with pytest.raises(BlockingIOError):
            target.accept()  # nobody dialled the target
    assert gw.healthy()


def test_gateway_stops_on_sigterm_while_a_client_holds_an_idle_https_connection(
    wardgate: Wardgate,
) -> None:
    gw = wardgate.gateway()
    # A keep-alive HTTPS client (as kubectl and the CLI are) that sent a request and idles.
    with gw.api() as api:
        assert api.get("/v1/agents").status_code == 200
        returncode = gw.stop(timeout=15)
    assert returncode == 0, f"gateway did not stop by itself: {returncode}\n{gw.log()}"

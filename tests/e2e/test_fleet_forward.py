"""Member-to-member forwarding: two members over one real PostgreSQL store, and an agent that
cannot reach one of them, as in a network split.

The `cut_off` member advertises an agent-facing address where nothing listens
(`fleet.advertise`), so the agent, which dials every member it is told of, never reaches it;
the `near` member has the agent. Clients connect straight to `cut_off`: their sessions run
through `near` over the member link (gateway/fleet/forward.py), with the session kept on
`cut_off` (audit, cancel, metrics), while the agent is connected to `near` alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import psycopg
import pytest

from gateway.crypto import SecretBox
from gateway.fleet import linkauth
from gateway.fleet.forward import FORWARD_METHOD
from gateway.fleet.linkauth import LinkKey
from gateway.sessions import SHUTDOWN_REASON
from shared.tunnel.codec import encode_forward_open
from shared.tunnel.frames import ForwardOpen, Target
from shared.tunnel.rpc import METADATA_AGENT, METADATA_SECRET
from tests.e2e.test_health import sample, scrape
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import GatewayProc, Proc, Wardgate, free_port, wait_for

pytestmark = pytest.mark.e2e

SLEEP = "select pg_sleep(60)"


@dataclass
class Split:
    near: GatewayProc  # the agent is connected here
    cut_off: GatewayProc  # ...and cannot reach this one
    agent: Proc
    target: PostgresServer
    secret_key: str

    def conninfo(self, gw: GatewayProc) -> str:
        return gw.pg_conninfo("pg-split")

    def member_id(self, gw: GatewayProc) -> str:
        with gw.api() as api:
            members = api.get("/v1/members").json()
        (mine,) = [m for m in members if m["self"]]
        return str(mine["id"])


@pytest.fixture
def split(
    wardgate: Wardgate, postgres_db: PostgresServer, postgres_server: PostgresServer
) -> Iterator[Split]:
    key = SecretBox.generate_key()
    shared = {"store": postgres_db.url(), "secret_key": key}
    near = wardgate.gateway(**shared)
    unreachable = f"127.0.0.1:{free_port()}"  # nothing listens: the split
    cut_off = wardgate.member(
        near, 0, **shared, fleet={"advertise": unreachable, "agent_warmup": 0}
    )
    agent = wardgate.agent(near, near.create_agent("default"), wait="default")
    near.create_connection(**postgres_server.connection_spec("pg-split"))
    assert not cut_off.agents()["default"]["connected"]
    yield Split(near, cut_off, agent, postgres_server, key)


def test_a_session_where_no_agent_reaches_runs_through_the_member_that_has_one(
    split: Split,
) -> None:
    with psycopg.connect(split.conninfo(split.cut_off), autocommit=True) as conn:
        assert conn.execute("select 40 + 2").fetchone() == (42,)
        conn.execute("create table forwarded (n int)")
        conn.execute("insert into forwarded select generate_series(1, 5000)")
        assert conn.execute("select sum(n) from forwarded").fetchone() == (12_502_500,)
        # A cancel reaches the server: the member with the client signals through the link.
        raised = split.target.interrupt(conn, SLEEP, conn.cancel_safe)
        assert isinstance(raised, psycopg.errors.QueryCanceled), raised
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
    psql = subprocess.run(
        ["psql", split.conninfo(split.cut_off), "-XAtc", "select 'from psql'"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (psql.returncode, psql.stdout.strip()) == (0, "from psql"), psql.stderr

    # The sessions are the member's with the client: its audit, its id, the agent that served.
    cut_off_id = split.member_id(split.cut_off)
    with split.cut_off.api() as api:
        sessions = api.get("/v1/sessions", params={"connection": "pg-split"}).json()
    assert len(sessions) == 2, sessions
    assert {s["member"] for s in sessions} == {cut_off_id}, sessions
    assert {s["agent"] for s in sessions} == {"default"}, sessions
    statements = [e["data"]["text"] for e in split.cut_off.audit("pg.statement")]
    assert "select sum(n) from forwarded" in statements
    assert "select 'from psql'" in statements
    assert split.cut_off.audit("pg.cancel")
    sent, served = scrape(split.cut_off), scrape(split.near)
    assert sample(sent, "wardgate_forwarded_sessions_total", direction="out") == 2
    assert sample(served, "wardgate_forwarded_sessions_total", direction="in") == 2

    # An administrator ends a forwarded session from either member: the one with the client
    # ends it as its own, and the reset reaches the agent through the link.
    with psycopg.connect(split.conninfo(split.cut_off), autocommit=True) as conn:
        (pid,) = conn.execute("select pg_backend_pid()").fetchone() or (0,)
        with split.near.api() as api:
            (live,) = [s for s in api.get("/v1/sessions").json() if s["status"] == "open"]
            ended = api.post(f"/v1/sessions/{live['id']}/terminate", json={"reason": "drill"})
        assert ended.status_code == 200, ended.text
        with pytest.raises(psycopg.OperationalError, match="administrator: drill"):
            conn.execute("select 1")
    wait_for(lambda: split.target.activity(pid) is None, "the server's session to end")


def test_an_agent_that_hangs_ends_the_forwarded_session_with_its_name(split: Split) -> None:
    conn = psycopg.connect(split.conninfo(split.cut_off), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        os.kill(split.agent.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as lost:
                conn.execute(SLEEP)
            took = time.monotonic() - began
        finally:
            os.kill(split.agent.pid, signal.SIGCONT)
    finally:
        conn.close()
    # The member with the agent dropped it after 3 silent pings and told the other why.
    assert "agent 'default' lost: silent for 3s" in str(lost.value)
    print(f"\nhung agent behind the member link: the client heard in {took:.1f}s")
    split.near.wait_agent("default")  # it comes back, and sessions run again
    with psycopg.connect(split.conninfo(split.cut_off)) as again:
        assert again.execute("select 'back'").fetchone() == ("back",)


def test_losing_the_member_with_the_agent_ends_the_session_and_says_why(split: Split) -> None:
    near_id = split.member_id(split.near)
    conn = psycopg.connect(split.conninfo(split.cut_off), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        split.near.kill()
        with pytest.raises(psycopg.OperationalError) as lost:
            conn.execute("select 2")
    finally:
        conn.close()
    assert f"gateway member {near_id!r} (agent 'default') unreachable" in str(lost.value)
    # No member has an agent of the pool now: a new session is refused in one line.
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(split.conninfo(split.cut_off))
    assert "no agent of pool 'default' is connected" in str(refused.value)


def test_draining_the_member_with_the_agent_gives_forwarded_sessions_the_grace(
    split: Split,
) -> None:
    conn = psycopg.connect(split.conninfo(split.cut_off), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        os.kill(split.near.pid, signal.SIGTERM)  # drain_grace is 2 s in these tests
        wait_for(lambda: split.near.audit("gateway.draining"), "the member to drain")
        assert conn.execute("select 'within the grace'").fetchone() == ("within the grace",)
        with pytest.raises(psycopg.OperationalError) as ended:
            conn.execute(SLEEP)
    finally:
        conn.close()
    assert SHUTDOWN_REASON in str(ended.value)  # in words, not a bare end of stream


def test_the_member_link_takes_only_members_of_the_fleet(split: Split) -> None:
    near_id, cut_off_id = split.member_id(split.near), split.member_id(split.cut_off)
    real = LinkKey(SecretBox.from_config(split.secret_key).derive(linkauth.PURPOSE))
    other = LinkKey(SecretBox.from_config(SecretBox.generate_key()).derive(linkauth.PURPOSE))
    agent_key = split.near.create_agent("intruder")
    request = encode_forward_open(ForwardOpen("s1", "default", Target("pg-split", "tcp", "", 0)))

    def forward(metadata: tuple[tuple[str, str], ...]) -> grpc.RpcError:
        return forward_raw(split, request, metadata)

    name, secret = agent_key.split(":")[0], "not-the-secret"
    cases = {
        "another fleet": other.metadata(cut_off_id, near_id, "s1"),
        "an agent's credentials": ((METADATA_AGENT, name), (METADATA_SECRET, secret)),
        "not a member": real.metadata("ghost", near_id, "s1"),
        "meant for another member": real.metadata(near_id, cut_off_id, "s1"),
        "stale": real.metadata(cut_off_id, near_id, "s1", now=time.time() - 600),
    }
    garbage = forward_raw(
        split, b"\xff\x00 not a ForwardOpen", real.metadata(cut_off_id, near_id, "s0")
    )
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT, garbage
    for case, metadata in cases.items():
        error = forward(metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (case, error)
        assert error.details().startswith("member link refused: "), (case, error.details())
    refusals = wait_for(
        lambda: len(split.near.audit("fleet.link_refused")) == len(cases) or None,
        "every refusal to be audited",
    )
    assert refusals
    # One member proof opens one session: the same proof again is refused.
    proof = real.metadata(cut_off_id, near_id, "s2")
    once = encode_forward_open(ForwardOpen("s2", "no-such-pool", Target("x", "tcp", "", 0)))
    creds = grpc.ssl_channel_credentials(split.near.ca_path.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{split.near.agent_port}", creds) as channel:
        call = channel.stream_stream(FORWARD_METHOD)
        answers = list(call(iter([once]), metadata=proof, timeout=10))
        assert len(answers) == 1  # a ForwardAnswer: no agent of that pool here
        with pytest.raises(grpc.RpcError) as replayed:
            list(call(iter([once]), metadata=proof, timeout=10))
    assert replayed.value.details() == "member link refused: member proof used before"


def forward_raw(
    split: Split, message: bytes, metadata: tuple[tuple[str, str], ...]
) -> grpc.RpcError:
    """Call the member link of `split.near` with one message; the error it ends with."""
    creds = grpc.ssl_channel_credentials(split.near.ca_path.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{split.near.agent_port}", creds) as channel:
        call = channel.stream_stream(FORWARD_METHOD)
        with pytest.raises(grpc.RpcError) as refused:
            list(call(iter([message]), metadata=metadata, timeout=10))
    return refused.value

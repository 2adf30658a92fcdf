"""The server's startup messages as the client gets them: its pid, the gateway's secret."""

from __future__ import annotations

import pytest

from gateway.protocols.pgactions import SendToClient, SessionInfo
from gateway.protocols.pgsession import PgSession
from shared.pgwire.backend import (
    BackendKeyData,
    ParameterStatus,
    ReadyForQuery,
    backend_key_data,
    decode_backend,
    parameter_status,
    ready_for_query,
)
from shared.pgwire.framing import MessageReader
from shared.tunnel.session import DataReceived
from tests.gateway.test_pgsession import NoBudgets, keys

SERVER = (
    parameter_status("server_version", "15.18")
    + backend_key_data(4242, b"srv!")
    + ready_for_query("I")
)
AFTER = b"T\x00\x00\x00\x06\x00\x00"  # the first answer after ReadyForQuery: not rewritten


@pytest.mark.parametrize("chunk", [1, 7, len(SERVER) + len(AFTER)])
def test_the_key_keeps_the_servers_pid_and_gets_our_secret(chunk: int) -> None:
    issuer = keys()
    pg = PgSession(SessionInfo("s-1", "alice", (), "pg-main"), NoBudgets(), issuer, lambda: 0.0)
    wire = SERVER + AFTER
    out = b""
    for fed in range(0, len(wire), chunk):
        for action in pg.agent_event(DataReceived(wire[fed : fed + chunk])):
            if isinstance(action, SendToClient):
                out += action.data
        pg.client_flushed()
    key = pg.cancel_key
    assert key is not None and key[0] == 4242 and len(key[1]) == 32
    assert issuer.keys.find(*key) == "s-1"
    reader = MessageReader()
    reader.feed(out)
    messages = []
    while (m := reader.next_message()) is not None:
        messages.append(decode_backend(m))
    assert messages[:3] == [
        ParameterStatus("server_version", "15.18"),
        BackendKeyData(4242, key[1]),
        ReadyForQuery("I"),
    ]
    # What came after ReadyForQuery is the relay's, untouched.
    assert out.endswith(AFTER) and len(messages) == 4

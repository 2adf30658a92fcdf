"""The server's startup messages as the client gets them: its pid, the gateway's secret."""

from __future__ import annotations

import pytest

from gateway.protocols.postgres import PostgresFrontDoor
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

SERVER = (
    parameter_status("server_version", "15.18")
    + backend_key_data(4242, b"srv!")
    + ready_for_query("I")
)
AFTER = b"T\x00\x00\x00\x06\x00\x00"  # the first answer after ReadyForQuery: not rewritten


@pytest.mark.parametrize("chunk", [1, 7, len(SERVER) + len(AFTER)])
def test_the_key_keeps_the_servers_pid_and_gets_our_secret(chunk: int) -> None:
    frames = MessageReader()
    issued: list[int] = []

    def issue(pid: int) -> bytes:
        issued.append(pid)
        return b"gateway-secret-0123456789abcdef!"

    wire = SERVER + AFTER
    out, in_startup, fed = b"", True, 0
    while in_startup:
        piece, in_startup = PostgresFrontDoor._rewrite_startup(
            frames, wire[fed : fed + chunk], issue
        )
        out += piece
        fed += chunk
    assert not in_startup and issued == [4242]
    reader = MessageReader()
    reader.feed(out)
    messages = []
    while (m := reader.next_message()) is not None:
        messages.append(decode_backend(m))
    assert messages == [
        ParameterStatus("server_version", "15.18"),
        BackendKeyData(4242, b"gateway-secret-0123456789abcdef!"),
        ReadyForQuery("I"),
    ]
    # What came after ReadyForQuery is left for the relay, untouched.
    assert frames.take_buffered() + wire[fed:] == AFTER

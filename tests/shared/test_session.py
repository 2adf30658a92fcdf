"""Playbooks for the session state machine: frames in, events and replies out."""

from __future__ import annotations

import pytest

from shared.tunnel.frames import (
    MAX_PAYLOAD,
    Close,
    Data,
    OpenResult,
    Reset,
    ResetCode,
    SessionHello,
    Signal,
    SignalKind,
)
from shared.tunnel.session import (
    DataReceived,
    LocalProtocolError,
    Opened,
    OpenFailed,
    Phase,
    RemoteClosed,
    Role,
    SessionReset,
    SessionState,
    SignalReceived,
)


def opened_gateway() -> SessionState:
    s = SessionState(Role.GATEWAY)
    assert s.receive(OpenResult(True)).events == (Opened(),)
    return s


def opened_agent() -> SessionState:
    s = SessionState(Role.AGENT)
    s.send_open_result(OpenResult(True))
    return s


def test_gateway_open_then_data_then_both_closes_finish() -> None:
    s = opened_gateway()
    assert s.receive(Data(b"abc")).events == (DataReceived(b"abc"),)
    assert s.send_data(b"xyz") == Data(b"xyz")
    assert s.receive(Close()).events == (RemoteClosed(),)
    assert not s.finished  # our direction is still open: a half-close
    assert s.send_data(b"still allowed") == Data(b"still allowed")
    assert s.send_close() == Close()
    assert s.finished


def test_open_failure_finishes_with_the_agents_reason() -> None:
    s = SessionState(Role.GATEWAY)
    out = s.receive(OpenResult(False, ResetCode.TARGET_UNREACHABLE, "cannot reach"))
    assert out.events == (OpenFailed(ResetCode.TARGET_UNREACHABLE, "cannot reach"),)
    assert s.finished and s.reset_code is ResetCode.TARGET_UNREACHABLE


@pytest.mark.parametrize(
    ("setup", "frame", "why"),
    [
        (lambda: SessionState(Role.GATEWAY), Data(b"x"), "before OpenResult"),
        (opened_gateway, OpenResult(True), "unexpected OpenResult"),
        (opened_agent, OpenResult(True), "unexpected OpenResult"),
        (opened_gateway, SessionHello("s"), "SessionHello"),
        (opened_gateway, Data(b"x" * (MAX_PAYLOAD + 1)), "exceeds"),
        (lambda: SessionState(Role.AGENT), Data(b"x"), "before the session was open"),
    ],
)
def test_peer_protocol_errors_reset_the_session(setup, frame, why) -> None:  # type: ignore[no-untyped-def]
    s = setup()
    out = s.receive(frame)
    assert out.reply is not None and out.reply.code is ResetCode.PROTOCOL_ERROR
    assert why in out.reply.message
    assert out.events == (SessionReset(ResetCode.PROTOCOL_ERROR, out.reply.message, by_peer=False),)
    assert s.finished


def test_data_after_remote_close_is_the_peers_error() -> None:
    s = opened_gateway()
    s.receive(Close())
    out = s.receive(Data(b"late"))
    assert out.reply == Reset(ResetCode.PROTOCOL_ERROR, "Data after Close")


def test_reset_finishes_in_any_phase_and_later_frames_are_dropped() -> None:
    s = SessionState(Role.GATEWAY)
    assert s.receive(Reset(ResetCode.CANCELLED, "bye")).events == (
        SessionReset(ResetCode.CANCELLED, "bye"),
    )
    assert s.phase is Phase.FINISHED
    assert s.receive(Data(b"racing")).events == ()
    assert s.send_reset(ResetCode.CANCELLED, "again") is None


def test_local_errors_raise_and_send_nothing() -> None:
    s = SessionState(Role.GATEWAY)
    with pytest.raises(LocalProtocolError):
        s.send_data(b"too early")
    with pytest.raises(LocalProtocolError):
        s.send_open_result(OpenResult(True))  # only agents answer opens
    a = opened_agent()
    with pytest.raises(LocalProtocolError):
        a.send_open_result(OpenResult(True))
    with pytest.raises(LocalProtocolError):
        a.send_data(b"x" * (MAX_PAYLOAD + 1))
    a.send_close()
    with pytest.raises(LocalProtocolError):
        a.send_data(b"after close")
    assert a.send_close() is None


def test_agent_that_fails_to_open_is_finished() -> None:
    a = SessionState(Role.AGENT)
    a.send_open_result(OpenResult(False, ResetCode.UNSUPPORTED, "no"))
    assert a.finished and not a.can_send_data


def test_cancel_signal_goes_gateway_to_agent_only_even_after_half_close() -> None:
    g = opened_gateway()
    g.send_close()
    assert g.send_signal(SignalKind.CANCEL) == Signal(SignalKind.CANCEL)
    a = opened_agent()
    a.receive(Close())
    assert a.receive(Signal(SignalKind.CANCEL)).events == (SignalReceived(SignalKind.CANCEL),)
    with pytest.raises(LocalProtocolError):
        a.send_signal(SignalKind.CANCEL)
    out = opened_gateway().receive(Signal(SignalKind.CANCEL))
    assert out.reply is not None and out.reply.code is ResetCode.PROTOCOL_ERROR


def test_mask_report_goes_agent_to_gateway_with_the_data() -> None:
    from shared.tunnel.frames import MaskReport
    from shared.tunnel.session import MaskReported

    agent = opened_agent()
    report = agent.send_mask_report((("users.email", "column", 3),))
    gateway = opened_gateway()
    assert gateway.receive(report).events == (MaskReported((("users.email", "column", 3),)),)
    # The wrong direction is a protocol error, and nothing follows the agent's Close.
    assert agent.receive(MaskReport(())).reply == Reset(
        ResetCode.PROTOCOL_ERROR, "MaskReport sent to the agent"
    )
    closing = opened_agent()
    closing.send_close()
    with pytest.raises(LocalProtocolError):
        closing.send_mask_report(())
    gateway.receive(Close())
    assert gateway.receive(MaskReport(())).reply is not None

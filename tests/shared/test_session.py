"""Playbooks for the session state machine: frames in, events and replies out."""

from __future__ import annotations

import pytest

from shared.tunnel.frames import (
    MAX_PAYLOAD,
    MAX_WINDOW,
    Close,
    Data,
    OpenResult,
    Reset,
    ResetCode,
    SessionHello,
    Signal,
    SignalKind,
    WindowUpdate,
)
from shared.tunnel.session import (
    CreditReceived,
    DataReceived,
    LocalProtocolError,
    Opened,
    OpenFailed,
    Phase,
    RemoteClosed,
    Role,
    SessionReset,
    SessionState,
    SignalDone,
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


def test_a_report_inside_data_reaches_the_gateway_with_the_data_it_counts() -> None:
    counts = (("users.email", "column", 3),)
    agent = SessionState(Role.AGENT)
    agent.negotiate(0, False, data_reports=True)
    agent.send_open_result(OpenResult(True))
    frame = agent.send_data(b"rows", counts)
    assert frame == Data(b"rows", counts)
    assert opened_gateway().receive(frame).events == (DataReceived(b"rows", counts),)
    # Only on a session ordered with data reports, only from the agent, only to the gateway.
    with pytest.raises(LocalProtocolError):
        opened_agent().send_data(b"rows", counts)
    with pytest.raises(LocalProtocolError):
        opened_gateway().send_data(b"rows", counts)
    assert opened_agent().receive(frame).reply == Reset(
        ResetCode.PROTOCOL_ERROR, "MaskReport sent to the agent"
    )


# ---- flow control (rule 8) ---------------------------------------------------------------

W = 1000


def windowed(role: Role, window: int = W, acks: bool = False) -> SessionState:
    s = SessionState(role)
    s.negotiate(window, acks)
    if role is Role.GATEWAY:
        s.receive(OpenResult(True))
    else:
        s.send_open_result(OpenResult(True))
    return s


def test_a_sender_may_run_one_window_ahead_then_waits_for_credit() -> None:
    s = windowed(Role.AGENT)
    assert s.send_data(b"x" * 600) == Data(b"x" * 600)
    assert s.send_credit == 400
    with pytest.raises(LocalProtocolError, match="beyond the window"):
        s.send_data(b"x" * 401)
    assert s.send_data(b"x" * 400) == Data(b"x" * 400)
    assert s.send_credit == 0
    assert s.receive(WindowUpdate(700)).events == (CreditReceived(700),)
    assert s.send_credit == 700


def test_the_receiver_gives_credit_back_half_a_window_at_a_time() -> None:
    s = windowed(Role.GATEWAY)
    assert s.receive(Data(b"x" * 400)).events == (DataReceived(b"x" * 400),)
    assert s.consumed(400) is None  # less than half the window owed: no update yet
    assert s.receive(Data(b"x" * 600)).events == (DataReceived(b"x" * 600),)
    assert s.recv_credit == 0
    assert s.consumed(100) == WindowUpdate(500)
    assert s.recv_credit == 500
    assert s.consumed(500) == WindowUpdate(500)


def test_data_beyond_the_window_is_the_peers_protocol_error() -> None:
    s = windowed(Role.GATEWAY)
    s.receive(Data(b"x" * 900))
    out = s.receive(Data(b"x" * 101))
    assert out.reply is not None and out.reply.code is ResetCode.PROTOCOL_ERROR
    assert "beyond the window" in out.reply.message
    assert s.finished


@pytest.mark.parametrize(
    ("setup", "frame", "why"),
    [
        (opened_gateway, WindowUpdate(10), "without a window"),
        (lambda: windowed(Role.GATEWAY), WindowUpdate(0), "WindowUpdate of 0"),
        (lambda: windowed(Role.AGENT), WindowUpdate(MAX_WINDOW), "WindowUpdate of"),
        (lambda: windowed(Role.AGENT, acks=True), Signal(SignalKind.DONE, 1), "DONE sent to"),
        (lambda: windowed(Role.GATEWAY, acks=True), Signal(SignalKind.DONE, 1), "awaits none"),
        (opened_gateway, Signal(SignalKind.DONE, 0), "awaits none"),
        (lambda: windowed(Role.AGENT, acks=True), Signal(SignalKind.CANCEL, 0), "id 0"),
    ],
)
def test_flow_and_signal_protocol_errors(setup, frame, why) -> None:  # type: ignore[no-untyped-def]
    s = setup()
    out = s.receive(frame)
    assert out.reply is not None and out.reply.code is ResetCode.PROTOCOL_ERROR
    assert why in out.reply.message
    assert s.finished


def test_credit_flows_whatever_the_half_closes() -> None:
    s = windowed(Role.AGENT)
    s.send_data(b"x" * W)
    assert s.receive(Close()).events == (RemoteClosed(),)
    assert s.consumed(W) is None  # the peer sends nothing more: nothing to give back
    assert s.receive(WindowUpdate(W)).events == (CreditReceived(W),)
    late = windowed(Role.AGENT)  # credit that arrives after our own Close is fine too
    late.send_data(b"x" * W)
    late.send_close()
    assert late.receive(WindowUpdate(W)).events == (CreditReceived(W),)


def test_a_window_is_set_before_the_session_opens() -> None:
    with pytest.raises(LocalProtocolError, match="before it opens"):
        opened_gateway().negotiate(W, False)
    s = SessionState(Role.AGENT)
    s.send_open_result(OpenResult(True))
    for _ in range(8):  # no window: no limit but the frame size
        s.send_data(b"x" * MAX_PAYLOAD)
    assert s.consumed(8 * MAX_PAYLOAD) is None


# ---- signal acks (rule 6) ----------------------------------------------------------------


def test_each_signal_is_answered_once_by_its_id() -> None:
    g = windowed(Role.GATEWAY, acks=True)
    a = windowed(Role.AGENT, acks=True)
    first, second = g.send_signal(SignalKind.CANCEL), g.send_signal(SignalKind.CANCEL)
    assert (first, second) == (Signal(SignalKind.CANCEL, 1), Signal(SignalKind.CANCEL, 2))
    assert a.receive(first).events == (SignalReceived(SignalKind.CANCEL, 1),)
    assert a.receive(second).events == (SignalReceived(SignalKind.CANCEL, 2),)
    done = a.send_signal_done(2)
    assert done == Signal(SignalKind.DONE, 2)
    assert g.receive(done).events == (SignalDone(2),)
    with pytest.raises(LocalProtocolError, match="no signal 2"):
        a.send_signal_done(2)
    assert g.receive(a.send_signal_done(1) or Signal(SignalKind.DONE, 1)).events == (SignalDone(1),)
    out = g.receive(Signal(SignalKind.DONE, 1))  # answered twice
    assert out.reply is not None and "awaits none" in out.reply.message


def test_signals_answer_after_the_gateway_half_closed() -> None:
    g = windowed(Role.GATEWAY, acks=True)
    a = windowed(Role.AGENT, acks=True)
    a.receive(g.send_signal(SignalKind.CANCEL))
    a.receive(g.send_close() or Close())
    done = a.send_signal_done(1)
    assert done is not None and g.receive(done).events == (SignalDone(1),)


def test_without_signal_acks_signals_carry_no_id_and_take_no_answer() -> None:
    g, a = opened_gateway(), opened_agent()
    signal = g.send_signal(SignalKind.CANCEL)
    assert signal == Signal(SignalKind.CANCEL, 0)
    assert a.receive(signal).events == (SignalReceived(SignalKind.CANCEL, 0),)
    assert a.send_signal_done(0) is None
    with pytest.raises(LocalProtocolError):
        g.send_signal(SignalKind.DONE)
    with pytest.raises(LocalProtocolError):
        g.send_signal_done(1)

"""SSH to the target (agent half of gateway/protocols/ssh.py).

The agent opens its own SSH connection to the target with paramiko: the target's host key
must match the pin in the connection (`host_key`: a known_hosts line or an OpenSSH
`SHA256:` fingerprint), or the session is refused before any credential is offered; then
it authenticates as `username` with the injected `private_key` or `password`, resolved
here and never sent to the user. Channels and requests arrive as `shared.sshwire` frames
and are replayed on that connection; the target's output goes back the same way.

paramiko blocks, so it runs in threads: one thread carries out the gateway's orders in
order for its channel (open, requests, writes; a target whose window is full holds only
that channel's orders), and per channel one thread each reads stdout and stderr, sending
within the channel's credit (`shared.sshwire.window`). The event loop only decodes frames
and queues them, so it never waits on a target.

paramiko's client drops the target's `exit-signal`; `_TargetTransport` reads it, so a
command killed by a signal ends with that signal at the client too. The `signal` request
(client to target) is not relayed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hashlib
import io
import logging
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paramiko
from paramiko.common import MSG_CHANNEL_REQUEST

from shared.relay import relay
from shared.sshbridge import Credit, Worker
from shared.sshwire import frames as f
from shared.sshwire.codec import MAX_DATA, SshWireError, encode
from shared.sshwire.peer import FramePeer
from shared.sshwire.window import ReceiveWindow
from shared.tunnel.frames import OpenResult, ResetCode, Target
from shared.tunnel.stream import SessionClosedError, TunnelStream

log = logging.getLogger(__name__)

T = TypeVar("T")

DIAL_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 15.0
WRITE_TIMEOUT = 600.0


class TargetRefused(Exception):
    """The target cannot be trusted or would not take the credential; the reason is safe to show."""


# ---- host key pinning ------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def pinned_fingerprints(pin: str) -> set[str]:
    """The SHA256 fingerprints a `host_key` option accepts (one or more, newline-separated).

    Each entry is `SHA256:...`, or a known_hosts / .pub line (`[host] type base64 [comment]`).
    """
    out: set[str] = set()
    for line in pin.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("SHA256:"):
            out.add(line.split()[0].rstrip("="))
            continue
        for word in line.split():
            try:
                blob = base64.b64decode(word, validate=True)
            except (binascii.Error, ValueError):
                continue
            kind_len = int.from_bytes(blob[:4], "big") if len(blob) > 4 else 0
            if 0 < kind_len < 64 and blob[4 : 4 + kind_len].startswith((b"ssh-", b"ecdsa-")):
                digest = hashlib.sha256(blob).digest()
                out.add("SHA256:" + base64.b64encode(digest).decode().rstrip("="))
                break
    return out


def _load_private_key(data: bytes) -> paramiko.PKey:
    text = data.decode()
    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            key: paramiko.PKey = cls.from_private_key(io.StringIO(text))
            return key
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(str(exc))
    raise TargetRefused("the connection's private_key is not a readable, unencrypted SSH key")


def connect(target: Target) -> paramiko.Transport:
    """Dial, check the host key against the pin, authenticate. Runs in a thread."""
    where = f"{target.host}:{target.port}"
    pins = pinned_fingerprints(target.options.get("host_key", ""))
    if not pins:
        raise TargetRefused(
            f"connection {target.connection!r} pins no host key (option host_key): "
            "refusing to connect to an unverified SSH server"
        )
    username = target.options.get("username", "")
    if not username:
        raise TargetRefused(f"connection {target.connection!r} names no username")
    sock = socket.create_connection((target.host, target.port), timeout=DIAL_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    transport = _TargetTransport(sock)
    try:
        transport.banner_timeout = HANDSHAKE_TIMEOUT
        transport.handshake_timeout = HANDSHAKE_TIMEOUT
        transport.start_client(timeout=HANDSHAKE_TIMEOUT)
        presented = fingerprint(transport.get_remote_server_key())
        if presented not in pins:
            raise TargetRefused(
                f"host key verification failed for {where} (connection "
                f"{target.connection!r}): the server presented {presented}, which is not "
                "the pinned host key; refusing the session (the key changed, or someone is "
                "in between)"
            )
        if "private_key" in target.secrets:
            key = _load_private_key(_secret(target, "private_key"))
            try:
                transport.auth_publickey(username, key)
            except paramiko.AuthenticationException:
                raise TargetRefused(
                    f"{where} refused the connection's private key for user {username!r}"
                ) from None
        elif "password" in target.secrets:
            try:
                transport.auth_password(username, _secret(target, "password").decode())
            except paramiko.AuthenticationException:
                raise TargetRefused(
                    f"{where} refused the connection's password for user {username!r}"
                ) from None
        else:
            raise TargetRefused(
                f"connection {target.connection!r} has neither private_key nor password"
            )
        if not transport.is_authenticated():
            raise TargetRefused(f"{where} did not accept user {username!r}")
        return transport
    except BaseException:
        transport.close()
        raise


def _channel_request(chan: paramiko.Channel, m: paramiko.Message) -> None:
    """paramiko's handler for channel requests, keeping the `exit-signal` it would drop."""
    start = m.packet.tell()
    if m.get_text() != "exit-signal":
        m.packet.seek(start)
        paramiko.Channel._handle_request(chan, m)  # type: ignore[attr-defined]
        return
    m.get_boolean()  # want_reply: never for exit-signal
    name, core, message = m.get_text(), m.get_boolean(), m.get_text()
    chan.exit_signal = (name, core, message)  # type: ignore[attr-defined]
    chan.status_event.set()


class _TargetTransport(paramiko.Transport):
    # paramiko dispatches channel messages through this class-level table.
    _channel_handler_table = {
        **paramiko.Transport._channel_handler_table,  # type: ignore[attr-defined]
        MSG_CHANNEL_REQUEST: _channel_request,
    }


def _secret(target: Target, name: str) -> bytes:
    value = target.secrets[name]
    return value if isinstance(value, bytes) else value.encode()


# ---- the session -----------------------------------------------------------------------


async def serve(stream: TunnelStream, target: Target) -> None:
    try:
        transport = await asyncio.to_thread(connect, target)
    except TargetRefused as exc:
        await stream.send_open_result(OpenResult(False, ResetCode.TARGET_REFUSED, str(exc)))
        return
    except (OSError, EOFError, paramiko.SSHException) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        await stream.send_open_result(
            OpenResult(
                False,
                ResetCode.TARGET_UNREACHABLE,
                f"cannot reach SSH server {target.host}:{target.port}: {reason}",
            )
        )
        return
    relay = _Relay(stream, transport)
    try:
        await stream.send_open_result(OpenResult(True))
        await relay.run()
    finally:
        await relay.aclose()


@dataclass(eq=False)
class _Channel:
    id: int
    chan: paramiko.Channel | None = None
    credit: Credit = field(default_factory=Credit)  # target data we may still relay
    acks: ReceiveWindow = field(default_factory=ReceiveWindow)  # gateway data written
    worker: Worker | None = None


class _Relay:
    def __init__(self, stream: TunnelStream, transport: paramiko.Transport) -> None:
        self.stream = stream
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.channels: dict[int, _Channel] = {}

    def _wait(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """From a channel thread: run `coro` on the loop and wait for it. The thread owns
        it: given up on (a time limit), it is cancelled; with the loop gone, it is closed
        rather than left never awaited."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closing
            coro.close()
            raise
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise
        except concurrent.futures.CancelledError:
            # The session's tasks were cancelled as it ended: to the thread, it is closed.
            raise SessionClosedError(ResetCode.CANCELLED, "the session ended") from None

    async def _send(self, frame: f.Frame) -> None:
        await self.stream.send_data(encode(frame))

    def send(self, frame: f.Frame) -> None:
        """From a thread: one frame to the gateway, waiting until the tunnel took it."""
        self._wait(self._send(frame), WRITE_TIMEOUT)

    async def run(self) -> None:
        """The relay driver (shared/relay.py), without half-close: the gateway's close (the
        client's connection ended) is answered with ours, and the session is over."""
        await relay(
            self.stream,
            FramePeer(self._dispatch, asyncio.Event().wait, "gateway"),
            half_close=False,
            name=f"ssh/{self.stream.session_id}",
            who="target",
            failure_code=ResetCode.TARGET_UNREACHABLE,
        )

    async def _dispatch(self, frame: f.Frame) -> None:
        """Queue the frame to its channel's thread; this loop never waits on the target."""
        if isinstance(frame, f.ChannelOpen):
            if frame.channel in self.channels:
                raise SshWireError(f"channel {frame.channel} opened twice")
            ch = _Channel(frame.channel)
            ch.worker = Worker(
                f"ssh-order {self.stream.session_id}#{frame.channel}",
                lambda fr: self._order(ch, fr),
            )
            self.channels[frame.channel] = ch
            ch.worker.put(frame)
            return
        found = self.channels.get(frame.channel)
        if found is None or found.worker is None:
            request = getattr(frame, "request", 0)
            if request:
                await self._send(f.RequestResult(frame.channel, request, False, "no such channel"))
            return
        if isinstance(frame, f.WindowAdjust):
            found.credit.grant(frame.increment)
            return
        found.worker.put(frame)

    # -- orders, in the channel's thread -------------------------------------------------

    def _order(self, ch: _Channel, frame: f.Frame) -> bool:
        """Carry out one order; True when the channel is done."""
        try:
            reply, done = self._carry_out(ch, frame)
        except Exception as exc:  # a request the target refused, a closed channel...
            log.debug("ssh order %r failed: %s", type(frame).__name__, exc)
            done = isinstance(frame, f.ChannelOpen | f.ChannelClose)
            if isinstance(frame, f.ChannelOpen):
                reply = f.OpenResult(frame.channel, False, _describe(exc))
            elif getattr(frame, "request", 0):
                reply = f.RequestResult(frame.channel, frame.request, False, _describe(exc))  # type: ignore[union-attr]
            else:
                reply = None
        if reply is not None:
            with contextlib.suppress(
                SessionClosedError, RuntimeError, concurrent.futures.TimeoutError
            ):
                self.send(reply)
        if done:
            self.channels.pop(ch.id, None)
            ch.credit.close()
        return done

    def _carry_out(self, ch: _Channel, frame: f.Frame) -> tuple[f.Frame | None, bool]:
        if isinstance(frame, f.ChannelOpen):
            if frame.kind == "session":
                chan = self.transport.open_session(timeout=HANDSHAKE_TIMEOUT)
            elif frame.kind == "direct-tcpip":
                chan = self.transport.open_channel(
                    "direct-tcpip",
                    (frame.host, frame.port),
                    (frame.origin_host or "127.0.0.1", frame.origin_port),
                    timeout=HANDSHAKE_TIMEOUT,
                )
            else:
                return f.OpenResult(frame.channel, False, f"channel kind {frame.kind!r}"), True
            ch.chan = chan
            # The answer goes out before the readers start, so it precedes the channel's data.
            self.send(f.OpenResult(frame.channel, True))
            self._start_readers(ch, chan)
            return None, False
        if ch.chan is None:
            return None, True
        chan = ch.chan
        if isinstance(frame, f.ChannelData):
            chan.sendall(frame.data)
            increment = ch.acks.delivered(len(frame.data))
            return (f.WindowAdjust(ch.id, increment) if increment else None), False
        if isinstance(frame, f.Eof):
            chan.shutdown_write()
        elif isinstance(frame, f.ChannelClose):
            chan.close()
            return None, True
        elif isinstance(frame, f.WindowChange):
            chan.resize_pty(frame.cols, frame.rows, frame.width_px, frame.height_px)
        elif isinstance(frame, f.EnvRequest):
            chan.set_environment_variable(frame.name, frame.value)
            ok = f.RequestResult(frame.channel, frame.request, True)
            return (ok if frame.request else None), False
        elif isinstance(frame, f.PtyRequest):
            chan.get_pty(frame.term, frame.cols, frame.rows, frame.width_px, frame.height_px)
            return f.RequestResult(frame.channel, frame.request, True), False
        elif isinstance(frame, f.ShellRequest):
            chan.invoke_shell()
            return f.RequestResult(frame.channel, frame.request, True), False
        elif isinstance(frame, f.ExecRequest):
            chan.exec_command(frame.command)
            return f.RequestResult(frame.channel, frame.request, True), False
        elif isinstance(frame, f.SubsystemRequest):
            chan.invoke_subsystem(frame.name)
            return f.RequestResult(frame.channel, frame.request, True), False
        return None, False

    # -- target -> gateway, per channel --------------------------------------------------

    def _start_readers(self, ch: _Channel, chan: paramiko.Channel) -> None:
        stderr_done = threading.Event()
        channel = ch.id

        def read_stderr() -> None:
            try:
                while data := chan.recv_stderr(MAX_DATA):
                    if not ch.credit.take(len(data)):
                        return
                    self.send(f.ExtendedData(channel, data))
            except (SessionClosedError, OSError, RuntimeError, concurrent.futures.TimeoutError):
                pass
            finally:
                stderr_done.set()

        def read_stdout() -> None:
            try:
                while data := chan.recv(MAX_DATA):
                    if not ch.credit.take(len(data)):
                        return
                    self.send(f.ChannelData(channel, data))
                stderr_done.wait()
                self.send(f.Eof(channel))
                status = chan.recv_exit_status()  # at exit-status, exit-signal or close
                signal = getattr(chan, "exit_signal", None)
                if status >= 0:
                    self.send(f.ExitStatus(channel, status))
                elif signal is not None:
                    self.send(f.ExitSignal(channel, *signal))
                self.send(f.ChannelClose(channel))
            except (SessionClosedError, OSError, RuntimeError, concurrent.futures.TimeoutError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    chan.close()
                if ch.worker is not None:
                    ch.worker.stop()
                self.channels.pop(channel, None)

        for target, name in ((read_stdout, "out"), (read_stderr, "err")):
            thread = threading.Thread(
                target=target, name=f"ssh-{name} {self.stream.session_id}#{channel}", daemon=True
            )
            thread.start()

    async def aclose(self) -> None:
        for ch in list(self.channels.values()):
            ch.credit.close()
            if ch.worker is not None:
                ch.worker.stop()
        await asyncio.to_thread(self.transport.close)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

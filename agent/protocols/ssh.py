"""SSH to the target (agent half of gateway/protocols/ssh.py).

The agent opens its own SSH connection to the target with paramiko: the target's host key
must match the pin in the connection (`host_key`: a known_hosts line or an OpenSSH
`SHA256:` fingerprint), or the session is refused before any credential is offered; then
it authenticates as `username` with the injected `private_key` or `password`, resolved
here and never sent to the user. Channels and requests arrive as `shared.sshwire` frames
and are replayed on that connection; the target's output goes back the same way.

paramiko blocks, so it runs in threads: one thread carries out the gateway's orders in
order (open, requests, writes: a target whose window is full holds the orders behind it,
which is the backpressure), and per channel one thread each reads stdout and stderr and
waits for each tunnel write. The event loop only decodes frames and hands them over.

Known limits: paramiko's client does not report `exit-signal` (a command killed by a
signal ends without a status) and has no call for the `signal` request; both are dropped.
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
from typing import Any, TypeVar

import paramiko

from shared.sshwire import frames as f
from shared.sshwire.codec import MAX_DATA, FrameDecoder, SshWireError, encode
from shared.tunnel.frames import OpenResult, ResetCode, Target
from shared.tunnel.stream import (
    DataReceived,
    RemoteClosed,
    SessionClosedError,
    SessionReset,
    TunnelStream,
)

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
    transport = paramiko.Transport(sock)
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


class _Relay:
    def __init__(self, stream: TunnelStream, transport: paramiko.Transport) -> None:
        self.stream = stream
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.channels: dict[int, paramiko.Channel] = {}
        self._orders = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"ssh-orders {stream.session_id}"
        )
        self._threads: list[threading.Thread] = []

    def _wait(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _send(self, frame: f.Frame) -> None:
        await self.stream.send_data(encode(frame))

    def send(self, frame: f.Frame) -> None:
        """From a thread: one frame to the gateway, waiting until the tunnel took it."""
        self._wait(self._send(frame), WRITE_TIMEOUT)

    async def run(self) -> None:
        decoder = FrameDecoder()
        while True:
            event = await self.stream.receive()
            if isinstance(event, DataReceived):
                decoder.receive_data(event.payload)
                try:
                    frames = decoder.frames()
                except SshWireError as exc:
                    await self.stream.reset(
                        ResetCode.PROTOCOL_ERROR, f"gateway broke the SSH relay protocol: {exc}"
                    )
                    return
                for frame in frames:
                    reply = await self.loop.run_in_executor(self._orders, self._order, frame)
                    if reply is not None:
                        try:
                            await self._send(reply)
                        except SessionClosedError:
                            return
            elif isinstance(event, RemoteClosed):
                # The client's connection ended: close ours too, cleanly.
                await self.stream.send_close()
                return
            elif isinstance(event, SessionReset):
                return

    # -- orders, in the order thread -----------------------------------------------------

    def _order(self, frame: f.Frame) -> f.Frame | None:
        try:
            return self._carry_out(frame)
        except Exception as exc:  # a request the target refused, a closed channel...
            log.debug("ssh order %r failed: %s", type(frame).__name__, exc)
            if isinstance(frame, f.ChannelOpen):
                return f.OpenResult(frame.channel, False, _describe(exc))
            request = getattr(frame, "request", 0)
            if request:
                return f.RequestResult(frame.channel, request, False, _describe(exc))
            return None

    def _carry_out(self, frame: f.Frame) -> f.Frame | None:
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
                return f.OpenResult(frame.channel, False, f"channel kind {frame.kind!r}")
            self.channels[frame.channel] = chan
            # The answer goes out before the readers start, so it precedes the channel's data.
            self.send(f.OpenResult(frame.channel, True))
            self._start_readers(frame.channel, chan)
            return None
        found = self.channels.get(frame.channel)
        if found is None:
            request = getattr(frame, "request", 0)
            if request:
                return f.RequestResult(frame.channel, request, False, "no such channel")
            return None
        chan = found
        if isinstance(frame, f.ChannelData):
            chan.sendall(frame.data)
        elif isinstance(frame, f.Eof):
            chan.shutdown_write()
        elif isinstance(frame, f.ChannelClose):
            chan.close()
        elif isinstance(frame, f.WindowChange):
            chan.resize_pty(frame.cols, frame.rows, frame.width_px, frame.height_px)
        elif isinstance(frame, f.EnvRequest):
            chan.set_environment_variable(frame.name, frame.value)
            return f.RequestResult(frame.channel, frame.request, True) if frame.request else None
        elif isinstance(frame, f.PtyRequest):
            chan.get_pty(frame.term, frame.cols, frame.rows, frame.width_px, frame.height_px)
            return f.RequestResult(frame.channel, frame.request, True)
        elif isinstance(frame, f.ShellRequest):
            chan.invoke_shell()
            return f.RequestResult(frame.channel, frame.request, True)
        elif isinstance(frame, f.ExecRequest):
            chan.exec_command(frame.command)
            return f.RequestResult(frame.channel, frame.request, True)
        elif isinstance(frame, f.SubsystemRequest):
            chan.invoke_subsystem(frame.name)
            return f.RequestResult(frame.channel, frame.request, True)
        return None

    # -- target -> gateway, per channel --------------------------------------------------

    def _start_readers(self, channel: int, chan: paramiko.Channel) -> None:
        stderr_done = threading.Event()

        def read_stderr() -> None:
            try:
                while data := chan.recv_stderr(MAX_DATA):
                    self.send(f.ExtendedData(channel, data))
            except (SessionClosedError, OSError, RuntimeError, concurrent.futures.TimeoutError):
                pass
            finally:
                stderr_done.set()

        def read_stdout() -> None:
            try:
                while data := chan.recv(MAX_DATA):
                    self.send(f.ChannelData(channel, data))
                stderr_done.wait()
                self.send(f.Eof(channel))
                status = chan.recv_exit_status()  # returns at exit-status or at close
                if status >= 0:
                    self.send(f.ExitStatus(channel, status))
                self.send(f.ChannelClose(channel))
            except (SessionClosedError, OSError, RuntimeError, concurrent.futures.TimeoutError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    chan.close()
                self.channels.pop(channel, None)

        for target, name in ((read_stdout, "out"), (read_stderr, "err")):
            thread = threading.Thread(
                target=target, name=f"ssh-{name} {self.stream.session_id}#{channel}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.transport.close)
        self._orders.shutdown(wait=False, cancel_futures=True)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

"""The SSH front door: OpenSSH clients on the public endpoint (gateway half).

    ssh -p 8443 'alice:web-1@gateway'        user alice, connection web-1

    client ── SSH (paramiko server, the gateway's persistent host key) ──▶ password or
           keyboard-interactive: a Wardgate credential of user alice
           ──▶ the session pipeline (authorize, record, route to an agent) for web-1;
               the agent opens its own SSH connection to the target (injected key or
               password, pinned host key) and the two are joined channel by channel
               (`shared.sshwire` frames inside the tunnel's Data payloads)

Threads and the event loop. paramiko is blocking and threaded, so it never runs on the
event loop: its Transport thread owns the client socket and calls our `ServerInterface`
callbacks; callbacks that need the loop (authenticate, audit, ask the agent) submit a
coroutine and wait for it in that thread. Per channel, a reader thread carries client bytes
to the tunnel within the channel's credit (`shared.sshwire.window`, refilled by the agent's
WindowAdjust), and a writer thread writes the agent's frames to the client in order and
acknowledges what it wrote. The loop only decodes and queues, so a client that stops
reading one channel stalls that channel, never the loop, the answers the transport thread
waits for, or the other channels. The session's end (client gone, agent or target lost) is
decided by the relay driver (shared/relay.py), without half-close. A channel's recording
(`cast`) is set and cleared on the loop only, and threads read it once per use; coroutines
a thread starts without waiting (`_later`) are owned and awaited before the session ends.

Approvals: an exec matching the connection's `ssh_review_exec` patterns (deny patterns
first: deny wins) is held. The transport thread creates the review (`ReviewService.hold`),
writes its id and `wardgate reviews approve ID` to the channel's stderr and answers the exec
request at once; the waiting is a task on the loop (`_held_exec`), so the connection's other
channels and sessions go on. Until the review decides, the channel's reader holds client
data back. Approved, the exec request goes to the agent as usual; denied or expired, the
client gets the reason on stderr and exit status 126; a client that hangs up (or closes the
channel) while it waits has its review cancelled.

Refusals reach the client in SSH: a login name without `:CONNECTION` (`ssh alice@gw`) fails
authentication with a userauth banner saying how to name the target (before authentication
it names no connection); a bad credential fails authentication; a session that
cannot be opened (unknown connection, no access, the target's host key changed...) and a
refused command are answered on the session channel with a message on stderr and exit
status 1 (session) or 126 (command); channel kinds the connection does not allow fail to
open ("administratively prohibited"). Agent forwarding, X11 and remote forwarding are
refused always.

Recording: every exec command (audited before it is forwarded) with its exit status;
subsystems (sftp) and forwardings as events; terminal channels (pty) as asciicast v2
files in `DATA_DIR/recordings/SESSION/CHANNEL.cast`, whose SHA-256 and size are audited
(`ssh.recording`) when the channel closes, so the file is tied into the hash chain.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paramiko
from cryptography.hazmat.primitives.asymmetric import ed25519
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_FAILED_CONNECT_FAILED,
    OPEN_SUCCEEDED,
    cMSG_USERAUTH_BANNER,
)
from paramiko.server import InteractiveQuery

from gateway import sshca
from gateway.audit import Auditor
from gateway.auth import Authenticator, AuthError, Identity
from gateway.frontdoor import current_admission
from gateway.policy import ssh as ssh_policy
from gateway.policy.grants import AccessPolicy
from gateway.ratelimit import Rejections, peer_host
from gateway.reviews import ReviewService, outcome
from gateway.sessions import Session, SessionBroker, SessionError
from gateway.store import ReviewRecord, Store, UserRecord
from shared.recording.asciicast import CastEncoder, Header
from shared.relay import Ended, relay
from shared.sshbridge import Credit, Worker
from shared.sshwire import frames as f
from shared.sshwire.codec import MAX_DATA, encode
from shared.sshwire.peer import FramePeer
from shared.sshwire.scp import ScpObserver
from shared.sshwire.sftp import (
    FileOperation,
    FileTransferred,
    ObserverStopped,
    SftpEvent,
    SftpObserver,
)
from shared.sshwire.window import ReceiveWindow
from shared.tasks import TaskOwner
from shared.tunnel.frames import ResetCode
from shared.tunnel.stream import SessionClosedError

log = logging.getLogger(__name__)

T = TypeVar("T")

HANDSHAKE_TIMEOUT = 30.0
AUTH_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
ATTACH_TIMEOUT = 10.0
HOST_KEY_FILE = "ssh_host_ed25519_key"
CERT_SUFFIX = "-cert-v01@openssh.com"
EXIT_REFUSED = 126
EXIT_SESSION_FAILED = 1
CLIENT_CHECK = 0.5  # seconds between looks at a held exec's channel (did the client leave?)


# ---- host key --------------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a public key (what `ssh-keygen -lf` prints)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_host_key(data_dir: Path) -> paramiko.PKey:
    """The gateway's SSH host key, created on first start and kept in the data directory."""
    path = data_dir / HOST_KEY_FILE
    sshca.ensure_ed25519_key(path, "wardgate-gateway")
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def cert_line(key: paramiko.PKey) -> bytes | None:
    """An OpenSSH certificate the client authenticates with, as a `.pub` line; else None.

    paramiko parses `*-cert-v01@openssh.com` keys itself (the key's numbers from inside
    the certificate, the whole certificate in `public_blob`) and verifies the client's
    signature with the certified key; whether to trust the certificate is ours to decide.
    """
    blob = key.public_blob
    if blob is None or not blob.key_type.endswith(CERT_SUFFIX):
        return None
    return blob.key_type.encode() + b" " + base64.b64encode(blob.key_blob)


def parse_username(username: str) -> tuple[str, str] | None:
    """`alice:web-1` -> ("alice", "web-1"); None when no connection is named."""
    user, sep, connection = username.partition(":")
    if not sep or not user or not connection:
        return None
    return user, connection


WHOAMI_HINT = "`wardgate whoami` lists the connections you may use."
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def target_hint(username: str) -> str:
    """The userauth banner for a login name that names no connection: how to name one.

    Said before authentication, so it names no connection and says nothing of who exists;
    it echoes the client's own login name only when that is a plain name."""
    user = username.partition(":")[0]
    user = user if _PLAIN_NAME.fullmatch(user) else "USER"
    return (
        "wardgate: the login name must name the target as USER:CONNECTION, e.g.\r\n"
        f"wardgate:   ssh -p PORT {user}:CONNECTION@HOST   (or: wardgate ssh CONNECTION)\r\n"
        f"wardgate: {WHOAMI_HINT}\r\n"
    )


# ---- per channel -----------------------------------------------------------------------


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass(eq=False)
class _Channel:
    id: int
    kind: str
    attached: threading.Event = field(default_factory=threading.Event)
    chan: paramiko.Channel | None = None
    reader: threading.Thread | None = None
    pty: tuple[str, int, int] | None = None  # term, cols, rows
    command: str | None = None
    cast: _CastFile | None = None
    exit_status: int | None = None
    refused: bool = False
    transfers: _TransferWatch | None = None
    credit: Credit = field(default_factory=Credit)  # client data we may still relay
    acks: ReceiveWindow = field(default_factory=ReceiveWindow)  # agent data written
    worker: Worker | None = None  # writes the agent's frames to the client, in order
    typed: ssh_policy.TypedLine | None = None  # shell input checked against deny patterns
    eof_held: bool = False  # the target's EOF, written after its exit status
    # Cleared while the channel's exec waits for review: the reader holds client data back.
    released: threading.Event = field(default_factory=_set_event)


class _TransferWatch:
    """Files seen on an sftp or legacy scp channel; fed from the reader and writer threads."""

    def __init__(
        self,
        emit: Callable[[list[SftpEvent]], None],
        *,
        sftp: bool = False,
        scp_upload: bool | None = None,
    ) -> None:
        self._sftp = SftpObserver() if sftp else None
        self._scp = ScpObserver(scp_upload) if scp_upload is not None else None
        self._lock = threading.Lock()
        self._emit = emit

    def client(self, data: bytes) -> None:
        with self._lock:
            if self._sftp is not None:
                events = self._sftp.client_data(data)
            elif self._scp is not None and self._scp.upload:
                events = self._scp.data(data)
            else:
                return
        if events:
            self._emit(events)

    def server(self, data: bytes) -> None:
        with self._lock:
            if self._sftp is not None:
                events = self._sftp.server_data(data)
            elif self._scp is not None and not self._scp.upload:
                events = self._scp.data(data)
            else:
                return
        if events:
            self._emit(events)


def scp_direction(command: str) -> bool | None:
    """For a legacy scp server command (`scp -t DIR` / `scp -f FILE`): True for upload."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if not argv or argv[0] != "scp":
        return None
    flags = {a for a in argv[1:] if a.startswith("-")}
    if any("t" in f for f in flags):
        return True
    if any("f" in f for f in flags):
        return False
    return None


class RecordingFailed(Exception):
    """A terminal recording could not be written (a full disk): its channel stops."""


class _CastFile:
    """One terminal channel's asciicast file; written from the reader and writer threads.

    Every chunk is in the file before it reaches the client or the target (design decision
    8). A write the disk refuses raises `RecordingFailed`, and the file is cut back to the
    lines written whole, which the audited hash and size cover."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._enc = CastEncoder(header, time.monotonic())
        self._hash = hashlib.sha256()
        self.size = 0
        self.failure: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # What the terminal showed is the user's: the gateway's user alone reads it.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self._file = os.fdopen(fd, "wb", buffering=0)
        except OSError as exc:
            raise RecordingFailed(f"the session cannot be recorded: {exc.strerror}") from exc
        self._write(self._enc.header_line())

    def _write(self, line: str) -> None:
        if not line:
            return
        raw = line.encode()
        with self._lock:
            if self.failure is not None:
                raise RecordingFailed(self.failure)
            if self._file.closed:
                return
            try:
                left = memoryview(raw)
                while left:  # unbuffered: a short write (the disk filling up) goes on
                    left = left[self._file.write(left) or 0 :]
            except OSError as exc:
                self.failure = f"the session recording failed: {exc.strerror}"
                with contextlib.suppress(OSError):
                    self._file.truncate(self.size)  # a partial line is not the record
                self._file.close()
                raise RecordingFailed(self.failure) from exc
            self._hash.update(raw)
            self.size += len(raw)

    def output(self, data: bytes) -> None:
        with self._lock:
            line = self._enc.output(time.monotonic(), data)
        self._write(line)

    def input(self, data: bytes) -> None:
        with self._lock:
            line = self._enc.input(time.monotonic(), data)
        self._write(line)

    def resize(self, cols: int, rows: int) -> None:
        with self._lock:
            line = self._enc.resize(time.monotonic(), cols, rows)
        self._write(line)

    def close(self) -> tuple[str, int]:
        with self._lock:
            if not self._file.closed:
                self._file.close()
            return self._hash.hexdigest(), self.size


# ---- paramiko's side (runs in paramiko's transport thread) -----------------------------


class _Server(paramiko.ServerInterface):
    def __init__(self, conn: _Connection) -> None:
        self.c = conn

    # authentication
    def get_allowed_auths(self, username: str) -> str:
        if parse_username(username) is None:
            # No target named: nothing can succeed, so the client is not asked to type a
            # credential (it has been sent the hint); keys it offers fail quietly.
            return "publickey"
        return "publickey,password,keyboard-interactive"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        # paramiko checks the signature itself; this is asked with and without one.
        if self.c.hint_target(username):
            return AUTH_FAILED
        cert = cert_line(key)
        if cert is not None:  # only ever checked as a certificate, never as its bare key
            return self.c.login(username, cert=cert)
        return self.c.login(username, key=fingerprint(key))

    def check_auth_none(self, username: str) -> int:
        # OpenSSH's ssh asks "none" first: the moment to tell it how to name the target.
        self.c.hint_target(username)
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        if self.c.hint_target(username):
            return AUTH_FAILED
        return self.c.login(username, password=password)

    def check_auth_interactive(self, username: str, submethods: str) -> Any:
        if self.c.hint_target(username):
            return AUTH_FAILED
        self.c.pending_user = username
        return InteractiveQuery(
            "Wardgate", "Sign in with a Wardgate credential.", ("Wardgate credential: ", False)
        )

    def check_auth_interactive_response(self, responses: list[str]) -> int:
        if len(responses) != 1:
            return AUTH_FAILED
        return self.c.login(self.c.pending_user, password=responses[0])

    # channels
    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            self.c.refuse_quietly(f"channel kind {kind!r}")
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        return self.c.open_channel(chanid, f.ChannelOpen(chanid, "session"))

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        self.c.ensure_session()
        decision = self.c.may("forwarding")
        if not decision.allowed:
            self.c.audit_wait(
                "ssh.refused",
                channel=chanid,
                connection=self.c.connection,
                reason=f"forwarding to {destination[0]}:{destination[1]}: {decision.reason}",
            )
            return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        self.c.audit_wait(
            "ssh.forward", channel=chanid, host=destination[0], port=int(destination[1])
        )
        order = f.ChannelOpen(
            chanid, "direct-tcpip", destination[0], int(destination[1]), origin[0], int(origin[1])
        )
        return self.c.open_channel(chanid, order)

    def check_channel_pty_request(
        self,
        channel: paramiko.Channel,
        term: bytes,
        width: int,
        height: int,
        pixelwidth: int,
        pixelheight: int,
        modes: bytes,
    ) -> bool:
        ch = self.c.attach(channel)
        if ch is None or self.c.session is None:
            return True  # the error is told when the shell or command is asked for
        name = term.decode(errors="replace") if isinstance(term, bytes) else str(term)
        ch.pty = (name, width, height)
        return self.c.request(
            f.PtyRequest(ch.id, 0, name, width, height, pixelwidth, pixelheight, bytes(modes))
        )

    def check_channel_env_request(
        self, channel: paramiko.Channel, name: bytes, value: bytes
    ) -> bool:
        ch = self.c.attach(channel)
        if ch is None or self.c.session is None:
            return False
        return self.c.request(f.EnvRequest(ch.id, 0, _text(name), _text(value)), wait=False)

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return self.c.start(channel, "shell")

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self.c.start(channel, "exec", command=bytes(command))

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        return self.c.start(channel, "subsystem", subsystem=name)

    def check_channel_window_change_request(
        self,
        channel: paramiko.Channel,
        width: int,
        height: int,
        pixelwidth: int,
        pixelheight: int,
    ) -> bool:
        ch = self.c.attach(channel)
        if ch is None or self.c.session is None:
            return False
        cast = ch.cast  # read once: the loop may close it meanwhile
        if cast is not None:
            try:
                cast.resize(width, height)
            except RecordingFailed as exc:
                self.c.recording_failed(ch, exc)
                return False
        return self.c.request(
            f.WindowChange(ch.id, width, height, pixelwidth, pixelheight), wait=False
        )

    def check_channel_x11_request(self, *args: Any) -> bool:
        self.c.refuse_quietly("X11 forwarding")
        return False

    def check_channel_forward_agent_request(self, channel: paramiko.Channel) -> bool:
        self.c.refuse_quietly("agent forwarding")
        return False

    def check_port_forward_request(self, address: str, port: int) -> int | bool:
        self.c.refuse_quietly(f"remote forwarding of {address}:{port}")
        return False

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        return False


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# ---- one client connection -------------------------------------------------------------


class _Connection:
    def __init__(self, door: SshFrontDoor, sock: socket.socket, client: str) -> None:
        self.door = door
        self.sock = sock
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.transport: paramiko.Transport | None = None
        self.identity: Identity | None = None
        self.user = ""
        self.connection = ""
        self.pending_user = ""
        self.session: Session | None = None
        self.session_error: str | None = None
        self.session_hint = ""  # what to do about session_error, for the client only
        self.roles: tuple[str, ...] = ()
        self.channels: dict[int, _Channel] = {}
        self._lock = threading.Lock()
        self._waiting: dict[tuple[int, int], asyncio.Future[Any]] = {}
        self._next_request = 0
        self._opening = False
        self._session_ready = asyncio.Event()
        self._done = asyncio.Event()
        self._tasks = TaskOwner(f"ssh/{client}")  # held execs waiting for their review
        # Started from paramiko threads (`_later`); awaited, not cancelled, at the end.
        self._later_tasks = TaskOwner(f"ssh/{client}/later")
        self._later_pending: set[asyncio.Task[None]] = set()
        self.error: str | None = None
        self._hinted = False  # the client was told how to name the target
        self.admission = current_admission()  # told at authentication (on the loop)

    # -- bridging: a paramiko thread waits for a coroutine on the loop -----------------

    def _wait(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """From a paramiko thread: run `coro` on the loop and wait for it. The thread owns
        it: given up on (a time limit), it is cancelled, not left running."""
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

    def _later(self, make: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """From a paramiko thread: run a coroutine on the loop without waiting for it. It is
        a task of the connection's (`_later_tasks`), awaited before the session ends
        (`_finish`); the coroutine is made on the loop, so none is left unawaited."""

        def spawn() -> None:
            try:
                task = self._later_tasks.spawn(make(), name=name)
            except RuntimeError:  # finished: the connection is over
                return
            self._later_pending.add(task)
            task.add_done_callback(self._later_pending.discard)

        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(spawn)

    def audit_wait(self, kind: str, **data: Any) -> None:
        """Record an event durably before the action it describes goes on."""
        actor = self.user or "-"
        sid = self.session.id if self.session else None
        self._wait(self.door.audit.record(kind, actor=actor, session_id=sid, **data), 30)

    def audit_later(self, kind: str, **data: Any) -> None:
        actor = self.user or "-"
        sid = self.session.id if self.session else None
        self.loop.call_soon_threadsafe(
            lambda: self.door.audit.submit(kind, actor=actor, session_id=sid, **data)
        )

    def hint_target(self, username: str) -> bool:
        """True when `username` names no connection; the client is told how, once, in an
        SSH userauth banner (RFC 4252 allows one at any time before authentication), and
        the refusal is audited once."""
        if parse_username(username) is not None:
            return False
        with self._lock:
            hinted, self._hinted = self._hinted, True
        if hinted:
            return True
        self.audit_later(
            "ssh.refused",
            client=self.client,
            reason="user name does not name a connection (use USER:CONNECTION)",
        )
        transport = self.transport
        if transport is not None:
            banner = paramiko.Message()
            banner.add_byte(cMSG_USERAUTH_BANNER)
            banner.add_string(target_hint(username))
            banner.add_string("")  # language tag
            # paramiko has no public call for a banner after the service request: its own
            # `get_banner` is sent before any login name is known.
            with contextlib.suppress(EOFError, OSError, paramiko.SSHException):  # gone
                transport._send_message(banner)  # type: ignore[attr-defined]
        return True

    def refuse_quietly(self, what: str) -> None:
        self.audit_later("ssh.refused", connection=self.connection, reason=f"{what} is not allowed")

    # -- authentication (transport thread) ---------------------------------------------

    def login(self, username: str, *, password: str = "", key: str = "", cert: bytes = b"") -> int:
        parsed = parse_username(username)
        if parsed is None:
            self.hint_target(username)
            return AUTH_FAILED
        try:
            ok = self._wait(self._login(parsed[0], parsed[1], password, key, cert), AUTH_TIMEOUT)
        except (concurrent.futures.TimeoutError, RuntimeError):
            ok = False
        # paramiko itself disconnects a connection after 10 failed attempts.
        return AUTH_SUCCESSFUL if ok else AUTH_FAILED

    async def _login(
        self, user: str, connection: str, password: str, key: str, cert: bytes
    ) -> bool:
        door = self.door
        try:
            if cert:
                identity = await door.cert_identity(user, cert)
            elif key:
                identity = await door.key_identity(user, key)
            else:
                identity = await door.auth.authenticate(password)
        except AuthError as exc:
            limiter = door.limiter
            if not key and limiter and await limiter.rejected(peer_host(self.client), "ssh"):
                return False  # over the address's limit: no event (api/ratelimit.py)
            if not key:  # a key the client merely offers is not an attack worth a line
                await door.audit.record(
                    "ssh.refused", client=self.client, user=user, reason=f"auth: {exc}"
                )
            return False
        if identity.user != user:
            await door.audit.record(
                "ssh.refused",
                client=self.client,
                user=user,
                reason="auth: credential belongs to another user",
            )
            return False
        self.identity, self.user, self.connection = identity, user, connection
        self.admission.authenticated()
        self.roles = tuple(r.name for r in door.access.roles_of(identity.user, identity.groups))
        return True

    def ensure_session(self) -> None:
        """Open the Wardgate session at the first channel (after authentication)."""
        with self._lock:
            if self._opening:
                return
            self._opening = True
        try:
            self._wait(self._open_session(), AUTH_TIMEOUT)
        except (concurrent.futures.TimeoutError, RuntimeError):
            self.session_error = self.session_error or "the session could not be opened in time"

    async def _open_session(self) -> None:
        assert self.identity is not None
        try:
            self.session = await self.door.broker.open(
                self.identity,
                self.connection,
                protocol="ssh",
                client_addr=self.client,
                types=("ssh",),
            )
        except SessionError as exc:
            self.session_error = exc.message
            if exc.kind == "unknown_connection" or (
                exc.kind == "forbidden" and "wardgate request" not in exc.message
            ):
                # Authenticated by now: pointing at the user's own grants leaks nothing.
                self.session_hint = f"\r\nwardgate: {WHOAMI_HINT}"
        finally:
            self._session_ready.set()

    # -- policy --------------------------------------------------------------------------

    def may(self, action: str) -> ssh_policy.SshDecision:
        if self.session is None:
            return ssh_policy.SshDecision(False, self.session_error or "no session")
        assert self.identity is not None
        return ssh_policy.may(
            action,
            self.session.connection.options,
            self.roles,
            is_admin=self.identity.is_admin,
        )

    # -- channels (transport thread) -----------------------------------------------------

    def open_channel(self, chanid: int, order: f.ChannelOpen) -> int:
        self.ensure_session()
        ch = _Channel(chanid, order.kind)
        ch.worker = Worker(f"ssh-write {self.client}#{chanid}", lambda fr: self._write(ch, fr))
        with self._lock:
            self.channels[chanid] = ch
        if self.session is None:
            # Opened so the reason can be told on it (stderr and an exit status).
            return OPEN_SUCCEEDED
        try:
            result = self._wait(self._ask((chanid, 0), order), REQUEST_TIMEOUT)
        except (concurrent.futures.TimeoutError, SessionClosedError, RuntimeError):
            result = f.OpenResult(chanid, False, "the agent did not answer")
        if not isinstance(result, f.OpenResult) or not result.ok:
            with self._lock:
                self.channels.pop(chanid, None)
            ch.worker.stop()
            message = result.message if isinstance(result, f.OpenResult) else ""
            self.audit_later("ssh.channel_failed", channel=chanid, reason=message)
            return OPEN_FAILED_CONNECT_FAILED
        return OPEN_SUCCEEDED

    def attach(self, channel: paramiko.Channel) -> _Channel | None:
        """Bind paramiko's Channel object to our channel and start its reader."""
        with self._lock:
            ch = self.channels.get(channel.get_id())
        if ch is None:
            return None
        if ch.chan is None:
            ch.chan = channel
            ch.attached.set()
            if self.session is not None:
                ch.reader = threading.Thread(
                    target=self._read_client,
                    args=(ch,),
                    name=f"ssh-read {self.client} #{ch.id}",
                    daemon=True,
                )
                ch.reader.start()
        return ch

    def request(self, order: f.Frame, *, wait: bool = True) -> bool:
        """Forward a channel request to the agent; with `wait`, the target's answer."""
        if not wait:
            try:
                self._wait(self._send(order), REQUEST_TIMEOUT)
            except (concurrent.futures.TimeoutError, SessionClosedError, RuntimeError):
                return False
            return True
        with self._lock:
            self._next_request += 1
            number = self._next_request
        order = _with_request(order, number)
        channel = order.channel
        try:
            result = self._wait(self._ask((channel, number), order), REQUEST_TIMEOUT)
        except (concurrent.futures.TimeoutError, SessionClosedError, RuntimeError):
            return False
        return isinstance(result, f.RequestResult) and result.ok

    def start(
        self,
        channel: paramiko.Channel,
        what: str,
        *,
        command: bytes | None = None,
        subsystem: str | None = None,
    ) -> bool:
        """A shell, exec or subsystem request: authorize, record, forward."""
        ch = self.attach(channel)
        if ch is None:
            return False
        if self.session is None:
            message = f"wardgate: {self.session_error}{self.session_hint}"
            self._refuse(ch, message, EXIT_SESSION_FAILED)
            return True
        options = self.session.connection.options
        text = command.decode(errors="replace") if command is not None else ""
        action = {"shell": "shell", "exec": "exec"}.get(what, "sftp")
        if what == "subsystem" and subsystem != "sftp":
            self._refuse(ch, f"wardgate: subsystem {subsystem!r} is not offered", EXIT_REFUSED)
            self.refuse_quietly(f"subsystem {subsystem!r}")
            return True
        decision = self.may(action)
        if decision.allowed and what == "exec":
            decision = ssh_policy.check_exec(text, options)  # deny wins over review
        held: ssh_policy.ExecReview | None = None
        if decision.allowed and what == "exec":
            try:
                held = ssh_policy.check_review(text, options)
            except ValueError as exc:  # fail closed: nobody could approve it
                decision = ssh_policy.SshDecision(False, str(exc), "ssh_review")
        if not decision.allowed:
            self.audit_wait(
                "ssh.refused",
                channel=ch.id,
                connection=self.connection,
                request=what,
                command=text if what == "exec" else None,
                reason=decision.reason,
                rules=[decision.rule] if decision.rule else [],
            )
            self._refuse(
                ch,
                f"wardgate: {decision.reason} (connection {self.connection!r}, user {self.user!r})",
                EXIT_REFUSED,
            )
            return True
        if held is not None:
            return self._hold_exec(ch, text, bytes(command or b""), held)
        if what == "exec":
            ch.command = text
            upload = scp_direction(text)
            self.audit_wait(
                "ssh.exec",
                channel=ch.id,
                command=text,
                pty=ch.pty is not None,
                scp=upload is not None,
            )
            if upload is not None:
                ch.transfers = _TransferWatch(
                    lambda ev: self._sftp_events(ch.id, ev), scp_upload=upload
                )
            order: f.Frame = f.ExecRequest(ch.id, 0, bytes(command or b""))
        elif what == "shell":
            self.audit_wait("ssh.shell", channel=ch.id, pty=ch.pty is not None)
            order = f.ShellRequest(ch.id, 0)
            if ch.pty is not None and (
                ssh_policy.deny_patterns(options) or ssh_policy.review_patterns(options)
            ):
                ch.typed = ssh_policy.TypedLine(options)
        else:
            self.audit_wait("ssh.subsystem", channel=ch.id, name=subsystem)
            order = f.SubsystemRequest(ch.id, 0, subsystem or "")
            ch.transfers = _TransferWatch(lambda ev: self._sftp_events(ch.id, ev), sftp=True)
        if ch.pty is not None and what != "subsystem":
            try:
                self._start_cast(ch, text)
            except RecordingFailed as exc:
                self.recording_failed(ch, exc)
                return True
        ok = self.request(order)
        if not ok:
            self.audit_later("ssh.request_failed", channel=ch.id, request=what)
        return ok

    # -- held execs: approvals ------------------------------------------------------------

    def _hold_exec(
        self, ch: _Channel, text: str, command: bytes, held: ssh_policy.ExecReview
    ) -> bool:
        """In the transport thread: create the review, tell the client, and leave the
        waiting to the loop, so this thread goes on serving the connection's other
        channels. The exec request itself is answered at once (the channel stays open)."""
        assert self.session is not None and self.identity is not None
        reviews = self.door.reviews
        why = f"{held.reason}; approvals are not enabled on this gateway"
        review: ReviewRecord | None = None
        if reviews is not None:
            try:
                review = self._wait(
                    reviews.hold(
                        self.identity,
                        connection=self.connection,
                        session_id=self.session.id,
                        protocol="ssh",
                        text=text,
                        reason=held.reason,
                        rules=(held.rule,),
                        terms=held.terms,
                    ),
                    REQUEST_TIMEOUT,
                )
            except Exception:
                # Fail closed: without a stored review nobody could approve it.
                log.exception("ssh %s: cannot create a review", self.client)
                why = f"{held.reason}; the review could not be created"
        if review is None:
            self.audit_wait(
                "ssh.refused",
                channel=ch.id,
                connection=self.connection,
                request="exec",
                command=text,
                reason=why,
                rules=[held.rule],
            )
            self._refuse(ch, f"wardgate: {why}", EXIT_REFUSED)
            return True
        ch.command = text
        ch.released.clear()  # before this returns: no client data has been read yet
        terms = held.terms
        assert ch.chan is not None
        with contextlib.suppress(Exception):
            ch.chan.sendall_stderr(
                (
                    f"wardgate: command held for review {review.id}: {held.reason}\r\n"
                    f"wardgate: waiting up to {terms.timeout}s for {terms.required} "
                    f"approval(s); another person approves with: "
                    f"wardgate reviews approve {review.id}\r\n"
                ).encode()
            )

        def spawn() -> None:
            try:
                self._tasks.spawn(
                    self._held_exec(ch, review, text, command), name=f"review/{review.id}"
                )
            except RuntimeError:
                # The connection is ending: nothing will run; the review expires unanswered.
                ch.released.set()

        try:
            self.loop.call_soon_threadsafe(spawn)
        except RuntimeError:  # the loop is closing: so is the connection
            ch.released.set()
        return True

    async def _held_exec(
        self, ch: _Channel, review: ReviewRecord, text: str, command: bytes
    ) -> None:
        """Wait for the review without blocking anything else; then run or refuse."""
        reviews = self.door.reviews
        assert reviews is not None
        try:
            decided = await reviews.wait_for_client(
                review.id,
                left=self._done.wait(),
                gone=lambda: self._channel_gone(ch),
                check=CLIENT_CHECK,
                withdraw="the client went away",
            )
            if decided is None:
                return
            if self._channel_gone(ch):
                return  # approved, but the client hung up while it waited: run nothing
            if decided.status != "approved":
                ended = outcome(decided)
                reason = f"review {review.id} {ended} ({decided.decision}); command not run"
                await self.door.audit.record(
                    "ssh.refused",
                    actor=self.user,
                    session_id=review.session_id,
                    channel=ch.id,
                    connection=self.connection,
                    request="exec",
                    command=text,
                    review=review.id,
                    reason=reason,
                    rules=list(review.rules),
                )
                await asyncio.to_thread(self._refuse, ch, f"wardgate: {reason}", EXIT_REFUSED)
                return
            await self._run_approved(ch, review, text, command)
        finally:
            ch.released.set()

    def _channel_gone(self, ch: _Channel) -> bool:
        chan = ch.chan
        return self._done.is_set() or chan is None or chan.closed

    async def _run_approved(
        self, ch: _Channel, review: ReviewRecord, text: str, command: bytes
    ) -> None:
        """The approved command goes to the target, recorded first, as an unheld exec."""
        upload = scp_direction(text)
        await self.door.audit.record(
            "ssh.exec",
            actor=self.user,
            session_id=review.session_id,
            channel=ch.id,
            command=text,
            pty=ch.pty is not None,
            scp=upload is not None,
            review=review.id,
        )
        if upload is not None:
            ch.transfers = _TransferWatch(
                lambda ev: self._sftp_events(ch.id, ev), scp_upload=upload
            )
        if ch.pty is not None:
            try:
                ch.cast = await asyncio.to_thread(self._open_cast, ch, text)
            except RecordingFailed as exc:
                await asyncio.to_thread(self.recording_failed, ch, exc)
                return
        with self._lock:
            self._next_request += 1
            number = self._next_request
        try:
            result = await self._ask((ch.id, number), f.ExecRequest(ch.id, number, command))
            ok = isinstance(result, f.RequestResult) and result.ok
        except (TimeoutError, SessionClosedError):
            ok = False
        if not ok:
            # The client was told the request succeeded: say so on the channel instead.
            self.door.audit.submit(
                "ssh.request_failed",
                actor=self.user,
                session_id=review.session_id,
                channel=ch.id,
                request="exec",
            )
            await asyncio.to_thread(
                self._refuse, ch, "wardgate: the target refused the approved command", 255
            )

    def _sftp_events(self, channel: int, events: list[SftpEvent]) -> None:
        """From a relay thread: what the sftp observer saw, into the audit log."""
        for event in events:
            if isinstance(event, FileTransferred):
                self.audit_later(
                    "ssh.transfer",
                    channel=channel,
                    path=event.path,
                    direction="upload" if event.uploaded else "download",
                    uploaded=event.uploaded,
                    downloaded=event.downloaded,
                    sha256=event.sha256,
                )
            elif isinstance(event, FileOperation):
                self.audit_later(
                    "ssh.file_op",
                    channel=channel,
                    op=event.op,
                    path=event.path,
                    target=event.target or None,
                )
            elif isinstance(event, ObserverStopped):
                self.audit_later("ssh.transfer_unobserved", channel=channel, reason=event.reason)

    def _open_cast(self, ch: _Channel, text: str) -> _CastFile:
        """In a thread (it creates a file): the channel's recording, not yet in use."""
        assert self.session is not None and ch.pty is not None
        term, cols, rows = ch.pty
        path = self.door.recordings / self.session.id / f"{ch.id}.cast"
        title = f"{self.user}@{self.connection}" + (f": {text}" if text else "")
        return _CastFile(path, Header(cols, rows, int(time.time()), term, title))

    async def _adopt_cast(self, ch: _Channel, cast: _CastFile) -> None:
        # `ch.cast` is written on the loop only; the threads read it once per use.
        ch.cast = cast

    def _start_cast(self, ch: _Channel, text: str) -> None:
        """In the transport thread: record the channel before its request goes on."""
        cast = self._open_cast(ch, text)
        try:
            self._wait(self._adopt_cast(ch, cast), REQUEST_TIMEOUT)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            cast.close()
            raise RecordingFailed("the session cannot be recorded: the gateway is ending") from exc

    def recording_failed(self, ch: _Channel, exc: RecordingFailed) -> None:
        """Fail closed: a terminal that cannot be recorded stops, and the target's side of
        the channel is closed; what was recorded up to there stays, hashed (ssh.recording)."""
        with self._lock:
            if ch.refused:
                return
            ch.refused = True
        log.error("ssh %s: channel %d: %s", self.client, ch.id, exc)
        self.audit_later("ssh.recording_failed", channel=ch.id, reason=str(exc))
        self._refuse(ch, f"\r\nwardgate: {exc}; the channel is closed", EXIT_SESSION_FAILED)
        if self.session is not None:
            self._later(lambda: self._send_quietly(f.ChannelClose(ch.id)), f"close/{ch.id}")

    async def _send_quietly(self, frame: f.Frame) -> None:
        with contextlib.suppress(SessionClosedError):
            await self._send(frame)

    def _refuse(self, ch: _Channel, message: str, status: int) -> None:
        """Tell the client why on stderr, give the exit status, then close the channel."""
        ch.refused = True
        chan = ch.chan
        assert chan is not None
        with contextlib.suppress(Exception):
            chan.sendall_stderr((message.rstrip() + "\r\n").encode())
            chan.send_exit_status(status)
        # Closed by the channel's writer thread: the request's reply goes out first.
        assert ch.worker is not None
        ch.worker.put(f.ChannelClose(ch.id))

    # -- client -> agent (one reader thread per channel) -------------------------------

    def _read_client(self, ch: _Channel) -> None:
        chan = ch.chan
        assert chan is not None
        try:
            while True:
                data = chan.recv(MAX_DATA)
                if not ch.released.is_set():
                    # A held exec: nothing reaches the target before the review decides
                    # (set again on every outcome, see `_held_exec`).
                    ch.released.wait()
                if ch.refused:
                    return
                if not data:
                    break
                cast = ch.cast  # read once: the loop may close it meanwhile
                if cast is not None:
                    try:
                        cast.input(data)
                    except RecordingFailed as exc:  # not recorded: not sent
                        self.recording_failed(ch, exc)
                        return
                if ch.transfers is not None:
                    ch.transfers.client(data)
                refused: list[tuple[str, ssh_policy.SshDecision]] = []
                if ch.typed is not None:
                    data, refused = ch.typed.feed(data)
                if not ch.credit.take(len(data)):
                    return
                self._wait(self._send(f.ChannelData(ch.id, data)), REQUEST_TIMEOUT * 10)
                for line, decision in refused:
                    self._refuse_typed(ch, line, decision)
            self._wait(self._send(f.Eof(ch.id)), REQUEST_TIMEOUT)
        except (SessionClosedError, OSError, EOFError, RuntimeError):
            return
        except concurrent.futures.TimeoutError:
            log.warning("ssh %s: channel %d: the tunnel did not take data", self.client, ch.id)
        except Exception:
            log.exception("ssh %s: channel %d reader failed", self.client, ch.id)

    def _refuse_typed(self, ch: _Channel, line: str, decision: ssh_policy.SshDecision) -> None:
        """A denied line typed into a shell was not entered: say why, on the terminal."""
        self.audit_later(
            "ssh.refused",
            channel=ch.id,
            connection=self.connection,
            request="shell input",
            command=line,
            reason=decision.reason,
            rules=[decision.rule],
        )
        assert ch.chan is not None
        with contextlib.suppress(Exception):
            ch.chan.sendall_stderr(f"\r\nwardgate: {decision.reason}\r\n".encode())

    # -- loop side -------------------------------------------------------------------------

    async def _send(self, frame: f.Frame) -> None:
        if self.session is None:
            raise SessionClosedError(ResetCode.CANCELLED, "no session")
        stream = self.session.stream
        if not stream.state.can_send_data:
            # The client hung up and the loop closed our side while a channel's reader
            # thread was still sending (its EOF): that frame has nowhere to go.
            raise SessionClosedError(ResetCode.CANCELLED, "the session is closing")
        await stream.send_data(encode(frame))

    async def _ask(self, key: tuple[int, int], order: f.Frame) -> f.Frame:
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._waiting[key] = fut
        try:
            await self._send(order)
            async with asyncio.timeout(REQUEST_TIMEOUT):
                result: f.Frame = await fut
                return result
        finally:
            self._waiting.pop(key, None)

    async def run(self) -> None:
        door = self.door
        self.sock.setblocking(True)
        transport = paramiko.Transport(self.sock)
        self.transport = transport
        transport.add_server_key(door.host_key)
        transport.local_version = "SSH-2.0-Wardgate"
        # Our own thread runs the handshake and accepts channels: a default-executor
        # worker held for the whole connection would starve the store's calls.
        thread = threading.Thread(
            target=self._accept_loop, args=(transport,), name=f"ssh {self.client}", daemon=True
        )
        thread.start()
        try:
            await self._relay()
        finally:
            await self._tasks.aclose()  # a held exec's review is withdrawn
            await self._finish()
            await asyncio.to_thread(thread.join, 5)

    def _accept_loop(self, transport: paramiko.Transport) -> None:
        try:
            transport.start_server(server=_Server(self))
            while True:
                chan = transport.accept(1.0)
                if chan is not None:
                    self.attach(chan)
                elif not transport.is_active():
                    break
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.audit_later("ssh.refused", client=self.client, reason=f"handshake: {exc}")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self.loop.call_soon_threadsafe(self._client_gone)

    def _client_gone(self) -> None:
        self._done.set()
        self._session_ready.set()

    async def _relay(self) -> None:
        """Once the session is open: the relay driver (shared/relay.py) between the tunnel
        and the client's connection, without half-close: the client hanging up, or the
        agent ending the session, ends it."""
        await self._session_ready.wait()  # set also when the client left before it opened
        session = self.session
        if session is None:
            # Not opened: the client is told why on its channel; it hangs up when it has read.
            await self._done.wait()
            return
        end = await relay(
            session.stream,
            FramePeer(self._deliver, self._done.wait, "agent"),
            half_close=False,
            name=f"ssh/{self.client}",
            who="client",
            describe=session.describe_end,
        )
        self.error = end.error
        if end.ended is not Ended.PEER_CLOSED:
            # The agent side ended: tell open session channels why, then hang up.
            channels = list(self.channels.values())
            await asyncio.to_thread(_hang_up, self.transport, channels, end.error)

    async def _deliver(self, frame: f.Frame) -> None:
        """Answers wake the paramiko thread waiting for them; the rest is queued to the
        channel's writer thread, so this loop never waits on a slow client."""
        if isinstance(frame, f.OpenResult):
            fut = self._waiting.get((frame.channel, 0))
            if fut is not None and not fut.done():
                fut.set_result(frame)
            return
        if isinstance(frame, f.RequestResult):
            fut = self._waiting.get((frame.channel, frame.request))
            if fut is not None and not fut.done():
                fut.set_result(frame)
            return
        ch = self.channels.get(frame.channel)
        if ch is None or ch.worker is None:
            return
        if isinstance(frame, f.WindowAdjust):
            ch.credit.grant(frame.increment)  # WindowError: the agent broke the protocol
            return
        if isinstance(frame, f.ExitStatus):
            ch.exit_status = frame.status
            self.door.audit.submit(
                "ssh.exit",
                actor=self.user,
                session_id=self.session.id if self.session else None,
                channel=ch.id,
                command=ch.command,
                status=frame.status,
            )
        elif isinstance(frame, f.ExitSignal):
            self.door.audit.submit(
                "ssh.exit",
                actor=self.user,
                session_id=self.session.id if self.session else None,
                channel=ch.id,
                command=ch.command,
                signal=frame.signal,
            )
        ch.worker.put(frame)

    def _write(self, ch: _Channel, frame: f.Frame) -> bool:
        """In the channel's writer thread: one agent frame to the client; True when done."""
        if isinstance(frame, f.Eof) and ch.kind == "session":
            # The target's EOF waits for its exit status (the agent sends EOF, status, close):
            # a multiplexing OpenSSH client closes a session channel at EOF both ways, and the
            # status arriving after that close is lost to its mux client (exit 255).
            ch.eof_held = True
            return False
        try:
            _write_client(ch, frame)
        except RecordingFailed as exc:  # not recorded: not shown
            self.recording_failed(ch, exc)
            return False
        if ch.eof_held and isinstance(frame, f.ExitStatus | f.ExitSignal):
            ch.eof_held = False
            _write_client(ch, f.Eof(ch.id))
        if isinstance(frame, f.ChannelData | f.ExtendedData):
            increment = ch.acks.delivered(len(frame.data))
            if increment:
                with contextlib.suppress(
                    SessionClosedError, RuntimeError, concurrent.futures.TimeoutError
                ):
                    self._wait(self._send(f.WindowAdjust(ch.id, increment)), REQUEST_TIMEOUT)
            return False
        if isinstance(frame, f.ChannelClose):
            ch.credit.close()
            with self._lock:
                self.channels.pop(ch.id, None)
            self._later(lambda: self._close_cast(ch), f"recording/{ch.id}")
            return True
        return False

    async def _close_cast(self, ch: _Channel) -> None:
        if ch.cast is None or self.session is None:
            return
        cast, ch.cast = ch.cast, None
        digest, size = await asyncio.to_thread(cast.close)
        await self.door.audit.record(
            "ssh.recording",
            actor=self.user,
            session_id=self.session.id,
            channel=ch.id,
            format="asciicast-v2",
            path=str(cast.path.relative_to(self.door.recordings)),
            sha256=digest,
            bytes=size,
            command=ch.command,
            **({"incomplete": cast.failure} if cast.failure else {}),
        )

    async def _finish(self) -> None:
        # What paramiko threads started (a channel's recording being closed and audited)
        # is part of the session: it ends before the session's end is recorded.
        while self._later_pending:
            await asyncio.gather(*self._later_pending, return_exceptions=True)
        await self._later_tasks.aclose()
        for ch in list(self.channels.values()):
            with contextlib.suppress(Exception):
                await self._close_cast(ch)
        for ch in list(self.channels.values()):
            ch.credit.close()
            if ch.worker is not None:
                ch.worker.stop()
        transport = self.transport
        if transport is not None:
            await asyncio.to_thread(transport.close)
        if self.session is not None:
            session = self.session
            if not session.stream.finished:
                await session.stream.reset(ResetCode.CANCELLED, self.error or "client went away")
            await self.door.broker.finish(session, error=self.error)


def _with_request(order: f.Frame, number: int) -> f.Frame:
    changed: f.Frame = dataclasses.replace(order, request=number)  # type: ignore[arg-type]
    return changed


def _write_client(ch: _Channel, frame: f.Frame) -> None:
    """Runs in the connection's writer thread: one agent frame to the client's channel."""
    if not ch.attached.wait(ATTACH_TIMEOUT):
        log.warning("ssh channel %d never attached; dropped %s", ch.id, type(frame).__name__)
        return
    chan = ch.chan
    assert chan is not None
    if ch.refused and not isinstance(frame, f.ChannelClose):
        return
    cast = ch.cast  # read once: the loop may close it between a test and a use
    try:
        if isinstance(frame, f.ChannelData):
            if cast is not None:
                cast.output(frame.data)
            if ch.transfers is not None:
                ch.transfers.server(frame.data)
            chan.sendall(frame.data)
        elif isinstance(frame, f.ExtendedData):
            if cast is not None:
                cast.output(frame.data)
            chan.sendall_stderr(frame.data)
        elif isinstance(frame, f.Eof):
            chan.shutdown_write()
        elif isinstance(frame, f.ExitStatus):
            chan.send_exit_status(frame.status)
        elif isinstance(frame, f.ExitSignal):
            _send_exit_signal(chan, frame)
        elif isinstance(frame, f.ChannelClose):
            chan.shutdown_write()
            chan.close()
    except (OSError, EOFError, paramiko.SSHException):
        pass  # the client went away; the transport watcher ends the session


def _send_exit_signal(chan: paramiko.Channel, frame: f.ExitSignal) -> None:
    m = paramiko.Message()
    m.add_byte(bytes((98,)))  # SSH_MSG_CHANNEL_REQUEST
    m.add_int(chan.remote_chanid)
    m.add_string("exit-signal")
    m.add_boolean(False)
    m.add_string(frame.signal)
    m.add_boolean(frame.core_dumped)
    m.add_string(frame.message)
    m.add_string("")
    chan.transport._send_user_message(m)  # type: ignore[union-attr]


def _hang_up(
    transport: paramiko.Transport | None, channels: list[_Channel], error: str | None
) -> None:
    for ch in channels:
        chan = ch.chan
        if chan is None or chan.closed:
            continue
        with contextlib.suppress(Exception):
            if error is not None and ch.kind == "session":
                chan.sendall_stderr(f"\r\nwardgate: session ended: {error}\r\n".encode())
                if ch.exit_status is None:
                    chan.send_exit_status(255)
            chan.close()
    if transport is not None:
        transport.close()


class SshFrontDoor:
    def __init__(
        self,
        host_key: paramiko.PKey,
        store: Store,
        auth: Authenticator,
        broker: SessionBroker,
        auditor: Auditor,
        *,
        access: AccessPolicy | None = None,
        reviews: ReviewService | None = None,
        recordings: Path,
        user_ca: ed25519.Ed25519PublicKey | None = None,
        limiter: Rejections | None = None,
    ) -> None:
        self.host_key = host_key
        self.user_ca = user_ca
        self.store = store
        self.auth = auth
        self.broker = broker
        self.audit = auditor
        self.access = access or AccessPolicy()
        self.recordings = recordings
        self.reviews = reviews  # None: a command needing approval is refused
        self.limiter = limiter  # refused credentials per address
        self.fingerprint = fingerprint(host_key)

    async def key_identity(self, user: str, key_fingerprint: str) -> Identity:
        """Who a registered public key belongs to (as the credential check would say)."""
        record = await self.store.io.read(self.store.ssh_keys.find, key_fingerprint)
        if record is None or record.user != user:
            raise AuthError("public key not registered for this user")
        found = await self.store.io.read(self.store.identity.get_user, user)
        if found is None or found.disabled:
            raise AuthError("user unknown or disabled")
        return self._identity(found, "ssh_key")

    def _identity(self, found: UserRecord, credential: str) -> Identity:
        return Identity(
            user=found.name,
            is_admin=found.is_admin or self.access.is_admin(found.name, found.groups),
            groups=found.groups,
            kind=found.kind,
            credential=credential,
        )

    # ---- SSH user certificates (issue 7; see gateway/sshca.py) ------------------------

    async def cert_identity(self, user: str, cert: bytes) -> Identity:
        """Who an OpenSSH user certificate from the gateway's user CA signs in as."""
        if self.user_ca is None:
            raise AuthError("certificate: no user CA configured")
        try:
            info = sshca.check_user_cert(cert, self.user_ca, user, dt.datetime.now(dt.UTC))
        except sshca.CertError as exc:
            raise AuthError(f"certificate: {exc}") from None
        found = await self.store.io.read(self.store.identity.get_user, user)
        if found is None or found.disabled:
            raise AuthError("certificate: user unknown or disabled")
        # The key id names the credential it was issued under: signing out ends it too.
        token_id = info.key_id.rpartition("/")[2]
        token = (
            await self.store.io.read(self.store.identity.get_token, token_id) if token_id else None
        )
        if token is None or token.user != user or token.revoked_at is not None:
            raise AuthError("certificate: the credential it was issued under is revoked")
        return self._identity(found, "ssh_cert")

    async def plain(self, sock: socket.socket, client: str) -> None:
        """A connection whose first bytes are an SSH banner."""
        try:
            await _Connection(self, sock, client).run()
        except Exception:
            log.exception("ssh %s: connection failed", client)
            with contextlib.suppress(OSError):
                sock.close()

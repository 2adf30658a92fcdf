"""`ssh_exec` for the MCP door: one command through this gateway's own SSH door, on loopback.

The MCP door judges no command itself. It signs in to the SSH front door
(gateway/protocols/ssh.py) as `USER:CONNECTION` with the caller's own credential as the
password, like `ssh` with a Wardgate token does, so authorization, `ssh_deny_exec` /
`ssh_review_exec`, recording and the audit apply exactly as to a person's `ssh`. The door's
host key is pinned (the gateway's own, from its data directory): fail closed on any other.

paramiko is blocking and threaded: `SshExec.run` runs in a worker thread (`asyncio.to_thread`)
and never on the event loop; `stop()` (from the loop, on timeout or cancellation) makes it
give up within `POLL` seconds and closes the connection.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass

import paramiko

POLL = 0.5  # seconds between looks at `stop` while the command is quiet
CHUNK = 32768


class SshExecError(Exception):
    """The door would not let us in (host key, credential): the message says which."""


@dataclass(frozen=True)
class ExecOutput:
    stdout: bytes
    stderr: bytes
    exit_status: int | None  # None: cut at the limit, the command was stopped
    cut: bool


class SshExec:
    """One command, as `user` on `connection`, through the door at `host:port`."""

    def __init__(self, host: str, port: int, host_key: str, timeout: float) -> None:
        self._host, self._port = host, port
        self._host_key = host_key.split()[:2]  # OpenSSH public key line: type, base64
        self._timeout = timeout
        self._stop = threading.Event()
        self.stderr_seen = bytearray()  # so far: a timeout names the review the door wrote

    def stop(self) -> None:
        self._stop.set()

    def run(
        self, user: str, connection: str, password: str, command: str, limit: int
    ) -> ExecOutput:
        deadline = time.monotonic() + self._timeout
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        transport = paramiko.Transport(sock)
        try:
            transport.start_client(timeout=self._timeout)
            key = transport.get_remote_server_key()
            if [key.get_name(), key.get_base64()] != self._host_key:
                raise SshExecError("the SSH door answered with a host key not this gateway's")
            try:
                transport.auth_password(f"{user}:{connection}", password)
            except paramiko.AuthenticationException:
                raise SshExecError("the SSH door refused this credential") from None
            chan = transport.open_session(timeout=self._timeout)
            chan.exec_command(command)
            return self._collect(chan, limit, deadline)
        except paramiko.SSHException as exc:
            raise SshExecError(f"SSH: {exc}") from None
        finally:
            transport.close()
            sock.close()

    def _collect(self, chan: paramiko.Channel, limit: int, deadline: float) -> ExecOutput:
        out, err = bytearray(), self.stderr_seen
        chan.fileno()  # readable on stdout, stderr or close (paramiko's pipe)
        while True:
            while chan.recv_ready():
                out += chan.recv(CHUNK)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(CHUNK)
            if len(out) + len(err) > limit:
                chan.close()  # the rest is not read: the command is stopped
                keep = min(len(out), limit)
                return ExecOutput(bytes(out[:keep]), bytes(err[: limit - keep]), None, True)
            if chan.closed or (chan.eof_received and chan.exit_status_ready()):
                if not (chan.recv_ready() or chan.recv_stderr_ready()):
                    break
                continue
            remaining = deadline - time.monotonic()
            if self._stop.is_set() or remaining <= 0:
                raise TimeoutError
            if chan.eof_received:  # the pipe stays readable after EOF: wait for the status
                chan.status_event.wait(min(POLL, remaining))
            else:
                select.select([chan], [], [], min(POLL, remaining))
        status = chan.exit_status if chan.status_event.wait(POLL) else None
        return ExecOutput(bytes(out), bytes(err), status, False)

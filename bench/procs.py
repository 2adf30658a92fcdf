"""Child processes of a benchmark run, and waiting on conditions with deadlines.

Every long-running process is a :class:`Proc` owned by a ``with`` block: it is started in its
own session (a Ctrl-C in the terminal reaches the harness, which then stops its children in
order) and its output goes to a log file whose tail is quoted when something fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")

DEADLINE = 30.0


class BenchError(RuntimeError):
    """The harness cannot go on: a program is missing, a process died, a step timed out."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], T | None],
    what: str,
    *,
    timeout: float = DEADLINE,
    interval: float = 0.05,
) -> T:
    """Poll ``condition`` until it returns a truthy value; raise naming ``what`` at the deadline.

    The condition may raise while things start; :class:`BenchError` (a dead process) stops the
    wait at once, since waiting longer cannot help.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = condition()
        except BenchError:
            raise
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise BenchError(
                f"timed out after {timeout:g}s waiting for {what} (last error: {last})"
            )
        time.sleep(interval)


class Proc:
    """One child process, run in the directory of ``log_path``, its output going to that log."""

    def __init__(
        self, name: str, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = log_path.parent
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise BenchError(f"{self.name} was never started")
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def check_alive(self) -> None:
        """Raise :class:`BenchError` with the log's tail if the process has exited."""
        if not self.alive():
            code = self._popen.returncode if self._popen else None
            raise BenchError(f"{self.name} exited (code {code}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; a stopped process is left alone."""
        if self._popen is None or self._popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._popen.send_signal(signal.SIGTERM)
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait(timeout)

    def processes(self) -> list[psutil.Process]:
        """The process and its descendants (sshd forks one per connection, for instance)."""
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    """Start ``proc`` and stop it when the block exits, however it exits."""
    try:
        yield proc.start()
    finally:
        proc.stop()


def run_checked(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float,
    what: str,
) -> subprocess.CompletedProcess[str]:
    """Run a short-lived program to completion; raise with its output if it fails."""
    try:
        result = subprocess.run(
            list(args),
            env=None if env is None else dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what} did not finish within {timeout:g}s") from exc
    if result.returncode != 0:
        raise BenchError(f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result

"""`ListenError`: a server could not listen on its address, with the address kept.

A bare `OSError: [Errno 98] Address already in use` does not say which of a process's
listeners failed; this carries the HOST:PORT so the CLI can name it (cli/errors.py).
"""

from __future__ import annotations


class ListenError(OSError):
    """A server could not listen on `address` (HOST:PORT); `errno` says why, and `setting`
    names the setting that chose the address (`listen`, `agent_listen`)."""

    def __init__(self, address: str, cause: OSError, *, setting: str = "listen") -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.address = address
        self.setting = setting

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.strerror}"


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

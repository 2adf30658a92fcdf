"""Secret references are resolved here, on the agent, next to the resource they unlock.

The gateway sends either a reference (`env:NAME`, `file:PATH`) or a value it decrypted for
this one session. Errors name the reference, never a value.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretUnavailable(Exception):
    pass


def resolve(name: str, source: str | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    if source.startswith("env:"):
        var = source[4:]
        value = os.environ.get(var)
        if value is None:
            raise SecretUnavailable(f"secret {name!r}: environment variable {var} is not set")
        return value.encode()
    if source.startswith("file:"):
        path = Path(source[5:])
        try:
            return path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise SecretUnavailable(
                f"secret {name!r}: cannot read {path}: {exc.strerror}"
            ) from None
    raise SecretUnavailable(f"secret {name!r}: unsupported reference scheme")

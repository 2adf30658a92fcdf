"""How an invalid policy document is told to whoever wrote it."""

from __future__ import annotations

from pydantic import ValidationError


def problems(exc: ValidationError, root: str) -> str:
    """Every field pydantic refused, as `path.to.field: message`, `root` for the document."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or root}: {e['msg']}" for e in exc.errors()
    )

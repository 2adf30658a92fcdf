"""Connections: from the declarative spec to the stored record, and back for display."""

from __future__ import annotations

import contextlib
from typing import Any

from gateway.connspec import ConnectionSpec
from gateway.crypto import SecretBox, SecretBoxError
from gateway.store import ConnectionRecord, Store

REFERENCE_PREFIXES = ("env:", "file:")


class ConnectionError_(ValueError):
    """A connection spec the gateway cannot accept, with the reason for the operator."""


def _secret_value(box: SecretBox | None, conn: str, name: str, value: str) -> str:
    if value.startswith(REFERENCE_PREFIXES) or SecretBox.is_sealed(value):
        return value
    if box is None:
        raise ConnectionError_(
            f"connection {conn!r}: secret {name!r} is a literal value; set the gateway's "
            "secret_key (WARDGATE_SECRET_KEY) to store it encrypted, or use env:/file:"
        )
    return box.seal(value.encode(), context=f"{conn}/{name}")


def to_record(
    spec: ConnectionSpec, box: SecretBox | None, existing: ConnectionRecord | None = None
) -> ConnectionRecord:
    secrets: dict[str, str] = {}
    for name, value in spec.secret_map().items():
        old = existing.secrets.get(name) if existing else None
        # Re-applying the same literal must not re-seal it (a fresh nonce would make every
        # apply a change): keep the stored blob when it still opens to the same value.
        if (
            old is not None
            and box is not None
            and SecretBox.is_sealed(old)
            and not value.startswith(REFERENCE_PREFIXES)
            and not SecretBox.is_sealed(value)
        ):
            with contextlib.suppress(SecretBoxError):  # one that no longer opens is replaced
                if box.open(old, context=f"{spec.name}/{name}") == value.encode():
                    secrets[name] = old
                    continue
        secrets[name] = _secret_value(box, spec.name, name, value)
    return ConnectionRecord(
        name=spec.name,
        type=spec.type,
        pool=spec.agent,
        host=spec.host,
        port=spec.port,
        options=spec.option_map(),
        secrets=secrets,
    )


def apply(store: Store, box: SecretBox | None, specs: list[ConnectionSpec]) -> list[dict[str, str]]:
    """Create or update each connection; idempotent. Validates all before writing any."""
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConnectionError_(f"duplicate connection names: {', '.join(duplicates)}")
    records = [to_record(s, box, store.connections.get(s.name)) for s in specs]
    results = []
    for record in records:
        existed = store.connections.get(record.name) is not None
        _, changed = store.connections.upsert(record)
        status = "unchanged" if not changed else "updated" if existed else "created"
        results.append({"name": record.name, "status": status})
    return results


def describe(record: ConnectionRecord) -> dict[str, Any]:
    """A record for display: references shown as written, sealed values never."""
    return {
        "name": record.name,
        "type": record.type,
        "agent": record.pool,
        "host": record.host,
        "port": record.port,
        "options": dict(record.options),
        "secrets": {
            k: ("(encrypted)" if SecretBox.is_sealed(v) else v) for k, v in record.secrets.items()
        },
        "created_at": record.created_at.isoformat() if record.created_at else None,
        "updated_at": record.updated_at.isoformat() if record.updated_at else None,
    }

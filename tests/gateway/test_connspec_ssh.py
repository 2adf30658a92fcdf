"""ssh connections in the declarative format: what they must name, and where fields go."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.connspec import ConnectionSpec

BASE: dict[str, object] = {
    "name": "web-1",
    "type": "ssh",
    "host": "10.0.0.9",
    "port": 22,
    "username": "deploy",
}


def test_key_and_pin_land_in_secrets_and_options() -> None:
    spec = ConnectionSpec.model_validate(
        {**BASE, "private_key": "file:/k", "host_key": "SHA256:abc"}
    )
    assert spec.secret_map() == {"private_key": "file:/k"}
    assert spec.option_map()["host_key"] == "SHA256:abc"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"private_key": "file:/k"}, "needs host_key"),
        ({"host_key": "SHA256:abc"}, "needs private_key or password"),
        ({"username": None, "password": "x", "host_key": "SHA256:a"}, "needs a username"),
    ],
)
def test_incomplete_ssh_connections_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ConnectionSpec.model_validate({**BASE, **changes})


def test_ssh_fields_only_on_ssh() -> None:
    with pytest.raises(ValidationError, match="for ssh connections"):
        ConnectionSpec(name="db", type="postgres", host="h", port=5432, host_key="SHA256:a")


def test_review_terms_are_checked_at_apply() -> None:
    options = {"ssh_review_exec": "sudo *", "ssh_review": "{approvers: {groups: [ops]}}"}
    full = {**BASE, "private_key": "file:/k", "host_key": "SHA256:abc"}
    assert ConnectionSpec.model_validate({**full, "options": options}).options == options
    with pytest.raises(ValidationError, match="needs ssh_review terms"):
        ConnectionSpec.model_validate({**full, "options": {"ssh_review_exec": "sudo *"}})

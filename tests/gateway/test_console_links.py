"""The review links the webhook sends, and the sign-in's `next` (no open redirect)."""

from __future__ import annotations

import pytest

from gateway.console.auth import safe_next
from gateway.reviews import ReviewLinks


@pytest.mark.parametrize(
    "value",
    ["/console/reviews/rv_0123456789ab?sig=ab12", "/console/sessions", "/console/operator"],
)
def test_a_console_path_is_a_next(value: str) -> None:
    assert safe_next(value) == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "https://evil.example/console/",
        "//evil.example/console/",
        "/console//evil.example",
        "/console/../v1/users",
        "/console/%2e%2e/v1",
        "/\\evil.example/console/",
        "/v1/users",
        "javascript:alert(1)",
        "/console/x\r\nSet-Cookie: a=b",
        "/console/" + "a" * 600,
    ],
)
def test_anything_else_is_not(value: str | None) -> None:
    assert safe_next(value) is None


def test_a_link_names_the_review_and_its_signature_checks() -> None:
    links = ReviewLinks("https://gw.example:8443/", "hook-secret")
    url = links.url("rv_0123456789ab")
    assert url.startswith("https://gw.example:8443/console/reviews/rv_0123456789ab?sig=")
    sig = url.rsplit("=", 1)[1]
    assert links.genuine("rv_0123456789ab", sig)
    assert not links.genuine("rv_0123456789ac", sig)
    assert not links.genuine("rv_0123456789ab", "0" * len(sig))
    assert not ReviewLinks("https://gw.example", "other").genuine("rv_0123456789ab", sig)

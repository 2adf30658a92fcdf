"""The console's pure checks: which OIDC callbacks it accepts, CSRF tokens, the Host header."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from gateway.console.auth import csrf_token, request_host, same_origin
from gateway.identity.credentials import is_console_redirect, is_loopback_redirect


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("https://gw.example:8443/console/login/oidc/callback", True),
        ("https://127.0.0.1/console/login/oidc/callback", True),
        ("http://gw.example/console/login/oidc/callback", False),  # not HTTPS
        ("https://gw.example/console/login/oidc/callback?x=1", False),
        ("https://gw.example/console/login/oidc/callback#x", False),
        ("https://gw.example/elsewhere", False),
        ("https:///console/login/oidc/callback", False),
    ],
)
def test_only_the_consoles_own_https_callback_is_a_console_redirect(uri: str, ok: bool) -> None:
    assert is_console_redirect(uri) is ok
    assert not is_loopback_redirect(uri)  # and the CLI's rule is unchanged by it


def test_a_csrf_token_belongs_to_one_cookie() -> None:
    assert csrf_token("cookie-a") == csrf_token("cookie-a")
    assert csrf_token("cookie-a") != csrf_token("cookie-b")
    assert "cookie-a" not in csrf_token("cookie-a")


def _request(**headers: str) -> Request:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"host": "gw:8443", "origin": "https://gw:8443"}, True),
        ({"host": "gw:8443", "origin": "https://evil:8443"}, False),
        ({"host": "gw:8443", "origin": "http://gw:8443"}, False),
        ({"host": "gw:8443", "origin": "null"}, False),
        ({"host": "gw:8443", "sec_fetch_site": "same-origin"}, True),
        ({"host": "gw:8443", "sec_fetch_site": "cross-site"}, False),
        ({"host": "gw:8443"}, False),  # neither header: refused
        ({"host": "gw/evil", "origin": "https://gw/evil"}, False),  # not a host
    ],
)
def test_a_post_must_come_from_the_gateways_own_origin(headers: dict[str, str], ok: bool) -> None:
    assert same_origin(_request(**headers)) is ok


def test_the_host_header_is_used_only_when_it_is_a_host() -> None:
    assert request_host(_request(host="[::1]:8443")) == "[::1]:8443"
    assert request_host(_request(host="gw.example")) == "gw.example"
    assert request_host(_request(host="gw.example/x?y")) is None
    assert request_host(_request()) is None

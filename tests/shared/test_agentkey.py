"""Agent keys: round trips, precise errors that never leak the secret, redaction."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shared import agentkey
from shared.agentkey import AgentKey

SECRET = "Zm9vYmFyYmF6cXV4LXF1dXgtc2VjcmV0X3ZhbHVl"
PIN = "sha256:" + "ab" * 32

names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True)
# Long enough that a secret never turns up by chance inside the host or the query.
secrets_ = st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True)
labels = st.from_regex(r"[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
dns_hosts = st.lists(labels, min_size=1, max_size=4).map(".".join)
hosts = st.one_of(
    dns_hosts,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
pins = st.none() | st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
keys = st.builds(
    AgentKey,
    name=names,
    secret=secrets_,
    host=hosts,
    port=st.integers(1, 65535),
    ca_fingerprint=pins,
    insecure=st.booleans(),
)


@given(keys)
def test_format_then_parse_is_identity(key: AgentKey) -> None:
    text = key.format()
    assert agentkey.parse(text) == key
    assert agentkey.parse(text).format() == text
    assert agentkey.parse(f"  {text}\n") == key  # pasted with a trailing newline


@given(keys)
def test_str_and_repr_redact_the_secret(key: AgentKey) -> None:
    # A secret of all zeros can legitimately occur inside a pin of all zeros.
    assume(key.secret not in key.format().replace(f":{key.secret}@", ":@", 1))
    for shown in (str(key), repr(key), f"{key}", f"{key!r}"):
        assert key.secret not in shown
        assert "***" in shown
    assert str(key) == key.format().replace(key.secret, "***", 1)


def test_redacted_form() -> None:
    key = AgentKey("edge-1", SECRET, "gw.example.com", 8443)
    assert str(key) == "wardgate://edge-1:***@gw.example.com:8443"
    assert repr(key) == "AgentKey('wardgate://edge-1:***@gw.example.com:8443')"


def test_parse_fields() -> None:
    key = agentkey.parse(f"wardgate://db-agent.eu_1:{SECRET}@[2001:db8::1]:443?ca={PIN}&insecure=1")
    assert key == AgentKey("db-agent.eu_1", SECRET, "2001:db8::1", 443, PIN, True)
    assert key.address == "[2001:db8::1]:443"


def test_fingerprint_spellings_are_normalised() -> None:
    colons = "sha256:" + ":".join(["AB"] * 32)
    key = agentkey.parse(f"wardgate://a:{SECRET}@h:1?insecure=0&ca={colons}")
    assert key.ca_fingerprint == PIN
    assert key.insecure is False
    assert key.format() == f"wardgate://a:{SECRET}@h:1?ca={PIN}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"https://a:{SECRET}@h:1", "must start with 'wardgate://'"),
        (f"wardgate://a:{SECRET}", "missing '@'"),
        (f"wardgate://{SECRET}@h:1", "must be NAME:SECRET"),
        (f"wardgate://:{SECRET}@h:1", "empty name"),
        ("wardgate://a:@h:1", "empty secret"),
        (f"wardgate://A:{SECRET}@h:1", "agent name must be"),
        (f"wardgate://-a:{SECRET}@h:1", "agent name must be"),
        (f"wardgate://{'a' * 64}:{SECRET}@h:1", "agent name must be"),
        (f"wardgate://a:{SECRET}+/@h:1", "url-safe base64"),
        (f"wardgate://a:{SECRET[:8]}@{SECRET[8:]}@h:1", "url-safe base64"),
        (f"wardgate://a:{SECRET}@h", "missing ':PORT'"),
        (f"wardgate://a:{SECRET}@h:", "is not a number"),
        (f"wardgate://a:{SECRET}@h:0", "is not a number"),
        (f"wardgate://a:{SECRET}@h:08443", "is not a number"),
        (f"wardgate://a:{SECRET}@h:65536", "outside 1-65535"),
        (f"wardgate://a:{SECRET}@::1:443", "must be written in brackets"),
        (f"wardgate://a:{SECRET}@[::1:443", "closing ']'"),
        (f"wardgate://a:{SECRET}@[10.0.0.1]:443", "only IPv6 hosts"),
        (f"wardgate://a:{SECRET}@[::g]:443", "not a valid IPv6 address"),
        (f"wardgate://a:{SECRET}@300.1.1.1:443", "not a valid IPv4 address"),
        (f"wardgate://a:{SECRET}@bad_host:443", "not a valid host name"),
        (f"wardgate://a:{SECRET}@h:1?ca=sha256:abc", "64 hex digits"),
        (f"wardgate://a:{SECRET}@h:1?ca=md5:{'ab' * 16}", "64 hex digits"),
        (f"wardgate://a:{SECRET}@h:1?insecure=yes", "must be 0 or 1"),
        (f"wardgate://a:{SECRET}@h:1?insecure=1&insecure=1", "repeats 'insecure'"),
        (f"wardgate://a:{SECRET}@h:1?token=x", "unknown query parameter 'token'"),
        (f"wardgate://a:{SECRET}@h:1?", "is not KEY=VALUE"),
        ("wardgate://" + "a" * 3000, "longer than"),
    ],
)
def test_bad_keys_are_named_precisely(text: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        agentkey.parse(text)
    assert message in str(excinfo.value)
    assert SECRET not in str(excinfo.value)
    assert SECRET[:8] not in str(excinfo.value)


@st.composite
def mangled_keys(draw: st.DrawFn) -> tuple[str, str]:
    """A valid key's text with a few characters inserted, deleted or replaced."""
    key = draw(keys)
    text = key.format()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        char = draw(st.sampled_from("@:/?&=[]#%. -_aZ9") | st.characters())
        if edit == "insert":
            text = text[:at] + char + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + char + text[at + 1 :]
    return text, key.secret


@given(mangled_keys())
def test_errors_never_contain_the_secret(case: tuple[str, str]) -> None:
    text, secret = case
    # Only meaningful when the secret is not also spelled out somewhere else in the text.
    assume(text.count(secret) <= 1)
    try:
        agentkey.parse(text)
    except ValueError as exc:
        assert secret not in str(exc)
        assert exc.__cause__ is None or secret not in str(exc.__cause__)


@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        agentkey.parse(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "Bad"},
        {"secret": "has space"},
        {"host": "[::1]"},
        {"port": 0},
        {"port": True},
        {"ca_fingerprint": "sha256:" + "AB" * 32},  # constructors take the canonical form only
    ],
)
def test_constructor_validates(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"name": "a", "secret": SECRET, "host": "h", "port": 1}
    fields.update(kwargs)
    with pytest.raises(ValueError) as excinfo:
        AgentKey(**fields)  # type: ignore[arg-type]
    assert SECRET not in str(excinfo.value)


def test_new_secret_is_url_safe_and_fresh() -> None:
    first, second = agentkey.new_secret(), agentkey.new_secret()
    assert first != second
    assert len(first) >= 43
    AgentKey("a", first, "h", 1)  # valid as a secret


def test_secret_hash_matching() -> None:
    secret = agentkey.new_secret()
    stored = agentkey.hash_secret(secret)
    assert len(stored) == 32
    assert secret not in stored.hex()
    assert agentkey.secret_matches(secret, stored)
    assert not agentkey.secret_matches(secret + "x", stored)
    assert not agentkey.secret_matches(secret, b"")

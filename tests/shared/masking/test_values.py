"""Strategies and value masking: what a masked value looks like, per type."""

from __future__ import annotations

import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from shared.masking.spec import MaskRule, MaskSpec, Strategy
from shared.masking.values import REDACTED, Masker

EMAILS = MaskRule("e", Strategy.REDACT, detectors=("email", "card"))


def masker(*rules: MaskRule, key: bytes = b"k" * 32) -> Masker:
    return Masker(MaskSpec(rules, key))


def test_strategies() -> None:
    m = masker()
    assert m.replacement("4111 1111 1111 1234", Strategy.PARTIAL, "card") == "****1234"
    assert m.replacement("abc", Strategy.PARTIAL, "column") == "****"
    assert m.replacement("x", Strategy.REDACT, "column") == REDACTED
    assert m.replacement("a@b.io", Strategy.REDACT, "email") == "[email]"
    token = m.replacement("a@b.io", Strategy.TOKEN, "email")
    assert token == m.token("a@b.io") and token.startswith("tok_") and len(token) == 20
    assert masker(key=b"other" * 8).token("a@b.io") != token  # keyed per connection


def test_typed_masks_fit_their_type() -> None:
    m = masker()
    small = m.typed_mask(21, b"7", Strategy.TOKEN, binary=False)
    assert small is not None and 0 <= int(small) < 2**15
    big = m.typed_mask(20, b"\x00" * 7 + b"\x07", Strategy.TOKEN, binary=True)
    assert big is not None and len(big) == 8
    assert (
        m.typed_mask(20, b"7", Strategy.TOKEN, binary=False)
        == str(int.from_bytes(big, "big", signed=True)).encode()
    )
    u = m.typed_mask(2950, str(uuid.UUID(int=5)).encode(), Strategy.TOKEN, binary=False)
    assert u is not None and uuid.UUID(u.decode()).version == 4
    assert m.typed_mask(1082, b"2024-01-01", Strategy.TOKEN, binary=False) is None  # date
    assert m.typed_mask(23, b"7", Strategy.REDACT, binary=False) is None


def test_column_plans_match_names_and_catalog_names() -> None:
    rule = MaskRule("c", Strategy.REDACT, columns=("users.email", "*ssn"))
    m = masker(rule)
    assert m.plan("email", ("users.email", "public.users.email")).whole == rule
    assert m.plan("e", ("users.email", "public.users.email")).whole == rule  # alias
    assert m.plan("email", ("orders.email", "public.orders.email")).whole is None
    assert m.plan("email").whole is None  # an expression named email: not users.email
    assert m.plan("email", (), loose=True).whole == rule  # a table newer than the lookup
    assert m.plan("tax_ssn").whole == rule
    scan = masker(MaskRule("s", Strategy.REDACT, columns=("notes",), detectors=("email",)))
    assert scan.plan("notes").scan and not scan.plan("other").scan


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.sampled_from(["a@b.io", "4111111111111111", "plain", 4111111111111111]),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["k", "a@b.io", "n"]), inner, max_size=3)
        ),
        max_leaves=8,
    )
)
def test_masked_json_stays_valid_json(doc: object) -> None:
    m = masker(EMAILS)
    plan = m.plan("doc")
    for text in (json.dumps(doc), json.dumps(doc, separators=(",", ":"))):
        masked, _hit = m.scan_text(text, plan, json=True)
        json.loads(masked)
        assert "a@b.io" not in masked and "4111111111111111" not in masked

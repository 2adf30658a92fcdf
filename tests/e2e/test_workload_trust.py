"""Workload token trust end to end: a CI-shaped issuer, a real gateway, its real exchange.

The issuer is the test OpenID provider in `--bare` mode: its discovery document names only
`issuer` and `jwks_uri`, as GitHub Actions publishes it. Next to its own RS256 key its JWKS
publishes keys the tests hold the private halves of (a P-256 key, and weak or misused keys
that must be refused). The gateway trusts it through several `identity.workload` entries of
one issuer and audience with different settings, so each entry's own algorithms and leeway
are seen to apply. Tokens go to `POST /v1/auth/workload` (what `wardgate login --token-file`
calls) and, for the GitHub case, through the CLI itself. Replay across gateway members
runs two gateways on one PostgreSQL store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey

from gateway.config import IdentityConfig
from gateway.crypto import SecretBox
from tests.fixtures.forge import Signer, b64, encode
from tests.fixtures.oidc import OidcProvider, start_provider
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.wardgate import WARDGATE, GatewayProc, Wardgate

pytestmark = pytest.mark.e2e

AUD = "wardgate"
ONCE_AUD = "wardgate-once"
GLOB_AUD = "wardgate-glob"


def workload_entries(issuer: str) -> list[dict[str, Any]]:
    return [
        {
            # RS256 with the default 30 s of leeway, for acme/app.
            "name": "ci-app",
            "issuer": issuer,
            "audience": AUD,
            "algorithms": ["RS256"],
            "claims": {"repository": "acme/app", "ref": "refs/heads/main"},
            "groups": ["deployers"],
        },
        {
            # Same issuer and audience, its own settings: ES256 only, no leeway.
            "name": "ci-strict",
            "issuer": issuer,
            "audience": AUD,
            "algorithms": ["ES256"],
            "leeway": 0,
            "claims": {"repository": "acme/strict"},
        },
        {
            "name": "ci-glob",
            "issuer": issuer,
            "audience": GLOB_AUD,
            "claims": {"repository": "acme/*", "ref": ["refs/heads/main", "refs/tags/v*"]},
        },
        {
            "name": "ci-once",
            "issuer": issuer,
            "audience": ONCE_AUD,
            "single_use": True,
            "claims": {"repository": "acme/*"},
        },
    ]


@dataclass
class Stack:
    wg: Wardgate
    gw: GatewayProc
    ci: OidcProvider
    es: Signer  # a P-256 key the issuer publishes
    weak: dict[str, Signer]  # keys the issuer publishes that the gateway must refuse

    def claims(self, **changes: Any) -> dict[str, Any]:
        """A GitHub Actions-shaped token's claims for acme/app on main."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.ci.issuer,
            "aud": AUD,
            "sub": "repo:acme/app:ref:refs/heads/main",
            "repository": "acme/app",
            "repository_owner": "acme",
            "ref": "refs/heads/main",
            "workflow": "deploy",
            "run_id": "4242",
            "run_attempt": "1",
            "jti": secrets.token_hex(16),
            "iat": now,
            "nbf": now - 5,
            "exp": now + 300,
        }
        base.update(changes)
        return {k: v for k, v in base.items() if v is not None}

    def exchange(self, token: str, gw: GatewayProc | None = None) -> httpx.Response:
        with (gw or self.gw).api() as api:
            return api.post("/v1/auth/workload", json={"token": token})

    def last_failure(self) -> str:
        failures = [e for e in self.gw.audit("auth.failed") if e["data"]["method"] == "workload"]
        return str(failures[-1]["data"]["reason"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("workload")
    ci = start_provider(tmp, bare=True)
    es = Signer.ec("P-256")
    weak = {
        "512-bit RSA": Signer.rsa(512),
        "secp256k1": Signer.ec("secp256k1"),
        "encryption key": Signer.rsa(2048, use="enc"),
    }
    ci.publish_keys([es.jwk, *(s.jwk for s in weak.values())])
    wg = Wardgate(tmp)
    try:
        identity: dict[str, Any] = {"workload": workload_entries(ci.issuer)}
        if "rate_limit" in IdentityConfig.model_fields:
            # The forged tokens fail many exchanges from one address within a minute; the
            # rate limits (issue 15, another branch) have tests of their own.
            identity["rate_limit"] = {"per_address": {"attempts": 1000, "window": 60}}
        gw = wg.gateway(identity=identity)
        yield Stack(wg, gw, ci, es, weak)
    finally:
        wg.close()
        ci.proc.stop()


def test_a_github_shaped_issuer_works_through_the_cli(stack: Stack, tmp_path: Path) -> None:
    assert set(stack.ci.discovery()) == {"issuer", "jwks_uri"}  # GitHub's shape
    token_file = tmp_path / "ci.jwt"
    token_file.write_text(stack.ci.sign(stack.claims()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    env.update(WARDGATE_URL=stack.gw.url, WARDGATE_CA=str(stack.gw.ca_path))
    env["WARDGATE_CONFIG_DIR"] = str(tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WARDGATE, *args], env=env, capture_output=True, text=True, timeout=60
        )

    login = cli("login", "--token-file", str(token_file))
    assert login.returncode == 0, login.stderr
    assert "logged in to" in login.stderr and "as ci-app (groups: deployers)" in login.stderr
    who = json.loads(cli("whoami", "--json").stdout)
    assert (who["user"], who["kind"]) == ("ci-app", "workload")


# ---- each entry's own settings ---------------------------------------------------------


def test_each_entry_applies_its_own_algorithms_and_leeway(stack: Stack) -> None:
    now = int(time.time())
    strict = stack.claims(repository="acme/strict")
    # The case: an RS256 token for the ES256-only entry.
    r = stack.exchange(stack.ci.sign(strict))
    assert r.status_code == 401, r.text
    assert r.json()["detail"] == "token refused: its claims match no workload trust"
    assert "ci-strict: algorithm RS256 is not allowed" in stack.last_failure()
    # ...and a token expired 10 s ago: the ES256 entry has no leeway.
    expired = {**strict, "iat": now - 310, "nbf": now - 310, "exp": now - 10}
    r = stack.exchange(stack.es.token(expired))
    assert r.status_code == 401, r.text
    assert "ci-strict: token expired" in stack.last_failure()
    # Within its own settings it is accepted.
    r = stack.exchange(stack.es.token(strict))
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "ci-strict"
    # The RS256 entry keeps its 30 s of leeway: expired 10 s ago is still in.
    r = stack.exchange(stack.ci.sign({**stack.claims(), "exp": now - 10}))
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "ci-app"
    # ...and refuses ES256 even for its own repository.
    r = stack.exchange(stack.es.token(stack.claims()))
    assert r.status_code == 401
    assert "ci-app: algorithm ES256 is not allowed" in stack.last_failure()


def test_each_entry_applies_its_own_audience(stack: Stack) -> None:
    glob = stack.claims(aud=GLOB_AUD, repository="acme/tools", ref="refs/tags/v2.1")
    r = stack.exchange(stack.ci.sign(glob))
    assert r.status_code == 200, r.text
    assert r.json()["user"] == "ci-glob"
    r = stack.exchange(stack.ci.sign({**glob, "aud": "wardgate-other"}))
    assert r.status_code == 401
    assert r.json()["detail"] == "token refused: wrong audience 'wardgate-other'"


# ---- the forged and malformed tokens ---------------------------------------------------


def _compact(header: dict[str, Any], claims: dict[str, Any] | str, signature: str = "") -> str:
    return f"{encode(header)}.{encode(claims)}.{signature}"


def _with_time(s: Stack, member: str) -> str:
    """Claims JSON text with `member` (e.g. '"exp": NaN') in place of that claim."""
    name = member.split('"')[1]
    text = json.dumps({k: v for k, v in s.claims().items() if k != name})
    return text[:-1] + ", " + member + "}"


def _hs256_with_public_key(s: Stack) -> str:
    public = RSAKey.import_key(s.ci.jwks()["keys"][0])
    signing_input = f"{encode({'alg': 'HS256', 'kid': public.kid})}.{encode(s.claims())}"
    mac = hmac.new(public.as_pem(private=False), signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{b64(mac.digest())}"


def _tampered(s: Stack) -> str:
    """A signed token for another branch, its claims swapped for main's."""
    header, _, signature = s.ci.sign(s.claims(ref="refs/heads/x")).split(".")
    return f"{header}.{encode(s.claims())}.{signature}"


def _nested(s: Stack, *, header: bool) -> str:
    """JSON nested deeper than Python's parser recurses, still within the 16 KiB limit."""
    deep = "[" * 5000 + "]" * 5000
    if header:
        return encode('{"alg": ' + deep + "}") + "." + encode(s.claims()) + ".AA"
    return s.ci.sign(s.claims()).split(".")[0] + "." + encode(deep) + ".AA"


def _own_kid(s: Stack) -> str:
    return str(s.ci.jwks()["keys"][0]["kid"])


FORGED: dict[str, tuple[Callable[[Stack], str], str]] = {
    # case: (the token, what the audit's reason says)
    "alg none": (lambda s: _compact({"alg": "none"}, s.claims()), "alg none"),
    "alg None, no signature part": (
        lambda s: _compact({"alg": "None"}, s.claims())[:-1], "malformed"
    ),
    "HS256 signed with the issuer's public key": (_hs256_with_public_key, "symmetric alg"),
    "another key under the issuer's kid": (
        lambda s: Signer.rsa(2048, kid=_own_kid(s)).token(s.claims()), "bad signature"
    ),
    "the attacker's key embedded in the header": (
        lambda s: (a := Signer.rsa(2048)).token(s.claims(), jwk=a.jwk), "unknown signing key"
    ),
    "ES256 under the issuer's RSA kid": (
        lambda s: Signer.ec("P-256", kid=_own_kid(s)).token(s.claims(repository="acme/strict")),
        "does not fit algorithm ES256",
    ),
    "unknown kid": (lambda s: Signer.rsa(2048, kid="rogue").token(s.claims()), "unknown signing"),
    "512-bit RSA key in the JWKS": (
        lambda s: s.weak["512-bit RSA"].token(s.claims()), "RSA key of 512 bits"
    ),
    "secp256k1 key in the JWKS": (
        lambda s: s.weak["secp256k1"].token(s.claims(repository="acme/strict"), "ES256"),
        "curve 'secp256k1' is not allowed",
    ),
    "encryption key in the JWKS": (
        lambda s: s.weak["encryption key"].token(s.claims()), "use is 'enc'"
    ),
    "tampered claims": (_tampered, "bad signature"),
    "wrong issuer with a trusted issuer's keys": (
        lambda s: s.ci.sign(s.claims(iss="https://token.actions.githubusercontent.com")),
        "issuer not trusted",
    ),
    "issuer with a trailing slash": (
        lambda s: s.ci.sign(s.claims(iss=s.ci.issuer + "/")), "wrong issuer"
    ),
    "wrong audience": (lambda s: s.ci.sign(s.claims(aud="other")), "wrong audience"),
    "audience list naming us, issued to another party": (
        lambda s: s.ci.sign(s.claims(aud=["other", AUD], azp="other")), "authorized party (azp)"
    ),
    "audience list without azp": (lambda s: s.ci.sign(s.claims(aud=[AUD, "other"])), "azp"),
    "missing exp": (lambda s: s.ci.sign(s.claims(exp=None)), "no expiry"),
    "exp NaN": (lambda s: s.es.token(_with_time(s, '"exp": NaN')), "malformed exp"),
    "exp Infinity": (lambda s: s.es.token(_with_time(s, '"exp": Infinity')), "malformed exp"),
    "exp 1e400": (lambda s: s.es.token(_with_time(s, '"exp": 1e400')), "malformed exp"),
    "exp huge integer": (
        lambda s: s.es.token(_with_time(s, '"exp": 10000000000000000000000')), "malformed exp"
    ),
    "exp a string": (lambda s: s.es.token(_with_time(s, '"exp": "4102444800"')), "malformed exp"),
    "exp true": (lambda s: s.es.token(_with_time(s, '"exp": true')), "malformed exp"),
    "nbf NaN": (lambda s: s.es.token(_with_time(s, '"nbf": NaN')), "malformed nbf"),
    "iat -Infinity": (lambda s: s.es.token(_with_time(s, '"iat": -Infinity')), "malformed iat"),
    "expired": (
        lambda s: s.ci.sign(s.claims(iat=int(time.time()) - 900, exp=int(time.time()) - 600)),
        "token expired",
    ),
    "not yet valid": (lambda s: s.ci.sign(s.claims(nbf=int(time.time()) + 600)), "nbf"),
    "issued in the future": (lambda s: s.ci.sign(s.claims(iat=int(time.time()) + 600)), "iat"),
    "no subject": (lambda s: s.ci.sign(s.claims(sub=None)), "no subject"),
    "a 300-character subject": (lambda s: s.ci.sign(s.claims(sub="x" * 300)), "longer than 255"),
    "critical header": (
        lambda s: s.es.token(s.claims(repository="acme/strict"), crit=["exp"]), "critical"
    ),
    "repository climbing out of acme/": (
        lambda s: s.ci.sign(s.claims(aud=GLOB_AUD, repository="acme/app/../../evil/x")),
        "ci-glob: claim 'repository' does not match",
    ),
    "empty repository segment": (
        lambda s: s.ci.sign(s.claims(aud=GLOB_AUD, repository="acme/")),
        "claim 'repository' does not match",
    ),
    "repository with a newline": (
        lambda s: s.ci.sign(s.claims(aud=GLOB_AUD, repository="acme/x\n")),
        "claim 'repository' does not match",
    ),
    "tag climbing into branches": (
        lambda s: s.ci.sign(s.claims(aud=GLOB_AUD, ref="refs/tags/v1/../../heads/main")),
        "claim 'ref' does not match",
    ),
    "repository as a list": (
        lambda s: s.ci.sign(s.claims(repository=["acme/app"])), "claim 'repository' does not match"
    ),
    "not a JWT": (lambda s: "wgt_not-a-jwt", "malformed"),
    "header nested 5000 levels deep": (lambda s: _nested(s, header=True), "malformed"),
    "claims nested 5000 levels deep": (lambda s: _nested(s, header=False), "malformed"),
    "header not JSON": (lambda s: "bm90IGpzb24." + encode(s.claims()) + ".AAAA", "malformed"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_tokens_are_refused(stack: Stack, case: str) -> None:
    forge, reason = FORGED[case]
    token = forge(stack)
    r = stack.exchange(token)
    assert r.status_code == 401, r.text
    detail = r.json()["detail"]
    assert detail.startswith("token refused: ") and len(detail) < 400
    assert token not in detail
    failure = stack.last_failure()
    assert reason in failure, failure
    assert token not in json.dumps(stack.gw.audit("auth.failed")[-5:])


def test_a_weak_key_is_logged_once_with_the_reason(stack: Stack) -> None:
    for _ in range(2):
        assert stack.exchange(stack.weak["512-bit RSA"].token(stack.claims())).status_code == 401
    log = stack.gw.log(tail=100_000)
    kid = stack.weak["512-bit RSA"].kid
    lines = [line for line in log.splitlines() if f"key '{kid}' refused" in line]
    assert len(lines) == 1, lines
    assert "RSA key of 512 bits (at least 2048 needed)" in lines[0]


def test_glob_semantics_accept_what_they_should(stack: Stack) -> None:
    for repository, ref in (("acme/app", "refs/heads/main"), ("acme/x-y.z", "refs/tags/v1.2")):
        token = stack.ci.sign(stack.claims(aud=GLOB_AUD, repository=repository, ref=ref))
        r = stack.exchange(token)
        assert r.status_code == 200, (repository, ref, r.text)


# ---- replay ----------------------------------------------------------------------------


def test_a_single_use_token_is_exchanged_once(stack: Stack) -> None:
    token = stack.ci.sign(stack.claims(aud=ONCE_AUD))
    first = stack.exchange(token)
    assert first.status_code == 200, first.text
    assert first.json()["user"] == "ci-once"
    again = stack.exchange(token)
    assert again.status_code == 401
    assert again.json()["detail"] == "token refused: this single-use token was already used"
    assert "ci-once: token replayed (jti already used)" in stack.last_failure()
    # Another token of the same job (another jti) is its own.
    assert stack.exchange(stack.ci.sign(stack.claims(aud=ONCE_AUD))).status_code == 200
    # Without a jti nothing can be remembered: refused.
    r = stack.exchange(stack.ci.sign(stack.claims(aud=ONCE_AUD, jti=None)))
    assert r.status_code == 401
    assert "need a jti" in r.json()["detail"]
    for bad in ("", 42, "j" * 256):
        assert stack.exchange(stack.ci.sign(stack.claims(aud=ONCE_AUD, jti=bad))).status_code == 401
    # An entry without single_use keeps the old behaviour: the same token twice works.
    plain = stack.ci.sign(stack.claims())
    assert [stack.exchange(plain).status_code for _ in range(2)] == [200, 200]


def test_a_refused_single_use_exchange_does_not_burn_the_token(stack: Stack) -> None:
    token = stack.ci.sign(stack.claims(aud=ONCE_AUD))
    assert stack.exchange(token).status_code == 200  # creates the machine user
    with stack.gw.api() as api:
        assert api.post("/v1/users/ci-once/disable").status_code == 200
    try:
        fresh = stack.ci.sign(stack.claims(aud=ONCE_AUD))
        refused = stack.exchange(fresh)
        assert refused.status_code == 403, refused.text
    finally:
        with stack.gw.api() as api:
            assert api.post("/v1/users/ci-once/enable").status_code == 200
    assert stack.exchange(fresh).status_code == 200  # the refusal did not use it up
    assert stack.exchange(fresh).status_code == 401


def test_replay_is_refused_across_gateway_members(
    wardgate: Wardgate,
    postgres_db: PostgresServer,
    oidc_providers: Callable[..., OidcProvider],
) -> None:
    ci = oidc_providers(bare=True)
    entries = [e for e in workload_entries(ci.issuer) if e["name"] == "ci-once"]
    shared = {
        "store": postgres_db.url(),
        "secret_key": SecretBox.generate_key(),  # a shared store's identity is sealed with it
        "identity": {"workload": entries},
    }
    first, second = wardgate.gateway(**shared), wardgate.gateway(**shared)
    stack = Stack(wardgate, first, ci, Signer.ec(), {})
    token = ci.sign(stack.claims(aud=ONCE_AUD))
    assert stack.exchange(token, first).status_code == 200
    replayed = stack.exchange(token, second)
    assert replayed.status_code == 401
    assert replayed.json()["detail"] == "token refused: this single-use token was already used"

    # Both members at once, several times each: exactly one exchange wins.
    racing = ci.sign(stack.claims(aud=ONCE_AUD))
    codes: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def exchange(gw: GatewayProc) -> None:
        with gw.api() as api:
            barrier.wait()
            code = api.post("/v1/auth/workload", json={"token": racing}).status_code
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=exchange, args=(gw,)) for gw in (first, second) * 3]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert sorted(codes) == [200] + [401] * 5

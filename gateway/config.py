"""Gateway configuration: one YAML file, validated by pydantic.

Every field has a default that works for `wardgate dev`; production overrides the
addresses, the store URL, the TLS material and the secret key. Values that are secrets
(`secret_key`, `admin_token`) may be written as `env:NAME` or `file:PATH` so the file
itself can be committed.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.connspec import ConnectionSpec
from gateway.identity.claims import pattern_problem
from gateway.policy.approval import ReviewTerms
from gateway.policy.grants import ACCESS_LEVELS, AccessPolicy, Grant, Role
from gateway.policy.kube import KubePolicy, KubePolicyConfig
from gateway.policy.rules import Policy, PolicyConfig
from shared.tunnel.frames import MAX_WINDOW, SESSION_WINDOW

DEFAULT_LISTEN = "0.0.0.0:8443"
DEFAULT_AGENT_LISTEN = "0.0.0.0:8444"


class TLSConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cert: Path | None = None  # full chain PEM
    key: Path | None = None  # its private key (PEM)
    ca: Path | None = None  # the CA agents and clients pin; defaults to the chain's last cert
    hostnames: list[str] = Field(default_factory=list)  # extra SANs for a generated cert


class AgentDecl(BaseModel):
    """An agent declared in config; its key is printed once when first created."""

    model_config = ConfigDict(extra="forbid")
    name: str  # the agent's name, unique
    pool: str | None = None  # the pool it serves; default: its name
    # The agent's secret as env:NAME, file:PATH or the value: the key is then known before the
    # gateway starts (compose, Helm), and the store keeps it in step. Omitted: one is drawn at
    # the first start and the key printed once.
    secret: str | None = None


# Asymmetric algorithms only: "none" and HMAC (whose key would be the provider's public key)
# are never accepted, whatever a provider advertises.
DEFAULT_JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]
_ALLOWED_JWT_ALGORITHMS = frozenset(DEFAULT_JWT_ALGORITHMS) | {"ES512", "EdDSA"}


def _check_algorithms(value: list[str]) -> list[str]:
    bad = [a for a in value if a not in _ALLOWED_JWT_ALGORITHMS]
    if bad:
        raise ValueError(
            f"algorithms {bad} are not allowed (asymmetric signatures only: "
            f"{', '.join(sorted(_ALLOWED_JWT_ALGORITHMS))})"
        )
    if not value:
        raise ValueError("at least one algorithm is needed")
    return value


def _check_pattern(claim: str, pattern: str) -> None:
    problem = pattern_problem(pattern)
    if problem is not None:
        raise ValueError(f"claim {claim!r}, pattern {pattern!r}: {problem}")


class ClaimGroup(BaseModel):
    """Adds `group` at sign-in when claim `claim` matches `value` (a claim glob)."""

    model_config = ConfigDict(extra="forbid")
    claim: str  # a claim of the sign-in's ID token
    # A glob its value must match: `*` within one /-segment, `**` whole segments (docs/identity.md).
    value: str
    group: str  # the group added

    @model_validator(mode="after")
    def _pattern(self) -> ClaimGroup:
        _check_pattern(self.claim, self.value)
        return self


class OIDCConfig(BaseModel):
    """The OpenID provider people sign in with (the gateway is its relying party)."""

    model_config = ConfigDict(extra="forbid")
    issuer: str  # discovery at ISSUER/.well-known/openid-configuration; matched exactly
    client_id: str  # the gateway's client at the provider
    client_secret: str | None = None  # env:NAME / file:PATH / literal
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])  # asked
    username_claim: str = "preferred_username"  # the Wardgate user name; no fallback claim
    groups_claim: str = "groups"  # the claim listing the user's groups
    claim_groups: list[ClaimGroup] = Field(default_factory=list)  # claims -> extra groups
    # Accepted signature algorithms: asymmetric only (none and HS* are always refused).
    algorithms: list[str] = Field(default_factory=lambda: list(DEFAULT_JWT_ALGORITHMS))
    leeway: int = Field(default=30, ge=0, le=300)  # seconds of clock skew tolerated
    ca_file: Path | None = None  # to trust a private CA for the provider's HTTPS
    # Re-read the JWKS on an unknown `kid` at most this often (seconds).
    jwks_min_refresh: float = Field(default=30.0, ge=0)
    jwks_max_age: float = Field(default=3600.0, gt=0)  # seconds a fetched JWKS is kept

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        return _check_algorithms(value)


class WorkloadTrust(BaseModel):
    """A machine identity: a JWT from `issuer` whose claims match becomes user `name`."""

    model_config = ConfigDict(extra="forbid")
    name: str  # the machine user the token becomes
    issuer: str  # the token's `iss`; its signing keys come from the issuer's OIDC discovery
    audience: str  # the `aud` the token must carry
    # Every listed claim must match: a string is a glob (`*` within one /-segment, `**` whole
    # segments, see docs/identity.md), a list any of its globs.
    claims: dict[str, str | list[str]] = Field(default_factory=dict)
    groups: list[str] = Field(default_factory=list)  # the machine user's groups
    ttl: int = Field(default=900, gt=0, le=86400)  # seconds the issued credential lives
    # Accepted signature algorithms: asymmetric only.
    algorithms: list[str] = Field(default_factory=lambda: list(DEFAULT_JWT_ALGORITHMS))
    leeway: int = Field(default=30, ge=0, le=300)  # seconds of clock skew tolerated
    ca_file: Path | None = None  # to trust a private CA for the issuer's HTTPS
    # Each token is exchanged once: it must carry a `jti`, remembered (in the store, so by
    # every gateway) until it expires. Off by default: some issuers hand a workload one token
    # to present many times (a Kubernetes projected token); turn it on for CI issuers that
    # mint a token per request (GitHub Actions, GitLab). See docs/identity.md.
    single_use: bool = False

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        return _check_algorithms(value)

    @field_validator("claims")
    @classmethod
    def _claims_required(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        if not value:
            raise ValueError("a workload trust needs at least one claim to match (e.g. sub)")
        for claim, wanted in value.items():
            patterns = wanted if isinstance(wanted, list) else [wanted]
            if not patterns:
                raise ValueError(f"claim {claim!r}: an empty list matches nothing")
            for pattern in patterns:
                _check_pattern(claim, pattern)
        return value


class CredentialsConfig(BaseModel):
    """Lifetimes of what the gateway issues, in seconds."""

    model_config = ConfigDict(extra="forbid")
    ttl: int = Field(default=3600, gt=0)  # the access credential; refreshable
    idle_timeout: int = Field(default=7200, gt=0)  # a sign-in unused this long ends
    session_ttl: int = Field(default=43200, gt=0)  # absolute lifetime of a sign-in
    connection_ttl: int = Field(default=300, gt=0)  # per-connection credentials
    api_key_max_ttl: int = Field(default=90 * 86400, gt=0)  # longest API key lifetime
    # DPoP proofs (RFC 9449): how far a proof's `iat` may be from the gateway's clock.
    dpop_window: float = Field(default=60.0, gt=0, le=600)


class RateRule(BaseModel):
    """At most `attempts` failed attempts per `window` seconds (a sliding window)."""

    model_config = ConfigDict(extra="forbid")
    attempts: int = Field(ge=1, le=1_000_000)  # failed attempts let through per window
    window: float = Field(ge=1, le=86400)  # seconds


class RateLimitConfig(BaseModel):
    """Failed sign-in attempts (OIDC, device flow, refresh, workload exchange, local users)
    and credentials the API refused, counted in the store so the limits hold across every
    gateway member; over a limit: 429 with Retry-After (docs/identity.md#rate-limits)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True  # off only for load tests: nothing else bounds guessing
    # Per client address (an IPv6 client by its /64), the TCP peer: default 20 per 60 s.
    per_address: RateRule = Field(default_factory=lambda: RateRule(attempts=20, window=60))
    # Per claimed identity (a local user's name), from any address: default 10 per 300 s;
    # a success clears it.
    # Workload tokens are counted per address only: their unverified subject is anyone's
    # to claim, and a signature cannot be guessed.
    per_identity: RateRule = Field(default_factory=lambda: RateRule(attempts=10, window=300))


class IdentityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    oidc: OIDCConfig | None = None  # people sign in with this provider
    workload: list[WorkloadTrust] = Field(default_factory=list)  # machines: trusted JWT issuers
    credentials: CredentialsConfig = Field(default_factory=CredentialsConfig)  # lifetimes
    # Local users (password + TOTP), only for setups without an IdP.
    local_users: bool = False
    # What a non-admin gets on a connection no role grants: none (the default) or a level.
    default_access: str = "none"
    # How often live sessions are checked against revocations made by any gateway replica.
    revocation_check_interval: float = Field(default=2.0, gt=0)
    # Failed sign-in attempts allowed per client address and per claimed identity.
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)

    @model_validator(mode="after")
    def _consistent(self) -> IdentityConfig:
        if self.local_users and self.oidc is not None:
            raise ValueError("local_users is for setups without an IdP: remove it or oidc")
        if self.default_access != "none" and self.default_access not in ACCESS_LEVELS:
            raise ValueError(f"default_access must be none or one of {', '.join(ACCESS_LEVELS)}")
        names = [w.name for w in self.workload]
        if len(names) != len(set(names)):
            raise ValueError("workload trust names must be unique")
        return self


class GrantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connection: str  # a name or a shell glob
    access: str = "read-only"  # read-only, read-write or admin
    # Approvals: with `request:` terms the grant holds only through an approved access
    # request (`wardgate request`), see gateway/policy/grants.py.
    request: ReviewTerms | None = None

    @field_validator("access")
    @classmethod
    def _level(cls, value: str) -> str:
        if value not in ACCESS_LEVELS:
            raise ValueError(f"access must be one of {', '.join(ACCESS_LEVELS)}")
        return value


class RoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str  # what `roles:` conditions of rules name
    groups: list[str] = Field(default_factory=list)  # members: these groups...
    users: list[str] = Field(default_factory=list)  # ...and these users
    admin: bool = False  # gateway administrators
    grants: list[GrantConfig] = Field(default_factory=list)  # connections, and at what level


class WebhookConfig(BaseModel):
    """Where review events are POSTed (signed with HMAC-SHA256, see gateway/reviews/)."""

    model_config = ConfigDict(extra="forbid")
    url: str  # where review events are POSTed
    secret: str  # env:NAME / file:PATH / literal
    attempts: int = Field(default=4, ge=1, le=10)  # deliveries tried, with backoff
    timeout: float = Field(default=5.0, gt=0)  # seconds per attempt


class ReviewsConfig(BaseModel):
    """Approvals: the webhook, and how often a waiting replica re-reads the store."""

    model_config = ConfigDict(extra="forbid")
    webhook: WebhookConfig | None = None  # told of each review created and decided
    poll_interval: float = Field(default=1.0, gt=0)  # seconds between a waiter's store reads


class FrontDoorConfig(BaseModel):
    """Limits on the public port for connections whose client has not authenticated yet
    (gateway/frontdoor.py): what a slowloris of trickling connections can hold."""

    model_config = ConfigDict(extra="forbid")
    # Unauthenticated connections at once, in all and per client address (IPv4 address or
    # IPv6 /64); one over either limit is closed at accept.
    max_unauthenticated: int = Field(default=1024, ge=1)
    max_unauthenticated_per_address: int = Field(default=64, ge=1)
    sniff_timeout: float = Field(default=5.0, gt=0)  # seconds for the bytes naming a protocol
    tls_handshake_timeout: float = Field(default=10.0, gt=0)  # seconds for the TLS handshake
    # Seconds from accept until the client has authenticated (PostgreSQL: its password
    # checked; SSH: userauth done; HTTPS: its first request arrived), whatever phase it is in.
    login_timeout: float = Field(default=60.0, gt=0)


class McpConfig(BaseModel):
    """The MCP door (`/mcp`, gateway/api/mcp.py): how much of a result a tool hands back."""

    model_config = ConfigDict(extra="forbid")
    # Rows and bytes (of the JSON-encoded rows) a `query` returns; the rest is cut off with
    # a note saying so: a model's context is small, and every row read counts in budgets.
    max_rows: int = Field(default=200, ge=1, le=100_000)
    max_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Seconds a tool call may take, connecting included; a statement held for review waits
    # for its decision within it (with progress notifications when asked), then fails
    # naming its review id.
    timeout: float = Field(default=60.0, gt=0)


class FleetConfig(BaseModel):
    """Members sharing one store (gateway.fleet.membership): how often each says it lives, how
    long a silent one has before another member reaps it and closes its sessions, and the
    members agents should connect to besides those in the store (docs/agents-fleet.md)."""

    model_config = ConfigDict(extra="forbid")
    heartbeat_interval: float = Field(default=2.0, gt=0)  # seconds between heartbeats
    member_timeout: float = Field(default=10.0, gt=0)  # seconds of silence before reaping
    # Seconds after start /readyz waits for every known pool to have an agent here: agents
    # learn a new member within 2 s and dial it within 5 s (docs/agents-fleet.md); a pool
    # whose agents are all down must not keep a member out for good.
    agent_warmup: float = Field(default=10.0, ge=0)
    # Other members' agent-facing addresses (HOST:PORT): a static member list, told to agents
    # beside the store's live members, for members the store does not list.
    peers: list[str] = Field(default_factory=list)
    # This member's agent-facing address as agents and the other members dial it (HOST:PORT),
    # when that is not agent_listen's: behind NAT, or a pod's DNS name. Default: agent_listen's
    # host and port, or this host's name when it listens on every address.
    advertise: str | None = None

    @model_validator(mode="after")
    def _bounds(self) -> FleetConfig:
        if self.member_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                "fleet.member_timeout must be at least twice fleet.heartbeat_interval "
                "(one late heartbeat must not get a live member reaped)"
            )
        return self

    @field_validator("peers")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            _dialable(address, "peer")
        return value

    @field_validator("advertise")
    @classmethod
    def _advertised(cls, value: str | None) -> str | None:
        if value is not None:
            _dialable(value, "advertise")
        return value


def _dialable(address: str, what: str) -> None:
    host, port = parse_address(address)
    if not host or host in ("0.0.0.0", "::") or port == 0:
        raise ValueError(f"{what} {address!r} is not an address agents can dial")


class ConsoleConfig(BaseModel):
    """The web console on the public port, under /console/ (docs/console.md)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    # A console sign-in unused this long ends (seconds): a browser left open on a reviewer's
    # desk stops being a way in.
    idle_timeout: int = Field(default=1800, ge=60, le=86400)  # le: console/auth.py MAX_IDLE
    # The address people's browsers reach the gateway at (https://HOST[:PORT]), for the
    # review links the webhook sends to chat; default: https:// and the public listen address
    # (the advertised host when it listens on all addresses).
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https://[^/?#\s]+/?", value):
            raise ValueError(f"{value!r} is not an https://HOST[:PORT] address")
        return value


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = DEFAULT_LISTEN  # the public endpoint, HOST:PORT
    agent_listen: str = DEFAULT_AGENT_LISTEN  # where agents connect (gRPC), HOST:PORT
    # TLS material, SSH host key and user CA, recordings, the SQLite store.
    data_dir: Path = Path(".wardgate")
    store: str | None = None  # SQLAlchemy URL; default sqlite in data_dir
    tls: TLSConfig = Field(default_factory=TLSConfig)  # omitted: generated in data_dir/tls
    # Plaintext agent connections; the agent must also pass --insecure.
    allow_insecure_agents: bool = False
    # 32-byte key (base64) for AES-GCM sealing of connection secrets at rest.
    secret_key: str | None = None
    admin_token: str | None = None  # the bootstrap admin's credential; default: minted once
    # SQLite store only: "full" fsyncs each audit commit (survives a power cut); "normal"
    # survives a gateway crash but may lose the last events if the host loses power.
    audit_sync: Literal["full", "normal"] = "full"
    # Seconds between pings on each agent's control stream, both ways; a peer silent for 3
    # intervals is dropped (shared.tunnel.frames.SILENT_PINGS): with 1 s, a hung agent is
    # dropped within 5 s, and its sessions end with an error naming it.
    ping_interval: float = Field(default=1.0, gt=0)
    open_timeout: float = Field(default=15.0, gt=0)  # seconds an agent has to open a session
    # Seconds live sessions get to finish after SIGTERM (or `--drain-grace`); then they end
    # in their protocol's words (PostgreSQL 57P01, SSH a message and exit status 255).
    drain_grace: float = Field(default=30.0, ge=0)
    # Seconds a draining gateway keeps its port open, refusing in words and saying 503 on
    # /readyz, even with no session left (at most drain_grace): a balancer checking
    # readiness takes it out before the port closes, instead of clients' connects being cut
    # (a Kubernetes preStop sleep, built in).
    drain_notice: float = Field(default=5.0, ge=0)
    # Gateway processes on this host under one supervisor (`--workers`), sharing the public
    # port; worker i takes agents on agent_listen's port + i. More than one needs a
    # PostgreSQL store (each worker is a fleet member; cli/workers.py, docs/fleet.md).
    workers: int = Field(default=1, ge=1, le=256)
    # Bytes a PostgreSQL or TCP session's data may run ahead of the side reading it, each way
    # (so a client that stops reading stops the server); 0: gRPC's flow control alone, whose
    # windows grow to megabytes. A session moves at most this much per gateway-agent round
    # trip: raise it for agents far away (1 MiB at 50 ms is about 20 MB/s per session).
    session_window: int = Field(default=SESSION_WINDOW, ge=0, le=MAX_WINDOW)
    connections: list[ConnectionSpec] = Field(default_factory=list)  # as for `apply -f`
    agents: list[AgentDecl] = Field(default_factory=list)  # created at start if missing
    identity: IdentityConfig = Field(default_factory=IdentityConfig)  # sign-in, credentials
    roles: list[RoleConfig] = Field(default_factory=list)  # who may reach which connection
    # Guardrails: allow/deny rules on statements (gateway/policy/rules.py), and budgets. It
    # seeds policy version 1 of an empty store; afterwards the store's versions are in force
    # (gateway/policystore.py), re-read every `policy_check_interval` seconds.
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    # Approvals: statement reviews and access requests (gateway/reviews/).
    reviews: ReviewsConfig = Field(default_factory=ReviewsConfig)

    policy_check_interval: float = Field(default=2.0, gt=0)  # seconds between version checks

    # Kubernetes API rules and masking (gateway/policy/kube.py).
    kubernetes: KubePolicyConfig = Field(default_factory=KubePolicyConfig)

    # Unauthenticated connections on the public port: how many, and for how long.
    frontdoor: FrontDoorConfig = Field(default_factory=FrontDoorConfig)

    console: ConsoleConfig = Field(default_factory=ConsoleConfig)  # the web console

    # Log lines as text, or one JSON object per line (`--log-format` overrides it).
    log_format: Literal["text", "json"] = "text"
    # Members of a fleet sharing one store: heartbeats, reaping, static peers (docs/fleet.md).
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    # MCP clients (AI agents) on the public port at /mcp: result limits (docs/mcp.md).
    mcp: McpConfig = Field(default_factory=McpConfig)

    def guardrails(self) -> Policy:
        return Policy(self.policy)

    def kube_policy(self) -> KubePolicy:
        return KubePolicy(self.kubernetes)

    def access_policy(self) -> AccessPolicy:
        roles = [
            Role(
                name=r.name,
                groups=frozenset(r.groups),
                users=frozenset(r.users),
                admin=r.admin,
                grants=tuple(Grant(g.connection, g.access, g.request) for g in r.grants),
            )
            for r in self.roles
        ]
        default = self.identity.default_access
        return AccessPolicy(roles, default_access=None if default == "none" else default)

    @field_validator("listen", "agent_listen")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)
        return value

    def store_url(self) -> str:
        if self.store:
            return resolve_secret(self.store)
        return f"sqlite:///{(self.data_dir / 'wardgate.db').resolve()}"


def parse_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def resolve_secret(value: str) -> str:
    """Resolve `env:NAME` / `file:PATH` references in the gateway's own settings."""
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    if value.startswith("file:"):
        return Path(value[5:]).read_text().strip()
    return value


class ConfigError(ValueError):
    """The gateway config cannot be used; the message names the file, the key and the fix."""


ADMIN_TOKEN_MIN = 32  # characters after the prefix: what `wardgate` mints has 43


def check_admin_token(token: str) -> str:
    """A configured bootstrap admin token must be one the gateway accepts: refused at start
    rather than answered 401 at every use."""
    prefix = "wgt_"
    body = token.removeprefix(prefix)
    if (
        not token.startswith(prefix)
        or not ADMIN_TOKEN_MIN <= len(body) <= 250
        or not body.isascii()
        or not body.isprintable()
        or " " in body
    ):
        raise ConfigError(
            f"admin_token (or WARDGATE_ADMIN_TOKEN) must be {prefix} followed by "
            f"{ADMIN_TOKEN_MIN} to 250 printable characters without spaces, e.g. "
            f"{prefix}$(openssl rand -hex 24); or leave it unset and the gateway mints one"
        )
    return token


def load_config(path: Path | None, **overrides: Any) -> GatewayConfig:
    data: dict[str, Any] = {}
    if path is not None:
        with path.open() as fh:  # a stream, so a YAML error's mark names the file
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data.update(loaded)
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update(given)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, path, set(given))) from exc


def _describe_errors(exc: ValidationError, path: Path | None, flags: set[str]) -> str:
    """The first error of `exc` in one line (with how many more), the key spelled as in the
    file (`identity.credentials.ttl`, `roles[0].name`), or as the flag that set it."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    where = str(path) if path is not None else "the gateway settings"
    if loc and loc[0] in flags:
        where, key = "the command line", f"--{str(loc[0]).replace('_', '-')}"
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _keys_at(loc[:-1]), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        text = f"{where}: unknown key {key!r}{hint}"
    else:
        message = str(first["msg"]).removeprefix("Value error, ")
        text = f"{where}: {key or 'the file'}: {message}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return text


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the config model accepts at `loc` (for "did you mean")."""
    model: type[BaseModel] | None = GatewayConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None

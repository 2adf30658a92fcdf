"""Composition root: builds every part of the gateway from its config and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import functools
import hmac
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import grpc
import sqlalchemy as sa

from gateway import console, sshca
from gateway.agents.registry import AgentRegistry
from gateway.agents.service import AgentService
from gateway.api.app import build_app
from gateway.api.deps import ApiDeps
from gateway.api.mcp import Loopback, McpDoor
from gateway.api.members import members_router
from gateway.api.ratelimit import AuthLimiter
from gateway.api.server import http_handler
from gateway.api.ssh import ssh_router
from gateway.api.terminate import terminate_router
from gateway.audit import Auditor
from gateway.auth import Authenticator
from gateway.config import (
    ConfigError,
    GatewayConfig,
    check_admin_token,
    parse_address,
    resolve_secret,
)
from gateway.connections import apply
from gateway.crypto import SecretBox, hash_token, new_token
from gateway.fleet import linkauth
from gateway.fleet import membership as fleet
from gateway.fleet.bus import Bus, conninfo
from gateway.fleet.forward import Forwarder, ForwardService, Peer, add_member_link
from gateway.fleet.linkauth import LinkKey
from gateway.fleet.terminate import Terminator
from gateway.frontdoor import FrontDoor, Kind
from gateway.identity.credentials import IdentityService
from gateway.policy.grants import AccessPolicy
from gateway.policystore import BudgetLedger, PolicySource
from gateway.protocols import kubernetes
from gateway.protocols.kubernetes import KubeFrontDoor
from gateway.protocols.postgres import PostgresFrontDoor
from gateway.protocols.ssh import HOST_KEY_FILE, SshFrontDoor, load_host_key
from gateway.protocols.sshlog import quiet_banner_errors
from gateway.reviews import ReviewLinks, ReviewService, Webhook
from gateway.sessions import SHUTDOWN_REASON, SessionBroker
from gateway.store import AlreadyExists, Store
from gateway.store.members import MemberRecord
from gateway.telemetry import Telemetry
from gateway.tls import (
    TLSMaterial,
    dns_name,
    ensure_self_signed,
    load_configured,
    server_context,
)
from shared.agentkey import AgentKey, hash_secret, new_secret
from shared.listen import ListenError, host_port
from shared.tasks import TaskOwner
from shared.tunnel.frames import ResetCode
from shared.tunnel.rpc import add_tunnel_service, make_server

log = logging.getLogger(__name__)

# Seconds the sessions ended at the end of a drain get to tell their clients and record
# their end (a PostgreSQL session lingers up to 2 s for its client to read the 57P01).
DRAIN_END_TIMEOUT = 10.0

ADMIN_USER = "admin"
BOOTSTRAP_LABEL = "bootstrap"


AdminOrigin = Literal["configured", "kept", "minted"]  # kept: dev's, from its data dir


@dataclass
class Started:
    """What an operator needs to know once the gateway is up."""

    public_address: tuple[str, int]
    agent_address: tuple[str, int]
    ca_fingerprint: str
    ca_path: Path
    admin_token: str | None = None  # configured, kept (dev, see __init__) or minted
    admin_origin: AdminOrigin | None = None
    agent_keys: dict[str, str] = field(default_factory=dict)  # agents created by this start
    ssh_fingerprint: str = ""  # the SSH front door's host key
    ssh_user_ca: str = ""  # fingerprint of the CA that signs users' SSH certificates


def _bind(address: tuple[str, int], *, reuse_port: bool = False) -> socket.socket:
    """`reuse_port`: share the port with this host's other workers (`--workers`, the kernel
    spreads connections over them); only then, so a lone gateway owns its port."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(host_port(host, port), exc) from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        rotate_admin_token: bool = False,
        admin_token_file: Path | None = None,
        worker: int | None = None,
    ) -> None:
        """`admin_token_file` (`wardgate dev`): keep the bootstrap admin token in this file
        (0600) and reuse it at every start while the store holds it valid, so shells and
        ~/.pgpass entries made with it survive restarts. `worker`: this process is that
        worker of `gateway --workers` (its member id says so)."""
        self.config = config
        self._rotate_admin = rotate_admin_token
        self._admin_token_file = admin_token_file
        self._tasks = TaskOwner("gateway")
        self._grpc: grpc.aio.Server | None = None
        self.store: Store | None = None
        self.auditor: Auditor | None = None
        self.registry = AgentRegistry(
            ping_interval=config.ping_interval,
            open_timeout=config.open_timeout,
            session_window=config.session_window,
        )
        self.started: Started | None = None
        self.member_id = fleet.new_member_id(worker)
        self.membership: fleet.Membership | None = None
        self.identity: IdentityService | None = None
        self.reviews: ReviewService | None = None
        self.budgets: BudgetLedger | None = None
        self.broker: SessionBroker | None = None
        self._bus: Bus | None = None
        self._forwarding: ForwardService | None = None  # sessions served for other members
        self._forwarder: Forwarder | None = None  # and those sent to them
        self.telemetry = Telemetry()  # this member's metrics (`/metrics`)
        self._closed = asyncio.Event()
        self._draining = False

    @property
    def draining(self) -> bool:
        """True from the start of `drain`: not ready for new sessions (for /readyz)."""
        return self._draining

    # ---- start -----------------------------------------------------------------------

    def _tls(self) -> TLSMaterial:
        tls = self.config.tls
        if tls.cert and tls.key:
            return load_configured(tls.cert, tls.key, tls.ca)
        return ensure_self_signed(self.config.data_dir, tls.hostnames)

    def _secret_box(self) -> SecretBox | None:
        value = self.config.secret_key or os.environ.get("WARDGATE_SECRET_KEY")
        return SecretBox.from_config(resolve_secret(value)) if value else None

    def _bootstrap_admin(self, store: Store) -> tuple[str | None, AdminOrigin | None]:
        """Make sure an admin can log in: the admin token this start knows, and where it
        came from (a configured one is the operator's and never shown)."""
        configured = self.config.admin_token or os.environ.get("WARDGATE_ADMIN_TOKEN")
        token = resolve_secret(configured) if configured else None
        if token is not None:
            check_admin_token(token)
        existing = store.identity.get_user(ADMIN_USER)
        store.identity.ensure_user(ADMIN_USER, is_admin=True)
        if token is not None:
            if store.identity.find_token(hash_token(token)) is None:
                store.identity.revoke_tokens_labelled(ADMIN_USER, BOOTSTRAP_LABEL)
                store.identity.add_token(ADMIN_USER, hash_token(token), label=BOOTSTRAP_LABEL)
            return token, "configured"
        kept = self._kept_admin_token(store)
        if kept is not None:
            return kept, "kept"
        if existing is not None and not self._rotate_admin and self._admin_token_file is None:
            return None, None  # production restarts keep the token printed at first start
        store.identity.revoke_tokens_labelled(ADMIN_USER, BOOTSTRAP_LABEL)
        token = new_token()
        store.identity.add_token(ADMIN_USER, hash_token(token), label=BOOTSTRAP_LABEL)
        if self._admin_token_file is not None:
            path = self._admin_token_file
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
            path.chmod(0o600)  # O_CREAT's mode does not apply to a file that existed
        return token, "minted"

    def _kept_admin_token(self, store: Store) -> str | None:
        """The token in `admin_token_file` while the store still holds it valid for admin."""
        path = self._admin_token_file
        if path is None or not path.exists():
            return None
        token = path.read_text().strip()
        found = store.identity.find_token(hash_token(token)) if token else None
        if found is None:
            return None
        record, user = found
        valid = record.valid_at(dt.datetime.now(dt.UTC)) and user.name == ADMIN_USER
        return token if valid and record.label == BOOTSTRAP_LABEL else None

    async def start(self) -> Started:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # Statement text, credential hashes, keys and terminal recordings live here: private
        # to the gateway's user whatever the umask (PostgreSQL insists on the same).
        cfg.data_dir.chmod(0o700)
        store = await asyncio.to_thread(
            functools.partial(Store.open, cfg.store_url(), sqlite_sync=cfg.audit_sync)
        )
        for db_file in cfg.data_dir.glob("*.db*"):  # SQLite and its -wal/-shm files
            db_file.chmod(0o600)
        self.store = store
        auditor = Auditor(store, telemetry=self.telemetry)
        self.auditor = auditor
        box = self._secret_box()
        await store.io.write(
            functools.partial(
                fleet.share_identity,
                store,
                box,
                cfg.data_dir,
                member=self.member_id,
                tls_hostnames=cfg.tls.hostnames,
                tls_configured=bool(cfg.tls.cert and cfg.tls.key),
                host_key_file=HOST_KEY_FILE,
            )
        )
        tls = await asyncio.to_thread(self._tls)
        admin_token, origin = await store.io.write(self._bootstrap_admin, store)
        if cfg.connections:
            results = await store.io.write(apply, store, box, cfg.connections)
            log.info("config connections: %s", results)

        public = parse_address(cfg.listen)
        agent_addr = parse_address(cfg.agent_listen)
        listener = _bind(public, reuse_port=cfg.workers > 1)
        public = (public[0], listener.getsockname()[1])

        peers = tuple(cfg.fleet.peers)

        async def members() -> tuple[str, ...]:
            """What agents are told to connect to: the live members in the store, and the
            configured peers (SQLite: none but this member)."""
            live = await store.io.scan(store.members.list_all)
            listed = [m.agent_address for m in live if m.live]
            return tuple(dict.fromkeys([*listed, *peers]))

        service = AgentService(store, self.registry, auditor, members=members)
        server = make_server()
        add_tunnel_service(server, service.control, service.session)
        link = box.derive(linkauth.PURPOSE) if box is not None else None
        if store.dialect == "postgresql" and link is not None:
            self._forwarding = self._member_link(store, server, LinkKey(link), tls)
        bind = (
            f"[{agent_addr[0]}]:{agent_addr[1]}"
            if ":" in agent_addr[0]
            else (f"{agent_addr[0]}:{agent_addr[1]}")
        )
        try:
            if cfg.allow_insecure_agents:
                port = server.add_insecure_port(bind)
            else:
                creds = grpc.ssl_server_credentials(
                    [(tls.key_path.read_bytes(), tls.cert_path.read_bytes())]
                )
                port = server.add_secure_port(bind, creds)
        except RuntimeError:  # grpc says only "Failed to bind"
            port = 0
        if port == 0:
            listener.close()
            try:  # grpc says only "Failed to bind": a plain bind names the reason
                _bind(agent_addr).close()
            except ListenError as exc:
                raise ListenError(bind, exc, setting="agent_listen") from exc
            in_use = OSError(errno.EADDRINUSE, "address already in use")
            raise ListenError(bind, in_use, setting="agent_listen")
        agent_addr = (agent_addr[0], port)
        await server.start()
        self._grpc = server

        advertise_host = (
            agent_addr[0] if agent_addr[0] not in ("0.0.0.0", "::") else (socket.gethostname())
        )
        service.member = cfg.fleet.advertise or host_port(advertise_host, agent_addr[1])
        self._tasks.spawn(service.watch_members(), name="members")
        agent_keys = await store.io.write(
            self._declare_agents, store, advertise_host, agent_addr[1], tls.ca_fingerprint
        )
        policy = cfg.access_policy()
        guardrails = PolicySource(store, cfg.policy)  # the store's newest version, seeded
        await store.io.write(guardrails.seed)
        self._tasks.spawn(guardrails.watch(cfg.policy_check_interval), name="policy")
        authenticator = Authenticator(
            store, policy, dpop_window=cfg.identity.credentials.dpop_window
        )
        broker = self.broker = SessionBroker(
            store,
            self.registry,
            auditor,
            box,
            policy,
            guardrails,
            telemetry=self.telemetry,
            member=self.member_id,
        )
        self.identity = IdentityService(
            store, auditor, cfg.identity, policy=policy, box=box, terminate=broker.terminate
        )
        self._tasks.spawn(
            broker.watch_revocations(cfg.identity.revocation_check_interval), name="revocations"
        )
        public_host = public[0] if public[0] not in ("0.0.0.0", "::") else advertise_host
        self.reviews = self._reviews(store, auditor, policy, host_port(public_host, public[1]))
        limiter = AuthLimiter(store, auditor, cfg.identity.rate_limit)
        self._tasks.spawn(limiter.run(), name="rate-limit pruning")
        app = build_app(
            ApiDeps(
                store=store,
                auth=authenticator,
                broker=broker,
                registry=self.registry,
                auditor=auditor,
                secret_box=box,
                ca_pem=tls.ca_path.read_bytes(),
                ca_fingerprint=tls.ca_fingerprint,
                agent_host=advertise_host,
                agent_port=agent_addr[1],
                insecure_agents=cfg.allow_insecure_agents,
                identity=self.identity,
                guardrails=guardrails,
                access=policy,
                policy_source=guardrails,
                reviews=self.reviews,
                limiter=limiter,
                telemetry=self.telemetry,
                draining=lambda: self.draining,
                agent_warmup=cfg.fleet.agent_warmup,
            )
        )
        app.state.reviews = self.reviews
        app.include_router(members_router(store, self.member_id))
        bus = None
        if store.dialect == "postgresql":  # members: a CancelRequest may land on any of them
            bus = Bus(conninfo(sa.make_url(cfg.store_url())))
        # `wardgate sessions kill`: the session may run on another member (asked on the bus).
        terminator = Terminator(store, broker, self.member_id, bus, cfg.fleet)
        app.include_router(terminate_router(terminator))
        # /console/ (and / sends there); its Operator page ends sessions with the same terminator
        console.mount(
            app,
            app.state.deps,
            cfg.console,
            recordings=cfg.data_dir / "recordings",
            terminator=terminator,
        )
        # AI agents at /mcp: their SQL goes through the PostgreSQL door below, on loopback,
        # their commands through the SSH door (whose host key they pin).
        host_key = await asyncio.to_thread(load_host_key, cfg.data_dir)
        mcp_door = McpDoor(
            store,
            broker,
            Loopback.of(public, tls.ca_path),
            cfg.mcp,
            self.telemetry.mcp_calls,
            guardrails,
            policy,
            auditor,
            self.reviews,
            ssh_host_key=f"{host_key.get_name()} {host_key.get_base64()}",
        )
        mcp_door.mount(app)
        self._tasks.spawn(mcp_door.run(), name="mcp")
        user_ca = await asyncio.to_thread(sshca.load_user_ca, cfg.data_dir)
        app.include_router(
            ssh_router(store, auditor, cfg.data_dir, cfg.data_dir / "recordings", user_ca=user_ca)
        )
        # Kubernetes: served by the API's hypercorn on the same port, built like the others.
        kube_door = KubeFrontDoor(
            authenticator,
            broker,
            auditor,
            access=policy,
            policy=cfg.kube_policy(),
            reviews=self.reviews,
            limiter=limiter,
        )
        kubernetes.mount(app, kube_door)
        ssl_ctx = server_context(tls, alpn=["h2", "http/1.1", "postgresql"])
        self.frontdoor = FrontDoor(
            ssl_ctx, auditor, http_handler(app, kube_door.spdy), limits=cfg.frontdoor
        )
        self.telemetry.add_counters(self.frontdoor.counters)
        self.telemetry.add_counters(lambda: [limiter.refused])
        # After SSLRequest only "postgresql" may be selected (libpq 17 offers it there too).
        self.budgets = BudgetLedger(store)
        self._tasks.spawn(self.budgets.run(), name="budget ledger")
        postgres = PostgresFrontDoor(
            server_context(tls, alpn=["postgresql"]),
            authenticator,
            broker,
            auditor,
            guardrails=guardrails,
            access=policy,
            reviews=self.reviews,
            budgets=self.budgets,
            limiter=limiter,
            bus=bus,
        )
        if bus is not None:  # after the door and the terminator subscribed
            self._tasks.spawn(bus.run(), name="fleet bus")
            self._bus = bus
        self.frontdoor.plain_handlers[Kind.POSTGRES] = postgres.plain
        self.frontdoor.alpn_handlers["postgresql"] = postgres.direct_tls
        # SSH: the host key lives in the data directory, so clients' known_hosts stay valid.
        ssh_door = SshFrontDoor(
            host_key,
            store,
            authenticator,
            broker,
            auditor,
            access=policy,
            reviews=self.reviews,
            recordings=cfg.data_dir / "recordings",
            user_ca=user_ca.public_key(),
            limiter=limiter,
        )
        self.frontdoor.plain_handlers[Kind.SSH] = ssh_door.plain
        quiet_banner_errors()  # each refused banner is audited; no traceback per peer
        self._tasks.spawn(self.frontdoor.serve(listener), name="frontdoor")
        await self._join(broker, service.member, advertise_host, public)
        await auditor.record("gateway.started", public=f"{public[0]}:{public[1]}", agents=f"{bind}")
        self.started = Started(
            public_address=public,
            agent_address=agent_addr,
            ca_fingerprint=tls.ca_fingerprint,
            ca_path=tls.ca_path,
            admin_token=admin_token,
            admin_origin=origin,
            agent_keys=agent_keys,
            ssh_fingerprint=ssh_door.fingerprint,
            ssh_user_ca=sshca.ca_fingerprint(user_ca),
        )
        return self.started

    async def _join(
        self, broker: SessionBroker, agent_address: str, host: str, public: tuple[str, int]
    ) -> None:
        """Join the fleet and keep the heartbeat going (gateway.fleet.membership)."""
        assert self.store is not None

        async def reaped() -> None:
            lost = frozenset(s.id for s in broker.live)
            await broker.terminate(reason="gateway lost", session_ids=lost)

        membership = fleet.Membership(
            self.store, self.member_id, self.config.fleet, on_reaped=reaped
        )
        public_host = public[0] if public[0] not in ("0.0.0.0", "::") else host
        await membership.join(
            # As `AgentService.member` says it: agents match the two to dial each member once.
            agent_address=agent_address,
            public_address=host_port(public_host, public[1]),
        )
        self.membership = membership
        self._tasks.spawn(membership.run(), name="membership")

    def _member_link(
        self, store: Store, server: grpc.aio.Server, key: LinkKey, tls: TLSMaterial
    ) -> ForwardService:
        """Members of a fleet carry sessions for each other (gateway.fleet.forward): serve
        the member link on the agent-facing port, and route there what no agent here takes."""
        assert self.auditor is not None

        async def live() -> list[MemberRecord]:
            return [m for m in await store.io.read(store.members.list_all) if m.live]

        async def peers() -> list[Peer]:
            return [Peer(m.id, m.agent_address) for m in await live()]

        async def is_member(member_id: str) -> bool:
            return any(m.id == member_id for m in await live())

        forwarding = ForwardService(
            self.registry,
            self.auditor,
            member_id=self.member_id,
            key=key,
            is_member=is_member,
            telemetry=self.telemetry,
        )
        add_member_link(server, forwarding)
        insecure = self.config.allow_insecure_agents
        self._forwarder = Forwarder(
            member_id=self.member_id,
            key=key,
            peers=peers,
            roots=None if insecure else tls.ca_path.read_bytes(),
            server_name=None if insecure else dns_name(tls.cert_path),
            open_timeout=self.config.open_timeout,
            telemetry=self.telemetry,
        )
        self.registry.elsewhere = self._forwarder.open
        return forwarding

    def _reviews(
        self, store: Store, auditor: Auditor, policy: AccessPolicy, public: str
    ) -> ReviewService:
        """Approvals: the review service, with the webhook when one is configured (its
        events link to the review's console page at `console.public_url`, or `public`)."""
        cfg = self.config.reviews
        webhook = links = None
        if cfg.webhook is not None:

            async def undelivered(event: str, error: str) -> None:
                await auditor.record("review.webhook_failed", event=event, error=error)

            webhook = Webhook(
                cfg.webhook.url,
                resolve_secret(cfg.webhook.secret),
                attempts=cfg.webhook.attempts,
                timeout=cfg.webhook.timeout,
                on_failure=undelivered,
            )
            base = self.config.console.public_url or f"https://{public}"
            links = ReviewLinks(base, resolve_secret(cfg.webhook.secret))
        return ReviewService(
            store, auditor, policy, webhook=webhook, links=links, poll_interval=cfg.poll_interval
        )

    def _declare_agents(
        self, store: Store, host: str, port: int, fingerprint: str
    ) -> dict[str, str]:
        """Create the agents the config declares; the keys of those created with a drawn
        secret (a configured secret's key is its operator's already)."""
        keys: dict[str, str] = {}
        insecure = self.config.allow_insecure_agents
        for i, decl in enumerate(self.config.agents):
            configured = decl.secret is not None
            try:
                secret = resolve_secret(decl.secret) if decl.secret is not None else new_secret()
                key = AgentKey(
                    decl.name, secret, host, port, None if insecure else fingerprint, insecure
                )
            except (ValueError, OSError) as exc:
                raise ConfigError(f"agents[{i}] ({decl.name}): {exc}") from None
            try:
                store.agents.create(decl.name, decl.pool or decl.name, hash_secret(secret))
            except AlreadyExists:
                if configured:
                    self._keep_configured_secret(store, decl.name, hash_secret(secret))
                continue
            if not configured:
                keys[decl.name] = key.format()
        return keys

    @staticmethod
    def _keep_configured_secret(store: Store, name: str, secret_hash: bytes) -> None:
        """The config is the truth for a configured secret (rotated in a Secret: restart),
        except that it never brings back an agent an administrator revoked."""
        agent = store.agents.get(name)
        if agent is None or hmac.compare_digest(agent.secret_hash, secret_hash):
            return
        if agent.revoked:
            log.warning("agent %s is revoked; its configured secret is not taken back", name)
            return
        store.agents.rotate_secret(name, secret_hash)
        log.info("agent %s: secret replaced by the configured one", name)

    def agent_key(self, name: str, pool: str, *, host: str = "127.0.0.1") -> str:
        """Create or re-key an agent (the embedded dev agent gets a new key every start)."""
        assert self.store is not None and self.started is not None
        secret = new_secret()
        try:
            self.store.agents.create(name, pool, hash_secret(secret))
        except AlreadyExists:
            self.store.agents.rotate_secret(name, hash_secret(secret))
        return AgentKey(
            name,
            secret,
            host,
            self.started.agent_address[1],
            None if self.config.allow_insecure_agents else self.started.ca_fingerprint,
            self.config.allow_insecure_agents,
        ).format()

    # ---- stop ------------------------------------------------------------------------

    async def drain(self, grace: float, notice: float = 0.0) -> None:
        """The first stage of a stop (SIGTERM): refuse new sessions and agents, give live
        sessions `grace` seconds to finish, then end the rest in their protocol's words
        (reason SHUTDOWN_REASON); return no sooner than `notice` seconds (at most `grace`)
        after it began, so balancers see /readyz say 503 while the port still answers.
        `aclose` follows, which says goodbye to the agents."""
        if self._draining:
            return
        began = time.monotonic()
        try:
            await self._drain(grace)
        finally:
            # Not a synchronisation: the time balancers are given to notice (drain_notice).
            left = min(notice, grace) - (time.monotonic() - began)
            if left > 0:
                await asyncio.sleep(left)

    async def _drain(self, grace: float) -> None:
        self._draining = True
        self.registry.accepting = False
        broker = self.broker
        if broker is None:
            return
        broker.draining = True
        live = len(broker.live)
        log.info("draining: %d live sessions get %gs to finish", live, grace)
        if self.auditor is not None:
            self.auditor.submit("gateway.draining", sessions=live, grace=grace)
        try:
            async with asyncio.timeout(grace):
                await self._idle(broker)
            return
        except TimeoutError:
            pass
        doomed = frozenset(s.id for s in broker.live)
        ended = await broker.terminate(
            reason=SHUTDOWN_REASON, session_ids=doomed, code=ResetCode.GATEWAY_SHUTDOWN
        )
        if self._forwarding is not None:  # their clients' members say it in their words
            ended += self._forwarding.relaying
            self._forwarding.end_all(ResetCode.GATEWAY_SHUTDOWN, SHUTDOWN_REASON)
        log.info("drain grace over: ended %d sessions (%s)", ended, SHUTDOWN_REASON)
        try:
            async with asyncio.timeout(DRAIN_END_TIMEOUT):
                await self._idle(broker)
        except TimeoutError:
            log.warning("sessions still ending after %gs: cut", DRAIN_END_TIMEOUT)

    async def _idle(self, broker: SessionBroker) -> None:
        """Until no session runs here: this member's own, and those it serves for others."""
        await broker.wait_idle()
        if self._forwarding is not None:
            await self._forwarding.wait_idle()

    async def aclose(self) -> None:
        """Two-stage stop: tell agents goodbye and stop accepting, then drop the rest."""
        await self.registry.aclose()
        await self._tasks.aclose()
        if self.broker is not None:
            await self.broker.aclose()
        if self.budgets is not None:  # after the sessions ended and deferred their usage
            await self.budgets.aclose()
        if self.identity is not None:
            await self.identity.aclose()
        if self.reviews is not None:
            await self.reviews.aclose()
        if self._grpc is not None:
            await self._grpc.stop(grace=2)
        if self._forwarder is not None:
            await self._forwarder.aclose()
        if self._bus is not None:
            await self._bus.aclose()
        if self.membership is not None:
            try:  # a store that is down: the other members reap this one instead
                await self.membership.leave()
            except Exception as exc:
                log.warning("member %s could not leave the fleet: %s", self.member_id, exc)
        if self.auditor is not None:
            with contextlib.suppress(Exception):
                await self.auditor.record("gateway.stopped")
            await self.auditor.aclose()
        if self.store is not None:
            self.store.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

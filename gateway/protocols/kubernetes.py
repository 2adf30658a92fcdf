"""Kubernetes API front door: `https://GATEWAY/k8s/CONNECTION/...` (HTTP/1.1 or HTTP/2,
and WebSocket upgrades for exec/attach), served by the admin app's hypercorn.

Each API request is one session of the common pipeline (`SessionBroker.open`: authorize on
the connection, record, route to an agent), then:

    decide   the per-request policy (gateway/policy/kube.py) on verb, resource, subresource,
             namespace and name; a denial is a `Status` 403 naming the rule, and the request
             never reaches the agent's API server
    review   a request a `review` rule holds becomes a review (gateway/reviews, as for
             PostgreSQL): by default a `Status` 403 names it at once, and the same user's
             identical request passes once it is approved (kubectl is simply run again);
             with `wait: true` the request waits for the decision (the client's leaving
             withdraws the review)
    record   `k8s.request` (user, verb, resource, namespace, name, decision) before the
             request is forwarded, `k8s.response` (code, bytes) when it ends
    relay    the request head + body to the agent (shared/kubeapi.py frames); the response
             head, then the body streamed frame by frame (watch, `logs -f`), or WebSocket
             messages both ways after a 101

The bearer token kubectl sends is a Wardgate credential (from `wardgate kube credential`),
checked like every other entry's. It never goes further: the agent uses the connection's
own cluster credential and, when the connection says so, impersonates the Wardgate user.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from gateway.audit import Auditor, AuditUnavailable
from gateway.auth import Authenticator, AuthError, Identity
from gateway.policy.grants import AccessPolicy
from gateway.policy.kube import KubeDecision, KubePolicy, review_text
from gateway.policy.rules import subject_for
from gateway.ratelimit import Rejections, peer_host
from gateway.reviews import ReviewService, outcome
from gateway.sessions import Session, SessionBroker, SessionError
from gateway.store import ReviewRecord
from shared.kubeapi import (
    CHANNEL_PROTOCOLS,
    CONNECT_SUBRESOURCES,
    WS_BINARY,
    WS_TEXT,
    ExecRecorder,
    HeadError,
    RequestHead,
    RequestInfo,
    ResponseHead,
    UpgradeRequest,
    decode_head,
    decode_ws,
    encode_head,
    encode_response_head,
    encode_ws,
    encode_ws_close,
    forwardable,
    request_info,
    status_body,
)
from shared.relay import Ended, Refused, StreamPeer, relay
from shared.tunnel.frames import MAX_PAYLOAD, ResetCode
from shared.tunnel.stream import DataReceived, RemoteClosed, SessionClosedError, SessionReset

log = logging.getLogger(__name__)

PREFIX = "/k8s/"
MAX_REQUEST_BODY = 16 * 1024 * 1024
MAX_ERROR_BODY = 1024 * 1024
MAX_AUDIT_QUERY = 4096
RECORD_INTERVAL = 1.0  # seconds between batches of recorded exec output
HTTP_STATUS = {
    "unauthenticated": 401,
    "forbidden": 403,
    "unknown_connection": 404,
    "wrong_type": 400,
    "no_agent": 503,
    "unreachable": 502,
    "agent_lost": 502,
    "unsupported": 502,
    "unavailable": 503,
    "draining": 503,  # this gateway is shutting down: another one answers
}
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _reads(info: RequestInfo) -> bool:
    return info.verb in ("get", "list", "watch") and info.subresource not in CONNECT_SUBRESOURCES


def _no_answer_status(session: Session) -> int:
    """The status of a request the agent did not answer: 503 when this gateway ended it
    because it is shutting down (another member answers), 502 otherwise."""
    end = session.stream.end_reason
    shutdown = end is not None and end.code is ResetCode.GATEWAY_SHUTDOWN and not end.by_peer
    return 503 if shutdown else 502


def _status(code: int, message: str) -> Response:
    return Response(status_body(code, message), status_code=code, media_type="application/json")


class _Limited(AuthError):
    """A refused credential from an address over its limit: 429 with Retry-After."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _unauthenticated(exc: AuthError) -> tuple[int, str, dict[str, str]]:
    """The status, message and extra headers a refused credential gets."""
    if isinstance(exc, _Limited):
        return 429, f"Wardgate: {exc}", {"Retry-After": str(exc.retry_after)}
    return 401, f"Wardgate: {exc}", {}


def _refused(exc: AuthError) -> Response:
    code, message, headers = _unauthenticated(exc)
    response = _status(code, message)
    response.headers.update(headers)
    return response


def _split(raw_path: bytes) -> tuple[str, str]:
    """(connection, API server path) from the raw, still percent-encoded request path."""
    rest = raw_path.decode("latin-1")[len(PREFIX) :]
    connection, _, path = rest.partition("/")
    return connection, "/" + path


def _spdy(headers: list[tuple[str, str]]) -> bool:
    return any(k.lower() == "upgrade" and v.lower().startswith("spdy") for k, v in headers)


@dataclasses.dataclass(frozen=True, slots=True)
class _Opened:
    session: Session
    decision: KubeDecision
    text: str = ""  # effect review: what the review shows (`review_text`)
    latest: ReviewRecord | None = None  # effect review: the newest review of this request


class UpstreamFailed(Exception):
    """The response broke off mid-body: the client's connection (or HTTP/2 stream) is
    aborted rather than ended cleanly, so a truncated body never looks complete."""


class _RelayResponse(Response):
    """Streams the agent's response body, notices the client leaving, and always ends the
    session, however the response ends (even before its first byte).

    A watch or `logs -f` may send nothing for hours: the end of the client has to be
    noticed by listening for `http.disconnect`, not by a failing write.
    """

    def __init__(self, door: KubeFrontDoor, session: Session, head: ResponseHead) -> None:
        super().__init__(status_code=head.status)
        self.raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in head.headers
        ]
        self._door = door
        self._session = session
        self._masked = head.masked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self._session
        sent = 0
        error: str | None = "client went away"

        async def pump() -> None:
            nonlocal sent, error
            start = {"type": "http.response.start", "status": self.status_code}
            await send({**start, "headers": self.raw_headers})
            while True:
                event = await session.stream.receive()
                if isinstance(event, DataReceived):
                    sent += len(event.payload)
                    await send({"type": "http.response.body", "body": event.payload,
                                "more_body": True})  # fmt: skip
                elif isinstance(event, RemoteClosed):
                    error = None
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                elif isinstance(event, SessionReset):
                    error = session.describe_end(event)
                    raise UpstreamFailed(error)

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            async with asyncio.TaskGroup() as tg:
                body = tg.create_task(pump(), name=f"k8s/{session.id}/body")
                gone = tg.create_task(watch_disconnect(), name=f"k8s/{session.id}/client")
                done, _ = await asyncio.wait({body, gone}, return_when=asyncio.FIRST_COMPLETED)
                for task in (body, gone):
                    if task not in done:
                        task.cancel()
        finally:
            # Shielded: a cancelled response (the client left a watch) still ends its session.
            end = self._door._end(session, self.status_code, sent, error=error, masked=self._masked)
            await asyncio.shield(end)


class KubeFrontDoor:
    """Built beside the other doors by the composition root (gateway/app.py) and mounted on
    the API's app (`mount`): it shares the public port and hypercorn, not the API's code."""

    def __init__(
        self,
        auth: Authenticator,
        broker: SessionBroker,
        auditor: Auditor,
        *,
        access: AccessPolicy | None = None,
        policy: KubePolicy | None = None,
        reviews: ReviewService | None = None,
        limiter: Rejections | None = None,  # refused credentials per address
    ) -> None:
        self.auth = auth
        self.broker = broker
        self.auditor = auditor
        self.access = access or AccessPolicy()
        self.policy = policy or KubePolicy()
        self.reviews = reviews
        self.limiter = limiter

    async def _identity(self, header: str | None, client: str, connection: str) -> Identity:
        try:
            return await self.auth.authenticate_header(header)
        except AuthError as exc:
            # Counted per address like failed sign-ins (gateway/api/ratelimit.py): over the
            # limit, 429 instead of one more event.
            limiter = self.limiter
            host = peer_host(client)
            if limiter is not None and (over := await limiter.rejected(host, "kubernetes")):
                raise _Limited(over.message, over.retry_after) from None
            await self.auditor.record(
                "auth.rejected", client=client, connection=connection, reason=str(exc)
            )
            raise

    async def _open(
        self, who: Identity, connection: str, client: str, info: RequestInfo, query: str
    ) -> _Opened:
        session = await self.broker.open(
            who, connection, protocol="kubernetes", client_addr=client, types=("kubernetes",)
        )
        subject = subject_for(self.access, who.user, who.groups, machine=who.is_machine)
        decision = self.policy.decide(subject, connection, info)
        if session.access == "read-only" and decision.effect != "deny" and not _reads(info):
            decision = KubeDecision("deny", "read-only access allows only get, list and watch")
        text = ""
        latest: ReviewRecord | None = None
        try:
            if decision.effect == "review":
                text = review_text(info, query)
                decision, latest = await self._approved(who, connection, text, decision)
            await self.auditor.record(
                "k8s.request",
                actor=who.user,
                session_id=session.id,
                connection=connection,
                verb=info.verb,
                resource=info.resource,
                subresource=info.subresource,
                namespace=info.namespace,
                name=info.name,
                api_group=info.api_group,
                path=info.path,
                query=query[:MAX_AUDIT_QUERY],
                # What an exec runs is the heart of its record.
                command=parse_qs(query).get("command") if info.subresource == "exec" else None,
                decision=decision.effect,
                reason=decision.reason,
                review=latest.id if latest is not None else None,
            )
        except BaseException:
            await self._end(session, None, 0, error="audit log unavailable")
            raise
        return _Opened(session, decision, text, latest)

    # ---- reviews ---------------------------------------------------------------------

    async def _approved(
        self, who: Identity, connection: str, text: str, decision: KubeDecision
    ) -> tuple[KubeDecision, ReviewRecord | None]:
        """A held request whose identical twin was approved (and the approval is still
        valid) is allowed; else it stays held. With the newest review of it, if any."""
        reviews = self.reviews
        if reviews is None:
            return KubeDecision(
                "deny", f"{decision.reason}; approvals are not enabled on this gateway"
            ), None
        try:
            latest = await reviews.latest(
                who, connection=connection, protocol="kubernetes", text=text
            )
        except AuditUnavailable:
            raise
        except Exception:
            log.exception("kubernetes: cannot look up the reviews of %r", text)
            return KubeDecision("deny", f"{decision.reason}; reviews cannot be read"), None
        if latest is not None and reviews.still_approved(latest):
            allowed = dataclasses.replace(
                decision, effect="allow", reason=f"{decision.reason}; approved in {latest.id}"
            )
            return allowed, latest
        return decision, latest

    async def _hold(
        self,
        opened: _Opened,
        info: RequestInfo,
        *,
        fallback: bool,
        client_gone: Callable[[], Coroutine[Any, Any, None]],
    ) -> str | None:
        """A request a review rule holds: None when it may go on (approved while it
        waited), else the message of its Status 403."""
        reviews, decision, latest = self.reviews, opened.decision, opened.latest
        terms = decision.review
        assert reviews is not None and terms is not None
        what = info.describe()
        session = opened.session
        if latest is not None and (latest.status == "pending" or fallback):
            # Asked again while pending (or kubectl's SPDY retry of a refused WebSocket
            # exec): the same review answers, nobody is asked twice.
            review, ours = latest, False
        else:
            try:
                review = await reviews.hold(
                    session.identity,
                    connection=session.connection.name,
                    session_id=session.id,
                    protocol="kubernetes",
                    text=opened.text,
                    reason=decision.reason,
                    rules=decision.rules,
                    terms=terms,
                )
            except AuditUnavailable:
                raise
            except Exception:
                # Fail closed: without a stored review nobody could approve it.
                log.exception("session %s: cannot create a review", session.id)
                return (
                    f"Wardgate policy: {what} needs approval ({decision.reason}), "
                    "and the review could not be created"
                )
            ours = True
        approve = f"another person approves with: wardgate reviews approve {review.id}"
        if review.status != "pending":
            return f"Wardgate: review {review.id} of {what} {outcome(review)} ({review.decision})"
        if not decision.wait:
            return (
                f"Wardgate: {what} is held for review {review.id} ({decision.reason}); {approve}; "
                f"once approved, run the same request again within {terms.approval_ttl}s"
            )
        decided = await reviews.wait_for_client(
            review.id,
            left=client_gone(),
            # A review this request asked for goes with it; one it shares stays.
            withdraw="the client went away" if ours else None,
        )
        if decided is None:
            return f"Wardgate: the client went away while review {review.id} was pending"
        if reviews.still_approved(decided):
            return None
        ended = outcome(decided)
        return f"Wardgate: review {review.id} of {what} {ended} ({decided.decision}); not run"

    async def _end(
        self,
        session: Session,
        status: int | None,
        nbytes: int,
        *,
        error: str | None = None,
        masked: int = 0,
    ) -> None:
        if not session.stream.finished:
            await session.stream.reset(ResetCode.CANCELLED, error or "request done")
        with contextlib.suppress(Exception):
            await self.auditor.record(
                "k8s.response",
                actor=session.identity.user,
                session_id=session.id,
                status=status,
                bytes=nbytes,
                masked=masked,
                error=error,
            )
        await self.broker.finish(session, error=error)

    def _head(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]],
        who: Identity, decision: KubeDecision, protocols: tuple[str, ...] = (),
    ) -> RequestHead:  # fmt: skip
        return RequestHead(
            method=method,
            path=path,
            query=query,
            headers=forwardable(headers),
            websocket_protocols=protocols,
            impersonate_user=who.user,
            impersonate_groups=who.groups,
            mask_secrets=decision.mask_secrets,
            mask_env=decision.mask_env,
        )

    async def _upgrade(self, session: Session, head: RequestHead) -> ResponseHead | str:
        """Send an upgrade's request head (no body follows); the agent's answer, or why none."""
        try:
            await session.stream.send_data(encode_head(head))
            return await self._response_head(session)
        except SessionClosedError as exc:
            return str(exc)

    async def _response_head(self, session: Session) -> ResponseHead | str:
        """The agent's response head, or why there is none."""
        event = await session.stream.receive()
        if isinstance(event, DataReceived):
            try:
                head = decode_head(event.payload)
            except HeadError as exc:
                return f"agent {session.agent.name!r} broke the kubernetes framing: {exc}"
            if isinstance(head, ResponseHead):
                return head
            return f"agent {session.agent.name!r} sent a request head"
        if isinstance(event, SessionReset):
            return session.describe_end(event)
        return "the agent closed the request without an answer"

    # ---- plain HTTP ------------------------------------------------------------------

    async def http(self, request: Request) -> Response:
        connection, path = _split(request.scope.get("raw_path") or request.url.path.encode())
        client = f"{request.client.host}:{request.client.port}" if request.client else "-"
        query = request.url.query
        try:
            who = await self._identity(request.headers.get("authorization"), client, connection)
        except AuthError as exc:
            return _refused(exc)
        info = request_info(request.method, path, query)
        try:
            opened = await self._open(who, connection, client, info, query)
        except SessionError as exc:
            return _status(HTTP_STATUS.get(exc.kind, 502), f"Wardgate: {exc.message}")
        except AuditUnavailable as exc:  # nothing is forwarded that is not recorded
            return _status(503, f"Wardgate: {exc}")
        session, decision = opened.session, opened.decision
        if decision.effect == "deny":
            await self._end(session, 403, 0, error=f"policy: {decision.reason}")
            return _status(403, f"Wardgate policy denies {info.describe()}: {decision.reason}")
        stream = session.stream
        try:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_REQUEST_BODY:
                    await self._end(session, 413, 0, error="request body too large")
                    return _status(413, f"request body over {MAX_REQUEST_BODY} bytes")
            if decision.effect == "review":

                async def client_gone() -> None:
                    # The body is read: what the client sends next is its leaving.
                    while (await request.receive())["type"] != "http.disconnect":
                        pass

                refusal = await self._hold(
                    opened,
                    info,
                    fallback=_spdy(request.headers.items()),
                    client_gone=client_gone,
                )
                if refusal is not None:
                    await self._end(session, 403, 0, error=f"policy: {refusal}")
                    return _status(403, refusal)
            head = self._head(request.method, path, query, request.headers.items(), who, decision)
            await stream.send_data(encode_head(head))
            if body:
                await stream.send_data(bytes(body))
            await stream.send_close()
            answer = await self._response_head(session)
        except SessionClosedError as exc:
            answer = str(exc)
        except AuditUnavailable as exc:  # a review that cannot be recorded is not made
            await self._end(session, 503, 0, error="audit log unavailable")
            return _status(503, f"Wardgate: {exc}")
        except BaseException:
            await self._end(session, None, 0, error="client went away")
            raise
        if isinstance(answer, str):
            code = _no_answer_status(session)
            await self._end(session, code, 0, error=answer)
            return _status(code, f"Wardgate: {answer}")
        return _RelayResponse(self, session, answer)

    # ---- WebSocket upgrades (exec, attach) -------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        connection, path = _split(ws.scope.get("raw_path") or ws.url.path.encode())
        client = f"{ws.client.host}:{ws.client.port}" if ws.client else "-"
        query = ws.url.query
        try:
            who = await self._identity(ws.headers.get("authorization"), client, connection)
        except AuthError as exc:
            await ws.send_denial_response(_refused(exc))
            return
        info = request_info("GET", path, query)
        try:
            opened = await self._open(who, connection, client, info, query)
        except SessionError as exc:
            code = HTTP_STATUS.get(exc.kind, 502)
            await ws.send_denial_response(_status(code, f"Wardgate: {exc.message}"))
            return
        except AuditUnavailable as exc:
            await ws.send_denial_response(_status(503, f"Wardgate: {exc}"))
            return
        session, decision = opened.session, opened.decision
        if decision.effect == "deny":
            await self._end(session, 403, 0, error=f"policy: {decision.reason}")
            message = f"Wardgate policy denies {info.describe()}: {decision.reason}"
            await ws.send_denial_response(_status(403, message))
            return
        if decision.effect == "review":

            async def client_gone() -> None:
                # Not accepted yet: the connect message, then only the client's leaving.
                with contextlib.suppress(Exception):
                    if ws.client_state == WebSocketState.CONNECTING:
                        await ws.receive()
                    while (await ws.receive())["type"] != "websocket.disconnect":
                        pass

            try:
                refusal = await self._hold(opened, info, fallback=False, client_gone=client_gone)
            except BaseException:
                await self._end(session, None, 0, error="review unavailable")
                raise
            if refusal is not None:
                await self._end(session, 403, 0, error=f"policy: {refusal}")
                if ws.client_state != WebSocketState.DISCONNECTED:
                    await ws.send_denial_response(_status(403, refusal))
                return
        protocols = tuple(ws.scope.get("subprotocols") or ())
        head = self._head("GET", path, query, ws.headers.items(), who, decision, protocols)
        answer = await self._upgrade(session, head)
        if isinstance(answer, str):
            code = _no_answer_status(session)
            await self._end(session, code, 0, error=answer)
            await ws.send_denial_response(_status(code, f"Wardgate: {answer}"))
            return
        if answer.status != 101:
            body = await self._collect(session)
            await self._end(session, answer.status, len(body))
            await ws.send_denial_response(
                Response(body, status_code=answer.status, headers=dict(answer.headers))
            )
            return
        await ws.accept(subprotocol=answer.websocket_protocol)
        nbytes, error = await self._relay_ws(ws, session, answer.websocket_protocol)
        await self._end(session, 101, nbytes, error=error)

    async def _collect(self, session: Session) -> bytes:
        body = bytearray()
        while len(body) < MAX_ERROR_BODY:
            event = await session.stream.receive()
            if not isinstance(event, DataReceived):
                break
            body += event.payload
        return bytes(body[:MAX_ERROR_BODY])

    async def _relay_ws(
        self, ws: WebSocket, session: Session, protocol: str | None
    ) -> tuple[int, str | None]:
        loop = asyncio.get_running_loop()
        # Terminal output of exec/attach goes to the session log as asciicast v2, in
        # batches (`k8s.exec.output`); the first batch carries the header.
        recorder = ExecRecorder(loop.time()) if protocol in CHANNEL_PROTOCOLS else None
        peer = _ExecPeer(ws, session, recorder, self.auditor)
        try:
            end = await relay(
                session.stream,
                peer,
                half_close=False,  # WebSocket has no half-close
                name=f"k8s/{session.id}",
                who="client",
                describe=session.describe_end,
            )
        finally:
            peer.flush(final=True)
        with contextlib.suppress(Exception):
            if end.ended is Ended.TUNNEL_CLOSED:
                await ws.close(1000)
            elif end.ended in (Ended.TUNNEL_RESET, Ended.REFUSED):
                await ws.close(1011, reason=(end.error or "")[:120])
        return peer.counted, end.error

    # ---- plain upgrades (SPDY/3.1: kubectl's exec, attach, port-forward fallback) -------

    async def spdy(
        self,
        request: UpgradeRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str,
    ) -> None:
        """A SPDY upgrade, read by gateway/api/server.py before hypercorn (ASGI only
        upgrades to WebSocket). The same steps as a WebSocket upgrade; after the API
        server's 101 the bytes are relayed as they are. Exec output is not recorded on
        this path: it would mean parsing SPDY (zlib header blocks, streams) here."""
        path_only, _, query = request.target.partition("?")
        if not path_only.startswith(PREFIX):
            await _answer(writer, 404, "Wardgate: SPDY upgrades are relayed only under /k8s/")
            return
        connection, path = _split(path_only.encode("latin-1"))
        try:
            who = await self._identity(request.header("authorization"), client, connection)
        except AuthError as exc:
            code, message, headers = _unauthenticated(exc)
            await _answer(writer, code, message, headers)
            return
        info = request_info(request.method, path, query)
        try:
            opened = await self._open(who, connection, client, info, query)
        except SessionError as exc:
            await _answer(writer, HTTP_STATUS.get(exc.kind, 502), f"Wardgate: {exc.message}")
            return
        except AuditUnavailable as exc:
            await _answer(writer, 503, f"Wardgate: {exc}")
            return
        session, decision = opened.session, opened.decision
        if decision.effect == "deny":
            await self._end(session, 403, 0, error=f"policy: {decision.reason}")
            await _answer(
                writer, 403, f"Wardgate policy denies {info.describe()}: {decision.reason}"
            )
            return
        nbytes, error, status = 0, None, None
        try:
            if decision.effect == "review":

                async def client_gone() -> None:
                    # An upgrade request has no body: what comes next is the client leaving.
                    with contextlib.suppress(OSError):
                        while await reader.read(4096):
                            pass

                # fallback: kubectl tries SPDY after a refused WebSocket exec; the same
                # review answers both.
                refusal = await self._hold(opened, info, fallback=True, client_gone=client_gone)
                if refusal is not None:
                    status, error = 403, f"policy: {refusal}"
                    await _answer(writer, 403, refusal)
                    return
            head = dataclasses.replace(
                self._head(request.method, path, query, list(request.headers), who, decision),
                upgrade=request.upgrade,
            )
            answer = await self._upgrade(session, head)
            if isinstance(answer, str):
                status, error = _no_answer_status(session), answer
                await _answer(writer, status, f"Wardgate: {answer}")
                return
            status = answer.status
            if answer.status != 101:
                body = await self._collect(session)
                nbytes = len(body)
                kept = [(k, v) for k, v in answer.headers if k.lower() != "content-length"]
                kept += [("Content-Length", str(len(body))), ("Connection", "close")]
                writer.write(encode_response_head(answer.status, "Refused", kept) + body)
                await writer.drain()
                return
            switched = [*answer.headers, ("Connection", "Upgrade"), ("Upgrade", request.upgrade)]
            writer.write(encode_response_head(101, "Switching Protocols", switched))
            nbytes, error = await _relay_raw(session, reader, writer)
        except AuditUnavailable as exc:
            status, error = 503, "audit log unavailable"
            await _answer(writer, 503, f"Wardgate: {exc}")
        except (OSError, ssl.SSLError) as exc:
            error = f"client connection failed: {exc}"
        finally:
            await asyncio.shield(self._end(session, status, nbytes, error=error))


async def _answer(
    writer: asyncio.StreamWriter, code: int, message: str, headers: dict[str, str] | None = None
) -> None:
    body = status_body(code, message)
    head = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("Connection", "close"), *(headers or {}).items()]  # fmt: skip
    with contextlib.suppress(OSError, ssl.SSLError):
        writer.write(encode_response_head(code, "Wardgate", head) + body)
        await writer.drain()


async def _relay_raw(
    session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[int, str | None]:
    """Bytes both ways until either side ends: (bytes relayed, why it failed). The client's
    connection is TLS, which has no half-close: either end closing ends the session."""
    end = await relay(
        session.stream,
        StreamPeer(reader, writer, MAX_PAYLOAD),
        half_close=False,
        name=f"k8s/{session.id}",
        who="client",
        describe=session.describe_end,
    )
    return end.sent + end.received, end.error


class _ExecPeer:
    """An exec/attach WebSocket as a relay peer: each message one tunnel frame
    (shared/kubeapi.py `encode_ws`), the terminal recorded on the way."""

    def __init__(
        self, ws: WebSocket, session: Session, recorder: ExecRecorder | None, auditor: Auditor
    ) -> None:
        self.ws = ws
        self.session = session
        self.recorder = recorder
        self.auditor = auditor
        self.loop = asyncio.get_running_loop()
        self.counted = 0
        self.batches = 0
        self.last_batch = 0.0
        self.closing = False  # the client left: its close frame went, EOF comes next

    async def read(self) -> bytes | None:
        if self.closing:
            return None
        try:
            message = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise ConnectionResetError(f"the client went away ({exc})") from exc
        if message["type"] == "websocket.disconnect":
            self.closing = True
            return encode_ws_close(1000, "")
        if (data := message.get("bytes")) is not None:
            frame = encode_ws(WS_BINARY, data)
            if self.recorder is not None:
                self.recorder.client_message(self.loop.time(), data)
        else:
            frame = encode_ws(WS_TEXT, (message.get("text") or "").encode())
        if len(frame) > MAX_PAYLOAD:
            with contextlib.suppress(Exception):
                await self.ws.close(1009)
            raise Refused("WebSocket message too large", ResetCode.FRAME_TOO_LARGE)
        self.counted += len(frame) - 1
        return frame

    async def write(self, data: bytes) -> None:
        try:
            kind, payload = decode_ws(data)
        except HeadError as exc:
            raise Refused(f"agent {self.session.agent.name!r}: {exc}") from exc
        self.counted += len(payload)
        try:
            if kind == WS_BINARY:
                if self.recorder is not None:
                    self.recorder.server_message(self.loop.time(), payload)
                    self.flush()
                await self.ws.send_bytes(payload)
            elif kind == WS_TEXT:
                await self.ws.send_text(payload.decode(errors="replace"))
            else:  # the API server closed: its code and reason, then the tunnel's close
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
                await self.ws.close(code, reason=payload[2:].decode(errors="replace"))
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise ConnectionResetError(f"the client went away ({exc})") from exc

    async def write_eof(self) -> None:
        raise AssertionError("WebSocket has no half-close")

    async def wait_gone(self) -> None:
        raise AssertionError("WebSocket has no half-close")

    def flush(self, final: bool = False) -> None:
        recorder = self.recorder
        if recorder is None:
            return
        now = self.loop.time()
        if not final and now - self.last_batch < RECORD_INTERVAL and recorder.backlog < 256:
            return
        text = recorder.take()
        if not text and not (final and self.batches == 0):
            return
        if self.batches == 0:
            text = recorder.header(timestamp=int(time.time())) + "\n" + text
        self.batches += 1
        self.last_batch = now
        self.auditor.submit(
            "k8s.exec.output",
            actor=self.session.identity.user,
            session_id=self.session.id,
            batch=self.batches,
            asciicast=text,
            truncated=recorder.truncated,
        )


def mount(app: FastAPI, door: KubeFrontDoor) -> None:
    """Serve `door` on `app` (the public port's): `/k8s/CONNECTION/...`, HTTP and WebSocket.
    SPDY upgrades (exec from older kubectl) never reach the app: api/server.py hands them to
    `door.spdy`."""
    app.add_api_route(
        "/k8s/{connection}/{path:path}", door.http, methods=_METHODS, include_in_schema=False
    )
    app.add_api_websocket_route("/k8s/{connection}/{path:path}", door.websocket)

"""The User page: the connections the signed-in person may reach, each with the commands
that reach it.

GET /console/connections

A connection is listed when the session broker would open a session on it for this person
now (`SessionBroker.access`, what `GET /v1/connections/{name}/access` answers and
`wardgate tcp` asks before it listens); nothing is opened or recorded. The commands are the
CLI's (shared/connect.py), for the host and port the browser reached the gateway on: the
console is served on the public port, which every protocol shares. psql verifies the
gateway's certificate against the CA file the page offers (`GET /v1/ca.pem`, what clients of
this gateway trust), saved as CA_FILE.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response

from gateway.api.deps import ApiDeps
from gateway.console.audit import SignedIn
from gateway.console.auth import Signed, request_host
from gateway.console.render import page
from shared.connect import commands

CA_FILE = "wardgate-ca.pem"


def _public(request: Request) -> tuple[str, int]:
    url = urlsplit(f"https://{request_host(request) or 'GATEWAY'}")
    return url.hostname or "GATEWAY", url.port or 443


def add_routes(api: APIRouter, deps: ApiDeps, signed_in: SignedIn) -> None:
    async def connections_page(request: Request, signed: Signed) -> Response:
        host, port = _public(request)
        who = signed.identity
        reachable = []
        postgres = False
        for record in await deps.store.io.scan(deps.store.connections.list_all):
            decision = await deps.broker.access(who, record)
            if decision.access is None:
                continue
            lines = commands(
                record.type,
                host=host,
                port=port,
                connection=record.name,
                user=who.user,
                sslrootcert=CA_FILE,
            )
            reachable.append({"c": record, "access": decision.access, "commands": lines})
            postgres = postgres or record.type == "postgres"
        return page(
            "connections.html",
            signed=signed,
            reachable=reachable,
            ca_file=CA_FILE if postgres else None,
        )

    api.add_api_route("/console/connections", signed_in(connections_page), methods=["GET"])

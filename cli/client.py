"""Where the CLI finds the gateway and the user's credential.

Order: `--gateway`/`--token`/`--ca` flags, then WARDGATE_URL / WARDGATE_TOKEN / WARDGATE_CA,
then what `wardgate login` stored in $WARDGATE_CONFIG_DIR (default ~/.config/wardgate).

A stored sign-in (OIDC, device flow, local user, workload token) also keeps its refresh token:
when the stored access credential is about to expire, `resolve` refreshes it first and saves
the new pair (the file is rewritten with mode 0600, never readable by others).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import click
import httpx
from joserfc.jwk import ECKey

from cli.errors import UsageProblem
from shared.dpop import make_proof
from shared.tlsutil import client_context

API_KEY_PREFIX = "wgk_"  # service-account API keys: sent with DPoP proofs


def config_dir() -> Path:
    base = os.environ.get("WARDGATE_CONFIG_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "wardgate"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


@dataclass(frozen=True)
class GatewayRef:
    url: str
    token: str | None
    ca_pem: bytes | None
    dpop: bool = False  # send the API key with DPoP proofs (a service account's `--dpop`)

    def ssl_context(self, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        return client_context(self.ca_pem, alpn)

    def http(self) -> httpx.Client:
        if self.token and self.dpop:
            return self._dpop_http(self.token)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.Client(
            base_url=self.url, headers=headers, verify=self.ssl_context(), timeout=30
        )

    def _dpop_http(self, token: str) -> httpx.Client:
        """An API key goes with a DPoP proof on every request (RFC 9449), by the key kept
        beside the CLI's credentials: required by a service account created with `--dpop`,
        harmless for any other (the gateway checks the proof and binds nothing)."""
        key = dpop_key()

        def prove(request: httpx.Request) -> None:
            request.headers["DPoP"] = make_proof(
                key, method=request.method, url=str(request.url), access_token=token
            )

        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"DPoP {token}"},
            verify=self.ssl_context(),
            timeout=30,
            event_hooks={"request": [prove]},
        )


def dpop_key_path() -> Path:
    return config_dir() / "dpop-key.json"


def dpop_key() -> ECKey:
    """The CLI's DPoP key (P-256): made at first use, kept 0600 beside the credentials."""
    path = dpop_key_path()
    if path.exists():
        return ECKey.import_key(json.loads(path.read_text()))
    key = ECKey.generate_key("P-256", private=True)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(key.as_dict(private=True), fh)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return key


def stored() -> dict[str, Any]:
    path = credentials_path()
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


REFRESH_MARGIN = dt.timedelta(seconds=60)


def save(url: str, token: str, ca_pem: bytes | None, **extra: Any) -> Path:
    """Store the gateway, the credential and (`extra`) its refresh token and expiry, 0600."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    payload = {
        "url": url,
        "token": token,
        "ca_pem": ca_pem.decode() if ca_pem else None,
        **{k: v for k, v in extra.items() if v is not None},
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file that existed
    tmp.replace(path)
    return path


def save_issued(url: str, ca_pem: bytes | None, issued: dict[str, Any]) -> Path:
    """Store a credential bundle the gateway issued at sign-in or refresh."""
    return save(
        url,
        issued["token"],
        ca_pem,
        user=issued.get("user"),
        login_id=issued.get("login_id"),
        expires_at=issued.get("expires_at"),
        refresh_token=issued.get("refresh_token"),
        refresh_expires_at=issued.get("refresh_expires_at"),
    )


def forget() -> bool:
    path = credentials_path()
    if path.exists():
        path.unlink()
        return True
    return False


def _needs_refresh(saved: dict[str, Any]) -> bool:
    expires = saved.get("expires_at")
    if not saved.get("refresh_token") or not expires:
        return False
    try:
        when = dt.datetime.fromisoformat(str(expires))
    except ValueError:
        return True
    return when - dt.datetime.now(dt.UTC) < REFRESH_MARGIN


def refresh_stored(saved: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
    """Refresh the stored sign-in (when near expiry, or `force`); returns what is stored now."""
    if not (force or _needs_refresh(saved)):
        return saved
    if not saved.get("refresh_token"):
        raise click.ClickException("this credential cannot be refreshed: run `wardgate login`")
    ca_pem = str(saved["ca_pem"]).encode() if saved.get("ca_pem") else None
    ref = GatewayRef(str(saved["url"]), None, ca_pem)
    with ref.http() as http:
        response = http.post("/v1/auth/refresh", json={"refresh_token": saved["refresh_token"]})
    if response.status_code == 401:
        raise click.ClickException(
            f"{_detail(response)}\nyour sign-in has ended: run `wardgate login` again"
        )
    issued = check(response)
    save_issued(ref.url, ca_pem, issued)
    return stored()


def resolve(gateway: str | None, token: str | None, ca: str | None) -> GatewayRef:
    saved = stored()
    url = gateway or os.environ.get("WARDGATE_URL") or saved.get("url")
    if not url:
        raise click.UsageError(
            "no gateway: pass --gateway URL, set WARDGATE_URL, or run `wardgate login`"
        )
    if not (token or os.environ.get("WARDGATE_TOKEN")) and saved.get("url") == url.rstrip("/"):
        saved = refresh_stored(saved)
    check_url(url)
    tok = token or os.environ.get("WARDGATE_TOKEN") or saved.get("token")
    ca_file = ca or os.environ.get("WARDGATE_CA")
    ca_pem: bytes | None
    if ca_file:
        ca_pem = read_ca(ca_file)
    elif saved.get("ca_pem") and saved.get("url") == url:
        ca_pem = str(saved["ca_pem"]).encode()
    else:
        ca_pem = None
    # DPoP: what `wardgate login --token` found out, or WARDGATE_DPOP=1 for a key in the env.
    dpop = os.environ.get("WARDGATE_DPOP", "") in ("1", "true", "yes")
    if tok and tok == saved.get("token") and saved.get("dpop"):
        dpop = True
    return GatewayRef(url.rstrip("/"), tok, ca_pem, dpop=bool(tok and dpop))


_GATEWAY_OPTIONS = [
    click.option("--gateway", envvar="WARDGATE_URL", help="Gateway URL (https://HOST:PORT)."),
    click.option("--token", envvar="WARDGATE_TOKEN", help="Your Wardgate credential."),
    click.option("--ca", envvar="WARDGATE_CA", help="CA certificate (PEM) to trust."),
]


def gateway_options(fn: Any) -> Any:
    """--gateway/--token/--ca (or WARDGATE_URL/_TOKEN/_CA), on every command that talks
    to a gateway."""
    for option in reversed(_GATEWAY_OPTIONS):
        fn = option(fn)
    return fn


def check_url(url: str) -> str:
    """Refuse a gateway URL without https:// (or http://) before anything dials it."""
    parts = urlsplit(url)
    if parts.scheme in ("https", "http") and parts.netloc:
        return url
    if "://" not in url:
        raise UsageProblem(
            f"gateway URL {url!r} has no scheme: write https://{url} (in WARDGATE_URL or --gateway)"
        )
    raise UsageProblem(f"gateway URL {url!r}: write https://HOST:PORT")


def read_ca(ca_file: str) -> bytes:
    """The CA certificate named by WARDGATE_CA or --ca, refused early when it is not one."""
    path = Path(ca_file).expanduser()
    if not path.is_file():
        raise UsageProblem(
            f"CA file {ca_file} (WARDGATE_CA or --ca) does not exist: point it at the gateway's "
            "CA certificate (tls/ca.pem in its data dir)"
        )
    pem = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise UsageProblem(
            f"CA file {ca_file} (WARDGATE_CA or --ca) holds no PEM certificate: point it at "
            "the gateway's CA certificate (tls/ca.pem in its data dir)"
        )
    return pem


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    if isinstance(detail, list):  # pydantic validation errors
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail
        )
    return f"gateway answered {response.status_code}: {detail}"


def paged(http: httpx.Client, path: str, params: dict[str, Any], wanted: int | None) -> list[Any]:
    """Rows of a list the gateway pages (Link: rel="next"), up to `wanted` (None: all).
    Past the first page, a count on stderr shows progress when stderr is a terminal."""
    rows: list[Any] = []
    response = http.get(path, params=params)
    show = sys.stderr.isatty()
    shown = False
    while True:
        rows += check(response)
        following = response.links.get("next", {}).get("url")
        if not following or (wanted is not None and len(rows) >= wanted):
            break
        if show:
            click.echo(f"\r{len(rows)} fetched...", err=True, nl=False)
            shown = True
        response = http.get(following)
    if shown:
        click.echo("\r\033[K", err=True, nl=False)  # clear the progress line
    return rows if wanted is None else rows[:wanted]


def check(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    raise click.ClickException(_detail(response))


def ca_file(ca_pem: bytes) -> Path:
    """The CA as a file for programs that want a path (psql's sslrootcert)."""
    import hashlib

    path = config_dir() / f"ca-{hashlib.sha256(ca_pem).hexdigest()[:16]}.pem"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ca_pem)
    return path


def write_pgpass(params: dict[str, str], password: str) -> Path:
    """Add or replace the ~/.pgpass line for these host/port/dbname/user (mode 0600)."""
    path = Path(os.environ.get("PGPASSFILE", Path.home() / ".pgpass"))

    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace(":", "\\:")

    key = ":".join(esc(params[k]) for k in ("host", "port", "dbname", "user"))
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if not line.startswith(key + ":")]
    lines.append(f"{key}:{esc(password)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


# ---- signing in --------------------------------------------------------------------------


class _LoopbackServer(ThreadingHTTPServer):
    """Receives the IdP's redirect on 127.0.0.1 (RFC 8252 7.3): one callback, then done."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CallbackHandler)
        self.result: dict[str, str] | None = None
        self.done = threading.Event()

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/callback"


class _CallbackHandler(BaseHTTPRequestHandler):
    server: _LoopbackServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/callback" or self.server.done.is_set():
            self.send_error(404)
            return
        params = dict(parse_qsl(parts.query))
        ok = "code" in params
        body = (
            "Signed in to Wardgate. You can close this window."
            if ok
            else f"Sign-in failed: {params.get('error', 'no code')}. You can close this window."
        ).encode()
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.result = params
        self.server.done.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the query string holds the authorization code: never log it


def oidc_login(ref: GatewayRef, *, open_browser: bool = True, timeout: float = 300) -> Any:
    """Authorization code + PKCE through the system browser and a loopback redirect."""
    from authlib.common.security import generate_token
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    verifier = generate_token(64)
    state, nonce = generate_token(32), generate_token(32)
    server = _LoopbackServer()
    thread = threading.Thread(target=server.serve_forever, name="wardgate-login", daemon=True)
    thread.start()
    try:
        with ref.http() as http:
            start = check(
                http.post(
                    "/v1/auth/oidc/authorize",
                    json={
                        "redirect_uri": server.redirect_uri,
                        "state": state,
                        "nonce": nonce,
                        "code_challenge": create_s256_code_challenge(verifier),
                    },
                )
            )
            url = str(start["url"])
            click.echo("Opening your browser to sign in; if it does not open, visit:", err=True)
            click.echo(f"  {url}", err=True)
            if open_browser:
                import webbrowser

                webbrowser.open(url)
            if not server.done.wait(timeout):
                raise click.ClickException(f"no sign-in within {timeout:g} s")
            result = server.result or {}
            if result.get("state") != state:
                raise click.ClickException("sign-in refused: the redirect's state does not match")
            if "code" not in result:
                raise click.ClickException(f"sign-in failed: {result.get('error', 'no code')}")
            return check(
                http.post(
                    "/v1/auth/oidc/callback",
                    json={
                        "code": result["code"],
                        "redirect_uri": server.redirect_uri,
                        "code_verifier": verifier,
                        "nonce": nonce,
                    },
                )
            )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def device_login(ref: GatewayRef, *, timeout: float = 600) -> Any:
    """The OAuth device authorization flow (RFC 8628), for machines without a browser."""
    with ref.http() as http:
        start = check(http.post("/v1/auth/oidc/device"))
        where = start.get("verification_uri_complete") or start.get("verification_uri")
        click.echo(f"To sign in, open {where}", err=True)
        click.echo(f"and enter the code: {start.get('user_code')}", err=True)
        interval = float(start.get("interval") or 5)
        deadline = time.monotonic() + min(float(start.get("expires_in") or timeout), timeout)
        while time.monotonic() < deadline:
            # RFC 8628 3.5: the client waits `interval` seconds between polls.
            time.sleep(interval)
            response = http.post(
                "/v1/auth/oidc/device/token", json={"device_code": start["device_code"]}
            )
            if response.status_code == 428:
                if response.json().get("error") == "slow_down":
                    interval += 5
                continue
            return check(response)
    raise click.ClickException("the device code expired before the sign-in was approved")

"""What a person sees when a `wardgate` command fails.

Every command runs inside `WardgateGroup.invoke`, the one place that turns the failures a user
meets (the gateway down, a certificate not trusted, a YAML or config mistake, an address in use)
into one or two lines saying what is wrong and what to do, and an exit status: 1 for a failure at
run time, 2 for a mistake in what the user gave (as click does for usage errors). A traceback is
shown only with `wardgate --debug` (or WARDGATE_DEBUG=1); an exception nobody mapped is a bug,
and says so in one line.

Code that knows more than an exception carries raises `Problem` (or `UsageProblem`) with the
words itself (a CA file that holds no certificate, a URL without a scheme).
"""

from __future__ import annotations

import errno
import os
import re
import ssl
from collections.abc import Iterator
from typing import Any

import click
import httpx
import yaml

from shared.listen import ListenError

CA_HINT = "set WARDGATE_CA (or pass --ca) to the gateway's CA file (tls/ca.pem in its data dir)"


class Problem(click.ClickException):
    """A failure at run time, in words a person can act on (exit status 1)."""

    exit_code = 1


class UsageProblem(Problem):
    """A mistake in what the user gave: a file, a flag, a variable (exit status 2)."""

    exit_code = 2


def debug_requested(ctx: click.Context | None = None) -> bool:
    if ctx is not None and ctx.params.get("debug"):
        return True
    return os.environ.get("WARDGATE_DEBUG", "").lower() in ("1", "true", "yes", "on")


class WardgateGroup(click.Group):
    """The top-level group: maps known failures to short messages (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if debug_requested(ctx):
                raise
            raise explain(exc) from None


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _strerror(exc: BaseException) -> str:
    """'[Errno 111] Connection refused' -> 'connection refused'."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc)).strip()
    return text[:1].lower() + text[1:] if text else type(exc).__name__


def _tls_untrusted(exc: BaseException, where: str) -> Problem | None:
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            link
        ):
            reason = getattr(link, "verify_message", None) or "certificate verify failed"
            if "hostname" in str(reason).lower() or "IP address mismatch" in str(reason):
                return Problem(
                    f"the certificate of {where} does not name that host ({reason}): use the "
                    "host name or address the gateway's certificate was made for"
                )
            return Problem(f"the certificate of {where} is not trusted ({reason}): {CA_HINT}")
    return None


def _http(exc: httpx.TransportError) -> Problem:
    try:
        url = exc.request.url
        where = f"the gateway at {url.scheme}://{url.netloc.decode()}"
    except RuntimeError:  # an error raised before a request existed
        where = "the gateway"
    untrusted = _tls_untrusted(exc, where)
    if untrusted is not None:
        return untrusted
    if isinstance(exc, httpx.TimeoutException):
        return Problem(f"{where} did not answer in time: check that it runs and is reachable")
    if isinstance(exc, httpx.ConnectError):
        return Problem(
            f"cannot reach {where} ({_strerror(exc)}): check WARDGATE_URL (or --gateway) "
            "and that the gateway is running"
        )
    return Problem(f"lost the connection to {where} ({_strerror(exc) or type(exc).__name__})")


def _yaml(exc: yaml.YAMLError) -> Problem:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = exc.problem or "invalid YAML"
        return UsageProblem(
            f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: {what} "
            f"(YAML syntax error{f', {exc.context}' if exc.context else ''}): fix the file"
        )
    return UsageProblem(f"YAML syntax error: {exc}")


def _listen(exc: OSError) -> Problem:
    where = getattr(exc, "address", None) or "the requested address"
    flag = "--" + getattr(exc, "setting", "listen").replace("_", "-")
    if exc.errno == errno.EADDRINUSE:
        return Problem(
            f"cannot listen on {where}: the address is already in use (another wardgate?): "
            f"stop that process or pass {flag} HOST:PORT with a free port"
        )
    return Problem(
        f"cannot listen on {where} ({_strerror(exc)}): pass {flag} HOST:PORT with an "
        "address of this machine (ports below 1024 need privileges)"
    )


def explain(exc: Exception) -> Problem:
    """The short message for `exc` (the first leaf of an exception group that has one)."""
    from gateway.config import ConfigError  # the server modules load only when one failed

    for leaf in _leaves(exc):
        if isinstance(leaf, Problem):
            return leaf
        if isinstance(leaf, httpx.TransportError):
            return _http(leaf)
        if isinstance(leaf, ListenError):
            return _listen(leaf)
        if isinstance(leaf, ConfigError):
            return UsageProblem(str(leaf))
        if isinstance(leaf, yaml.YAMLError):
            return _yaml(leaf)
        if isinstance(leaf, ssl.SSLError):
            untrusted = _tls_untrusted(leaf, "the gateway")
            if untrusted is not None:
                return untrusted
            return Problem(f"TLS with the gateway failed ({leaf}): {CA_HINT}")
        if isinstance(leaf, OSError):
            if leaf.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) and (
                "bind" in str(leaf) or leaf.errno == errno.EADDRINUSE
            ):
                return _listen(leaf)
            if leaf.errno == errno.ECONNREFUSED:
                return Problem(
                    f"connection refused ({leaf}): check WARDGATE_URL (or --gateway) and that "
                    "the gateway is running"
                )
            if isinstance(leaf, FileNotFoundError) and leaf.filename:
                return UsageProblem(f"no such file: {leaf.filename}")
            if isinstance(leaf, PermissionError) and leaf.filename:
                return Problem(f"permission denied: {leaf.filename}")
    first = next(_leaves(exc))
    return Problem(
        f"unexpected error: {type(first).__name__}: {first}\n"
        "this is a bug: run again with `wardgate --debug` for the traceback and report it"
    )

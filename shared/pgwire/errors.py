"""Errors of the PostgreSQL wire codec, each naming the guilty party.

- ``RemoteProtocolError``: the peer sent bytes that are not a valid message. The stream is out
  of sync or the peer is hostile; the connection cannot continue.
- ``LocalProtocolError``: we asked an encoder for something the protocol cannot carry (a NUL
  inside a string, a count beyond its integer field). A bug on this side; nothing was encoded.
- ``AuthenticationFailed``: a well-formed authentication exchange that did not succeed (the
  server could not prove it knows the password, or reported an error itself).

Messages name the message type and field and what was wrong, never the field's content: a
password, a SASL proof or a query text with a secret in it must not reach a log via an error.
"""

from __future__ import annotations


class PgProtocolError(Exception):
    """Base class: anything the codec refuses. Catch this to end a connection cleanly."""


class RemoteProtocolError(PgProtocolError):
    """The peer sent malformed bytes."""


class LocalProtocolError(PgProtocolError):
    """We tried to encode something the protocol cannot carry: a bug on this side."""


class AuthenticationFailed(PgProtocolError):
    """The authentication exchange was well-formed but did not prove both sides."""

"""PostgreSQL frontend/backend protocol v3, sans-I/O, for the gateway, agent, recorder,
tests and fuzzers.

The map:

- ``startup``  the untagged first packet: StartupMessage, SSLRequest, GSSENCRequest,
               CancelRequest (parse and encode).
- ``framing``  ``MessageReader`` turns bytes, in chunks of any size, into ``Message(type, body)``;
               ``encode_message`` frames a body.
- ``frontend`` client-to-server messages: frozen dataclasses, ``encode()``, ``decode_frontend``.
- ``backend``  server-to-client messages, ``decode_backend``, and encoders for what a gateway
               synthesizes (``error_response``, ``authentication_ok``, ``ready_for_query``...).
- ``auth``     client-side MD5 and SCRAM-SHA-256(-PLUS), ``tls_server_end_point``.
- ``masking``  ``ResultMasker``: rewrites server-to-client bytes as they stream (DataRow, COPY
               out, error texts) with ``shared.masking`` rules; the agent drives it.
- ``errors``   ``RemoteProtocolError`` (the peer is at fault), ``LocalProtocolError`` (we are),
               ``AuthenticationFailed``; all are ``PgProtocolError``.

Rules of the package:

1. No I/O, no clocks, no threads: bytes in, values out, values in, bytes out. No asyncio,
   socket, ssl or grpc import here; the drivers that own sockets live in gateway/ and agent/.
2. Messages are frozen dataclasses; decoding dispatches through tables; ``encode()`` and the
   decoder of each message are exact inverses.
3. Decoding untrusted bytes raises nothing but ``PgProtocolError`` subclasses (never
   IndexError, struct.error or UnicodeDecodeError): tests/shared/pgwire fuzzes that.
4. Errors name the message, the field and the problem, never field content: passwords, SASL
   proofs and query texts stay out of logs.
5. This package knows the wire format, not the conversation: which message may follow which is
   the business of the session state machines built on it.
"""

from shared.pgwire.auth import ScramSha256Client, md5_password, tls_server_end_point
from shared.pgwire.backend import BackendMessage, decode_backend
from shared.pgwire.errors import (
    AuthenticationFailed,
    LocalProtocolError,
    PgProtocolError,
    RemoteProtocolError,
)
from shared.pgwire.framing import Message, MessageReader, encode_message
from shared.pgwire.frontend import FrontendMessage, decode_frontend
from shared.pgwire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    StartupPacket,
    encode_cancel_request,
    encode_ssl_request,
    encode_startup,
    parse_startup_packet,
    startup_packet_length,
)

__all__ = [
    "AuthenticationFailed",
    "BackendMessage",
    "CancelRequest",
    "FrontendMessage",
    "GSSENCRequest",
    "LocalProtocolError",
    "Message",
    "MessageReader",
    "PgProtocolError",
    "RemoteProtocolError",
    "SSLRequest",
    "ScramSha256Client",
    "StartupMessage",
    "StartupPacket",
    "decode_backend",
    "decode_frontend",
    "encode_cancel_request",
    "encode_message",
    "encode_ssl_request",
    "encode_startup",
    "md5_password",
    "parse_startup_packet",
    "startup_packet_length",
    "tls_server_end_point",
]

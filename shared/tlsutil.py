"""Client-side TLS for the agent and the CLI: CA pinning, then ordinary verification.

An agent key carries the fingerprint of the gateway's CA, not the CA itself. The first connection
follows the kubeadm discovery pattern:

1. :func:`fetch_pinned_ca` handshakes *without* verification and looks through the chain the server
   presented for the certificate whose sha256 matches the pin;
2. that PEM becomes the only trust root for every real connection (:func:`client_context`, or
   ``grpc.ssl_channel_credentials(root_certificates=...)``), which verifies signatures, validity
   and hostname as usual.

Step 1 is safe without verification because nobody can forge a certificate with a given sha256,
and a man in the middle who replays the genuine CA certificate still fails step 2: they hold no
leaf key that the CA signed.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Sequence

from shared.agentkey import normalize_fingerprint


class PinMismatch(Exception):
    """No certificate in the server's chain matched the pinned fingerprint."""

    def __init__(self, address: str, expected: str, seen: Sequence[str]) -> None:
        self.address = address
        self.expected = expected
        self.seen = tuple(seen)
        shown = ", ".join(self.seen) if self.seen else "no certificates"
        super().__init__(
            f"no certificate presented by {address} matches the pinned CA {expected}; "
            f"server presented: {shown}"
        )


def _fingerprint_der(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _presented_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """DER of every certificate the peer sent, leaf first, verified or not."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        # Python 3.13+: public API, returns a list of DER-encoded bytes.
        return list(public() or [])
    # Python 3.10-3.12 implement the call on the private _ssl._SSLSocket but do not expose it on
    # ssl.SSLSocket; its items are _ssl.Certificate objects serialised with public_bytes(). Checked
    # on CPython 3.11.7. getpeercert(binary_form=True) is no substitute: it returns only the leaf,
    # and the pin is normally the CA behind it.
    sslobj = getattr(tls, "_sslobj", None)
    private = getattr(sslobj, "get_unverified_chain", None)
    if private is None:
        leaf = tls.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in private() or []]  # type: ignore[attr-defined]


def fetch_pinned_ca(
    host: str,
    port: int,
    fingerprint: str,
    timeout: float = 10.0,
    *,
    alpn: Sequence[str] = (),
) -> bytes:
    """Return the PEM of the certificate in ``host:port``'s chain whose sha256 is ``fingerprint``.

    ``alpn`` lets the caller offer the protocols its real connection will, so a front door that
    routes by ALPN shows the same chain. Raises PinMismatch when nothing matches, OSError (including
    ssl.SSLError and TimeoutError) when the handshake itself fails, ValueError for a malformed pin.
    """
    expected = normalize_fingerprint(fingerprint)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Deliberately unverified: trust comes from the pin below, not from this handshake.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        chain = _presented_chain(tls)
    seen = [_fingerprint_der(der) for der in chain]
    for der, seen_fingerprint in zip(chain, seen, strict=True):
        if seen_fingerprint == expected:
            return ssl.DER_cert_to_PEM_cert(der).encode("ascii")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    raise PinMismatch(address, expected, seen)


def client_context(ca_pem: bytes | None, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """A verifying client context trusting only ``ca_pem``, or the system store when it is None."""
    if ca_pem is not None:
        context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context

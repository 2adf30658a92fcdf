"""A test-only SCRAM-SHA-256(-PLUS) server, written from RFC 5802 apart from the client.

It stores what a PostgreSQL server stores (StoredKey, ServerKey), never the password, and
verifies the proof the way a server does: recover ClientKey from the proof and compare its hash
with StoredKey. It answers failures with RFC 5802 ``e=`` tokens instead of raising, so tests
can check how the client takes them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


class ScramServer:
    def __init__(
        self,
        password: bytes,
        *,
        salt: bytes = b"pgwire-test-salt",
        iterations: int = 4096,
        nonce_suffix: str = "Srv+Nonce/123",
        binding: bytes | None = None,
    ) -> None:
        """``binding``: the tls-server-end-point data this server would compute (on TLS)."""
        salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
        self.stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
        self.server_key = _hmac(salted, b"Server Key")
        self.salt = salt
        self.iterations = iterations
        self.nonce_suffix = nonce_suffix
        self.binding = binding
        self.gs2_header = b""
        self.client_first_bare = b""
        self.server_first = b""
        self.nonce = ""

    @property
    def mechanisms(self) -> list[str]:
        """What AuthenticationSASL would offer: -PLUS only where binding is possible."""
        plus = ["SCRAM-SHA-256-PLUS"] if self.binding is not None else []
        return [*plus, "SCRAM-SHA-256"]

    def first(self, client_first: bytes) -> bytes:
        flag, authzid, bare = client_first.split(b",", 2)
        self.gs2_header = flag + b"," + authzid + b","
        self.client_first_bare = bare
        attrs = dict(part.split(b"=", 1) for part in bare.split(b","))
        self.nonce = attrs[b"r"].decode() + self.nonce_suffix
        salt = base64.b64encode(self.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={self.iterations}".encode()
        return self.server_first

    def final(self, client_final: bytes) -> bytes:
        without_proof, proof_b64 = client_final.rsplit(b",p=", 1)
        attrs = dict(part.split(b"=", 1) for part in without_proof.split(b","))
        flag = self.gs2_header[:1]
        if flag == b"y" and self.binding is not None:
            return b"e=server-does-support-channel-binding"
        bound = (self.binding or b"") if flag == b"p" else b""
        expected_c = self.gs2_header + bound
        if base64.b64decode(attrs[b"c"]) != expected_c:
            return b"e=channel-bindings-dont-match"
        if attrs[b"r"].decode() != self.nonce:
            return b"e=other-error"
        auth_message = b",".join((self.client_first_bare, self.server_first, without_proof))
        signature = _hmac(self.stored_key, auth_message)
        proof = base64.b64decode(proof_b64)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if hashlib.sha256(client_key).digest() != self.stored_key:
            return b"e=invalid-proof"
        return b"v=" + base64.b64encode(_hmac(self.server_key, auth_message))

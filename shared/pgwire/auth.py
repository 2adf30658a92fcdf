"""Client-side PostgreSQL authentication, sans-I/O: MD5 and SCRAM-SHA-256(-PLUS).

The agent logs in to the database with an injected credential; these objects compute what to
send and check what comes back, and the driver moves the bytes (SASLInitialResponse,
SASLResponse, AuthenticationSASLContinue/Final).

Rules:
1. ``ScramSha256Client`` is a four-step machine: ``client_first`` -> ``client_final`` ->
   ``verify_server_final`` -> done. A step out of order is our bug (``LocalProtocolError``).
2. A malformed server message (missing attribute, bad base64, absurd iteration count, a
   mandatory extension) is a ``RemoteProtocolError``. A well-formed one that fails the
   exchange (the server nonce does not extend ours, the server signature is wrong, the server
   sent ``e=``) is ``AuthenticationFailed``: either way the connection must end.
3. Channel binding: ``-PLUS`` with ``tls-server-end-point`` when the server offers it and we
   hold the certificate hash; otherwise the plain mechanism with gs2 flag ``y`` if we could
   have bound (so a server that does support binding detects a downgrade) or ``n`` if not.
   ``require_channel_binding`` refuses the plain mechanism outright.
4. The password goes through SASLprep exactly as PostgreSQL's ``pg_saslprep`` does it, which
   is what the server applied when it stored the verifier: pure ASCII and non-UTF-8 passwords
   are used as given; otherwise map (non-ASCII spaces to U+0020, "mapped to nothing"
   characters removed), NFKC-normalize, and if the mapped string is empty, has prohibited or
   unassigned (Unicode 3.2) characters, or breaks the bidi rule, fall back to the raw bytes.
   Like PostgreSQL, the prohibition and bidi checks look at the mapped string before NFKC.
5. Secrets (password, salted password, keys, proofs) never appear in errors or reprs.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from shared.pgwire.errors import AuthenticationFailed, LocalProtocolError, RemoteProtocolError

SCRAM_SHA_256 = "SCRAM-SHA-256"
SCRAM_SHA_256_PLUS = "SCRAM-SHA-256-PLUS"
CHANNEL_BINDING_TYPE = "tls-server-end-point"

MIN_ITERATIONS = 1  # PostgreSQL defaults to 4096 (scram_iterations) but lets admins lower it
MAX_ITERATIONS = 10_000_000  # above this a server is burning our CPU, not protecting a secret
_NONCE_BYTES = 18  # what PostgreSQL's client uses: 24 base64 characters


def md5_password(user: str, password: bytes, salt: bytes) -> bytes:
    """The response to AuthenticationMD5Password: b"md5" + md5(md5(password + user) + salt).

    Without the terminating NUL: ``frontend.password_message`` adds it.
    """
    if len(salt) != 4:
        raise LocalProtocolError(f"md5_password: salt is {len(salt)} bytes, expected 4")
    # MD5 is what this protocol method is defined with; we do not get to choose.
    inner = hashlib.md5(password + user.encode("utf-8")).hexdigest()  # noqa: S324
    return b"md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest().encode("ascii")  # noqa: S324


def saslprep_password(password: bytes) -> bytes:
    """The bytes PostgreSQL hashes for ``password`` (``pg_saslprep``, with its fallbacks)."""
    if password.isascii():
        return password
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return password
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    if not mapped or any(_prohibited(ch) for ch in mapped):
        return password
    if any(stringprep.in_table_d1(ch) for ch in mapped) and (
        any(stringprep.in_table_d2(ch) for ch in mapped)
        or not stringprep.in_table_d1(mapped[0])
        or not stringprep.in_table_d1(mapped[-1])
    ):
        return password
    return unicodedata.normalize("NFKC", mapped).encode("utf-8")


def _prohibited(ch: str) -> bool:
    # RFC 4013 section 2.3 prohibited output (C.1.2 is already mapped away), plus unassigned
    # code points (A.1) as PostgreSQL treats them.
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def tls_server_end_point(cert_der: bytes) -> bytes:
    """Channel binding data for ``tls-server-end-point`` (RFC 5929 section 4.1).

    The hash of the server's DER certificate, with the hash of its signature algorithm, or
    SHA-256 when that is MD5 or SHA-1. A certificate whose signature has no single hash
    (Ed25519, Ed448) has no such binding: PostgreSQL refuses it too.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        algorithm = cert.signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RemoteProtocolError(
            f"server certificate: no tls-server-end-point binding: {type(exc).__name__}"
        ) from None
    if algorithm is None:
        raise RemoteProtocolError(
            "server certificate: its signature algorithm has no hash (EdDSA?), so "
            "tls-server-end-point is undefined"
        )
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return digest.finalize()


class _Step(enum.Enum):
    START = "start"
    SENT_FIRST = "sent client-first"
    SENT_FINAL = "sent client-final"
    DONE = "done"
    FAILED = "failed"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _check_nonce(nonce: str, whose: str, error: type[Exception]) -> None:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII without ','.
    if not nonce or any(not 0x21 <= ord(ch) <= 0x7E or ch == "," for ch in nonce):
        raise error(f"SCRAM: {whose} nonce is empty or not printable ASCII without ','")


def _parse_attributes(message: bytes, what: str, expected: str) -> list[tuple[str, str]]:
    """Split a SCRAM message into (letter, value) pairs, checking the leading letters."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"SCRAM {what}: not valid UTF-8") from None
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isascii() or not part[0].isalpha():
            raise RemoteProtocolError(f"SCRAM {what}: malformed attribute")
        pairs.append((part[0], part[2:]))
    if pairs[0][0] == "m":
        raise RemoteProtocolError(f"SCRAM {what}: unsupported mandatory extension")
    letters = "".join(letter for letter, _ in pairs[: len(expected)])
    if letters != expected:
        raise RemoteProtocolError(
            f"SCRAM {what}: attributes start {letters!r}, expected {expected!r}"
        )
    return pairs


@functools.lru_cache(maxsize=64)
def _salted_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802: PBKDF2 with 4,096 rounds or more, ~0.8 ms of CPU.

    A server answers every login of one role with the same salt and count, so the agent
    computes it once per role instead of once per session. The value is as secret as the
    password it is derived from, which the agent holds anyway; it never leaves the process.
    """
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations)


class ScramSha256Client:
    """The client side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, 7677, 5929)."""

    def __init__(
        self,
        password: bytes,
        mechanisms: Sequence[str],
        channel_binding: bytes | None = None,
        *,
        nonce: str | None = None,
        username: str = "",
        require_channel_binding: bool = False,
    ) -> None:
        """``mechanisms`` as offered in AuthenticationSASL; ``channel_binding`` is
        ``tls_server_end_point(cert)`` of the server's certificate when on TLS.

        ``username`` stays empty for PostgreSQL, which takes the user from the startup packet.
        """
        if isinstance(mechanisms, str):
            # "SCRAM-SHA-256" in "SCRAM-SHA-256-PLUS" is a substring test, not a choice.
            raise LocalProtocolError("SCRAM: mechanisms must be a sequence of names, not a str")
        if SCRAM_SHA_256_PLUS in mechanisms and channel_binding is not None:
            self._mechanism = SCRAM_SHA_256_PLUS
            self._gs2_header = f"p={CHANNEL_BINDING_TYPE},,".encode("ascii")
        elif require_channel_binding:
            raise AuthenticationFailed(
                "SCRAM: channel binding required but "
                + (
                    "the server does not offer SCRAM-SHA-256-PLUS"
                    if channel_binding is not None
                    else "there is no TLS certificate to bind to"
                )
            )
        elif SCRAM_SHA_256 in mechanisms:
            self._mechanism = SCRAM_SHA_256
            # y: we could bind but the server did not offer it; a server that can bind reads
            # this as a downgrade by someone in the middle and fails the exchange.
            self._gs2_header = b"y,," if channel_binding is not None else b"n,,"
        else:
            raise AuthenticationFailed(
                f"SCRAM: the server offers none of {SCRAM_SHA_256}, {SCRAM_SHA_256_PLUS} "
                f"(it offers {', '.join(mechanisms) or 'nothing'})"
            )
        if nonce is None:
            nonce = _b64(secrets.token_bytes(_NONCE_BYTES))
        _check_nonce(nonce, "client", LocalProtocolError)
        self._password = saslprep_password(password)
        self._channel_binding = channel_binding
        self._client_first_bare = f"n={_saslname(username)},r={nonce}".encode()
        self._nonce = nonce
        self._server_signature = b""
        self._step = _Step.START

    def __repr__(self) -> str:
        return f"<ScramSha256Client {self._mechanism} {self._step.value}>"

    @property
    def mechanism(self) -> str:
        """The mechanism to name in SASLInitialResponse."""
        return self._mechanism

    @property
    def done(self) -> bool:
        """True once the server has proved it knows the password."""
        return self._step is _Step.DONE

    def _advance(self, expected: _Step, then: _Step) -> None:
        if self._step is not expected:
            raise LocalProtocolError(f"SCRAM: called in step {self._step.value!r}")
        self._step = then

    def client_first(self) -> bytes:
        """The client-first message: the data of SASLInitialResponse."""
        self._advance(_Step.START, _Step.SENT_FIRST)
        return self._gs2_header + self._client_first_bare

    def client_final(self, server_first: bytes) -> bytes:
        """The client-final message (with the proof) answering AuthenticationSASLContinue."""
        self._advance(_Step.SENT_FIRST, _Step.FAILED)  # until proven otherwise
        pairs = _parse_attributes(server_first, "server-first", "rsi")
        server_nonce, salt_b64, iterations_text = (value for _, value in pairs[:3])
        _check_nonce(server_nonce, "server", RemoteProtocolError)
        if not server_nonce.startswith(self._nonce) or len(server_nonce) == len(self._nonce):
            raise AuthenticationFailed("SCRAM: the server nonce does not extend the client nonce")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
        except (binascii.Error, ValueError):
            raise RemoteProtocolError("SCRAM server-first: salt is not valid base64") from None
        if not salt:
            raise RemoteProtocolError("SCRAM server-first: empty salt")
        if not (iterations_text.isascii() and iterations_text.isdigit()):
            raise RemoteProtocolError("SCRAM server-first: iteration count is not a number")
        iterations = int(iterations_text)
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise RemoteProtocolError(
                f"SCRAM server-first: iteration count {iterations} is outside "
                f"[{MIN_ITERATIONS}, {MAX_ITERATIONS}]"
            )

        cbind_input = self._gs2_header
        if self._mechanism == SCRAM_SHA_256_PLUS:
            assert self._channel_binding is not None  # chosen only with binding data
            cbind_input += self._channel_binding
        without_proof = f"c={_b64(cbind_input)},r={server_nonce}".encode("ascii")
        auth_message = b",".join((self._client_first_bare, server_first, without_proof))

        salted = _salted_password(self._password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        client_signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        self._step = _Step.SENT_FINAL
        return without_proof + b",p=" + _b64(proof).encode("ascii")

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server's signature from AuthenticationSASLFinal; raise unless it proves
        the server knows the password."""
        self._advance(_Step.SENT_FINAL, _Step.FAILED)
        if server_final.startswith(b"e="):
            # The server-error value is a fixed token such as "invalid-proof": safe to show.
            reason = server_final[2:].split(b",", 1)[0].decode("ascii", "replace")[:64]
            raise AuthenticationFailed(f"SCRAM: the server reports {reason!r}")
        pairs = _parse_attributes(server_final, "server-final", "v")
        try:
            signature = base64.b64decode(pairs[0][1], validate=True)
        except (binascii.Error, ValueError):
            raise RemoteProtocolError("SCRAM server-final: signature is not valid base64") from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise AuthenticationFailed("SCRAM: the server signature does not match")
        self._step = _Step.DONE

"""TLS without a certificate file: a self-signed certificate made at start, and pinning.

Why this exists: ``--tls-cert`` needs a certificate, and a learner has none. ``ncat --ssl`` makes
a throwaway one in memory and prints its SHA-256 fingerprint; a client that was told that
fingerprint (``--pin``) can check it got *that* server, with no CA at all. A fingerprint is the
SHA-256 of the certificate's DER bytes, written as 64 hex digits (colons and case are ignored).

The certificate is made with ``cryptography`` (an EC P-256 key, valid for a day, names
``localhost``, ``127.0.0.1`` and ``::1``). Python's ``ssl`` loads keys only from files, so the
PEM goes through a private temporary directory (mode 0700) that is removed as soon as the
context has loaded it: nothing outlives the call.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import tempfile
from dataclasses import dataclass

from socklab.core.errors import SocklabError, UsageError

__all__ = ["PinMismatch", "SelfSigned", "check_pin", "fingerprint", "make_self_signed", "normalize_pin",
           "pinned_client_context", "self_signed_context"]


class PinMismatch(SocklabError, ssl.SSLCertVerificationError):
    """The server's certificate is not the pinned one.

    Also an ``ssl.SSLCertVerificationError``: raised from inside a handshake (see
    :func:`pinned_client_context`), asyncio, uvloop and socklab's TLS layer treat it as the failed
    certificate check it is.
    """

    def __str__(self) -> str:  # the message itself (ssl.SSLError would show the args tuple)
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


@dataclass(frozen=True)
class SelfSigned:
    cert_pem: bytes
    key_pem: bytes
    fingerprint: str  # "AB:CD:..." (SHA-256 of the DER certificate)


def fingerprint(der: bytes) -> str:
    """``AB:CD:…``: SHA-256 of a DER certificate, as ``openssl x509 -fingerprint -sha256`` prints it."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def normalize_pin(pin: str) -> str:
    """A pin as :func:`fingerprint` writes it; ``UsageError`` naming ``--pin`` if it is not 64 hex digits."""
    text = pin.strip()
    if text.lower().startswith("sha256:"):
        text = text[7:]
    digits = text.replace(":", "").upper()
    if len(digits) != 64 or any(c not in "0123456789ABCDEF" for c in digits):
        raise UsageError(f"--pin must be a SHA-256 fingerprint (64 hex digits, colons allowed), got {pin!r}")
    return ":".join(digits[i:i + 2] for i in range(0, 64, 2))


def make_self_signed(names: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")) -> SelfSigned:
    """A fresh EC P-256 key and a self-signed certificate for ``names`` (host names or IPs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "socklab self-signed")])
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return SelfSigned(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        fingerprint=fingerprint(cert.public_bytes(serialization.Encoding.DER)),
    )


def self_signed_context(cert: SelfSigned | None = None) -> tuple[ssl.SSLContext, SelfSigned]:
    """A TLS server context (TLS 1.2+) holding a self-signed certificate, and that certificate."""
    cert = cert or make_self_signed()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="socklab-tls-") as tmp:  # mode 0700; removed on exit
        path = os.path.join(tmp, "self-signed.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert.key_pem + cert.cert_pem)
        ctx.load_cert_chain(path)
    return ctx, cert


def pinned_client_context(pin: str | None = None) -> ssl.SSLContext:
    """A client context for pinning: no CA and no name check - the fingerprint is the check.

    With ``pin``, every handshake made with this context checks it and fails with
    :class:`PinMismatch` for any other certificate, whoever drives it: ``wrap_socket`` (a blocking
    client) or ``wrap_bio`` (asyncio, uvloop, socklab's TLS layer) - so a client that is handed this
    context cannot forget the check. Without, the caller calls :func:`check_pin` after the handshake.

    Raises:
        UsageError: ``pin`` is not a SHA-256 fingerprint.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if pin is not None:
        want = normalize_pin(pin)
        ctx.sslobject_class = type("PinnedSSLObject", (_PinnedObject,), {"pin": want})
        ctx.sslsocket_class = type("PinnedSSLSocket", (_PinnedSocket,), {"pin": want})
    return ctx


class _PinnedObject(ssl.SSLObject):
    pin = ""

    def do_handshake(self) -> None:
        super().do_handshake()  # raises SSLWantReadError until it is done
        check_pin(self, self.pin)


class _PinnedSocket(ssl.SSLSocket):
    pin = ""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        check_pin(self, self.pin)


def check_pin(sock: ssl.SSLSocket | ssl.SSLObject, pin: str) -> str:
    """Raise :class:`PinMismatch` unless the peer's certificate has fingerprint ``pin``; return it."""
    der = sock.getpeercert(binary_form=True)
    if der is None:
        raise PinMismatch("the server sent no certificate; nothing to check --pin against")
    got = fingerprint(der)
    want = normalize_pin(pin)
    if got != want:
        raise PinMismatch(f"the server's certificate is not the pinned one (--pin {want[:11]}…, "
                          f"got SHA-256 {got}); refusing to talk")
    return got

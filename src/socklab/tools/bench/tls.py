"""The servers of ``socklab bench echo --tls``, and the throwaway certificate they share.

Why this exists: a TLS row compares socklab's engines serving ``--tls-cert`` with the loop's own
TLS in a plain server (``reference/tls_protocol.py`` beside this module), all with the same self-signed
certificate made for the run, driven by the C generator ``tls_loadgen`` (OpenSSL).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from socklab.core.errors import SocklabError
from socklab.tools.bench.procs import MISSING_REFERENCES, ServerSpec, reference_dir, socklab_command

__all__ = ["TLS_REFERENCE_FOR", "make_certificate", "tls_server_specs"]

#: engine -> its bar, the plain TLS server on the same mechanism: the loop's own TLS on the same
#: loop; a thread per connection with ``SSLContext.wrap_socket`` for the thread engines; the
#: readiness-loop engines are held to uvloop's TLS (the fastest plain Python TLS server, issue 19:
#: epoll's MemoryBIO path >= 0.95x it).
TLS_REFERENCE_FOR = {"asyncio": "tls_asyncio_protocol",
                     **{e: "tls_uvloop_protocol" for e in ("uvloop", "select", "poll", "epoll")},
                     **{e: "tls_threading_tcpserver" for e in ("threads", "pool", "iterative")}}


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1/localhost, valid 2 days: ``(cert, key)`` in ``directory``.

    Raises:
        SocklabError: the ``openssl`` command is missing or failed.
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        done = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                               "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                               "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                              capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError as exc:
        raise SocklabError("--tls needs the openssl command to make a throwaway certificate") from exc
    if done.returncode != 0:
        raise SocklabError(f"openssl could not make a certificate: {done.stderr.strip()[-300:]}")
    return cert, key


def tls_server_specs(engines: list[str], *, references: bool, cert: Path, key: Path,
                     pool_workers: int = 16) -> list[ServerSpec]:
    """Per engine its reference (asyncio or uvloop TLS) and itself, all serving ``cert``/``key``.

    ``pool_workers``: the pool engine's ``--workers`` (at least the run's connections, or the
    excess would wait in its queue and time out in the handshake).

    Raises:
        SocklabError: references were asked for but their directory is missing.
    """
    ref_dir = reference_dir() if references else None
    if references and ref_dir is None:
        raise SocklabError(MISSING_REFERENCES)
    tls_args = ("--tls-cert", str(cert), "--tls-key", str(key))
    specs: list[ServerSpec] = []
    seen: set[str] = set()
    for engine in engines:
        ref = TLS_REFERENCE_FOR.get(engine)
        if ref_dir is not None and ref is not None and ref not in seen:
            seen.add(ref)
            script = "tls_threading_tcpserver.py" if ref == "tls_threading_tcpserver" else "tls_protocol.py"
            loop = ("--uvloop",) if ref == "tls_uvloop_protocol" else ()
            specs.append(ServerSpec(f"ref:{ref}", "reference",
                                    (sys.executable, str(ref_dir / script), *loop, "--cert", str(cert),
                                     "--key", str(key), "--port", "0")))
        specs.append(ServerSpec(engine, "socklab", socklab_command(engine, pool_workers=pool_workers, extra=tls_args), engine=engine,
                                reference=f"ref:{ref}" if ref in seen else None))
    return specs

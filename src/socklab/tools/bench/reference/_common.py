"""Shared by the reference servers: parse ``--host``/``--port`` (and ``--cert``/``--key``), raise the fd
limit, make the TLS context, print the ready line.

Why this exists: each reference server should show only its mechanism; the plumbing around it
(arguments, RLIMIT_NOFILE for the 10,000-connection sweep, the readiness line the benchmark waits
for) is the same for all four and lives here.
"""

from __future__ import annotations

import argparse
import resource
import ssl


def parse_args(name: str, tls: bool = False) -> argparse.Namespace:
    """``--host`` (default 127.0.0.1) and ``--port`` (default 0 = any), with ``tls`` also
    ``--cert``/``--key`` (required); raises RLIMIT_NOFILE."""
    ap = argparse.ArgumentParser(prog=name, description=f"plain {name} echo server (benchmark reference)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 lets the kernel choose; the real port is printed")
    if tls:
        ap.add_argument("--cert", required=True, help="PEM certificate")
        ap.add_argument("--key", required=True, help="PEM private key")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return args


def tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    """A server context for ``--cert``/``--key``, TLS 1.2 or newer, as the ``ssl`` documentation shows."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    return ctx


def ready(name: str, host: str, port: int, scheme: str = "tcp") -> None:
    """The readiness line the benchmark waits for (``scheme``: tcp, udp or tls)."""
    print(f"reference {name} listening on {scheme}://{host}:{port}", flush=True)

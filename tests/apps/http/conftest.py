"""Fixtures for the HTTP tests: a small site on disk and a running HTTP server on port 0."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.http.api import HttpSettings, Router, serve_http
from socklab.runtime import Server


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A served root with a page and assets, a big file, a subdirectory, and a secret outside it."""
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text('<!DOCTYPE html><html><head><link rel="stylesheet" href="style.css">'
                                     '<script src="app.js"></script></head><body><h1 id="t">socklab</h1>'
                                     '<img src="img.png"></body></html>')
    (root / "style.css").write_text("h1 { color: rgb(1, 2, 3); }")
    (root / "app.js").write_text("document.addEventListener('DOMContentLoaded', () => {"
                                 " document.getElementById('t').dataset.js = 'ran'; });")
    (root / "img.png").write_bytes(bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"))
    (root / "sub" / "a.txt").write_bytes(b"0123456789")
    (root / "sub" / "<b>&amp;.txt").write_bytes(b"x")
    (root / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (tmp_path / "secret.txt").write_bytes(b"TOP-SECRET-OUTSIDE-ROOT")
    return root


@contextlib.contextmanager
def http_server(root: Path | None = None, engine: str = "epoll", router: Router | None = None,
                **settings: Any) -> Iterator[Server]:
    """A started HTTP server on 127.0.0.1:0 serving ``root`` (and/or ``router``), shut down after."""
    settings.setdefault("log_format", "none")
    # The hand-written requests in these tests say "Host: a" (or x); the Host check against DNS
    # rebinding (tests/apps/http/test_browsers.py) would answer them 421 on loopback.
    settings.setdefault("allow_host", ("a", "x"))
    s = HttpSettings(host="127.0.0.1", port=0, engine=engine, **settings)
    r = router if router is not None else Router()
    if root is not None:
        r.static("/", root, follow_symlinks=s.follow_symlinks, listing=s.listing, cache_bytes=s.file_cache)
    srv = serve_http(s, r)
    try:
        srv.start()
        yield srv
    finally:
        srv.shutdown(timeout=2)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data`` on a new connection; return everything received and whether the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        closed = False
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    closed = True
                    break
                chunks.append(b)
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed = True
        return b"".join(chunks), closed


ServerFactory = Callable[..., contextlib.AbstractContextManager[Server]]

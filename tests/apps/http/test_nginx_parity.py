"""Where socklab http answered differently from nginx on the same request (issue 15, "Smaller").

- a raw UTF-8 path (``/café.txt``, as curl sends it) was 400; nginx serves the file. It is now
  percent-encoded before parsing and decoded once with every check, so traversal stays refused;
- the 416 status line said the old phrase; RFC 9110 §15.5.17 says "Range Not Satisfiable";
- ``/a.txt/`` served the file ``a.txt``; a trailing slash names a directory, so nginx says 404.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.apps.http.conftest import http_server, raw_exchange

pytestmark = pytest.mark.timeout(60)


def get(port: int, target: bytes, extra: bytes = b"") -> bytes:
    out, _ = raw_exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + extra + b"\r\n")
    return out


def test_raw_utf8_path_is_served_like_nginx(site: Path) -> None:
    (site / "café.txt").write_bytes(b"CAFE")
    (site / "dé").mkdir()
    (site / "dé" / "ü.txt").write_bytes(b"UMLAUT")
    with http_server(site) as srv:
        for target, body in (("/café.txt", b"CAFE"), ("/dé/ü.txt", b"UMLAUT"), ("/caf%C3%A9.txt", b"CAFE")):
            out = get(srv.port, target.encode())
            assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(body), (target, out[:120])
        # curl sends the UTF-8 bytes raw with --path-as-is
        r = subprocess.run(["curl", "-sS", "--path-as-is", "--max-time", "10", f"http://127.0.0.1:{srv.port}/café.txt"],
                           capture_output=True, timeout=20)
        assert r.stdout == b"CAFE", r
        # still confined: raw bytes decode once and go through the same checks
        for bad in ("/dé/../../secret.txt".encode(), b"/\xc0\xae\xc0\xae/secret.txt", b"/\xff.txt",
                    "/é/%2e%2e/%2e%2e/secret.txt".encode()):
            out = get(srv.port, bad)
            assert out.startswith(b"HTTP/1.1 400 ") and b"SECRET" not in out, (bad, out[:120])


def test_416_reason_phrase_is_rfc_9110s(site: Path) -> None:
    with http_server(site) as srv:
        out = get(srv.port, b"/sub/a.txt", b"Range: bytes=100-200\r\n")
        assert out.startswith(b"HTTP/1.1 416 Range Not Satisfiable\r\n"), out[:80]
        assert b"content-range: bytes */10\r\n" in out
        out, _ = raw_exchange(srv.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 413 Content Too Large\r\n"), out[:80]


def test_a_file_with_a_trailing_slash_is_404(site: Path) -> None:
    with http_server(site) as srv:
        assert get(srv.port, b"/sub/a.txt").endswith(b"0123456789")
        for target in (b"/sub/a.txt/", b"/index.html/", b"/sub/a.txt/?x=1"):
            out = get(srv.port, target)
            assert out.startswith(b"HTTP/1.1 404 ") and b"0123456789" not in out, (target, out[:100])
            out = get(srv.port, target)  # and again, once the file is in the cache
            assert out.startswith(b"HTTP/1.1 404 "), target


@pytest.mark.parametrize("backend", ["httptools", "h11"])
@pytest.mark.parametrize("chunk", [None, 1])
def test_parser_escapes_a_raw_target_only(backend: str, chunk: int | None) -> None:
    from tests.apps.http.test_protocols import events

    data = "GET /dé/ü.txt?q=é HTTP/1.1\r\nHost: a\r\nX-Name: é\r\n\r\n".encode()
    evs = events(data, chunk=chunk, backend=backend)
    head = evs[-1].head
    assert head.target == b"/d%C3%A9/%C3%BC.txt?q=%C3%A9"
    assert (b"x-name", "é".encode()) in head.headers  # field values are not touched

"""Static files against real clients - curl and http.client - on every concurrent engine."""

from __future__ import annotations

import http.client
import re
import subprocess
from pathlib import Path

import pytest

from tests.apps.http.conftest import http_server

pytestmark = [pytest.mark.timeout(60), pytest.mark.interop]


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=30)


def test_curl_full_file_ranges_conditional_head_keepalive(site: Path, concurrent_engine: str,
                                                          tmp_path: Path) -> None:
    with http_server(site, concurrent_engine) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        out = tmp_path / "big.out"
        r = curl("-o", str(out), "-w", "%{http_code}", f"{base}/big.bin")
        assert r.stdout == b"200" and out.read_bytes() == (site / "big.bin").read_bytes()
        # Range: one span -> 206 with Content-Range; a suffix range; unsatisfiable -> 416
        r = curl("-i", "-r", "2-5", f"{base}/sub/a.txt")
        assert r.stdout.startswith(b"HTTP/1.1 206") and b"content-range: bytes 2-5/10" in r.stdout
        assert r.stdout.endswith(b"\r\n\r\n2345")
        r = curl("-r", "-3", f"{base}/sub/a.txt")
        assert r.stdout == b"789"
        r = curl("-i", "-r", "50-60", f"{base}/sub/a.txt")
        assert r.stdout.startswith(b"HTTP/1.1 416") and b"content-range: bytes */10" in r.stdout
        # several ranges -> multipart/byteranges
        r = curl("-i", "-r", "0-1,5-6", f"{base}/sub/a.txt")
        assert r.stdout.startswith(b"HTTP/1.1 206")
        m = re.search(rb"multipart/byteranges; boundary=(\w+)", r.stdout)
        assert m is not None
        assert b"content-range: bytes 0-1/10\r\n\r\n01\r\n" in r.stdout
        assert b"content-range: bytes 5-6/10\r\n\r\n56\r\n--" + m.group(1) + b"--" in r.stdout
        # resume a partial download with curl -C
        part = tmp_path / "resume.bin"
        part.write_bytes((site / "big.bin").read_bytes()[:1000])
        r = curl("-C", "-", "-o", str(part), f"{base}/big.bin")
        assert r.returncode == 0 and part.read_bytes() == (site / "big.bin").read_bytes()
        # conditional requests: ETag and Last-Modified -> 304
        head = curl("-I", f"{base}/sub/a.txt").stdout
        etag = re.search(rb"etag: (\S+)", head)
        lm = re.search(rb"last-modified: ([^\r]+)", head)
        assert etag and lm and b"content-length: 10" in head
        r = curl("-i", "-H", f"If-None-Match: {etag.group(1).decode()}", f"{base}/sub/a.txt")
        assert r.stdout.startswith(b"HTTP/1.1 304") and r.stdout.endswith(b"\r\n\r\n")
        r = curl("-i", "-H", f"If-Modified-Since: {lm.group(1).decode()}", f"{base}/sub/a.txt")
        assert r.stdout.startswith(b"HTTP/1.1 304")
        r = curl("-i", "-H", 'If-None-Match: "other"', f"{base}/sub/a.txt")
        assert r.stdout.startswith(b"HTTP/1.1 200")
        r = curl("-i", "-r", "0-1", "-H", 'If-Range: "other"', f"{base}/sub/a.txt")
        assert r.stdout.startswith(b"HTTP/1.1 200") and r.stdout.endswith(b"0123456789")
        # HEAD: headers of the GET, no body
        r = curl("-I", f"{base}/big.bin")
        assert r.stdout.startswith(b"HTTP/1.1 200") and f"content-length: {3 * 1024 * 1024 + 17}".encode() in r.stdout
        # keep-alive: curl reuses the connection for several URLs
        r = curl("-v", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                 f"{base}/sub/a.txt", f"{base}/index.html", f"{base}/big.bin")
        assert r.returncode == 0
        assert r.stderr.count(b"Re-using existing connection") + r.stderr.count(b"Reusing existing") >= 2


def test_index_listing_redirect_and_mime(site: Path) -> None:
    with http_server(site) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read().startswith(b"<!DOCTYPE html>")
        assert resp.getheader("content-type") == "text/html; charset=utf-8"
        conn.request("GET", "/sub")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 301 and resp.getheader("location") == "/sub/"
        conn.request("GET", "/sub/")
        resp = conn.getresponse()
        page = resp.read().decode()
        assert resp.status == 200
        # HTML-escaped, sorted, with sizes
        assert "&lt;b&gt;&amp;amp;.txt" in page and "<b>" not in page
        assert page.index("%3Cb%3E") < page.index("a.txt")
        assert "<td>10</td>" in page
        for name, ctype in [("/style.css", "text/css; charset=utf-8"), ("/app.js", "text/javascript; charset=utf-8"),
                            ("/img.png", "image/png"), ("/big.bin", "application/octet-stream")]:
            conn.request("HEAD", name)
            resp = conn.getresponse()
            resp.read()
            assert resp.getheader("content-type") == ctype, name
        conn.close()


def test_http_client_pipelining_and_http10(site: Path, concurrent_engine: str) -> None:
    import socket

    with http_server(site, concurrent_engine) as srv:
        # three pipelined requests in one segment, answered in order on one connection
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"GET /sub/a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"HEAD /sub/a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.count(b"HTTP/1.1 200 OK") == 3
        assert data.index(b"0123456789") < data.index(b"h1 { color")
        assert data.endswith(b"h1 { color: rgb(1, 2, 3); }")
        # HTTP/1.0 without keep-alive: the server closes after the response
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"GET /sub/a.txt HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"0123456789")
        # HTTP/1.0 asking for keep-alive gets it, and says so
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            for _ in range(2):
                s.sendall(b"GET /sub/a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                data = b""
                while not data.endswith(b"0123456789"):
                    chunk = s.recv(65536)
                    assert chunk, f"closed instead of keeping the connection alive: {data!r}"
                    data += chunk
                assert b"connection: keep-alive\r\n" in data
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        for _ in range(20):
            conn.request("GET", "/sub/a.txt")
            resp = conn.getresponse()
            assert resp.read() == b"0123456789"
        conn.close()


def test_every_engine_serves_files(site: Path, engine: str) -> None:
    """Including iterative (one client at a time: requests with Connection: close take turns)."""
    with http_server(site, engine) as srv:
        for path, expected in (("/sub/a.txt", b"0123456789"), ("/big.bin", (site / "big.bin").read_bytes())):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.request("GET", path, headers={"Connection": "close"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == expected
            conn.close()

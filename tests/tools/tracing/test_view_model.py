"""``trace view`` on UDP, RST and an untraced peer (curl): what the page draws, read from its SVG."""

from __future__ import annotations

import http.server
import re
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tools.tracing.helpers import echo_server, needs_strace, socklab

pytestmark = needs_strace


def arrows(page: str) -> list[dict[str, str]]:
    return [dict(re.findall(r'data-([a-z-]+)="([^"]*)"', m)) for m in re.findall(r'<g class="arrow" ([^>]*)>', page)]


def lanes(page: str) -> list[str]:
    return re.findall(r'<g class="lane" data-lane="\d+" data-title="([^"]*)"', page)


def traced(tmp_path: Path, name: str, source: str, *cmd: str) -> tuple[str, str]:
    """Trace ``source`` (a Python program) or ``cmd``; returns the trace and the ladder page."""
    if not cmd:
        prog = tmp_path / f"{name}.py"
        prog.write_text(textwrap.dedent(source))
        cmd = (sys.executable, str(prog))
    out = tmp_path / f"{name}.jsonl"
    r = socklab("trace", "run", "--json", str(out), "--", *cmd)
    assert r.returncode == 0, r.stderr
    html = tmp_path / f"{name}.html"
    v = socklab("trace", "view", str(out), "-o", str(html))
    assert v.returncode == 0, v.stderr
    return r.stderr, html.read_text()


def test_udp_datagrams_go_from_sender_to_receiver(tmp_path: Path) -> None:
    _, page = traced(tmp_path, "udp", """
        import socket
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", 0))
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sendto(b"ping 1", srv.getsockname())
        c.sendto(b"ping two", srv.getsockname())
        for _ in range(2):
            data, addr = srv.recvfrom(100)
            srv.sendto(data.upper(), addr)
        c.recvfrom(100); c.recvfrom(100)
    """)
    names = lanes(page)
    server = next(i for i, t in enumerate(names) if " udp 127.0.0.1:" in t)
    client = next(i for i, t in enumerate(names) if t.endswith(" client"))
    data = [a for a in arrows(page) if a["kind"] == "data"]
    there = sorted(int(a["bytes"]) for a in data if int(a["from"]) == client and int(a["to"]) == server)
    back = sorted(int(a["bytes"]) for a in data if int(a["from"]) == server and int(a["to"]) == client)
    assert there == back == [6, 8], data
    assert all(a["label"].endswith("datagram") for a in data)


def test_an_abortive_close_is_an_rst_arrow_and_named(tmp_path: Path) -> None:
    err, page = traced(tmp_path, "rst", """
        import socket, struct
        srv = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()                     # with SO_LINGER 0: RST, not FIN
        try:
            conn.recv(100)
        except ConnectionResetError:
            print("reset")
    """)
    assert "close() will send RST instead of FIN" in err
    assert re.search(r"recvfrom .*failed: ECONNRESET", err) and "the peer reset the connection (RST)" in err
    (rst,) = [a for a in arrows(page) if a["kind"] == "rst"]
    names = lanes(page)
    assert names[int(rst["from"])].endswith(" client") and " server " in names[int(rst["to"])]


def test_an_abortive_close_the_peer_never_reads_about_is_still_an_rst_not_a_fin(tmp_path: Path) -> None:
    err, page = traced(tmp_path, "rst-unread", """
        import socket, struct
        srv = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()                     # RST; the server closes without reading
        conn.close()
    """)
    assert re.search(r"close peer=\S+ RST sent \(SO_LINGER 0\).* \[CLOSE\]", err), err
    names = lanes(page)
    from_client = [a["kind"] for a in arrows(page) if a["kind"] in ("fin", "rst")
                   and names[int(a["from"])].endswith(" client")]
    assert from_client == ["rst"], arrows(page)  # the old page drew a FIN from the client


def test_a_recv_of_0_after_shut_rd_is_no_fin_from_the_peer(tmp_path: Path) -> None:
    with echo_server() as port:
        err, page = traced(tmp_path, "shutrd", f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=30)
            s.shutdown(socket.SHUT_RD)
            assert s.recv(100) == b""     # this side stopped reading: not the server's FIN
            s.close()
        """)
    assert "recv returned 0 because this program shut down its reading side (SHUT_RD)" in err
    fins = [a for a in arrows(page) if a["kind"] == "fin"]
    assert len(fins) == 1, fins  # the client's close; the old page drew a FIN from the server too


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "index.html").write_text("hello from the test\n")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(tmp_path)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(10)


def test_curl_a_real_client_with_a_non_blocking_connect(tmp_path: Path, http_port: int) -> None:
    err, page = traced(tmp_path, "curl", "", "curl", "-s", f"http://127.0.0.1:{http_port}/index.html")
    assert re.search(rf"curl\[\d+\]/main fd=\d+ connect peer=127\.0\.0\.1:{http_port} EINPROGRESS", err), err
    assert "SO_ERROR=0: the non-blocking connect finished (three-way handshake done) [ESTABLISHED]" in err
    assert re.search(r'sendto \d+ bytes peer=\S+ data="GET /index\.html HTTP/1\.1\\r\\n', err), err
    names = lanes(page)
    assert names[-1] == f"127.0.0.1:{http_port}"  # the server was not traced: a lane by its address
    kinds = {a["kind"] for a in arrows(page) if int(a["to"]) == len(names) - 1}
    assert {"handshake", "data"} <= kinds
    assert any(a["kind"] == "data" and a["label"].startswith(tuple("123456789")) and a.get("to-row") == ""
               for a in arrows(page))


def test_a_forking_server_the_child_serves_and_the_parents_close_sends_no_fin(tmp_path: Path) -> None:
    err, page = traced(tmp_path, "fork", """
        import os, socket
        srv = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(srv.getsockname())
        conn, _ = srv.accept()
        pid = os.fork()
        if pid == 0:
            srv.close()
            conn.sendall(conn.recv(100).upper())
            conn.close()
            os._exit(0)
        conn.close()          # the parent's copy: no FIN, the child still has the connection
        c.sendall(b"hello")
        c.recv(100)
        c.close()
        os.waitpid(pid, 0)
    """)
    parent_close = re.search(r"python\S*\[(\d+)\]/main fd=\d+ close peer=\S+ another fd still holds the socket "
                             r"\(1\): no FIN yet", err)
    assert parent_close, err
    names = lanes(page)
    parent, child = parent_close.group(1), next(p for p in re.findall(r"\[(\d+)\]", " ".join(names))
                                                if p != parent_close.group(1))
    child_lane = next(i for i, t in enumerate(names) if f"[{child}] server 127.0.0.1:" in t)
    client_lane = next(i for i, t in enumerate(names) if f"[{parent}] client" in t)
    data = [a for a in arrows(page) if a["kind"] == "data"]
    assert {(int(a["from"]), int(a["to"])) for a in data} == {(client_lane, child_lane), (child_lane, client_lane)}
    fins = [a for a in arrows(page) if a["kind"] == "fin"]
    parent_lane = next(i for i, t in enumerate(names) if f"[{parent}] server" in t)
    assert len(fins) == 2 and child_lane in {int(a["from"]) for a in fins}
    # none from the parent's close; the client's FIN leaves from whichever process closed it last (the child
    # inherited the client socket too: if the parent closes first, the child's exit sends it)
    assert parent_lane not in {int(a["from"]) for a in fins}


def test_ipv6_connections_are_traced_and_paired(tmp_path: Path) -> None:
    err, page = traced(tmp_path, "v6", """
        import socket
        srv = socket.create_server(("::1", 0), family=socket.AF_INET6)
        c = socket.create_connection(("::1", srv.getsockname()[1]))
        conn, _ = srv.accept()
        c.sendall(b"six")
        conn.recv(10)
        c.close(); conn.close(); srv.close()
    """)
    assert "socket AF_INET6, SOCK_STREAM" in err and re.search(r"connect peer=\[::1\]:\d+ three-way", err), err
    names = lanes(page)
    server = next(i for i, t in enumerate(names) if " server [::1]:" in t)
    kinds = {(a["kind"], int(a["to"])) for a in arrows(page)}
    assert ("handshake", server) in kinds and ("data", server) in kinds

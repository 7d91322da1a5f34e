"""WebSocket on the HTTP layer, against websocket-client (a real third-party implementation)."""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time

import pytest
import websocket  # websocket-client

from socklab.apps.http.api import Request, Response, Router, WebSocket
from tests.apps.http.conftest import http_server

pytestmark = [pytest.mark.timeout(60), pytest.mark.interop]


def echo_router(log: list[tuple[int, str]] | None = None) -> Router:
    router = Router()

    @router.route("GET", "/hello")
    def hello(req: Request) -> Response:
        return Response(200, [("content-type", "text/plain")], b"hi")

    @router.websocket("/ws")
    def on_ws(ws: WebSocket) -> None:
        ws.on_message = ws.send
        if log is not None:
            ws.on_close = lambda code, reason: log.append((code, reason))

    return router


def finish(ws: websocket.WebSocket) -> None:
    """Close the client side whatever state the server left it in (no ResourceWarning)."""
    try:
        ws.close(timeout=1)
    except Exception:  # the server may have closed first: a failed closing handshake is fine here
        pass
    ws.shutdown()


def close_code(ws: websocket.WebSocket) -> int:
    opcode, frame = ws.recv_data_frame(control_frame=True)
    while opcode != websocket.ABNF.OPCODE_CLOSE:
        opcode, frame = ws.recv_data_frame(control_frame=True)
    return int(struct.unpack("!H", frame.data[:2])[0])


def test_echo_text_and_binary(concurrent_engine: str) -> None:
    log: list[tuple[int, str]] = []
    with http_server(router=echo_router(log), engine=concurrent_engine) as srv:
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/ws", timeout=10)
        try:
            ws.send("héllo")
            assert ws.recv() == "héllo"
            blob = os.urandom(200_000)
            ws.send_binary(blob)
            assert ws.recv() == blob
            ws.ping(b"p")
            opcode, frame = ws.recv_data_frame(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_PONG and frame.data == b"p"
        finally:
            finish(ws)
        # the HTTP routes still work beside it
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/hello")
        assert conn.getresponse().read() == b"hi"
        conn.close()
    assert log and log[0][0] == 1000


def test_message_too_big_closes_1009() -> None:
    with http_server(router=echo_router(), ws_max_message=1000) as srv:
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/ws", timeout=10)
        ws.send("a" * 900)
        assert ws.recv() == "a" * 900
        ws.send("a" * 5000)
        assert close_code(ws) == 1009
        finish(ws)


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
def test_a_handler_that_raises_closes_1011_and_the_server_serves_on(fragmented: bool,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # One whole frame takes the receive fast path (FrameParser.one_message), a fragmented message
    # the full parser: a bug in on_message must close that connection with 1011 either way.
    router = Router()

    @router.websocket("/ws")
    def on_ws(ws: WebSocket) -> None:
        def on_message(msg: str | bytes) -> None:
            if msg == "boom":
                raise RuntimeError("handler bug")
            ws.send(msg)
        ws.on_message = on_message

    with http_server(router=router) as srv:
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/ws", timeout=10)
        ws.send("fine")
        assert ws.recv() == "fine"
        if fragmented:
            ws.send_frame(websocket.ABNF.create_frame("bo", websocket.ABNF.OPCODE_TEXT, fin=0))
            ws.send_frame(websocket.ABNF.create_frame("om", websocket.ABNF.OPCODE_CONT, fin=1))
        else:
            ws.send("boom")
        assert close_code(ws) == 1011
        finish(ws)
        other = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/ws", timeout=10)
        other.send("still served")
        assert other.recv() == "still served"
        finish(other)
    assert "RuntimeError: handler bug" in capsys.readouterr().err


def test_fragmented_message_over_the_limit_closes_1009() -> None:
    with http_server(router=echo_router(), ws_max_message=1000) as srv:
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/ws", timeout=10)
        ws.send_frame(websocket.ABNF.create_frame("a" * 600, websocket.ABNF.OPCODE_TEXT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame("a" * 600, websocket.ABNF.OPCODE_CONT, fin=0))
        assert close_code(ws) == 1009
        finish(ws)


def test_invalid_utf8_closes_1007() -> None:
    with http_server(router=echo_router()) as srv:
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/ws", timeout=10, skip_utf8_validation=True)
        ws.send_frame(websocket.ABNF.create_frame(b"\xff\xfe\xfd", websocket.ABNF.OPCODE_TEXT))
        assert close_code(ws) == 1007
        finish(ws)


def _raw_upgrade(port: int, path: str = "/ws") -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return s, data


def test_server_pings_and_drops_a_silent_peer() -> None:
    with http_server(router=echo_router(), ws_ping_interval=0.3, ws_ping_timeout=0.5) as srv:
        s, head = _raw_upgrade(srv.port)
        with s:
            assert head.startswith(b"HTTP/1.1 101")
            got = head.partition(b"\r\n\r\n")[2]
            t0 = time.monotonic()
            try:
                while chunk := s.recv(4096):  # never answer: a ping arrives, then the server gives up
                    got += chunk
            except ConnectionResetError:
                pass
            assert b"\x89" in got  # a ping frame (FIN + opcode 9)
            assert time.monotonic() - t0 < 10


def test_bad_handshakes_and_unknown_path() -> None:
    with http_server(router=echo_router()) as srv:
        s, head = _raw_upgrade(srv.port, "/nope")
        s.close()
        assert head.startswith(b"HTTP/1.1 404")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 400")


def test_shutdown_closes_websockets_with_1001(concurrent_engine: str) -> None:
    with http_server(router=echo_router(), engine=concurrent_engine) as srv:
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/ws", timeout=10)
        ws.send("x")
        assert ws.recv() == "x"
        t = threading.Thread(target=srv.shutdown, kwargs={"timeout": 5})
        t.start()
        assert close_code(ws) == 1001
        finish(ws)
        t.join(10)

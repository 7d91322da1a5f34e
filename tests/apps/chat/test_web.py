"""The web side: WebSocket members next to TCP ones, WebSocket limits, and the page in real Chromium."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from socklab.protocols.chat import Message, event_from_json
from tests.apps.chat.helpers import LineClient, Pump, chat_node, http_get
from tests.browser import headless_chromium

REPO = Path(__file__).resolve().parents[3]


class WsClient:
    """A blocking WebSocket client on wsproto, able to send frames a browser never would."""

    def __init__(self, port: int, timeout: float = 10.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect(): shrinking it later can stall the window for seconds
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{port}", target="/ws")))
        self.pending: list[Any] = []
        ev = self._next()
        assert isinstance(ev, AcceptConnection), ev
        self.texts: list[str] = []

    def _next(self) -> Any:
        while not self.pending:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
            if not data and not self.pending:
                raise EOFError("closed")
        return self.pending.pop(0)

    def send(self, text: str) -> None:
        self.sock.sendall(self.ws.send(TextMessage(data=text)))

    def expect(self, kind: str, **match: Any) -> dict[str, Any]:
        while True:
            ev = self._next()
            if isinstance(ev, CloseConnection):
                raise AssertionError(f"closed {ev.code} {ev.reason} while waiting for {kind}")
            if isinstance(ev, TextMessage):
                self.texts.append(ev.data)
                data: dict[str, Any] = json.loads(ev.data)
                if data["type"] == kind and all(data.get(k) == v for k, v in match.items()):
                    return data

    def raw_frame(self, opcode: int, payload: bytes) -> None:
        """One masked frame (RFC 6455 section 5.2), whatever its content."""
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def close_code(self) -> int:
        while True:
            ev = self._next()
            if isinstance(ev, CloseConnection):
                return int(ev.code)

    def close(self) -> None:
        self.sock.close()


def test_websocket_and_tcp_members_share_a_room(concurrent_engine: str) -> None:
    with chat_node(concurrent_engine, http_port=0) as node, LineClient(node.tcp_port, "tcpann") as ann:
        ws = WsClient(node.http_port)
        try:
            ws.expect("HELLO")
            ws.send("/nick webbob")
            ws.expect("SYNC", room="#lobby")
            ann.expect("JOIN #lobby webbob")
            ws.send("/say #lobby hello from the browser")
            assert ann.expect("MSG").endswith("webbob say :hello from the browser")
            ann.send("hello back")
            got = ws.expect("MSG", seq=2)
            assert event_from_json(json.dumps(got)) == Message("#lobby", 2, got["ts"], "tcpann", "hello back")
            ws.send("/msg tcpann psst")
            assert ann.expect("PRIV").endswith(":psst")
            ws.send("/frobnicate")
            assert ws.expect("ERR")["code"] == 400
        finally:
            ws.close()


def test_websocket_limits_1009_and_1007() -> None:
    with chat_node(http_port=0, max_ws_message=4096) as node, LineClient(node.tcp_port, "probe") as probe:
        big = WsClient(node.http_port)
        big.expect("HELLO")
        big.raw_frame(0x1, b"a" * 100_000)  # over the limit: closed before it is gathered
        assert big.close_code() == 1009
        big.close()
        bad = WsClient(node.http_port)
        bad.expect("HELLO")
        bad.raw_frame(0x1, b"/nick \xff\xfe")  # a text frame that is not UTF-8
        assert bad.close_code() == 1007
        bad.close()
        probe.send("/ping still-fine")
        probe.expect("PONG")


def test_page_and_static_files_are_served() -> None:
    with chat_node(http_port=0) as node:
        data = http_get(node.http_port)
        assert data.startswith(b"HTTP/1.1 200") and b"<title>socklab chat</title>" in data


# ---- the page in a real headless Chromium (selenium + chromium-driver from scripts/setup.sh) -------------
class NcClient:
    """The real netcat as a chat user."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(["nc", "127.0.0.1", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.buf = b""
        self.lines: list[str] = []

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, text: str, timeout: float = 15.0) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                while b"\n" in self.buf:
                    line, _, self.buf = self.buf.partition(b"\n")
                    self.lines.append(line.decode())
                    if text in self.lines[-1]:
                        return self.lines[-1]
                if sel.select(deadline - time.monotonic()):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    self.buf += chunk
        raise AssertionError(f"nc never got {text!r}: {self.lines[-10:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f:
                f.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    with headless_chromium((1100, 700)) as driver:
        yield driver


def _open_page(driver: Any, url: str, nick: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.switch_to.new_window("tab")
    driver.get(url)
    field = driver.find_element(By.ID, "nick")
    field.clear()  # the page remembers the last nick used in this browser (localStorage)
    field.send_keys(nick)
    driver.find_element(By.ID, "connect").click()
    WebDriverWait(driver, 15).until(ec.text_to_be_present_in_element((By.ID, "status"), "online"))
    WebDriverWait(driver, 15).until(ec.text_to_be_present_in_element((By.ID, "members"), nick))
    return str(driver.current_window_handle)


def _say(driver: Any, handle: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    driver.switch_to.window(handle)
    box = driver.find_element(By.ID, "text")
    box.send_keys(text)
    driver.find_element(By.ID, "send-button").click()


def _wait_log(driver: Any, handle: str, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.switch_to.window(handle)
    WebDriverWait(driver, 15).until(ec.text_to_be_present_in_element((By.ID, "log"), text))


@pytest.mark.interop
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_browser_pages_and_nc_in_one_room(browser: Any, tmp_path: Path) -> None:
    db = str(tmp_path / "chat.db")
    with chat_node(http_port=0, store=db) as node:
        url = f"http://127.0.0.1:{node.http_port}/"
        nc = NcClient(node.tcp_port)
        try:
            nc.expect("HELLO")
            nc.send("/nick netcat")
            nc.expect("SYNC #lobby")
            first = _open_page(browser, url, "alice")
            second = _open_page(browser, url, "bruno")
            nc.expect("JOIN #lobby bruno")
            _say(browser, first, "hello from alice's page")
            _wait_log(browser, second, "hello from alice's page")
            assert nc.expect("MSG #lobby").endswith("alice say :hello from alice's page")
            nc.send("hi pages, this is nc")
            _wait_log(browser, first, "hi pages, this is nc")
            _wait_log(browser, second, "hi pages, this is nc")
            _say(browser, second, "/msg alice a private word")
            _wait_log(browser, first, "a private word")
            _say(browser, second, "bruno was here")
            nc.expect("bruno say :bruno was here")
            _wait_log(browser, first, "bruno was here")
            browser.switch_to.window(first)
            shot = tmp_path / "chat-web.png"
            assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
            artifacts = REPO / "artifacts"
            artifacts.mkdir(exist_ok=True)
            shutil.copy(shot, artifacts / "chat-web.png")
        finally:
            nc.close()
        ports = {"tcp_port": node.tcp_port, "http_port": node.http_port}
    # The server restarts (same ports, same store): both pages reconnect on their own and miss nothing.
    with chat_node(store=db, **ports) as node, LineClient(node.tcp_port, "late") as late:
        late.expect("JOIN #lobby bruno", timeout=20)
        late.send("said after the restart")
        _wait_log(browser, first, "said after the restart")
        _wait_log(browser, second, "said after the restart")


def test_websocket_slow_consumer_is_closed_4507_others_unaffected() -> None:
    with chat_node(http_port=0, rate=1e6, burst=100000, max_buffer=65536, max_queue=65536) as node, \
            LineClient(node.tcp_port, "fast") as fast:
        slow = WsClient(node.http_port, rcvbuf=4096)
        slow.expect("HELLO")
        slow.send("/nick slowweb")
        slow.expect("SYNC")
        fast.expect("JOIN #lobby slowweb")
        n = 4200  # ~8 MB: past the kernel's send buffer (tcp_wmem max 4 MiB) + ours
        pump = Pump(fast, b"MSG #lobby ", n)  # fast surely keeps up
        pump.start()
        for step in range(0, n, 20):  # fast never lags more than 20 messages; slow lags by all
            fast.sock.sendall(b"".join(f"{i} {'w' * 1900}\n".encode() for i in range(step, step + 20)))
            pump.wait_count(step + 20)
        seqs = [int(line.split()[2]) for line in pump.lines() if line.startswith("MSG")]
        assert seqs == list(range(1, n + 1))
        fast.send("/who")
        assert fast.expect("WHO") == "WHO #lobby fast"
        assert slow.close_code() == 4507
        slow.close()


def test_tls_on_both_listeners(tls_files: dict[str, str]) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=tls_files["ca"])
    with chat_node(http_port=0, tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as node:
        assert node.schemes == ["tls", "https"]
        raw = socket.create_connection(("127.0.0.1", node.tcp_port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"/nick secure\n")
            data = b""
            while b"SYNC #lobby" not in data:
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
            assert data.startswith(b"HELLO ")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=300), st.sampled_from(
    ["/nick fuzzy", "/join #x", "/msg probe hi", "/topic t", "/history 3", "/part", "/quit", "\n", "/me x"])),
    max_size=15))
def test_fuzz_websocket_commands_never_hurt_the_server(web_node: Any, messages: list[str]) -> None:
    node, probe = web_node
    ws = WsClient(node.http_port)
    try:
        ws.expect("HELLO")
        for m in messages:
            ws.send(m)
        ws.send("/ping end")
        try:
            ws.expect("PONG")
        except (AssertionError, EOFError):
            pass  # a /quit in the list closed it: fine
    finally:
        ws.close()
    probe.send("/ping ok")
    probe.expect("PONG")


@pytest.fixture(scope="module")
def web_node() -> Any:
    with chat_node(http_port=0, rate=1000.0, burst=1000) as node, LineClient(node.tcp_port, "probe") as probe:
        yield node, probe

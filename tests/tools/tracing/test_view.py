"""``socklab trace view``: a traced server and client drawn as a ladder, checked in headless Chromium."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import headless_chromium
from tests.tools.tracing.helpers import C_CLIENT, compile_c, needs_strace, socklab

pytestmark = needs_strace

SERVER = textwrap.dedent("""
    import socket
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    got = b""
    while len(got) < 11:
        chunk = conn.recv(4)         # small reads: the client's one write arrives in pieces
        if not chunk:                # the client closed early: say so, do not spin
            raise SystemExit(f"the client closed after {len(got)} of 11 bytes")
        got += chunk
    conn.sendall(got)
    while conn.recv(100):            # until the client's FIN
        pass
    conn.close()
    srv.close()
""")


def start_traced(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "socklab", "trace", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, NO_COLOR="1"),
                            start_new_session=True)


def read_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(30), "the server printed no port"
    return int(proc.stdout.readline())


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    for s in (proc.stdout, proc.stderr):
        if s:
            s.close()


@pytest.fixture(scope="module")
def traced_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """A traced Python server and a traced C client: their two JSON-lines files and the port."""
    tmp = tmp_path_factory.mktemp("pair")
    (tmp / "server.py").write_text(SERVER)
    exe = compile_c(tmp, "client", C_CLIENT)
    server = start_traced(["--json", str(tmp / "server.jsonl"), "--", sys.executable, str(tmp / "server.py")])
    try:
        port = read_port(server)
        r = socklab("trace", "run", "--json", str(tmp / "client.jsonl"), "--", str(exe), "127.0.0.1", str(port))
        assert r.returncode == 0, r.stderr
        server.communicate(timeout=30)
        assert server.returncode == 0
    finally:
        stop(server)
    return tmp / "server.jsonl", tmp / "client.jsonl", port


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    with headless_chromium((1400, 1800), "--hide-scrollbars", "--force-device-scale-factor=1") as drv:
        yield drv


GEOMETRY = """
const lanes = [...document.querySelectorAll('g.lane')].map(g => {
  const r = g.querySelector('line').getBoundingClientRect();
  const t = g.querySelector('text').getBoundingClientRect();
  return {title: g.dataset.title, x: r.left + r.width / 2, top: r.top, bottom: r.bottom, textH: t.height};
});
const pt = (p, f) => { const q = p.getPointAtLength(p.getTotalLength() * f).matrixTransform(p.getScreenCTM());
                       return [q.x, q.y]; };
const arrows = [...document.querySelectorAll('g.arrow')].map(g => {
  const p = g.querySelector('path');
  return {kind: g.dataset.kind, from: +g.dataset.from, to: +g.dataset.to, bytes: g.dataset.bytes,
          label: g.dataset.label, a: pt(p, 0), b: pt(p, 1), q: [pt(p, 0.35), pt(p, 0.65)]};
});
const notes = [...document.querySelectorAll('g.note text')].map(t => t.textContent);
const states = [...document.querySelectorAll('text.state')].map(t => t.textContent);
return {lanes, arrows, notes, states, dpr: window.devicePixelRatio,
        external: [...document.querySelectorAll('[src],link[href],script')].length};
"""


def test_a_traced_client_and_server_as_a_ladder_in_chromium(traced_pair: tuple[Path, Path, int], driver: Any,
                                                            tmp_path: Path) -> None:
    server_file, client_file, port = traced_pair
    out = tmp_path / "ladder.html"
    r = socklab("trace", "view", str(server_file), str(client_file), "-o", str(out))
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "<svg" in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    driver.get(out.as_uri())
    g = driver.execute_script(GEOMETRY)
    assert g["external"] == 0  # self-contained
    lanes = {ln["title"]: ln for ln in g["lanes"]}
    server = next(ln for t, ln in lanes.items() if f"server 127.0.0.1:{port}" in t)
    client = next(ln for t, ln in lanes.items() if t.startswith("client[") and "client" in t.split(" ", 1)[1])
    xs = [ln["x"] for ln in g["lanes"]]
    assert len(set(round(x) for x in xs)) == len(xs)  # lanes side by side
    arrows = g["arrows"]
    for a in arrows:  # one shared clock: every arrow points down the page (or level)
        assert a["b"][1] >= a["a"][1] - 0.5, a
    (hs,) = [a for a in arrows if a["kind"] == "handshake"]
    assert abs(hs["a"][0] - client["x"]) < 2 and abs(hs["b"][0] - server["x"]) < 10, (hs, client, server)
    c2s = [a for a in arrows if a["kind"] == "data" and abs(a["a"][0] - client["x"]) < 2]
    s2c = [a for a in arrows if a["kind"] == "data" and abs(a["a"][0] - server["x"]) < 2]
    assert sorted(int(a["bytes"]) for a in c2s) == [3, 4, 4]  # one write of 11, read as 4 + 4 + 3
    assert sum("1 send of 11 B split over 3 recvs" in a["label"] for a in c2s) == 1
    assert sum(int(a["bytes"]) for a in s2c) == 11
    assert all(abs(a["b"][0] - server["x"]) < 10 for a in c2s) and all(abs(a["b"][0] - client["x"]) < 10 for a in s2c)
    fins = [a for a in arrows if a["kind"] == "fin"]
    assert len(fins) == 2 and {round(f["a"][0]) for f in fins} == {round(client["x"]), round(server["x"])}
    assert "[LISTEN]" in g["states"] and "[CLOSE_WAIT]" in g["states"] and "[ESTABLISHED]" in g["states"]
    assert any("the peer sent FIN" in n for n in g["notes"])
    # the pixels: the screenshot shows each arrow's colour on its path, the lanes' grey on theirs
    shot = tmp_path / "ladder.png"
    assert driver.save_screenshot(str(shot))
    colors = {"handshake": (0x1B, 0x8A, 0x3A), "data": (0x1F, 0x5F, 0xBF), "fin": (0xD9, 0x73, 0x1A)}
    grey = (0x9A, 0xA3, 0xAD)
    probes = [(x, y, colors[a["kind"]]) for a in arrows for x, y in a["q"]]  # a third, two thirds of the way
    probes += [(server["x"], server["top"] + 5, grey), (client["x"], client["top"] + 5, grey)]
    found = near(driver, shot.read_bytes(), probes)
    for a in arrows:
        i = arrows.index(a)
        assert found[2 * i] or found[2 * i + 1], a
    assert found[-2] and found[-1]


PIXELS = """
const [b64, points, done] = arguments;
const img = new Image();
img.onload = () => {
  const c = document.createElement('canvas');
  c.width = img.width; c.height = img.height;
  const ctx = c.getContext('2d');
  ctx.drawImage(img, 0, 0);
  done(points.map(([x, y]) => Array.from(ctx.getImageData(Math.round(x) - 3, Math.round(y) - 3, 7, 7).data)));
};
img.onerror = () => done(null);
img.src = 'data:image/png;base64,' + b64;
"""


def near(driver: Any, png: bytes, probes: list[tuple[float, float, tuple[int, int, int]]],
         tol: int = 60) -> list[bool]:
    """For each (x, y, colour): is a pixel of the screenshot within 3 px of (x, y) close to the colour?
    The PNG is decoded by the browser (a canvas), not trusted from the live page."""
    import base64

    driver.set_script_timeout(20)
    blocks = driver.execute_async_script(PIXELS, base64.b64encode(png).decode(), [[x, y] for x, y, _ in probes])
    assert blocks is not None, "the screenshot did not decode"
    out = []
    for (_, _, color), data in zip(probes, blocks, strict=True):
        pixels = [data[i:i + 3] for i in range(0, len(data), 4)]
        out.append(any(sum(abs(p - q) for p, q in zip(px, color, strict=True)) <= tol for px in pixels))
    return out


def test_on_a_phone_the_ladder_scrolls_sideways_with_readable_text(traced_pair: tuple[Path, Path, int],
                                                                   driver: Any, tmp_path: Path) -> None:
    server_file, client_file, _ = traced_pair
    out = tmp_path / "ladder.html"
    assert socklab("trace", "view", str(server_file), str(client_file), "-o", str(out)).returncode == 0
    driver.set_window_size(390, 844)
    try:
        driver.get(out.as_uri())
        m = driver.execute_script("""
            const s = document.querySelector('.scroll');
            return {page: document.documentElement.scrollWidth, inner: window.innerWidth,
                    boxW: s.clientWidth, svgW: s.scrollWidth,
                    font: document.querySelector('g.lane text').getBoundingClientRect().height};""")
        driver.save_screenshot(str(tmp_path / "phone.png"))
    finally:
        driver.set_window_size(1400, 1800)
    assert m["page"] <= m["inner"] + 1  # the page itself fits the phone
    assert m["svgW"] > m["boxW"]  # the diagram scrolls inside its box instead of shrinking to nothing
    assert m["font"] >= 10  # lane titles stay readable


def test_socklabs_own_trace_json_and_a_trace_run_file_mixed(tmp_path: Path, driver: Any) -> None:
    exe = compile_c(tmp_path, "client", C_CLIENT)
    srv_json = tmp_path / "echo.jsonl"
    srv = subprocess.Popen([sys.executable, "-m", "socklab", "echo", "serve", "--port", "0", "--trace-json",
                            str(srv_json)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1"), start_new_session=True)
    try:
        assert srv.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(srv.stdout, selectors.EVENT_READ)
            line = ""
            while "listening on tcp://" not in line:
                assert sel.select(30), "socklab echo did not say it was listening"
                line = srv.stdout.readline()
                assert line, "socklab echo ended"
        port = int(line.split("tcp://", 1)[1].split()[0].rsplit(":", 1)[1])
        client_json = tmp_path / "client.jsonl"
        r = socklab("trace", "run", "--json", str(client_json), "--", str(exe), "127.0.0.1", str(port))
        assert r.returncode == 0, r.stderr
        os.killpg(srv.pid, signal.SIGTERM)
        srv.wait(20)
    finally:
        stop(srv)
    ops = [json.loads(x)["op"] for x in srv_json.read_text().splitlines()]
    assert "accept" in ops and "recv" in ops
    out = tmp_path / "mixed.html"
    r = socklab("trace", "view", str(srv_json), str(client_json), "-o", str(out))
    assert r.returncode == 0, r.stderr
    driver.get(out.as_uri())
    g = driver.execute_script(GEOMETRY)
    by_title = {ln["title"]: ln["x"] for ln in g["lanes"]}
    server_x = next(x for t, x in by_title.items() if "server" in t)
    client_x = next(x for t, x in by_title.items() if t.startswith("client["))
    kinds = [a["kind"] for a in g["arrows"]]
    assert kinds.count("handshake") == 1 and "fin" in kinds
    data = [a for a in g["arrows"] if a["kind"] == "data"]
    assert sum(int(a["bytes"]) for a in data if abs(a["a"][0] - client_x) < 2) == 11
    assert sum(int(a["bytes"]) for a in data if abs(a["a"][0] - server_x) < 2) == 11
    for a in g["arrows"]:
        assert a["b"][1] >= a["a"][1] - 0.5, a
    driver.save_screenshot(str(tmp_path / "mixed.png"))


def test_view_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    r = socklab("trace", "view", str(bad), "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "bad.jsonl line 1 is not JSON" in r.stderr
    r = socklab("trace", "view", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "cannot read" in r.stderr

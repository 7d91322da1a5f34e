"""Real peers end to end: headless Chromium loading a page with assets, wrk, and the CLI (with TLS)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.http.api import HttpSettings, Request, Router, serve_http
from tests.apps.http.conftest import http_server
from tests.browser import headless_chromium

pytestmark = [pytest.mark.timeout(90), pytest.mark.interop]


def test_headless_chromium_loads_page_with_assets(site: Path) -> None:
    seen: list[tuple[str, int]] = []

    def log(req: Request | None, client: Any, status: int, size: int, line: str) -> None:
        seen.append((req.path if req else line, status))

    with tempfile.TemporaryDirectory() as profile:
        settings = HttpSettings(host="127.0.0.1", port=0, engine="epoll")
        router = Router()
        router.static("/", site)
        srv = serve_http(settings, router, access_log=log)
        srv.start()
        try:
            r = subprocess.run(
                ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=3000",
                 "--dump-dom", f"http://127.0.0.1:{srv.port}/"],
                capture_output=True, timeout=75)
        finally:
            srv.shutdown(timeout=2)
    dom = r.stdout.decode(errors="replace")
    assert 'data-js="ran"' in dom, (dom[:500], r.stderr[-2000:])
    paths = {p for p, status in seen if status == 200}
    assert {"/", "/style.css", "/app.js", "/img.png"} <= paths, seen


@pytest.mark.parametrize("engine", ["epoll", "uvloop"])
def test_wrk_short_run_without_errors(site: Path, engine: str) -> None:
    with http_server(site, engine) as srv:
        r = subprocess.run(["wrk", "-t1", "-c20", "-d1s", f"http://127.0.0.1:{srv.port}/sub/a.txt"],
                           capture_output=True, timeout=30)
    out = r.stdout.decode()
    assert r.returncode == 0, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    assert rate > 0


def test_cli_serve_json_log_and_sigterm(spawn: Any, site: Path) -> None:
    proc = spawn("http", "serve", str(site), "--port", "0", "--log-format", "json", "--engine", "poll")
    addr = proc.wait_for(r"socklab http listening on http://(\S+) \(engine poll\)").group(1)
    r = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://{addr}/sub/a.txt"], capture_output=True,
                       timeout=20)
    assert r.stdout == b"0123456789"
    line = proc.wait_for(r"^\{").string
    rec = json.loads(line)
    assert rec["path"] == "/sub/a.txt" and rec["status"] == 200 and rec["bytes"] == 10
    assert proc.stop(signal.SIGTERM) == 0


def test_cli_tls(spawn: Any, site: Path, tls_files: dict[str, str]) -> None:
    proc = spawn("http", "serve", str(site), "--port", "0", "--tls-cert", tls_files["cert"], "--tls-key",
                 tls_files["key"], "--log-format", "common")
    addr = proc.wait_for(r"socklab http listening on https://(\S+) \(engine epoll\)").group(1)
    port = addr.rsplit(":", 1)[1]
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", tls_files["ca"],
                        f"https://localhost:{port}/big.bin", "-o", "-"], capture_output=True, timeout=20)
    assert r.stdout == (site / "big.bin").read_bytes()  # TLS: chunks, never plaintext sendfile
    clf = proc.wait_for(r'"GET /big.bin HTTP/1.1" 200 \d+').string
    assert clf.startswith("127.0.0.1 - - [")
    assert proc.stop(signal.SIGTERM) == 0


def test_cli_bad_directory_is_a_usage_error(tmp_path: Path) -> None:
    import sys

    r = subprocess.run([sys.executable, "-m", "socklab", "http", "serve", str(tmp_path / "missing"), "--port", "0"],
                       capture_output=True, timeout=30)
    assert r.returncode == 2 and b"does not exist" in r.stderr


def test_a_page_from_another_origin_cannot_drive_the_rpc_server(tmp_path: Path) -> None:
    """Headless Chromium on a page of one local server tries the RPC server on another port, as any web
    page the user visits could: its WebSocket is refused (403 -> onerror) and its no-preflight
    text/plain POST runs nothing (415). Both worked before issue 14."""
    from socklab.apps.rpc.service import demo_service
    from tests.apps.rpc.helpers import rpc_server

    svc = demo_service()
    from selenium.webdriver.support.ui import WebDriverWait

    poked: list[str] = []

    @svc.method
    def poke(who: str) -> str:
        poked.append(who)
        return "poked"

    with rpc_server(service=svc, listen=("http://127.0.0.1:0/rpc", "ws://127.0.0.1:0/ws")) as rs:
        http_url, ws_url = rs.urls
        page = tmp_path / "www"
        page.mkdir()
        (page / "index.html").write_text(f"""<!DOCTYPE html><html><body><p id="r">waiting</p><script>
const r = document.getElementById('r');
const body = JSON.stringify({{jsonrpc: '2.0', method: 'poke', params: ['post'], id: 1}});
fetch('{http_url}', {{method: 'POST', mode: 'no-cors', body: body}}).catch(() => {{}}).finally(() => {{
  document.body.dataset.post = 'sent';
  const ws = new WebSocket('{ws_url}');
  ws.onopen = () => {{ ws.send(JSON.stringify({{jsonrpc: '2.0', method: 'poke', params: ['ws'], id: 2}}));
                      document.body.dataset.ws = 'open'; }};
  ws.onerror = () => {{ document.body.dataset.ws = 'refused'; }};
}});
</script></body></html>""")
        with http_server(page) as site_srv, headless_chromium((800, 600)) as driver:
            driver.get(f"http://127.0.0.1:{site_srv.port}/")
            # wait for the page's own verdict (the WebSocket's onopen or onerror), not for a time budget:
            # under load Chromium's --virtual-time-budget ran out before the handshake was answered
            WebDriverWait(driver, 45).until(lambda d: d.execute_script("return document.body.dataset.ws"))
            post = driver.execute_script("return document.body.dataset.post")
            ws = driver.execute_script("return document.body.dataset.ws")
        assert post == "sent" and ws == "refused", (post, ws)
        assert poked == []

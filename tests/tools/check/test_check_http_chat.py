"""socklab check http and chat: the lessons pass; broken servers fail with the mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from socklab.core.sockets import Endpoint
from socklab.tools.check.chat import chat_probes
from socklab.tools.check.http import http_probes
from socklab.tools.check.report import Result, run_probes

BROKEN = Path(__file__).parent / "broken"
TIMEOUT = 3.0


def endpoint(address: str) -> Endpoint:
    host, port = address.rsplit(":", 1)
    return Endpoint(host, int(port))


def http_verdicts(address: str, root: Path | None) -> dict[str, Result]:
    return {r.name: r for r in run_probes(http_probes(endpoint(address), root, None, TIMEOUT))}


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>héllo</h1>\n", encoding="utf-8")  # not ASCII: bytes != characters
    (root / "sub" / "data.bin").write_bytes(bytes(range(256)) * 100)
    return root


def test_web_lesson_passes_every_probe(serve, www):
    s = serve("web_server", str(www))
    res = http_verdicts(s.address, www)
    assert [r for r in res.values() if not r.passed] == []


def test_single_recv_and_no_content_length_are_named(serve, www):
    s = serve(BROKEN / "web_one_recv_server.py", str(www))
    res = http_verdicts(s.address, www)
    assert not res["pieces"].passed and "single recv()" in res["pieces"].mistake
    assert not res["content_length"].passed and "without a Content-Length" in res["content_length"].happened
    assert not res["keep_alive"].passed and "one request per connection" in res["keep_alive"].mistake
    assert not res["traversal"].passed and "path traversal" in res["traversal"].mistake


@pytest.mark.interop
def test_socklab_http_server_passes(spawn, www):
    p = spawn("http", "serve", str(www), "--port", "0")
    m = p.wait_for(r"listening on http://(\S+):(\d+)")
    res = http_verdicts(f"{m.group(1)}:{m.group(2)}", www)
    assert [r for r in res.values() if not r.passed] == []


def chat_verdicts(address: str, only: tuple[str, ...] = ()) -> dict[str, Result]:
    probes = [p for p in chat_probes(endpoint(address), TIMEOUT) if not only or p.name in only]
    return {r.name: r for r in run_probes(probes)}


def test_chat_lesson_passes_every_probe(serve):
    s = serve("chat_server")
    assert [r for r in chat_verdicts(s.address).values() if not r.passed] == []


def test_chat_that_answers_only_the_sender_is_named(serve):
    s = serve(BROKEN / "chat_echo_only_server.py")
    res = chat_verdicts(s.address, only=("nick_join", "message"))
    assert res["nick_join"].passed
    assert not res["message"].passed
    assert "does not send a room's message to every member" in res["message"].mistake


@pytest.mark.interop
def test_socklab_chat_server_passes(spawn, tmp_path):
    p = spawn("chat", "serve", "--tcp-port", "0", "--http-port", "0", "--store", str(tmp_path / "chat.db"))
    m = p.wait_for(r"listening on tcp://(\S+):(\d+)")
    assert [r for r in chat_verdicts(f"{m.group(1)}:{m.group(2)}").values() if not r.passed] == []


WEB_LESSON = Path(__file__).resolve().parents[3] / "src" / "socklab" / "lessons" / "web_server.py"


@pytest.mark.parametrize("find, replace, probe, says", [
    ("Content-Length: {len(body)}", "Content-Length: {len(body.decode('utf-8', 'replace'))}", "content_length",
     "counts characters, not bytes"),
    ('(body if send_body else b"")', "body", "head", "sent the body in answer to HEAD"),
    ('if len(parts) != 3 or not parts[2].startswith("HTTP/1."):', "if False:", "bad_request",
     "does not parse crashed the handler"),
    ('respond(conn, "404 Not Found", b"not found\\n", method == "GET", keep)',
     'respond(conn, "200 OK", b"not found\\n", method == "GET", keep)', "not_found", "must be 404"),
], ids=["characters", "head-body", "garbage-crash", "missing-200"])
def test_web_server_mistakes_are_named(serve, www, tmp_path, find, replace, probe, says):
    source = WEB_LESSON.read_text()
    assert source.count(find) == 1
    broken = tmp_path / "web_server.py"
    broken.write_text(source.replace(find, replace))
    s = serve(broken, str(www))
    probes = [p for p in http_probes(endpoint(s.address), www, None, TIMEOUT) if p.name == probe]
    (r,) = run_probes(probes)
    assert not r.passed and says in r.mistake + " " + r.happened, r

"""The tap speaks toxiproxy's HTTP API on --api (issue 17): its clients' raw HTTP (requests, as
toxiproxy-python sends it) and curl create proxies, add toxics and delete them.

Every test fails on the old code: it had no --api option (the command exits 2 and the readiness
line never comes). Delays are checked as lower bounds only (a busy machine adds delay).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from socklab.apps.echo.protocol import EchoProtocol
from socklab.protocols.faults import Fault
from tests.conftest import running_server
from tests.tools.test_tap_control import _netns
from tests.tools.test_tap_live import exchange

API_LINE = r"api on http://(127\.0\.0\.1:\d+)"


def start_api(spawn: Any, *args: str) -> str:
    proc = spawn("tap", *args, "--api", "0") if args else spawn("tap", "--api", "0")
    return "http://" + proc.wait_for(API_LINE).group(1)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_toxiproxy_client_creates_a_proxy_adds_latency_measures_it_and_deletes_it(spawn: Any) -> None:
    with running_server(EchoProtocol) as srv:
        api = start_api(spawn)
        s = requests.Session()  # what toxiproxy-python does: JSON bodies, application/json
        assert s.get(f"{api}/version", timeout=30).status_code == 200
        r = s.post(f"{api}/proxies", json={"name": "echo", "listen": "127.0.0.1:0",
                                           "upstream": f"127.0.0.1:{srv.port}"}, timeout=30)
        assert r.status_code == 201, r.text
        proxy = r.json()
        assert proxy["name"] == "echo" and proxy["enabled"] is True and proxy["toxics"] == []
        assert proxy["upstream"] == f"127.0.0.1:{srv.port}"
        port = int(proxy["listen"].rsplit(":", 1)[1])
        assert port > 0  # the port the kernel chose, as toxiproxy reports it
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            exchange(sock)  # relayed, no toxic
            r = s.post(f"{api}/proxies/echo/toxics", json={
                "type": "latency", "stream": "downstream", "toxicity": 1.0,
                "attributes": {"latency": 300, "jitter": 0}}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json() == {"name": "latency_downstream", "type": "latency", "stream": "downstream",
                                "toxicity": 1.0, "attributes": {"latency": 300, "jitter": 0}}
            assert exchange(sock) >= 0.299  # the open connection is delayed at once
            with socket.create_connection(("127.0.0.1", port), timeout=30) as fresh:
                assert exchange(fresh) >= 0.299  # and a new one
            assert [t["name"] for t in s.get(f"{api}/proxies/echo/toxics", timeout=30).json()] == \
                ["latency_downstream"]
            assert s.delete(f"{api}/proxies/echo/toxics/latency_downstream", timeout=30).status_code == 204
            assert min(exchange(sock) for _ in range(3)) < 3.0  # healed (loose: only a wedged relay fails)
        assert s.delete(f"{api}/proxies/echo", timeout=30).status_code == 204
        assert s.get(f"{api}/proxies", timeout=30).json() == {}
        assert refused(port)


def test_curl_drives_the_api(spawn: Any) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (scripts/setup.sh installs it)")
    with running_server(EchoProtocol) as srv:
        api = start_api(spawn)

        def run(*args: str) -> tuple[int, Any]:
            out = subprocess.run([curl, "-sS", "--max-time", "20", "-w", "\n%{http_code}", *args],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
            body, _, code = out.rpartition("\n")
            return int(code), (json.loads(body) if body.strip() else None)

        code, proxy = run("--json", json.dumps({"name": "e", "listen": "127.0.0.1:0",
                                                "upstream": f"127.0.0.1:{srv.port}"}), f"{api}/proxies")
        assert code == 201
        port = int(proxy["listen"].rsplit(":", 1)[1])
        code, toxic = run("--json", '{"type": "latency", "attributes": {"latency": 250}}', f"{api}/proxies/e/toxics")
        assert code == 200 and toxic["name"] == "latency_downstream" and toxic["stream"] == "downstream"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            assert exchange(sock) >= 0.249
        code, got = run(f"{api}/proxies/e")
        assert code == 200 and [t["type"] for t in got["toxics"]] == ["latency"]
        # update an attribute in place (toxiproxy: POST /proxies/NAME/toxics/TOXIC)
        code, toxic = run("--json", '{"attributes": {"jitter": 5}}', f"{api}/proxies/e/toxics/latency_downstream")
        assert code == 200 and toxic["attributes"] == {"latency": 250, "jitter": 5}
        assert run("-X", "DELETE", f"{api}/proxies/e/toxics/latency_downstream")[0] == 204
        assert run("-X", "POST", f"{api}/reset")[0] == 204
        assert run("-X", "DELETE", f"{api}/proxies/e")[0] == 204


def test_the_command_line_relay_is_a_proxy_of_the_api_with_its_faults_as_toxics(spawn: Any) -> None:
    with running_server(EchoProtocol) as srv:
        api = start_api(spawn, "127.0.0.1:0", "--to", f"127.0.0.1:{srv.port}", "--name", "front",
                        "--fault", "bandwidth:upstream,rate=100")
        proxies = requests.get(f"{api}/proxies", timeout=30).json()
        assert list(proxies) == ["front"]
        assert proxies["front"]["toxics"] == [{"name": "bandwidth_upstream", "type": "bandwidth",
                                               "stream": "upstream", "toxicity": 1.0,
                                               "attributes": {"rate": 100}}]  # KB/s, as toxiproxy
        port = int(proxies["front"]["listen"].rsplit(":", 1)[1])
        r = requests.post(f"{api}/proxies/front/toxics", json={"type": "latency", "attributes": {"latency": 200}},
                          timeout=30)
        assert r.status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            assert exchange(sock) >= 0.199


def test_disabling_a_proxy_refuses_connections_and_enabling_it_serves_the_same_port(spawn: Any) -> None:
    with running_server(EchoProtocol) as srv:
        api = start_api(spawn)
        proxy = requests.post(f"{api}/proxies", json={"name": "p", "upstream": f"127.0.0.1:{srv.port}"},
                              timeout=30).json()
        port = int(proxy["listen"].rsplit(":", 1)[1])
        requests.post(f"{api}/proxies/p/toxics", json={"type": "latency", "attributes": {"latency": 100}},
                      timeout=30).raise_for_status()
        r = requests.post(f"{api}/proxies/p", json={"enabled": False}, timeout=30)
        assert r.status_code == 200 and r.json()["enabled"] is False
        assert refused(port)
        r = requests.post(f"{api}/proxies/p", json={"enabled": True}, timeout=30)
        assert r.json()["listen"] == proxy["listen"]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            assert exchange(sock) >= 0.099  # the toxic survived the restart
        requests.post(f"{api}/proxies/p", json={"enabled": False}, timeout=30).raise_for_status()
        assert requests.post(f"{api}/reset", timeout=30).status_code == 204  # enables, removes toxics
        got = requests.get(f"{api}/proxies/p", timeout=30).json()
        assert got["enabled"] is True and got["toxics"] == []
        assert not refused(port)


def test_errors_are_toxiproxys(spawn: Any) -> None:
    api = start_api(spawn)
    s = requests.Session()
    r = s.get(f"{api}/proxies/nope", timeout=30)
    assert (r.status_code, r.json()) == (404, {"error": "proxy not found", "status": 404})
    body = {"name": "x", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
    assert s.post(f"{api}/proxies", json=body, timeout=30).status_code == 201
    assert s.post(f"{api}/proxies", json=body, timeout=30).status_code == 409
    assert s.post(f"{api}/proxies", json={"name": "y"}, timeout=30).json()["error"] == \
        "missing required field: upstream"
    assert s.post(f"{api}/proxies/x/toxics", json={"type": "loss"}, timeout=30).status_code == 400
    assert s.post(f"{api}/proxies/x/toxics", json={"type": "latency", "stream": "both"},
                  timeout=30).json()["error"] == "stream was invalid, can be either upstream or downstream"
    assert s.post(f"{api}/proxies/x/toxics", json={"type": "latency", "toxicity": 2}, timeout=30).status_code == 400
    assert s.post(f"{api}/proxies/x/toxics", json={"type": "latency"}, timeout=30).status_code == 200
    assert s.post(f"{api}/proxies/x/toxics", json={"type": "latency"}, timeout=30).status_code == 409
    assert s.get(f"{api}/proxies/x/toxics/nope", timeout=30).status_code == 404
    r = s.post(f"{api}/populate", json=[{"name": "x", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
                                        {"name": "z", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}],
               timeout=30)
    assert r.status_code == 201 and [p["name"] for p in r.json()["proxies"]] == ["x", "z"]
    assert s.get(f"{api}/proxies/x/toxics", timeout=30).json() == []  # replaced


def test_a_web_page_cannot_drive_it(spawn: Any) -> None:
    """A cross-site page can POST text/plain or a form without a preflight; a browser adds Origin."""
    api = start_api(spawn)
    body = json.dumps({"name": "evil", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"})
    r = requests.post(f"{api}/proxies", data=body, headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 415
    r = requests.post(f"{api}/proxies", data=body, headers={"Content-Type": "application/json",
                                                            "Origin": "http://evil.example"}, timeout=30)
    assert r.status_code == 403
    r = requests.post(f"{api}/reset", headers={"Sec-Fetch-Site": "cross-site"}, timeout=30)
    assert r.status_code == 403
    r = requests.get(f"{api}/proxies", headers={"Host": "evil.example"}, timeout=30)
    assert r.status_code == 421  # DNS rebinding: the HTTP layer's Host check
    assert requests.get(f"{api}/proxies", timeout=30).json() == {}


def test_the_api_binds_loopback_by_default_and_warns_when_not(spawn: Any) -> None:
    proc = spawn("tap", "--api", "0")
    port = proc.wait_for(API_LINE).group(1).rsplit(":", 1)[1]
    ss = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=30)
    assert [line.split()[3] for line in ss.stdout.splitlines()] == [f"127.0.0.1:{port}"]
    ns = _netns()
    if ns is None:
        pytest.fail("needs root and `ip netns` (binds 0.0.0.0 only inside a namespace of its own)")
    try:
        other = spawn("tap", "--api", "0.0.0.0:0", prefix=["ip", "netns", "exec", ns])
        other.wait_for(r"api on http://0\.0\.0\.0:\d+")
        other.stop()
        assert other.popen.stderr is not None
        err = other.popen.stderr.read().decode()
        assert "warning: the toxiproxy API listens on 0.0.0.0:" in err and "not on loopback" in err
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_usage_errors_name_the_option() -> None:
    from tests.conftest import Proc

    for args, text in ((["tap", "run"], "--api PORT"), (["tap", "127.0.0.1:0"], "--to"),
                       (["tap", "--api", "0", "--to", "127.0.0.1:9"], "give LISTEN too"),
                       (["tap", "127.0.0.1:0", "--to", "127.0.0.1:9", "--udp", "--api", "0"], "--api")):
        p = Proc(args)
        _, err = p.popen.communicate(timeout=30)
        assert p.popen.returncode == 2, (args, err)
        assert text in err.decode(), (args, err)


def test_the_command_line_proxy_keeps_its_capture_across_a_disable(spawn: Any, tmp_path: Any) -> None:
    """Disabled then enabled through the API, the LISTEN proxy is rebuilt with its own options:
    the same --pcap file goes on, with the connection numbers going on too."""
    cap = tmp_path / "c.pcapng"
    with running_server(EchoProtocol) as srv:
        proc = spawn("tap", "127.0.0.1:0", "--to", f"127.0.0.1:{srv.port}", "--pcap", str(cap), "--api", "0")
        api = "http://" + proc.wait_for(API_LINE).group(1)
        port = int(requests.get(f"{api}/proxies/tap", timeout=30).json()["listen"].rsplit(":", 1)[1])
        for n in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                exchange(sock, b"round%d\n" % n)
            requests.post(f"{api}/proxies/tap", json={"enabled": False}, timeout=30).raise_for_status()
            assert refused(port)
            requests.post(f"{api}/proxies/tap", json={"enabled": True}, timeout=30).raise_for_status()
        proc.stop()
    out = subprocess.run(["tshark", "-r", str(cap), "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.stream",
                          "-e", "tcp.payload"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split("\t")) for line in out.stdout.splitlines()}
    assert {("0", b"round0\n".hex()), ("1", b"round1\n".hex())} <= rows


def test_proxies_and_toxics_are_capped() -> None:
    """Each proxy is a thread and a listener: a local script in a loop must not exhaust them."""
    from socklab.apps.http.api import HttpSettings, serve_http
    from socklab.tools.tap.api import ToxiproxyApi

    api = ToxiproxyApi(log=lambda line: None, max_proxies=1, max_toxics=1)
    server = serve_http(HttpSettings(host="127.0.0.1", port=0, log_format="none"), api.router())
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        one = {"listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}
        assert requests.post(f"{url}/proxies", json={"name": "a", **one}, timeout=30).status_code == 201
        r = requests.post(f"{url}/proxies", json={"name": "b", **one}, timeout=30)
        assert r.status_code == 503 and "too many proxies" in r.json()["error"]
        assert requests.post(f"{url}/proxies/a/toxics", json={"type": "latency"}, timeout=30).status_code == 200
        r = requests.post(f"{url}/proxies/a/toxics", json={"type": "slicer"}, timeout=30)
        assert r.status_code == 409 and "too many toxics" in r.json()["error"]
    finally:
        server.shutdown(timeout=2)
        api.close()


@pytest.mark.parametrize("attrs", ['{"latency": NaN}', '{"latency": 1e300}', '{"latency": Infinity}',
                                   '{"latency": true}', '{"latency": "100"}', '[1]'])
def test_a_bad_attribute_is_a_400_and_the_tap_goes_on(spawn: Any, attrs: str) -> None:
    api = start_api(spawn)
    requests.post(f"{api}/proxies", json={"name": "p", "upstream": "127.0.0.1:9"}, timeout=30).raise_for_status()
    r = requests.post(f"{api}/proxies/p/toxics", data='{"type": "latency", "attributes": ' + attrs + "}",
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "error" in r.json()
    assert requests.get(f"{api}/proxies/p/toxics", timeout=30).json() == []


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.sampled_from(["type", "stream", "name", "toxicity", "attributes", "latency", "jitter",
                                          "rate", "bytes", "enabled", "listen", "upstream", "x"]), inner, max_size=5),
                     max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(body=_json, path=st.sampled_from(["/proxies/p/toxics", "/proxies/p/toxics/latency_downstream",
                                         "/proxies/p", "/populate", "/reset", "/proxies/p/toxics/x/y"]),
       method=st.sampled_from(["POST", "PATCH", "GET", "DELETE", "PUT"]))
def test_any_json_gets_an_answer_never_a_crash(body: Any, path: str, method: str) -> None:
    """The API's input is the peer's: every body gets a toxiproxy answer, never a 500."""
    from socklab.apps.http.router import Request
    from socklab.core.sockets import Endpoint
    from socklab.tools.tap.api import ToxiproxyApi

    api = ToxiproxyApi(log=lambda line: None)
    api.add_proxy("p", Endpoint("127.0.0.1", 0), Endpoint("127.0.0.1", 9), enabled=False,
                  toxics=[Fault("latency", latency=5)])
    if isinstance(body, dict) and method in ("POST", "PATCH") and path in ("/proxies/p", "/populate", "/reset"):
        body = {k: v for k, v in body.items() if k not in ("enabled", "listen")}  # no listeners in a fuzz run
    data = json.dumps(body).encode()
    req = Request(method, path, path, "", [(b"content-type", b"application/json")], data,
                  segments=tuple(s for s in path.split("/") if s))
    try:
        resp = api.handle(req)
    finally:
        api.close()
    cannot_listen = resp.status == 500 and b"cannot start proxy" in bytes(resp.body)  # type: ignore[arg-type]
    assert resp.status in (200, 201, 204, 400, 404, 405, 409, 503) or cannot_listen, (resp.status, resp.body)


def test_a_proxy_off_loopback_is_warned_about() -> None:
    from socklab.tools.tap.api import _loopback

    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("::ffff:127.0.0.2")
    assert not _loopback("0.0.0.0") and not _loopback("::") and not _loopback("192.0.2.1")
    assert not _loopback("localhost")  # a name is not checked as loopback: warned about

"""A client reaches a server on whichever address of its name it listens, on every engine (a real name).

The regression: after the clients moved onto the engines, the reactor engines (and asyncio/uvloop
with a source address) connected to the *first* address a name resolved to only, so ``socklab
connect localhost PORT`` was refused when ``localhost`` resolved to ``::1`` first and the server
listened on ``127.0.0.1`` alone. The rules are socklab.core.dial's (tests/core/test_dial.py); here
each engine's connect goes through them with a real name, through the runtime client every app uses.

This machine's ``localhost`` resolves to 127.0.0.1 only, so each test runs in a network namespace
of its own with its own ``/etc/hosts`` (and ``gai.conf``): ``ip netns exec NS`` bind-mounts the
files under ``/etc/netns/NS/`` over ``/etc`` for the command it runs - the host's ``/etc/hosts`` is
never touched, and the files go with the namespace. In there:

- ``localhost`` is ``::1`` then ``127.0.0.1`` (Debian's and Fedora's hosts file); in the second
  namespace a ``gai.conf`` that prefers IPv4 (``precedence ::ffff:0:0/96 100``) makes it
  ``127.0.0.1`` then ``::1``;
- ``slow.test`` is ``2001:db8::2`` then ``127.0.0.1``, and ``dead.test`` ``2001:db8::2`` and ``::3``:
  a blackhole. A veth pair has both ends in the namespace; ``bh0`` holds 2001:db8::1/64 and a
  permanent neighbour entry sends 2001:db8::2 and ::3 to a MAC address nobody has, so ``bh1``
  drops every SYN: no answer, no ICMP error, the connect can only time out, and nothing leaves
  the namespace. (A route to lo is no blackhole: the kernel answers "network unreachable" after
  a second.)
- ``bh0`` also carries 10.9.9.1: with AI_ADDRCONFIG glibc returns a family only when the host has
  a non-loopback address of it, and the client must see both families.

Each engine runs in one ``python -c`` process inside the namespace (the listener too: it must be
inside), which prints one JSON line per case.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, make_tls_files

pytestmark = pytest.mark.netns

HOSTS = """\
::1 localhost
127.0.0.1 localhost
2001:db8::2 slow.test
127.0.0.1 slow.test
2001:db8::2 dead.test
2001:db8::3 dead.test
"""
PREFER_IPV4 = "precedence ::ffff:0:0/96 100\n"
BLACKHOLE = ("2001:db8::2", "2001:db8::3")
NOBODY = 9  # the discard port: nothing listens on it inside a fresh namespace

DRIVER = r"""
import json, sys, threading, time
from socklab.apps.echo.protocol import EchoProtocol
from socklab.core.errors import SocklabError
from socklab.core.protocol import Protocol
from socklab.core.settings import ClientSettings, ServerSettings
from socklab.core.sockets import Endpoint
from socklab.core.trace import Tracer
from socklab.runtime import Server
from socklab.runtime.client import BlockingClient


class Ping(Protocol):
    def __init__(self):
        self.got, self.back = b"", threading.Event()

    def connection_made(self, transport):
        transport.write(b"ping")

    def data_received(self, data):
        self.got += data
        if len(self.got) >= 4:
            self.back.set()

    def connection_lost(self, exc):
        self.back.set()


def run(engine, case):
    servers, port = [], case.get("port", 0)
    try:
        for host in case.get("listen", []):
            srv = Server(ServerSettings(host=host, port=port, engine="threads", tls_cert=case.get("cert"),
                                        tls_key=case.get("key")))
            srv.listen(EchoProtocol)
            srv.start()
            servers.append(srv)
            port = srv.port
        tracer = Tracer()
        events = tracer.record()
        settings = ClientSettings(connect_timeout=case["timeout"], tls=bool(case.get("ca")), cafile=case.get("ca"),
                                  source=case.get("source"))
        out = {"case": case["id"], "port": port}
        with BlockingClient(settings, engine=engine, tracer=tracer) as client:
            start = time.monotonic()
            try:
                handle = client.connect(Endpoint(case["name"], port), Ping)
            except SocklabError as exc:
                out.update(error=type(exc).__name__, message=str(exc))
            else:
                proto = handle.protocol
                proto.back.wait(10)
                out.update(peer=list(handle.transport.get_extra_info("peername"))[:2], echoed=proto.got.decode())
                client.call(handle.transport.close)
            out["elapsed"] = time.monotonic() - start
        out["trace"] = [[e.op, e.peer, e.detail] for e in events  # the calls (and notes), not the loop's view
                        if e.op == "note" or (e.op in ("socket", "bind", "connect", "close") and e.level == "syscall")]
        out["fds"] = [[e.op, e.fd, e.detail] for e in events
                      if e.op in ("socket", "connect", "close") and e.level == "syscall"]
        return out
    finally:
        for srv in servers:
            srv.shutdown(timeout=2)


spec = json.loads(sys.argv[1])
for case in spec["cases"]:
    print(json.dumps(run(spec["engine"], case)), flush=True)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def namespace(tag: str, files: dict[str, str]) -> Iterator[str]:
    """A network namespace with lo up and the blackhole (see the module's docstring), its files in /etc/netns/NS."""
    if os.geteuid() != 0:
        pytest.fail("needs root for `ip netns` (CI runs as root)")
    name = f"sldial{os.getpid() % 100000}{tag}"
    etc = Path("/etc/netns") / name
    made_parent = not etc.parent.exists()
    etc.mkdir(parents=True)
    try:
        for file, text in files.items():
            (etc / file).write_text(text)
        _ip("netns", "add", name)
        try:
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "link", "add", "bh0", "type", "veth", "peer", "name", "bh1")
            for link in ("bh0", "bh1"):
                _ip("-n", name, "link", "set", link, "up")
            _ip("-n", name, "addr", "add", "2001:db8::1/64", "dev", "bh0", "nodad")
            _ip("-n", name, "addr", "add", "10.9.9.1/24", "dev", "bh0")
            for silent in BLACKHOLE:
                _ip("-n", name, "neigh", "add", silent, "lladdr", "02:00:00:00:00:02", "dev", "bh0", "nud", "permanent")
            yield name
        finally:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        if made_parent:
            with contextlib.suppress(OSError):
                etc.parent.rmdir()


def resolved(ns: str, name: str) -> list[str]:
    code = ("import socket, sys; print(' '.join(i[4][0] for i in socket.getaddrinfo(sys.argv[1], 7, 0, "
            "socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG)))")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, name], capture_output=True,
                         text=True, timeout=30, check=True)
    return out.stdout.split()


@pytest.fixture(scope="module")
def v6_first() -> Iterator[str]:
    with namespace("a", {"hosts": HOSTS}) as ns:
        order = {name: resolved(ns, name) for name in ("localhost", "slow.test", "dead.test")}
        assert order == {"localhost": ["::1", "127.0.0.1"], "slow.test": ["2001:db8::2", "127.0.0.1"],
                         "dead.test": ["2001:db8::2", "2001:db8::3"]}, order
        yield ns


@pytest.fixture(scope="module")
def v4_first() -> Iterator[str]:
    with namespace("b", {"hosts": HOSTS, "gai.conf": PREFER_IPV4}) as ns:
        assert resolved(ns, "localhost") == ["127.0.0.1", "::1"]
        yield ns


@pytest.fixture(scope="module")
def localhost_cert(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a certificate for the name ``localhost`` only (no IP address): TLS must verify the name."""
    return make_tls_files(tmp_path_factory.mktemp("dial-tls"), "localhost")


@pytest.fixture(scope="module")
def drive() -> Callable[[str, str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """``drive(ns, engine, cases)``: run the cases on that engine inside ``ns``; results by case id (cached)."""
    cache: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def run(ns: str, engine: str, cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        key = (ns, engine)
        if key not in cache:
            spec = json.dumps({"engine": engine, "cases": cases})
            out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", DRIVER, spec], cwd=REPO,
                                 capture_output=True, text=True, timeout=50, check=False)
            assert out.returncode == 0, out.stderr[-3000:]
            cache[key] = {r["case"]: r for r in map(json.loads, out.stdout.splitlines())}
        return cache[key]

    return run


def v6_cases(cert: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"id": "plain", "name": "localhost", "listen": ["127.0.0.1"], "timeout": 10},
        {"id": "tls", "name": "localhost", "listen": ["127.0.0.1"], "timeout": 10, "ca": cert["ca"],
         "cert": cert["cert"], "key": cert["key"]},
        {"id": "source", "name": "localhost", "listen": ["127.0.0.1"], "timeout": 10, "source": "localhost"},
        {"id": "refused", "name": "localhost", "port": NOBODY, "timeout": 10},
        {"id": "slow", "name": "slow.test", "listen": ["127.0.0.1"], "timeout": 8},
        {"id": "dead", "name": "dead.test", "port": NOBODY, "timeout": 1},
    ]


@pytest.fixture
def v6(v6_first: str, drive: Any, localhost_cert: dict[str, str], engine: str) -> dict[str, dict[str, Any]]:
    return drive(v6_first, engine, v6_cases(localhost_cert))  # type: ignore[no-any-return]


def connects(result: dict[str, Any]) -> list[str]:
    return [f"{peer} {detail}" for op, peer, detail in result["trace"] if op == "connect"]


def test_localhost_first_address_refused_falls_back_to_the_next(v6: dict[str, dict[str, Any]]) -> None:
    """``localhost`` is ::1 first; the server listens on 127.0.0.1 only: the client gets there."""
    r = v6["plain"]
    assert r.get("error") is None, r
    assert r["peer"] == ["127.0.0.1", r["port"]] and r["echoed"] == "ping"
    port = r["port"]
    trace = connects(r)
    assert trace[0].startswith(f"[::1]:{port} EINPROGRESS"), trace  # each attempt is visible
    assert trace[1] == f"[::1]:{port} failed: Connection refused", trace
    assert trace[-1] == f"127.0.0.1:{port} three-way handshake done (SYN, SYN-ACK, ACK)", trace


def open_twice(result: dict[str, Any]) -> list[str]:
    """What the trace would teach falsely: an fd opened again without a ``close`` line, or an attempt's socket
    (not the winner's) never closed."""
    wrong, open_fds, winner = [], set(), None
    for op, fd, detail in result["fds"]:
        if op == "socket":
            if fd in open_fds:
                wrong.append(f"fd {fd} opened again without a close")
            open_fds.add(fd)
        elif op == "close":
            open_fds.discard(fd)
        elif op == "connect" and str(detail).startswith("three-way handshake done"):
            winner = fd
    wrong += [f"fd {fd} never closed" for fd in sorted(open_fds - {winner})]
    return wrong


@pytest.mark.parametrize("case", ["plain", "tls", "source", "refused", "slow", "dead"])
def test_the_trace_closes_every_socket_the_connect_opened(v6: dict[str, dict[str, Any]], case: str) -> None:
    """A refused ::1 attempt's fd is free again when 127.0.0.1 gets a socket (the same number, usually): the
    trace shows its close in between, as it does for the race's loser and the timed-out attempts."""
    r = v6[case]
    assert open_twice(r) == [], r["fds"]


def test_the_refused_attempts_close_comes_before_the_next_socket(v6: dict[str, dict[str, Any]]) -> None:
    r = v6["plain"]
    ops = [f"{op} {detail}" for op, _, detail in r["fds"]]
    refused = ops.index("connect failed: Connection refused")
    assert ops[refused + 1:refused + 3] == ["close connect failed: ECONNREFUSED - this attempt's socket is closed",
                                            "socket AF_INET, SOCK_STREAM"], ops
    assert r["fds"][refused][1] == r["fds"][refused + 1][1], r["fds"]  # the same fd: its own close


def test_tls_verifies_the_name_not_the_address_that_answered(v6: dict[str, dict[str, Any]]) -> None:
    r = v6["tls"]  # the certificate names "localhost" and no address: verifying 127.0.0.1 would fail
    assert r.get("error") is None, r
    assert r["peer"] == ["127.0.0.1", r["port"]] and r["echoed"] == "ping"


def test_the_source_is_bound_in_each_attempts_family(v6: dict[str, dict[str, Any]]) -> None:
    r = v6["source"]  # --source localhost: ::1 for the IPv6 attempt, 127.0.0.1 for the IPv4 one
    assert r.get("error") is None, r
    binds = [detail for op, _, detail in r["trace"] if op == "bind"]
    assert len(binds) == 2 and binds[0].startswith("source address [::1]:"), binds
    assert binds[1].startswith("source address 127.0.0.1:"), binds


def test_refused_on_every_address_is_one_line_naming_them(v6: dict[str, dict[str, Any]]) -> None:
    r = v6["refused"]
    assert r["error"] == "ConnectionRefused", r
    assert r["message"] == (f"connection refused while connecting to localhost:{NOBODY} "
                            f"(tried [::1]:{NOBODY} and 127.0.0.1:{NOBODY})")


def test_a_silent_first_address_leaves_time_for_the_next(v6: dict[str, dict[str, Any]]) -> None:
    """2001:db8::2 drops the SYN: 127.0.0.1 is tried 250 ms later, well within the 8 s budget."""
    r = v6["slow"]
    assert r.get("error") is None, r
    assert r["peer"] == ["127.0.0.1", r["port"]] and r["echoed"] == "ping"
    assert r["elapsed"] < 3.0, r["elapsed"]  # not the whole timeout spent on the first address
    assert any("connected first" in str(detail) for op, _, detail in r["trace"] if op == "close"), r["trace"]


def test_the_connect_timeout_is_the_budget_of_the_whole_connect(v6: dict[str, dict[str, Any]]) -> None:
    r = v6["dead"]  # both addresses drop the SYN; 1 s for the connect, not 1 s per address
    assert r["error"] == "ConnectTimeout", r
    assert 0.9 < r["elapsed"] < 1.8, r["elapsed"]
    assert r["message"] == (f"timed out while connecting to dead.test:{NOBODY} "
                            f"(tried [2001:db8::2]:{NOBODY} and [2001:db8::3]:{NOBODY})")


def test_localhost_ipv4_first_with_a_server_on_ipv6_only(v4_first: str, drive: Any, engine: str) -> None:
    """The reverse: gai.conf prefers IPv4, the server listens on ::1 only."""
    r = drive(v4_first, engine, [{"id": "v4first", "name": "localhost", "listen": ["::1"], "timeout": 10}])["v4first"]
    assert r.get("error") is None, r
    assert r["peer"] == ["::1", r["port"]] and r["echoed"] == "ping"
    trace = connects(r)
    assert trace[1] == f"127.0.0.1:{r['port']} failed: Connection refused", trace


def test_socklab_connect_localhost(v6_first: str, spawn: Callable[..., Any]) -> None:
    """The user's own command: ``socklab connect localhost PORT`` with the server on 127.0.0.1 only."""
    inside = ["ip", "netns", "exec", v6_first]
    server = spawn("echo", "serve", "--host", "127.0.0.1", "--port", "0", prefix=inside)
    port = server.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1)
    out = subprocess.run([*inside, sys.executable, "-m", "socklab", "connect", "localhost", port],
                         input=b"hello\n", capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello\n"


def test_the_trace_docs_several_addresses_sample(v6_first: str, spawn: Callable[..., Any]) -> None:
    """docs/trace.md's 'A name has several addresses' sample is what its command prints where localhost is
    ::1 then 127.0.0.1 (time, fd and port numbers aside, and the racy states test_trace_doc leaves out)."""
    from tests.core.test_trace_doc import DOC, trace_lines

    sample = re.search(r"A name has several addresses.*?```\n(.*?)```", DOC.read_text(), re.S)
    assert sample is not None
    want = trace_lines(re.sub(r"localhost:\d+", "localhost:P", textwrap.dedent(sample.group(1))))
    assert len(want) >= 8, want
    inside = ["ip", "netns", "exec", v6_first]
    server = spawn("echo", "serve", "--port", "0", prefix=inside)
    port = server.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1)
    out = subprocess.run([*inside, sys.executable, "-m", "socklab", "echo", "client", f"localhost:{port}", "--trace"],
                         input=b"hello\n", capture_output=True, timeout=60, check=False,
                         env=dict(os.environ, NO_COLOR="1", PYTHONUNBUFFERED="1"))
    assert out.returncode == 0, out.stderr
    got = trace_lines(re.sub(r"localhost:\d+", "localhost:P", out.stderr.decode()))
    assert got[:len(want)] == want

"""Tools stand on the contract too: a raw socket only where the raw call is the tool's job.

Issue 18: clients connect through :mod:`socklab.runtime.client`, OS errors are translated once, at
the engine boundary, and "a handful [are] left in tools that own the raw call". This test reads
every module under ``src/socklab/tools`` as a syntax tree (calls, not text: a docstring or a help
example that shows ``socket.create_connection`` does not count) and holds them to it:

- a call that makes a socket by hand (``socket.socket``, ``socket.create_connection``,
  ``socket.create_server``, ``socket.socketpair``, ``socket.fromfd``, or any helper of
  :mod:`socklab.core.sockets` that returns a socket - ``open_udp_socket``, ``open_tcp_listener``,
  ``connect_tcp``, ``_new_socket``...: read from that module, so a new helper is caught too) or
  translates an OS error (``translate_oserror``) fails the test unless its module is in ALLOWED -
  with at most that many such calls, and the reason;
- each ALLOWED module says why in its own docstring (the words "raw socket"), except the entries
  of NOT_SAID_YET, which must then really not say it (so that list shrinks as docstrings are written);
- an entry that allows more than its module has fails too: the list shrinks as code does;
- nowhere in ``apps`` or ``tools`` does code take the socket or its fd from a transport
  (``get_extra_info("socket")`` / ``("fd")``): what apps needed is a capability of the transport
  (:mod:`socklab.core.transport`: ``sendfile``, ``set_cork``, ``set_recv_lowat``, ``splice_to``,
  ``detach``, ``set_buffer_sizes``, ``tcp_state``).

The contenders of ``socklab bench`` (``bench/reference/``: plain-socket reference servers;
``bench/servers/``: aiohttp, websockets, picows and socklab's own WebSocket server as the others
see it) are standalone programs run as subprocesses - the bar socklab is measured against, not
socklab code on the contract - and are not read.
"""

from __future__ import annotations

import ast
from pathlib import Path

import socklab

SRC = Path(socklab.__file__).parent
TOOLS = SRC / "tools"
SOCKETS_MODULE = SRC / "core" / "sockets.py"
CONTENDERS = ("bench/reference/", "bench/servers/")


def socket_helpers() -> list[str]:
    """The functions of core/sockets.py annotated to return a socket (``-> socket.socket``)."""
    tree = ast.parse(SOCKETS_MODULE.read_text(encoding="utf-8"))
    return sorted(node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                  and node.returns is not None and "socket.socket" in ast.unparse(node.returns))


SOCKET_MODULE_CALLS = {"socket", "create_connection", "create_server", "socketpair", "fromfd"}
NAMED_CALLS = {*socket_helpers(), "translate_oserror"}

GRADER = "the grader's probe is the raw call itself (a half-written request, a reset, a deadline per recv)"
GENERATOR = "a load generator measures the server, so it owns its sockets (the same client for every contender)"

# path under tools/ -> (most calls allowed, why)
ALLOWED: dict[str, tuple[int, str]] = {
    "ss.py": (1, "reads the kernel's socket tables over netlink (sock_diag): the netlink socket is its job"),
    "check/net.py": (1, GRADER),
    "check/echo.py": (1, GRADER + ": UDP peers that resend after silence and vanish before the answer"),
    "check/launch.py": (3, "asks the kernel whether the learner's program bound its port (a bare connect, "
                           "a bind that finds the port taken) before grading starts"),
    "learn/scenes.py": (3, "each scene shows one system call and what the kernel answers, so it makes it"),
    "bench/warm.py": (2, "the warm-up every contender gets before it is measured, socklab's or not"),
    "bench/chat.py": (1, GENERATOR + ": N line clients on one epoll loop"),
    "bench/http.py": (1, "a free port for nginx, which cannot report a port-0 bind"),
    "bench/tap.py": (3, "the sink, echo server and client around the tap process, the same direct and tapped"),
    "bench/transfer.py": (1, "a free port for the nc contender, which cannot report a port-0 bind"),
}

# ALLOWED modules whose docstring does not say why yet (issue 18: add the sentence, then drop the entry)
NOT_SAID_YET: set[str] = set()  # none left: nc.py's TLS session moved onto runtime.client

# get_extra_info("socket"/"fd") in apps or tools: path under socklab/ -> (most calls allowed, why)
EXTRA_INFO_ALLOWED: dict[str, tuple[int, str]] = {}  # none: netcat's --explain asks transport.tcp_state()


def _tool_modules() -> list[Path]:
    return sorted(p for p in TOOLS.rglob("*.py") if not p.relative_to(TOOLS).as_posix().startswith(CONTENDERS))


def raw_calls(tree: ast.AST) -> list[str]:
    """``lineno: name`` of each socket-making or error-translating call in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f, name = node.func, None
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "socket" \
                and f.attr in SOCKET_MODULE_CALLS:
            name = f"socket.{f.attr}"
        elif isinstance(f, ast.Name) and f.id in NAMED_CALLS:
            name = f.id
        elif isinstance(f, ast.Attribute) and f.attr in NAMED_CALLS:
            name = f.attr
        if name is not None:
            found.append(f"{node.lineno}: {name}")
    return sorted(found, key=lambda s: int(s.split(":")[0]))


def extra_info_escapes(tree: ast.AST) -> list[str]:
    """``lineno`` of each ``.get_extra_info("socket")`` / ``("fd")`` call in ``tree``."""
    return [f"{node.lineno}: get_extra_info({node.args[0].value!r})" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get_extra_info" and node.args and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in ("socket", "fd")]


def tools_raw() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in _tool_modules():
        calls = raw_calls(ast.parse(path.read_text(encoding="utf-8")))
        if calls:
            found[path.relative_to(TOOLS).as_posix()] = calls
    return found


def test_no_raw_socket_or_error_translation_in_tools_but_the_allowed() -> None:
    over = {f: calls for f, calls in tools_raw().items() if len(calls) > ALLOWED.get(f, (0, ""))[0]}
    assert not over, ("tools connect through socklab.runtime.client and leave OS errors to the engines, "
                      "unless the raw call is their job (then raise the module's entry in ALLOWED, with the "
                      f"reason, and say it in its docstring): {over}")


def test_the_allow_list_is_tight() -> None:
    found = tools_raw()
    loose = {f: (n, len(found.get(f, []))) for f, (n, _) in ALLOWED.items() if len(found.get(f, [])) < n}
    assert not loose, f"lower these entries of ALLOWED to what the modules have now (allowed, found): {loose}"


def test_each_allowed_module_says_why_in_its_docstring() -> None:
    silent, said = [], []
    for name in ALLOWED:
        doc = (ast.get_docstring(ast.parse((TOOLS / name).read_text(encoding="utf-8"))) or "").lower()
        says = "raw socket" in doc
        if not says and name not in NOT_SAID_YET:
            silent.append(name)
        if says and name in NOT_SAID_YET:
            said.append(name)
    assert not silent, f"these modules keep raw sockets without saying why in their docstring: {silent}"
    assert not said, f"these modules say why now: drop them from NOT_SAID_YET: {said}"
    assert NOT_SAID_YET.issubset(ALLOWED)


def test_no_socket_or_fd_taken_from_a_transport_in_apps_or_tools() -> None:
    found: dict[str, list[str]] = {}
    for root in (SRC / "apps", TOOLS):
        for path in sorted(root.rglob("*.py")):
            hits = extra_info_escapes(ast.parse(path.read_text(encoding="utf-8")))
            if hits:
                found[path.relative_to(SRC).as_posix()] = hits
    over = {f: hits for f, hits in found.items() if len(hits) > EXTRA_INFO_ALLOWED.get(f, (0, ""))[0]}
    assert not over, f"use a transport capability (socklab.core.transport) instead of the raw socket: {over}"
    loose = {f: n for f, (n, _) in EXTRA_INFO_ALLOWED.items() if len(found.get(f, [])) < n}
    assert not loose, f"lower (or drop) these entries of EXTRA_INFO_ALLOWED: {loose}"


def test_the_scan_finds_what_it_must_and_only_that() -> None:
    code = '''"""socket.create_connection(("h", 1)) in a docstring is prose."""
import socket
s = socket.socket(socket.AF_INET)
c = socket.create_connection(("h", 1))
raise translate_oserror(exc, "x")
sock = core.sockets.open_udp_socket("", 0)
fd = transport.get_extra_info("fd")
name = transport.get_extra_info("peername")
help = "socklab trace run -- python3 -c 'import socket; socket.create_connection((1, 2))'"
'''
    tree = ast.parse(code)
    assert [c.split(": ")[1] for c in raw_calls(tree)] == ["socket.socket", "socket.create_connection",
                                                           "translate_oserror", "open_udp_socket"]
    helpers = socket_helpers()
    assert {"open_udp_socket", "open_tcp_listener", "connect_tcp", "_new_socket"} <= set(helpers), helpers
    for name in helpers:  # each helper, called by name or through its module
        calls = raw_calls(ast.parse(f"a = {name}(x, y)\nb = sockets.{name}(x, y)\n"))
        assert calls == [f"1: {name}", f"2: {name}"], (name, calls)
    assert not raw_calls(ast.parse("sock.connect_tcp_later()\nreopen_udp_socket_count = 1\n"))
    assert extra_info_escapes(tree) == ["7: get_extra_info('fd')"]

"""Apps stand on the contract: no socket made by hand and no OS error translated in ``socklab.apps``.

Issue 18's goal: clients connect through :mod:`socklab.runtime.client` (servers through
:mod:`socklab.runtime`), and OS errors are translated once, at the engine boundary. A grep keeps
it so: every line in ``src/socklab/apps`` that makes a socket - ``socket.socket(``,
``socket.create_connection``, ``socket.create_server(``, ``socket.socketpair(``, ``socket.fromfd(``,
or a call of any helper of :mod:`socklab.core.sockets` that returns a socket (``open_udp_socket``,
``open_tcp_listener``, ``connect_tcp``...: read from that module, so a new helper is caught too) -
or calls ``translate_oserror`` is an error unless its file is in ALLOWED below - with at most that
many such lines, and the reason. Moving a client onto the runtime lowers (or removes) its entry;
the test fails if a count grows or a new file appears, and also if an entry allows more than its
file has (so the list shrinks as code does).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import socklab

APPS = Path(socklab.__file__).parent / "apps"
SOCKETS_MODULE = Path(socklab.__file__).parent / "core" / "sockets.py"


def socket_helpers() -> list[str]:
    """The functions of core/sockets.py annotated to return a socket (``-> socket.socket``)."""
    tree = ast.parse(SOCKETS_MODULE.read_text(encoding="utf-8"))
    return sorted(node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                  and node.returns is not None and "socket.socket" in ast.unparse(node.returns))


RAW = re.compile(r"socket\.(?:socket|create_server|socketpair|fromfd)\(|socket\.create_connection"
                 rf"|\b(?:{'|'.join(map(re.escape, socket_helpers()))})\(|\btranslate_oserror\b")

# path under apps/ -> (most lines allowed, why)
LEFT = "a client not yet moved onto socklab.runtime.client (issue 18 part 1, left for the next step)"
ALLOWED: dict[str, tuple[int, str]] = {
    "peer/discovery.py": (3, "multicast discovery: joins a group with IP_ADD_MEMBERSHIP on its own UDP socket, "
                             "which no engine call offers (neither client nor server)"),
    "rpc/bench.py": (1, "the rpc benchmark's load generator measures the server, so it owns a raw socket"),
}


def raw_lines() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(APPS.rglob("*.py")):
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if RAW.search(code):
                found.setdefault(path.relative_to(APPS).as_posix(), []).append(f"{no}: {line.strip()}")
    return found


def test_no_raw_socket_or_error_translation_in_apps() -> None:
    over = {f: lines for f, lines in raw_lines().items() if len(lines) > ALLOWED.get(f, (0, ""))[0]}
    assert not over, ("apps must connect through socklab.runtime.client and leave OS errors to the "
                      f"engines; these lines do not (or raise the file's entry in ALLOWED, with a reason): {over}")


def test_the_allow_list_is_tight() -> None:
    found = raw_lines()
    loose = {f: (n, len(found.get(f, []))) for f, (n, _) in ALLOWED.items() if len(found.get(f, [])) < n}
    assert not loose, f"lower these entries of ALLOWED to what the files have now (allowed, found): {loose}"


def test_the_grep_finds_what_it_must() -> None:
    helpers = socket_helpers()
    assert {"open_udp_socket", "open_tcp_listener", "connect_tcp", "_new_socket"} <= set(helpers), helpers
    for line in ("s = socket.socket(socket.AF_INET)", "socket.create_connection((h, p))",
                 "a, b = socket.socketpair()", "s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)",
                 "srv = socket.create_server(('', 0))", "raise translate_oserror(exc, 'x')",
                 "sock = connect_tcp(ep)", "sock = open_udp_socket(host, 0, tracer=t)",
                 "listener = open_tcp_listener(host, 0, backlog=1)",
                 *(f"x = {name}(a, b)" for name in helpers)):
        assert RAW.search(line), line
    for line in ("from socklab.runtime.client import connect", "handle = bind_datagram(local, factory)",
                 "sock.connect_tcp_later", "reopen_udp_socket_count = 1"):
        assert not RAW.search(line), line

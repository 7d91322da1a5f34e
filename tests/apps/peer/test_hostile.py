"""A peer is never trusted: hop counts, rumoured members, text for terminals, the control socket.

Each test plays a hostile neighbour with a raw socket speaking the gossip protocol (or a hostile
local user for the control socket) against real nodes on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from socklab.apps.peer.control import control_request
from socklab.apps.peer.node import PeerNode
from socklab.core.errors import UsageError
from socklab.protocols import gossip as g

from .helpers import mesh, neighbour_names, on_engine, status, texts, until


def _addr(listen: str) -> tuple[str, int]:
    host, port = listen.rsplit(":", 1)
    return host.strip("[]"), int(port)


@contextlib.contextmanager
def stranger(node: PeerNode, name: str = "eve") -> Iterator[socket.socket]:
    """A raw socket linked to ``node`` as a neighbour called ``name`` (HELLO sent, the node's HELLO read)."""
    sock = socket.create_connection(_addr(node.listen), timeout=10)
    try:
        sock.sendall(g.encode_frame(g.Hello(uuid.uuid4().hex[:16], name, "127.0.0.1:9")))
        until(lambda: name in neighbour_names(node), what=f"{name} linked")
        yield sock
    finally:
        sock.close()


def _flood(hops: int, text: str, sender: str = "eve") -> bytes:
    """A MSG frame as a hostile peer writes it (encode_frame would refuse to write the bad ones)."""
    return json.dumps({"t": "msg", "mid": uuid.uuid4().hex, "origin": uuid.uuid4().hex[:16], "from": sender,
                       "hops": hops, "path": [sender], "text": text}).encode() + b"\n"


def test_a_neighbours_hop_count_is_clamped_to_this_nodes_hop_limit(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        a = m.add("ann", hop_limit=3)
        b = m.add("bob", join=(a.listen,))
        until(lambda: neighbour_names(a) == {"bob"}, what="ann - bob")
        with stranger(a) as eve:
            eve.sendall(_flood(255, "buy reach"))
            until(lambda: texts(b) == ["buy reach"], what="bob receiving eve's message through ann")
        [entry] = status(b)["recent"]
        assert entry["hops_left"] <= 2  # ann grants at most 3 hops, so bob gets it with at most 2 left


def test_a_strangers_members_list_makes_few_dials_and_each_is_verified(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = listener.getsockname()[1]
    impostor = uuid.uuid4().hex[:16]
    with mesh(tmp_path) as m:
        a = m.add("ann", max_neighbours=3)
        with stranger(a) as eve:
            # 200 members at one address we hold, the first claiming to be `impostor`
            members = [g.Member(impostor, "bait", f"127.0.0.1:{port}")]
            members += [g.Member(uuid.uuid4().hex[:16], f"n{i}", f"127.0.0.{i + 2}:{port}") for i in range(199)]
            eve.sendall(g.encode_frame(g.Members(tuple(members))))
            until(lambda: len(status(a)["known"]) >= 200, what="ann hearing of the 200 members")
            targets = on_engine(a, lambda: list(a.targets))
            assert len(targets) <= 2  # room for 3 links, eve holds one: never 200 dials at once
            # whoever reaches our listener is answered by a node with another id: ann must hang up
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                conn.sendall(g.encode_frame(g.Hello(uuid.uuid4().hex[:16], "other", f"127.0.0.1:{port}")))
                got = b""
                with contextlib.suppress(ConnectionResetError):
                    while chunk := conn.recv(65536):
                        got += chunk
                assert b'"t":"members"' not in got  # the link never stood: no MEMBERS, it was closed
        assert "other" not in neighbour_names(a)
        assert "dropping" in a.out.getvalue()  # type: ignore[attr-defined]
    listener.close()


def test_peer_text_never_reaches_the_console_raw(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        a = m.add("ann")
        with stranger(a) as eve:
            # one write: ann drops the link at the first bad frame, so a second write could meet its reset
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                eve.sendall(_flood(4, "\x1b]0;pwned\x07\x1b[2J") + _flood(4, "fine", sender="ev\ril"))
            eve.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                while eve.recv(65536):  # ann drops a link that sends such frames
                    pass
        until(lambda: "eve" not in neighbour_names(a), what="ann dropping eve")
        out = a.out.getvalue()  # type: ignore[attr-defined]
        assert "\x1b" not in out and "\r" not in out and "\x07" not in out
        assert texts(a) == []
        assert "control, bidi or zero-width" in out


def test_a_link_dying_in_the_middle_of_a_flood_does_not_stop_it(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        a = m.add("ann")
        others = [m.add(n, join=(a.listen,), max_neighbours=1) for n in ("bob", "cat", "dan")]
        until(lambda: neighbour_names(a) == {"bob", "cat", "dan"}, what="ann linked to three")

        def break_first_link() -> None:
            first = next(iter(a.links.values()))

            def dying_send(frame: g.Frame) -> None:  # the write fails and the link is lost at once
                a.link_lost(first, BrokenPipeError("broken pipe"))

            first.send = dying_send  # type: ignore[method-assign]

        on_engine(a, break_first_link)
        on_engine(a, lambda: a.say("to everyone left"))
        until(lambda: sum(texts(o) == ["to everyone left"] for o in others) >= 2,
              what="the two live links receiving the flood")


def test_the_control_directory_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from socklab.apps.peer.settings import control_dir, prepare_control_dir

    runtime = tmp_path / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    d = control_dir()
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    prepare_control_dir(str(d / "peer-ann.sock"))  # ours but too open: tightened
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chown(d, 4242, 4242)  # another local user's directory: refused
    with pytest.raises(UsageError, match="belongs to uid 4242"):
        prepare_control_dir(str(d / "peer-ann.sock"))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # writable by all, not sticky: anyone could swap the socket
    with pytest.raises(UsageError, match="writable by others"):
        prepare_control_dir(str(shared / "ctl.sock"))


def test_a_control_socket_owned_by_another_user_gets_no_command(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:  # another user's socket at that path
        srv.bind(str(path))
        srv.listen(1)
        os.chown(path, 4242, 4242)
        with pytest.raises(UsageError, match="belongs to uid 4242"):
            control_request(str(path), {"cmd": "share", "path": "/etc/passwd"}, timeout=5)
        srv.setblocking(False)
        with pytest.raises(BlockingIOError):
            srv.accept()  # nobody connected: the command never left

"""Peer nodes in one process on 127.0.0.1: links, flooding, hop limit, catch-up, redial, files, control."""

from __future__ import annotations

import collections
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.peer.control import control_request
from socklab.core.errors import RemoteProtocolError, UsageError

from .helpers import mesh, neighbour_names, on_engine, status, texts, until

ENGINES = ["epoll", "select", "poll", "threads", "asyncio"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_chain_carries_a_message_hop_by_hop_with_its_path(tmp_path: Path, engine: str) -> None:
    with mesh(tmp_path, engine) as m:
        a = m.add("ann", max_neighbours=1)
        b = m.add("bob", join=(a.listen,), max_neighbours=1)
        c = m.add("cat", join=(b.listen,), max_neighbours=1)
        until(lambda: neighbour_names(b) == {"ann", "cat"}, what="the chain ann - bob - cat")
        mid = on_engine(a, lambda: a.say("hello down the chain"))
        until(lambda: texts(c) == ["hello down the chain"], what="cat receiving the message")
        [entry] = status(c)["recent"]
        assert entry["mid"] == mid and entry["path"] == ["ann", "bob", "cat"]
        assert entry["hops_left"] == a.settings.hop_limit - 1
        assert neighbour_names(a) == {"bob"}  # max_neighbours=1: ann did not dial cat
        assert texts(b) == ["hello down the chain"]
        assert "<ann> hello down the chain   (via ann > bob > cat)" in c.out.getvalue()  # type: ignore[attr-defined]


def test_a_triangle_delivers_once_and_counts_the_duplicates(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        a = m.add("ann")
        b = m.add("bob", join=(a.listen,))
        c = m.add("cat", join=(a.listen,))  # cat learns of bob through ann's MEMBERS and dials it
        until(lambda: all(len(status(n)["neighbours"]) == 2 for n in (a, b, c)), what="a full triangle")
        for n in (a, b, c):
            on_engine(n, lambda n=n: n.say(f"from {n.name}"))
        want = sorted(f"from {x}" for x in ("ann", "bob", "cat"))
        until(lambda: all(sorted(texts(n)) == want for n in (a, b, c)), what="three messages everywhere")
        for n in (a, b, c):
            mids = collections.Counter(r["mid"] for r in status(n)["recent"])
            assert set(mids.values()) == {1}
        # each message comes back to both other nodes once more (a late duplicate link's catch-up
        # may add more): all of them dropped
        until(lambda: sum(status(n)["messages"]["duplicates"] for n in (a, b, c)) >= 6,
              what="each message arriving twice more (once at each other node), dropped")


def test_the_hop_limit_stops_forwarding(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        a = m.add("ann", max_neighbours=1, hop_limit=1)
        b = m.add("bob", join=(a.listen,), max_neighbours=1)
        c = m.add("cat", join=(b.listen,), max_neighbours=1)
        until(lambda: neighbour_names(b) == {"ann", "cat"}, what="the chain")
        on_engine(a, lambda: a.say("one hop only"))
        until(lambda: texts(b) == ["one hop only"], what="bob receiving it")
        on_engine(b, lambda: b.say("from bob"))  # a later message from bob does reach cat...
        until(lambda: texts(c) == ["from bob"], what="cat receiving bob's message")
        assert status(b)["messages"]["forwarded"] == 0  # ...but ann's was never forwarded


def test_a_late_joiner_catches_up_exactly_once(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        a = m.add("ann")
        b = m.add("bob", join=(a.listen,))
        until(lambda: neighbour_names(a) == {"bob"}, what="ann - bob")
        for i in range(3):
            on_engine(a, lambda i=i: a.say(f"early {i}"))
        until(lambda: len(texts(b)) == 3, what="bob having the early messages")
        c = m.add("cat", join=(b.listen,), catchup=2)
        until(lambda: len(status(c)["neighbours"]) == 2, what="cat linked to both")
        # cat asks each neighbour for its last 2: the same two arrive twice, are delivered once
        until(lambda: sorted(texts(c)) == ["early 1", "early 2"], what="cat caught up")
        until(lambda: status(c)["messages"]["duplicates"] >= 2, what="the second copies dropped")
        assert collections.Counter(texts(c)) == collections.Counter(["early 1", "early 2"])
        paths = {r["text"]: r["path"] for r in status(c)["recent"]}
        assert all(p[0] == "ann" and p[-1] == "cat" for p in paths.values())


def test_a_lost_neighbour_is_redialled_until_it_comes_back(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        a = m.add("ann")
        port = int(a.listen.rsplit(":", 1)[1])
        b = m.add("bob", join=(a.listen,))
        until(lambda: neighbour_names(b) == {"ann"}, what="bob - ann")
        m.stop(a)
        until(lambda: neighbour_names(b) == set() and status(b)["redialling"] == [a.listen],
              what="bob noticing and redialling")
        a2 = m.add("ann", port=port)
        until(lambda: neighbour_names(b) == {"ann"}, what="bob relinking to the new ann")
        on_engine(a2, lambda: a2.say("back"))
        until(lambda: texts(b) == ["back"], what="a message over the new link")


def test_two_nodes_dialling_each_other_keep_one_link(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        a = m.add("ann")
        b = m.add("bob", join=(a.listen,))
        on_engine(a, lambda: a.consider(status_member(b), persistent=True))
        until(lambda: neighbour_names(a) == {"bob"} and neighbour_names(b) == {"ann"}, what="one link")
        up = status(a)["neighbours"][0]["id"]
        on_engine(a, lambda: a.say("still one"))
        until(lambda: texts(b) == ["still one"], what="delivery")
        assert status(b)["messages"]["duplicates"] == 0
        assert status(a)["neighbours"][0]["id"] == up and len(status(a)["neighbours"]) == 1


def status_member(node):  # type: ignore[no-untyped-def]
    from socklab.protocols.gossip import Member

    return Member(node.id, node.name, node.listen)


def test_a_shared_file_is_fetched_verified_from_its_holder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(700_000)
    (src / "blob.bin").write_bytes(data)
    dl = tmp_path / "dl"
    dl.mkdir()
    with mesh(tmp_path) as m:
        a = m.add("ann", max_neighbours=1)
        b = m.add("bob", join=(a.listen,), max_neighbours=1)
        c = m.add("cat", join=(b.listen,), max_neighbours=1)
        until(lambda: neighbour_names(b) == {"ann", "cat"}, what="the chain")
        offer = on_engine(a, lambda: a.share(str(src / "blob.bin")))
        until(lambda: [o["file"] for o in status(c)["offers"]] == ["blob.bin"], what="the offer reaching cat")
        answer = control_request(c.control_path, {"cmd": "fetch", "file": "blob.bin", "dest": str(dl)})
        assert answer["ok"], answer
        assert (dl / "blob.bin").read_bytes() == data and answer["sha256"] == offer.sha256
        assert not (dl / "blob.bin.part").exists()
        assert "sending blob.bin to 127.0.0.1:" in a.out.getvalue()  # type: ignore[attr-defined]
        assert "(native transfer on port" in a.out.getvalue()  # type: ignore[attr-defined]
        # a second fetch never overwrites
        again = control_request(c.control_path, {"cmd": "fetch", "file": "blob.bin", "dest": str(dl)})
        assert not again["ok"] and "exists" in again["error"]
        # the holder's copy changed behind its back (same size): the fetcher detects it, keeps nothing
        tampered = bytearray(data)
        tampered[1234] ^= 1
        (src / "blob.bin").write_bytes(bytes(tampered))
        other = tmp_path / "other"
        other.mkdir()
        bad = control_request(b.control_path, {"cmd": "fetch", "file": offer.sha256[:12], "dest": str(other)})
        assert not bad["ok"] and "verification failed" in bad["error"]
        assert list(other.iterdir()) == []
        # a different size is refused by the holder itself
        (src / "blob.bin").write_bytes(b"short")
        refused = control_request(b.control_path, {"cmd": "fetch", "file": "blob.bin", "dest": str(other)})
        assert not refused["ok"] and "changed" in refused["error"]
        unknown = control_request(b.control_path, {"cmd": "fetch", "file": "nope.txt"})
        assert not unknown["ok"] and "no shared file" in unknown["error"]


def test_the_control_socket_answers_and_refuses_politely(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        a = m.add("ann")
        st = control_request(a.control_path, {"cmd": "status"})
        assert st["ok"] and st["status"]["name"] == "ann" and st["status"]["neighbours"] == []
        said = control_request(a.control_path, {"cmd": "say", "text": "hi"})
        assert said["ok"] and texts(a) == ["hi"]
        assert not control_request(a.control_path, {"cmd": "say", "text": "\x1b[2J"})["ok"]
        assert "unknown command" in control_request(a.control_path, {"cmd": "dance"})["error"]
        assert not control_request(a.control_path, {"cmd": "share", "path": str(tmp_path / "nope")})["ok"]
        with pytest.raises(RemoteProtocolError):
            on_engine(a, lambda: a.say(""))
        with pytest.raises(UsageError):
            on_engine(a, lambda: a.find_offer("nothing"))
    assert not Path(a.control_path).exists()  # removed at shutdown


def test_a_peer_speaking_garbage_is_dropped_and_the_node_goes_on(tmp_path: Path) -> None:
    import socket

    with mesh(tmp_path) as m:
        a = m.add("ann")
        host, port = a.listen.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b'{"t":"msg","mid":"0123456789","origin":"0123456789","from":"x","hops":1,"path":[],'
                      b'"text":"before hello"}\n')
            s.settimeout(5)
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass  # aborted on us (RST): either way the connection is gone
        assert "Msg before HELLO" in a.out.getvalue()  # type: ignore[attr-defined]
        assert status(a)["messages"]["unique"] == 0
        b = m.add("bob", join=(a.listen,))
        until(lambda: neighbour_names(b) == {"ann"}, what="a healthy link afterwards")


# ---- a TLS mesh: only nodes the mesh's CA signed can link -----------------------------------------
def _node_cert(ca: Any, tmp: Path, name: str) -> dict[str, str]:
    cert = ca.issue_cert(f"{name}.mesh.test")  # a name no one dials: membership is the CA's signature
    paths = {"cert": str(tmp / f"{name}.pem"), "key": str(tmp / f"{name}.key")}
    cert.private_key_and_cert_chain_pem.write_to_path(paths["cert"])
    cert.private_key_pem.write_to_path(paths["key"])
    return paths


@pytest.mark.parametrize("engine", ["epoll", "threads", "asyncio"])
def test_a_tls_mesh_links_its_members_and_refuses_strangers(tmp_path: Path, engine: str) -> None:
    import socket
    import ssl

    import trustme

    mesh_ca, other_ca = trustme.CA(), trustme.CA()
    ca_file = str(tmp_path / "mesh-ca.pem")
    mesh_ca.cert_pem.write_to_path(ca_file)
    ann, bob = _node_cert(mesh_ca, tmp_path, "ann"), _node_cert(mesh_ca, tmp_path, "bob")
    eve = _node_cert(other_ca, tmp_path, "eve")  # trusts the mesh CA but was signed by another
    with mesh(tmp_path, engine) as m:
        a = m.add("ann", tls_cert=ann["cert"], tls_key=ann["key"], cafile=ca_file)
        b = m.add("bob", join=(a.listen,), tls_cert=bob["cert"], tls_key=bob["key"], cafile=ca_file)
        until(lambda: neighbour_names(a) == {"bob"}, what="the TLS link ann - bob")
        assert status(a)["tls"] and status(b)["tls"]
        on_engine(b, lambda: b.say("over TLS"))
        until(lambda: texts(a) == ["over TLS"], what="the message over TLS")
        # a file offered in a TLS mesh: the fetch request goes over TLS, the bytes are checked
        blob = os.urandom(50_000)
        (tmp_path / "blob.bin").write_bytes(blob)
        (tmp_path / "dl").mkdir()
        on_engine(a, lambda: a.share(str(tmp_path / "blob.bin")))
        until(lambda: [o["file"] for o in status(b)["offers"]] == ["blob.bin"], what="the offer reaching bob")
        got = control_request(b.control_path, {"cmd": "fetch", "file": "blob.bin", "dest": str(tmp_path / "dl")})
        assert got["ok"], got
        assert (tmp_path / "dl" / "blob.bin").read_bytes() == blob
        # a node with a certificate from another CA: the handshake fails both ways, no link
        e = m.add("eve", join=(a.listen,), tls_cert=eve["cert"], tls_key=eve["key"], cafile=ca_file)
        # ann's side of the handshake fails: eve hears a TLS alert (unknown CA) or, if ann's reset
        # came first, a reset - and keeps redialling, never linked
        until(lambda: e.out.getvalue().count("lost before HELLO") >= 2,  # type: ignore[attr-defined]
              what="eve's dials failing")
        assert neighbour_names(a) == {"bob"} and neighbour_names(e) == set()
        # a plain TCP client is cut at the handshake; a TLS client without a certificate too
        host, port = a.listen.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b'{"t":"hello"}\n')
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                reply = s.recv(100)
                assert reply == b"" or reply[:1] == b"\x15"  # closed, or a TLS alert record: never a frame
        anonymous = ssl.create_default_context(cafile=ca_file)
        anonymous.check_hostname = False
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            try:
                with anonymous.wrap_socket(raw) as s:
                    s.sendall(b'{"t":"hello"}\n')
                    reply = s.recv(100)  # TLS 1.3 reports the missing certificate on the first read
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                reply = b""
            assert reply == b""  # an alert, a reset or the end: never a frame
        assert neighbour_names(a) == {"bob"}


def test_a_tls_mesh_needs_both_a_certificate_and_the_ca(tmp_path: Path, tls_files: dict[str, str]) -> None:
    with mesh(tmp_path) as m, pytest.raises(UsageError, match="--cafile"):
        m.add("ann", tls_cert=tls_files["cert"], tls_key=tls_files["key"])
    with mesh(tmp_path) as m, pytest.raises(UsageError, match="--tls-cert"):
        m.add("ann", cafile=tls_files["ca"])

"""``socklab peer`` as a user runs it: nodes as processes, the prompt on stdin, status, say/share/fetch, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from socklab.apps.peer.cli import peer

FAST = ["--ping-interval", "0.2", "--link-timeout", "1", "--redial-base", "0.1", "--redial-max", "0.5",
        "--shutdown-timeout", "1"]


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "socklab", "peer", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, NO_COLOR="1", COLUMNS="200"))


def node(spawn: Any, tmp: Path, name: str, *extra: str, stdin: Any = subprocess.DEVNULL) -> tuple[Any, str]:
    p = spawn("peer", "--listen", "127.0.0.1:0", "--name", name, "--control", str(tmp / f"{name}.sock"),
              "--downloads", str(tmp), *FAST, *extra, stdin=stdin)
    m = p.wait_for(r"socklab peer listening on tcp://(\S+)")
    return p, m.group(1)


def wait_output(cmd: tuple[str, ...], needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = run(*cmd).stdout
        if needle in out:
            return out
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared in `socklab peer {' '.join(cmd)}`: {out}")


def test_help_names_the_node_options_and_the_subcommands() -> None:
    result = CliRunner().invoke(peer, ["--help"])
    assert result.exit_code == 0
    for word in ("--listen", "--join", "--discover", "--name", "--hop-limit", "status", "say", "share", "fetch"):
        assert word in result.output
    bare = CliRunner().invoke(peer, [])
    assert bare.exit_code == 0 and "--listen" in bare.output  # no --listen: the help, not a node


def test_usage_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    r = run("--listen", "127.0.0.1:0", "--control", str(tmp_path / "x.sock"))
    assert r.returncode == 2 and "--name" in r.stderr and "Traceback" not in r.stderr
    r = run("--listen", "127.0.0.1:0", "--name", "bad name!", "--control", str(tmp_path / "x.sock"))
    assert r.returncode == 2 and "--name" in r.stderr
    r = run("status", "--control", str(tmp_path / "nobody.sock"))
    assert r.returncode == 1 and r.stderr.startswith("socklab: error:") and len(r.stderr.splitlines()) == 1


def test_typed_lines_flood_and_status_shows_neighbours_rtt_and_paths(spawn: Any, tmp_path: Path) -> None:
    ann, ann_addr = node(spawn, tmp_path, "ann", stdin=subprocess.PIPE)
    bob, _ = node(spawn, tmp_path, "bob", "--join", ann_addr)
    ann.popen.stdin.write(b"hello from the prompt\n")
    ann.popen.stdin.flush()
    bob.wait_for(r"<ann> hello from the prompt   \(via ann > bob\)")
    out = wait_output(("status", "--control", str(tmp_path / "bob.sock")), " ms")  # an RTT was measured
    assert "ann" in out and "in" in out and "hello from the prompt" in out and "ann > bob" in out
    said = run("say", "--control", str(tmp_path / "bob.sock"), "right", "back")
    assert said.returncode == 0 and len(said.stdout.strip()) == 32
    ann.wait_for(r"<bob> right back")

    # a file: shared at ann's prompt, fetched with the CLI from bob
    payload = tmp_path / "payload.txt"
    payload.write_bytes(b"peer to peer\n" * 1000)
    ann.popen.stdin.write(f"/share {payload}\n".encode())
    ann.popen.stdin.flush()
    bob.wait_for(r"ann shares payload.txt \(13000 bytes")
    dest = tmp_path / "in"
    dest.mkdir()
    got = run("fetch", "--control", str(tmp_path / "bob.sock"), "payload.txt", "--dest", str(dest))
    assert got.returncode == 0, got.stderr
    assert "sha256 verified" in got.stdout and (dest / "payload.txt").read_bytes() == payload.read_bytes()

    # SIGTERM: a graceful exit, and the neighbour notices at once (FIN, not a timeout)
    assert ann.stop(signal.SIGTERM, timeout=10) == 0
    bob.wait_for(r"link down: ann", timeout=5)
    assert not (tmp_path / "ann.sock").exists()


def test_status_shows_a_peers_brackets_as_typed(spawn: Any, tmp_path: Path) -> None:
    """Brackets are allowed in gossip text and file names, and rich reads them as markup: '[/b]' made
    `peer status` fail (MarkupError) on every node that had heard it, '[red]' recoloured the table."""
    ann, ann_addr = node(spawn, tmp_path, "ann", stdin=subprocess.PIPE)
    bob, _ = node(spawn, tmp_path, "bob", "--join", ann_addr)
    bob.wait_for(r"link up: ann")
    ann.popen.stdin.write(b"[/b] and [red]red[/red]\n")
    ann.popen.stdin.flush()
    bob.wait_for(r"<ann> \[/b\] and \[red\]red\[/red\]   \(via ann > bob\)")
    shared = tmp_path / "p[1].txt"
    shared.write_bytes(b"x")
    ann.popen.stdin.write(f"/share {shared}\n".encode())
    ann.popen.stdin.flush()
    bob.wait_for(r"ann shares p\[1\]\.txt")
    r = run("status", "--control", str(tmp_path / "bob.sock"))
    assert r.returncode == 0, r.stderr
    assert "[/b] and [red]red[/red]" in r.stdout, r.stdout
    assert "[shares p[1].txt]" in r.stdout, r.stdout  # the old code showed an empty cell ('[shares' was a tag)


def test_json_status_is_machine_readable(spawn: Any, tmp_path: Path) -> None:
    import json

    node(spawn, tmp_path, "ann")
    r = run("status", "--json", "--control", str(tmp_path / "ann.sock"))
    st = json.loads(r.stdout)
    assert st["name"] == "ann" and st["neighbours"] == [] and st["messages"]["unique"] == 0

"""The terminal client driven in a real tmux pane: typing survives incoming messages; reconnects."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.chat.helpers import LineClient, chat_node

pytestmark = pytest.mark.interop


class Tmux:
    """One private tmux server (its own socket name), killed at the end."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, timeout=10, check=True)
        return out.stdout.decode(errors="replace")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "chat")

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        """Capture the pane until ``text`` shows (a screen has no readiness signal: bounded re-reads)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen:\n{screen}")
            time.sleep(0.05)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    assert shutil.which("tmux"), "tmux is installed by scripts/setup.sh"
    t = Tmux(f"socklab-test-{os.getpid()}")
    try:
        yield t
    finally:
        subprocess.run(["tmux", "-L", t.name, "kill-server"], capture_output=True, timeout=10)


def test_prompt_is_not_broken_by_incoming_messages(tmux: Tmux, tmp_path: Path) -> None:
    db = str(tmp_path / "chat.db")
    with chat_node(store=db) as node, LineClient(node.tcp_port, "bob") as bob:
        cmd = f"{shlex.quote(sys.executable)} -m socklab chat connect 127.0.0.1:{node.tcp_port} --nick ann"
        tmux.run("new-session", "-d", "-s", "chat", "-x", "120", "-y", "30", cmd)
        tmux.wait_for("[#lobby] ann>")
        bob.expect("JOIN #lobby ann")
        tmux.run("send-keys", "-t", "chat", "-l", "half a sent")  # typing, not yet Enter
        tmux.wait_for("ann> half a sent")
        for i in range(3):
            bob.send(f"interrupting {i}")
        screen = tmux.wait_for("<bob> interrupting 2")
        last = [line for line in screen.splitlines() if line.strip()][-1]
        assert last.endswith("[#lobby] ann> half a sent")  # the typed text is intact, below the messages
        tmux.run("send-keys", "-t", "chat", "-l", "ence")
        tmux.run("send-keys", "-t", "chat", "Enter")
        assert bob.expect("MSG #lobby 4 ").endswith("ann say :half a sentence")
        tmux.wait_for("<ann> half a sentence")
        tmux.run("send-keys", "-t", "chat", "-l", "/msg bob hi")
        tmux.run("send-keys", "-t", "chat", "Enter")
        assert bob.expect("PRIV").endswith(":hi")
        tmux.wait_for("(private -> bob) hi")
        tmux.run("send-keys", "-t", "chat", "Up")  # input history
        tmux.wait_for("ann> /msg bob hi")
        tmux.run("send-keys", "-t", "chat", "C-u")
        tmux.run("send-keys", "-t", "chat", "-l", "/who")
        tmux.run("send-keys", "-t", "chat", "Enter")
        tmux.wait_for("-- in #lobby: ann, bob")
        port = node.tcp_port
    # The server restarts on the same port (history in the same file): the client reconnects and
    # catches up from its last sequence number, without duplicates.
    with chat_node(store=db, tcp_port=port) as node, LineClient(node.tcp_port, "bob2") as bob2:
        bob2.expect("JOIN #lobby ann", timeout=20)
        bob2.send("after the restart")
        screen = tmux.wait_for("<bob2> after the restart")
        assert screen.count("<ann> half a sentence") == 1
        tmux.run("send-keys", "-t", "chat", "-l", "/quit")
        tmux.run("send-keys", "-t", "chat", "Enter")
        bob2.expect("PART #lobby ann")


def test_plain_mode_for_scripts() -> None:
    with chat_node() as node, LineClient(node.tcp_port, "bob") as bob:
        out = subprocess.run([sys.executable, "-m", "socklab", "chat", "connect", f"127.0.0.1:{node.tcp_port}",
                              "--nick", "scripted", "--plain"], input=b"hello from a script\n/who\n",
                             capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert bob.expect("MSG").endswith("scripted say :hello from a script")
        text = out.stdout.decode()
        assert "-- in #lobby: bob, scripted" in text
        if not any(line.startswith("PART #lobby scripted") for line in bob.seen):  # it may precede the MSG,
            bob.expect("PART #lobby scripted")  # which is delivered once stored


def test_plain_mode_over_tls(tls_files: dict[str, str]) -> None:
    with chat_node(tls_cert=tls_files["cert"], tls_key=tls_files["key"]) as node:
        out = subprocess.run([sys.executable, "-m", "socklab", "chat", "connect", f"127.0.0.1:{node.tcp_port}",
                              "--nick", "secure", "--plain", "--tls", "--cafile", tls_files["ca"]],
                             input=b"/ping tls-ok\n", capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "-- pong tls-ok" in out.stdout.decode()

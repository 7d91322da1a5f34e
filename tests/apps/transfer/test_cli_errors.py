"""``send``/``receive`` at the command line (issue 17): a default port of transfer's own, and every
user error one line naming the option and its value, exit status 2, before anything connects or
listens; ``--debug`` shows the traceback."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from socklab.apps.transfer.settings import ReceiveSettings
from socklab.protocols import transfer as tp

pytestmark = pytest.mark.timeout(60)


def socklab(*args: str, prefix: tuple[str, ...] = (), timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([*prefix, sys.executable, "-m", "socklab", *args], capture_output=True, text=True,
                          timeout=timeout, check=False, env=env, stdin=subprocess.DEVNULL)


# ---- 4. a default port of its own ---------------------------------------------------------------------
def test_the_default_port_is_transfers_own() -> None:
    from socklab.apps.chat.settings import ChatSettings
    from socklab.apps.peer.settings import PeerSettings
    from socklab.apps.tftp.server import TftpSettings

    others = {getattr(cls(), f.name) for cls in (ChatSettings, PeerSettings, TftpSettings)
              for f in dataclasses.fields(cls) if f.name.endswith("port")}
    assert ReceiveSettings().port == tp.DEFAULT_PORT
    assert tp.DEFAULT_PORT not in others, others  # 7070 was the chat's
    assert f"[default: {tp.DEFAULT_PORT}]" in socklab("receive", "--help").stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own (its loopback up): the fixed default port is free there."""
    if os.geteuid() != 0:
        pytest.fail("needs root for `ip netns` (CI runs as root)")
    name = f"sltx{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, timeout=10, check=False)
    if made.returncode:
        pytest.fail(f"ip netns add failed: {made.stderr!r}")
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


def test_send_to_a_host_reaches_receive_on_the_default_port(
        tmp_path: Path, spawn: Callable[..., Any], netns: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "f").write_bytes(b"hello" * 1000)
    inside = ("ip", "netns", "exec", netns)
    rx = spawn("receive", "--dir", str(dest), "--once", prefix=list(inside))  # no --port
    assert rx.wait_for(r"listening on tcp://127\.0\.0\.1:(\d+)").group(1) == str(tp.DEFAULT_PORT)
    out = socklab("send", str(tmp_path / "f"), "--to", "127.0.0.1", "--json", prefix=inside)  # no :PORT
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["sent"] == 5000
    assert rx.popen.wait(15) == 0
    assert (dest / "f").read_bytes() == b"hello" * 1000


# ---- 5. usage errors: one line naming the option and the value, exit 2, before any work ----------------
@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody, root included, can create files in: a read-only tmpfs."""
    d = tmp_path / "ro"
    d.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True,
                             timeout=10, check=False)
    if mounted.returncode:
        pytest.fail(f"cannot mount a read-only tmpfs: {mounted.stderr!r}")
    try:
        yield d
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", str(d)], capture_output=True, timeout=10, check=False)


def _one_usage_line(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    err = out.stderr
    assert out.returncode == 2, (out.returncode, err)
    assert err.count("\n") == 1 and err.startswith("socklab: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err and "unexpected" not in err
    assert "listening" not in out.stdout  # nothing was started


def test_receive_into_an_unwritable_dir_is_refused_before_listening(read_only_dir: Path) -> None:
    out = socklab("receive", "--port", "0", "--dir", str(read_only_dir), "--once", timeout=20)
    _one_usage_line(out, f"--dir '{read_only_dir}'", "Read-only file system")


def test_receive_to_stdout_does_not_need_a_writable_dir(read_only_dir: Path) -> None:
    # --stdout writes nothing into --dir (default: the current directory, here read-only)
    out = subprocess.run([sys.executable, "-m", "socklab", "receive", "--from", "127.0.0.1:1", "--stdout"],
                         capture_output=True, text=True, timeout=20, check=False, cwd=read_only_dir)
    assert out.returncode == 1 and "--dir" not in out.stderr and "refused" in out.stderr, out.stderr


@pytest.mark.parametrize("case", ["missing", "file"])
def test_receive_dir_that_is_not_a_directory(tmp_path: Path, case: str) -> None:
    target = tmp_path / "nope"
    if case == "file":
        target.write_bytes(b"")
    out = socklab("receive", "--port", "0", "--dir", str(target), "--once")
    _one_usage_line(out, f"--dir '{target}'", "does not exist" if case == "missing" else "is not a directory")


@pytest.mark.parametrize(("args", "needles"), [
    (("--port", "70000"), ("--port 70000",)),
    (("--idle-timeout", "-1"), ("--idle-timeout -1",)),
    (("--buffer-size", "1000"), ("--buffer-size 1000",)),
    (("--from", "127.0.0.1:99999"), ("--from '127.0.0.1:99999'", "0..65535")),
    (("--from", "::1:80"), ("--from '::1:80'", "[addr]:port")),
])
def test_receive_usage_errors_name_the_option(tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    out = socklab("receive", "--dir", str(tmp_path), "--once", *args)
    _one_usage_line(out, *needles)


def test_send_a_missing_file_is_a_usage_error_even_without_a_receiver(tmp_path: Path) -> None:
    # checked before connecting: port 1 refuses, yet the user hears about the file, exit 2
    missing = tmp_path / "missing.bin"
    out = socklab("send", str(missing), "--to", "127.0.0.1:1")
    _one_usage_line(out, f"PATH '{missing}'", "No such file or directory")


@pytest.mark.parametrize(("args", "needles"), [
    (("--to", "127.0.0.1:99999"), ("--to '127.0.0.1:99999'", "0..65535")),
    (("--to", "[::1"), ("--to '[::1'", "]")),
    (("--listen", "--port", "-5"), ("--port -5",)),
    (("--to", "127.0.0.1:1", "--chunk-size", "100"), ("--chunk-size 100",)),
    (("--to", "127.0.0.1:1", "--listen"), ("--to", "--listen")),
])
def test_send_usage_errors_name_the_option(tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    (tmp_path / "f").write_bytes(b"x")
    out = socklab("send", str(tmp_path / "f"), *args)
    _one_usage_line(out, *needles)


def test_send_stdin_under_a_name_the_receiver_would_refuse(tmp_path: Path) -> None:
    out = socklab("send", "-", "--name", "../etc/x", "--to", "127.0.0.1:1")
    _one_usage_line(out, "--name '../etc/x'")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    out = socklab("--debug", "send", str(tmp_path / "missing"), "--to", "127.0.0.1:1")
    assert out.returncode != 0 and "Traceback" in out.stderr and "UsageError" in out.stderr, out.stderr

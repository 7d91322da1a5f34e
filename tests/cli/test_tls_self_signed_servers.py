"""``--tls-self-signed`` on every server command that takes ``--tls-cert``, and ``tap --pin`` (issue 17).

The option is a server setting (``ServerSettings.tls_self_signed``): a command whose settings
offer ``--tls-cert`` offers it too, the runtime makes the certificate once for all the
command's listeners and ``serve_until_signalled`` prints its SHA-256 before the readiness lines.
Each server here is started on port 0 with it; the printed fingerprint is pinned by a client
(the project's own, or curl) and data flows; any other pin is refused in one line. A guard lists
every command whose help offers ``--tls-cert`` and requires ``--tls-self-signed`` beside it, so a
new server cannot forget it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from socklab.cli.main import cli
from tests.cli.test_tls_pin_clients import (
    FP,
    WAIT,
    assert_refused,
    read_until,
    run,
    server,
    wrong,
)

pytestmark = pytest.mark.timeout(120)

PEER_FAST = ["--ping-interval", "0.2", "--link-timeout", "1", "--redial-base", "0.1", "--redial-max", "0.5",
             "--shutdown-timeout", "1"]


def _commands() -> Iterator[tuple[str, click.Command]]:
    """Every command and group of ``socklab`` (a group's own options count: ``peer --listen``)."""
    def walk(cmd: click.Command, path: list[str], ctx: click.Context) -> Iterator[tuple[str, click.Command]]:
        yield " ".join(path), cmd
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                yield from walk(sub, [*path, name], click.Context(sub, parent=ctx, info_name=name))

    yield from walk(cli, [], click.Context(cli, info_name="socklab"))


def _shown(cmd: click.Command, option: str) -> bool:
    return any(isinstance(p, click.Option) and option in p.opts and not p.hidden for p in cmd.params)


def test_every_server_offering_tls_cert_offers_tls_self_signed() -> None:
    with_cert = {path for path, cmd in _commands() if _shown(cmd, "--tls-cert")}
    with_self_signed = {path for path, cmd in _commands() if _shown(cmd, "--tls-self-signed")}
    # the walk found the servers (an empty walk would pass the comparison below)
    assert with_cert >= {"echo serve", "listen", "http serve", "chat serve", "rpc serve", "peer", "tap run"}
    assert with_cert == with_self_signed, (with_cert ^ with_self_signed)
    for path in sorted(with_cert):  # and the help a user reads says so
        out = CliRunner().invoke(cli, [*path.split(), "--help"], terminal_width=200).output
        assert "--tls-cert" in out and "--tls-self-signed" in out, path


@pytest.mark.parametrize("args", [
    ["chat", "serve", "--store", ":memory:", "--tcp-port", "0", "--http-port", "0"],
    ["rpc", "serve", "--demo", "--port", "0"],
    ["tap", "0", "--to", "127.0.0.1:9"],
    ["listen", "0"],
    ["echo", "serve", "--port", "0"],
    ["http", "serve", ".", "--port", "0"],
], ids=lambda a: " ".join(a[:2]))
def test_tls_self_signed_with_tls_cert_is_one_line_exit_2(args: list[str], tmp_path: Path) -> None:
    r = run(*args, "--tls-self-signed", "--tls-cert", str(tmp_path / "x.pem"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--tls-self-signed" in lines[0] and "--tls-cert" in lines[0], r.stderr


def test_peer_tls_self_signed_with_tls_cert_or_cafile_is_one_line_exit_2(tmp_path: Path) -> None:
    base = ["peer", "--listen", "127.0.0.1:0", "--name", "ann", "--control", str(tmp_path / "a.sock"),
            "--tls-self-signed"]
    for extra, needle in ((["--tls-cert", str(tmp_path / "x.pem")], "--tls-cert"),
                          (["--cafile", str(tmp_path / "ca.pem")], "--cafile")):
        r = run(*base, *extra)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "--tls-self-signed" in lines[0], r.stderr


def test_chat_serve_tls_self_signed_on_both_ports() -> None:
    with server("chat", "serve", "--store", ":memory:", "--tcp-port", "0", "--http-port", "0",
                "--tls-self-signed") as p:
        assert p.stdout is not None
        fp = read_until(p.stdout, FP).group(1)
        addr = read_until(p.stdout, r"listening on tls://(127\.0\.0\.1:\d+)").group(1)
        web = read_until(p.stdout, r"listening on https://(127\.0\.0\.1:\d+)").group(1)
        ok = run("chat", "connect", addr, "--nick", "ann", "--plain", "--pin", fp, stdin=b"hello pinned\n")
        assert ok.returncode == 0, ok.stderr
        assert "ann joined #lobby" in ok.stdout
        assert_refused(run("chat", "connect", addr, "--nick", "bob", "--plain", "--pin", wrong(fp),
                           stdin=b"hello\n"), fp)
        # the web port serves the same certificate: curl -k reads the page, the pin checks it
        curl = subprocess.run(["curl", "-sS", "-k", "--max-time", "10", f"https://{web}/healthz"],
                              capture_output=True, text=True, timeout=WAIT)
        assert curl.returncode == 0 and curl.stdout, curl.stderr
        host, port = web.split(":")
        request = f"GET /healthz HTTP/1.0\r\nHost: {web}\r\n\r\n".encode()
        pinned = run("connect", host, port, "--pin", fp, stdin=request)
        assert pinned.returncode == 0 and pinned.stdout.startswith("HTTP/1.1 200"), pinned.stderr
        assert_refused(run("connect", host, port, "--pin", wrong(fp), stdin=request), fp)


def test_rpc_serve_tls_self_signed_on_every_tls_listener() -> None:
    with server("rpc", "serve", "--demo", "--tls-self-signed", "--listen", "tls://127.0.0.1:0",
                "--listen", "https://127.0.0.1:0/rpc", "--listen", "wss://127.0.0.1:0/ws") as p:
        assert p.stdout is not None
        fp = read_until(p.stdout, FP).group(1)
        urls = [read_until(p.stdout, rf"listening on ({scheme}://\S+)").group(1)
                for scheme in ("tls", "https", "wss")]
        for url in urls:
            ok = run("rpc", "call", url, "subtract", "42", "23", "--pin", fp)
            assert (ok.returncode, ok.stdout.strip()) == (0, "19"), (url, ok.stderr)
            assert_refused(run("rpc", "call", url, "subtract", "42", "23", "--pin", wrong(fp)), fp)


def test_rpc_serve_tls_self_signed_alone_serves_tls_on_port() -> None:
    with server("rpc", "serve", "--demo", "--port", "0", "--tls-self-signed") as p:
        assert p.stdout is not None
        fp = read_until(p.stdout, FP).group(1)
        url = read_until(p.stdout, r"listening on (tls://\S+)").group(1)
        ok = run("rpc", "call", url, "subtract", "5", "3", "--pin", fp)
        assert (ok.returncode, ok.stdout.strip()) == (0, "2"), ok.stderr


def test_listen_tls_self_signed() -> None:
    # -k: the refused client is not its one; keep: stdin is /dev/null, and listen's default (shutdown)
    # would half-close each TLS connection as it starts (close_notify, FIN), before the client sends
    with server("listen", "-k", "0", "--tls-self-signed", "--on-stdin-eof", "keep") as p:
        assert p.stdout is not None
        fp = read_until(p.stdout, FP).group(1)
        host, port = read_until(p.stdout, r"listening on tls://([\d.]+):(\d+)").groups()
        bad = run("connect", host, port, "--pin", wrong(fp), stdin=b"secret\n")
        assert_refused(bad, fp)
        ok = run("connect", host, port, "--pin", fp, "--on-stdin-eof", "close", stdin=b"over a pin\n")
        assert ok.returncode == 0, ok.stderr
        assert read_until(p.stdout, "^over a pin$")  # what the client sent, on listen's stdout


def test_listen_tls_without_keep_open_waits_past_a_wrong_pin() -> None:
    # no -k: a client that refuses the certificate after the handshake (connect --pin with another
    # fingerprint) is not listen's one client; the next, pinned, is, and listen exits after it
    with server("listen", "0", "--tls-self-signed", "--on-stdin-eof", "keep", "--explain") as p:
        assert p.stdout is not None
        fp = read_until(p.stdout, FP).group(1)
        host, port = read_until(p.stdout, r"listening on tls://([\d.]+):(\d+)").groups()
        assert_refused(run("connect", host, port, "--pin", wrong(fp), stdin=b"secret\n"), fp)
        # (no wait for listen to say that client went: its reset may reach the server before the
        # client's Finished is read, and then the handshake just failed - nothing for listen to say.
        # The old code had closed its listening socket at that accept: the next connect was refused.)
        ok = run("connect", host, port, "--pin", fp, "--on-stdin-eof", "close", stdin=b"the real one\n")
        assert ok.returncode == 0, ok.stderr
        assert read_until(p.stdout, "^the real one$")
        assert p.wait(timeout=WAIT) == 0  # that was the one client


def test_peer_tls_self_signed_mesh(tmp_path: Path) -> None:
    def node(name: str, *extra: str) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        return server("peer", "--listen", "127.0.0.1:0", "--name", name, "--control", str(tmp_path / f"{name}.sock"),
                      "--downloads", str(tmp_path), *PEER_FAST, "--tls-self-signed", *extra, stdin=subprocess.PIPE)

    with node("ann") as ann:
        assert ann.stdout is not None and ann.stdin is not None
        fp = read_until(ann.stdout, FP).group(1)
        host, port = read_until(ann.stdout, r"listening on tls://([\d.]+):(\d+)").groups()
        # the certificate ann printed is the one it serves: a pinned client is let in, another pin refused
        ok = run("connect", host, port, "--pin", fp, "--on-stdin-eof", "close")
        assert ok.returncode == 0, ok.stderr
        assert_refused(run("connect", host, port, "--pin", wrong(fp)), fp)
        with node("bob", "--join", f"{host}:{port}") as bob:
            assert bob.stdout is not None
            assert read_until(bob.stdout, FP).group(1) != fp  # each node its own certificate
            read_until(ann.stdout, r"link up: bob")
            ann.stdin.write(b"hello over the encrypted mesh\n")
            ann.stdin.flush()
            read_until(bob.stdout, r"<ann> hello over the encrypted mesh")


def test_tap_tls_self_signed_front() -> None:
    with server("echo", "serve", "--port", "0") as echo:
        assert echo.stdout is not None
        target = read_until(echo.stdout, r"listening on tcp://(\S+) ").group(1)
        with server("tap", "0", "--to", target, "--tls-self-signed", "--text") as tap:
            assert tap.stdout is not None
            fp = read_until(tap.stdout, FP).group(1)
            host, port = read_until(tap.stdout, r"listening on tls://([\d.]+):(\d+) -> ").groups()
            ok = run("echo", "client", f"{host}:{port}", "--pin", fp, stdin=b"through the tap\n")
            assert ok.returncode == 0, ok.stderr
            assert ok.stdout.startswith("through the tap ")  # the echo, then its RTT
            assert read_until(tap.stdout, r"<< through the tap")  # the tap shows the plaintext
            assert_refused(run("connect", host, port, "--pin", wrong(fp), stdin=b"x\n"), fp)


def test_tap_pin_checks_the_target() -> None:
    with server("echo", "serve", "--port", "0", "--tls-self-signed") as echo:
        assert echo.stdout is not None
        fp = read_until(echo.stdout, FP).group(1)
        target = read_until(echo.stdout, r"listening on tls://(\S+) ").group(1)
        with server("tap", "0", "--to", target, "--pin", fp) as tap:  # --pin implies --to-tls
            assert tap.stdout is not None
            port = int(read_until(tap.stdout, r"listening on tcp://[\d.]+:(\d+) -> ").group(1))
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
                conn.sendall(b"pinned upstream\n")
                got = b""
                while not got.endswith(b"\n"):
                    chunk = conn.recv(100)
                    assert chunk, got
                    got += chunk
            assert got == b"pinned upstream\n"
        with server("tap", "0", "--to", target, "--pin", wrong(fp)) as tap:
            assert tap.stdout is not None
            port = int(read_until(tap.stdout, r"listening on tcp://[\d.]+:(\d+) -> ").group(1))
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
                conn.sendall(b"secret\n")
                with contextlib.suppress(ConnectionResetError):
                    assert conn.recv(100) == b""  # closed: nothing of the target reaches the client
            line = read_until(tap.stdout, r"fault upstream: .*").group(0)
            assert "not the pinned one" in line and fp in line


@pytest.mark.parametrize("to_tls", [[], ["--to-tls"]], ids=["pin", "to-tls-pin"])
def test_tap_wrong_pin_says_what_connect_pin_says(to_tls: list[str]) -> None:
    # the target was reached, its certificate is the wrong one: the tap's line is connect --pin's
    # own (naming --pin and the fingerprint the target has), with the target named - not
    # "cannot reach the target"
    with server("echo", "serve", "--port", "0", "--tls-self-signed") as echo:
        assert echo.stdout is not None
        fp = read_until(echo.stdout, FP).group(1)
        target = read_until(echo.stdout, r"listening on tls://(\S+) ").group(1)
        direct = run("connect", *target.split(":"), "--pin", wrong(fp), stdin=b"x\n")
        assert_refused(direct, fp)
        said = direct.stderr.strip().removeprefix("socklab: error: ")
        with server("tap", "0", "--to", target, *to_tls, "--pin", wrong(fp)) as tap:
            assert tap.stdout is not None
            port = read_until(tap.stdout, r"listening on tcp://[\d.]+:(\d+) -> ").group(1)
            through = run("connect", "127.0.0.1", port, stdin=b"x\n")
            assert through.stdout == "", through  # the tap closed it (FIN or RST): nothing of the target
            line = read_until(tap.stdout, r"fault upstream: .*").group(0)
            assert line == f"fault upstream: target {target}: {said}", line


@pytest.mark.parametrize(("extra", "needle"), [
    (["--pin", "AB" * 32, "--insecure"], "--insecure"),
    (["--pin", "AB" * 32, "--cafile", "ca.pem"], "--cafile"),
    (["--pin", "nothex"], "--pin must be a SHA-256 fingerprint"),
    (["--pin", "AB" * 32, "--udp"], "--pin applies to TCP only"),
])
def test_tap_pin_usage_errors_are_one_line_exit_2(extra: list[str], needle: str) -> None:
    r = run("tap", "0", "--to", "127.0.0.1:9", *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr

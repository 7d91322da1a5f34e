"""Hosts on one machine: network namespaces joined by veth pairs to a bridge (or loopback without root).

Layout (names carry the test run's pid so parallel runs never collide)::

    namespace <tag>h   : bridge br0, one port p<i> per host   (the "switch"; holds no address)
    namespace <tag>n<i>: eth0 = 10.77.0.<i+1>/24 and fd77::<i+1>/64, lo up, route 224.0.0.0/4 via eth0
                         (IPv4 multicast; IPv6 multicast routes come with every interface)

Nothing is created in the host's own namespace, so no traffic can leave the namespaces. Cutting
host i's "cable" sets p<i> down on the bridge side; the namespaces are deleted on teardown, which
removes every veth and the bridge with them.

Without root (or without ``ip netns``), :class:`Loopback` gives the same interface on 127.0.0.1 with
distinct ports; a "cut" there freezes the process (SIGSTOP) so its links go silent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_available() -> str | None:
    """``None`` if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"slpprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"ip netns add failed: {exc}"
    with contextlib.suppress(Exception):
        _ip("netns", "del", probe)
    return None


class NetnsLab:
    """``n`` hosts on a bridge, 10.77.0.1 .. 10.77.0.n."""

    mode = "netns"

    def __init__(self, n: int) -> None:
        self.tag = f"slp{os.getpid() % 100000}"
        self.hub = f"{self.tag}h"
        self.hosts = [f"{self.tag}n{i}" for i in range(n)]
        self.addresses = [f"10.77.0.{i + 1}" for i in range(n)]
        self.addresses6 = [f"fd77::{i + 1}" for i in range(n)]
        self.created: list[str] = []

    def setup(self) -> None:
        _ip("netns", "add", self.hub)
        self.created.append(self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(zip(self.hosts, self.addresses, strict=True)):
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", self.hub, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.hub, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "addr", "add", f"fd77::{i + 1}/64", "dev", "eth0", "nodad")  # usable at once
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[i]]

    def cut(self, i: int, pid: int) -> None:
        _ip("-n", self.hub, "link", "set", f"p{i}", "down")

    def heal(self, i: int, pid: int) -> None:
        _ip("-n", self.hub, "link", "set", f"p{i}", "up")

    def teardown(self) -> None:
        for ns in reversed(self.created):
            with contextlib.suppress(Exception):
                _ip("netns", "del", ns)
        self.created.clear()


class Loopback:
    """The same scenario on 127.0.0.1 (distinct ports); a cut freezes the host's process."""

    mode = "loopback"

    def __init__(self, n: int) -> None:
        self.addresses = ["127.0.0.1"] * n

    def setup(self) -> None:
        pass

    def prefix(self, i: int) -> list[str]:
        return []

    def cut(self, i: int, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)

    def heal(self, i: int, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)

    def teardown(self) -> None:
        pass

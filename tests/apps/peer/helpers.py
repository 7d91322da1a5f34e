"""In-process peer nodes for tests: started on 127.0.0.1 port 0, queried on their engine thread."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from socklab.apps.peer.node import PeerNode
from socklab.apps.peer.settings import PeerSettings

T = TypeVar("T")

FAST = {"ping_interval": 0.2, "link_timeout": 1.0, "redial_base": 0.1, "redial_max": 0.4,
        "connect_timeout": 2.0, "shutdown_timeout": 1.0}


class Out(io.StringIO):
    """A thread-safe text sink for a node's printed lines."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def write(self, s: str) -> int:
        with self.lock:
            return super().write(s)


def on_engine(node: PeerNode, fn: Callable[[], T], timeout: float = 5.0) -> T:
    """Run ``fn`` on the node's engine thread and return its result (exceptions re-raised here)."""
    done = threading.Event()
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:  # handed to the test thread
            box.append(("err", exc))
        finally:
            done.set()

    node.submit(run)
    assert done.wait(timeout), "the engine did not run the callback in time"
    kind, value = box[0]
    if kind == "err":
        raise value
    return value  # type: ignore[no-any-return]


def status(node: PeerNode) -> dict[str, Any]:
    return on_engine(node, node.status)


def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for a mesh condition that has no single event to wait on (bounded)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def neighbour_names(node: PeerNode) -> set[str]:
    return {n["name"] for n in status(node)["neighbours"]}


def texts(node: PeerNode) -> list[str]:
    return [r["text"] for r in status(node)["recent"] if "text" in r]


class Mesh:
    """Nodes started in one test and always stopped after it."""

    def __init__(self, tmp: Path, engine: str = "epoll") -> None:
        self.tmp = tmp
        self.engine = engine
        self.nodes: list[PeerNode] = []

    def add(self, name: str, *, port: int = 0, **settings: Any) -> PeerNode:
        """A started node; ``settings`` are PeerSettings fields (``join=(...)``, ``discover=True``...)."""
        values = dict(FAST, **settings)
        s = PeerSettings(name=name, host="127.0.0.1", port=port, engine=self.engine,
                         control=str(self.tmp / f"{name}.sock"), downloads=str(self.tmp), **values)
        node = PeerNode(s, out=Out())
        self.nodes.append(node)
        node.start()
        return node

    def stop(self, node: PeerNode) -> None:
        node.server.shutdown(timeout=1.0)

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.server.shutdown(timeout=1.0)


@contextlib.contextmanager
def mesh(tmp: Path, engine: str = "epoll") -> Iterator[Mesh]:
    m = Mesh(tmp, engine)
    try:
        yield m
    finally:
        m.close()

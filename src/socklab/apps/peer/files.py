"""A peer node's files: share a file, answer a WANT with a one-shot transfer port, fetch an offer.

Why this exists: the mesh floods OFFERs like messages, but the bytes travel outside it, on a
direct TCP connection between fetcher and holder using socklab's native transfer (the receiver
of :mod:`socklab.apps.transfer.receiver`, so its rules on names, modes and times apply here too).
The functions take the node they work for; :class:`~socklab.apps.peer.node.PeerNode` calls them.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from socklab.apps.peer.links import FetchRequest, FetchResult, PeerLink, Receiver, send_file, sha256_of
from socklab.apps.peer.settings import WILDCARD_HOSTS
from socklab.apps.transfer.receiver import ReceiveSession, ReceiveSettings
from socklab.apps.transfer.sender import SendServer, collect
from socklab.apps.transfer.settings import SendSettings
from socklab.core.errors import SocklabError, UsageError
from socklab.core.sockets import Endpoint, parse_endpoint
from socklab.protocols import gossip as g

if TYPE_CHECKING:
    from socklab.apps.peer.node import PeerNode

__all__ = ["fetch", "find_offer", "serve_want", "share"]

def share(node: PeerNode, path: str) -> g.Offer:
    """Offer a local file to the mesh (hashes it now; flood an OFFER).

    Raises:
        UsageError: not a readable regular file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"cannot share {path!r}: not a regular file")
    sha256 = sha256_of(str(p))
    size = p.stat().st_size
    offer = g.Offer(uuid.uuid4().hex, node.id, node.name, node.settings.hop_limit, (node.name,),
                    p.name, size, sha256, node.listen)
    node.shares[offer.sha256] = (str(p.resolve()), offer)
    node.offers[offer.sha256] = offer
    node.originate(offer)
    return offer


def serve_want(node: PeerNode, link: PeerLink, want: g.Want) -> None:
    """A fetcher asks for a file: open a one-shot transfer listener and tell it the port."""
    shared = node.shares.get(want.sha256)
    if shared is None:
        link.send(g.Refused("no such file here"))
        link.close()
        return
    path, offer = shared
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        link.send(g.Refused(f"cannot read the file: {exc.strerror}"))
        link.close()
        return
    if size != offer.size:
        link.send(g.Refused("the file changed since it was shared"))
        link.close()
        return
    try:
        items = collect([path])
    except SocklabError as exc:
        link.send(g.Refused(f"cannot read the file: {exc}"))
        link.close()
        return
    timeout = node.settings.transfer_timeout
    try:  # a one-connection transfer server on an engine of its own: the node's engine goes on
        sender = SendServer(items, SendSettings(host=node.settings.host, port=0, stall_timeout=timeout))
    except SocklabError as exc:
        link.send(g.Refused(f"cannot open a transfer port: {exc}"))
        link.close()
        return
    port = int(sender.address[1])
    who = link.describe()
    node.log(f"sending {offer.file} to {who} (native transfer on port {port})")
    link.send(g.Transfer(offer.sha256, port))
    link.close()

    def run() -> None:  # waits for the transfer on its own thread
        error = send_file(sender, timeout)
        if error is not None:
            node.submit(lambda: node.log(f"sending {offer.file} to {who} failed: {error}"))

    threading.Thread(target=run, name="socklab-peer-send", daemon=True).start()


def find_offer(node: PeerNode, key: str) -> g.Offer:
    """The offer whose file name, or sha256 prefix, is ``key`` (the latest one seen).

    Raises:
        UsageError: none matches.
    """
    for offer in reversed(list(node.offers.values())):
        if offer.file == key or (len(key) >= 8 and offer.sha256.startswith(key.lower())):
            return offer
    raise UsageError(f"no shared file called {key!r} has been offered to this node")


def fetch(node: PeerNode, key: str, done: Callable[[FetchResult], None], dest_dir: str | None = None) -> None:
    """Fetch an offered file from its holder into ``dest_dir`` (the ``downloads`` setting).

    Raises:
        UsageError: unknown file, unsafe name, or the destination exists.
    """
    offer = find_offer(node, key)
    name = offer.file
    if name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise UsageError(f"refusing the unsafe file name {name!r}")
    dest = Path(dest_dir or node.settings.downloads).expanduser() / name
    if not dest.parent.is_dir():
        raise UsageError(f"{dest.parent} is not a directory")
    if dest.exists():
        raise UsageError(f"{dest} already exists")
    holder = offer.holder
    host = holder.rsplit(":", 1)[0].strip("[]")
    if host in WILDCARD_HOSTS and offer.origin in node.known:
        holder = node.known[offer.origin].listen
    endpoint = parse_endpoint(holder)
    started = time.monotonic()

    def finished(result: FetchResult) -> None:
        record = result.as_json() | {"seconds": round(time.monotonic() - started, 3)}
        node.fetches.append(record)
        if result.error is None:
            node.log(f"fetched {offer.file} ({offer.size} bytes, sha256 verified) -> {result.path}")
        else:
            node.log(f"fetching {offer.file} failed: {result.error}")
        done(result)

    def landed(session: ReceiveSession) -> None:  # on the engine, once the transfer ended
        bad = [r for r in session.reports if not r.ok]
        if session.failed or bad or not session.reports:
            why = session.failed or (bad[0].error if bad else "nothing was received")
            finished(FetchResult(offer, error=f"transfer failed: {why}"))
            return

        def check() -> None:  # re-read on a thread: the engine must not stall on a big file
            try:
                ok = sha256_of(str(dest)) == offer.sha256
            except OSError as exc:
                why = f"cannot check {dest}: {exc}"
                node.submit(lambda: finished(FetchResult(offer, error=why)))
                return
            if not ok:
                with contextlib.suppress(OSError):
                    os.unlink(dest)
                node.submit(lambda: finished(FetchResult(
                    offer, error="verification failed: the holder's file does not match its offer "
                                 "(sha256 differs); nothing kept")))
                return
            node.submit(lambda: finished(FetchResult(offer, path=str(dest))))

        threading.Thread(target=check, name="socklab-peer-verify", daemon=True).start()

    def answered(port: int | None, error: str | None) -> None:
        if port is None:
            finished(FetchResult(offer, error=error or "no answer"))
            return
        try:
            receive = ReceiveSettings(engine=node.settings.engine, dir=str(dest.parent), overwrite=False,
                                      idle_timeout=node.settings.transfer_timeout)
        except SocklabError as exc:
            finished(FetchResult(offer, error=str(exc)))
            return
        node.engine.connect_stream(Endpoint(endpoint.host, port), lambda: Receiver(receive, landed),
                                   timeout=node.settings.connect_timeout,
                                   on_error=lambda exc: finished(FetchResult(offer, error=str(exc))))

    node.engine.connect_stream(endpoint, lambda: FetchRequest(offer, answered, node.settings.max_frame),
                               ssl_context=node.tls_client, timeout=node.settings.connect_timeout,
                               on_error=lambda exc: finished(FetchResult(offer, error=str(exc))))

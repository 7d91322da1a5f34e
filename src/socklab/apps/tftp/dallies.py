"""The uploads that stay after their final ACK, bounded so that a fast uploader piles up no sockets.

Why this exists: the host that sends the final ACK dallies (RFC 1350 section 6) - it keeps the
transfer's socket a while, to acknowledge the last block again if that ACK was lost and the client
resends it. On a server that is one socket, one descriptor (and on a blocking engine one thread)
per upload for ``timeout x retries`` seconds: a script uploading 200 files a second held 1,000.
:class:`Dallies` keeps the dallying transfers oldest first and ends the oldest one's dally early
once one address has more than ``per_host`` of them, or the server more than ``total``. The client
of an old dally has long moved on (it sent newer requests); at worst a lost final ACK is then
answered by an ICMP error instead of a second ACK, and the client reports what the server stored
as a failure.
"""

from __future__ import annotations

from typing import Any

from socklab.apps.tftp.driver import TransferDriver

__all__ = ["Dallies"]


class Dallies:
    """Dallying transfers by client address, oldest first, at most ``per_host`` per host and ``total``.

    Args:
        per_host: most dallying transfers for one client host (the oldest beyond is closed).
        total: most dallying transfers in all.
    """

    def __init__(self, per_host: int, total: int) -> None:
        self.per_host, self.total = per_host, total
        self._all: dict[Any, TransferDriver] = {}  # client address -> driver, oldest first
        self._count: dict[str, int] = {}  # client host -> how many of _all

    def __len__(self) -> int:
        return len(self._all)

    def add(self, addr: Any, driver: TransferDriver) -> None:
        """``driver`` began to dally; close the oldest ones past the bounds (``close()`` calls back
        :meth:`remove` through the transfer's ``on_done``)."""
        host = addr[0]
        self._all[addr] = driver
        self._count[host] = self._count.get(host, 0) + 1
        if self._count[host] > self.per_host:
            oldest = next(d for a, d in self._all.items() if a[0] == host)
            self._close(oldest)
        if len(self._all) > self.total:
            self._close(next(iter(self._all.values())))

    def _close(self, driver: TransferDriver) -> None:
        driver.close()
        for addr, d in self._all.items():  # a driver whose close() did not call back: drop it here
            if d is driver:
                self.remove(addr, driver)
                return

    def remove(self, addr: Any, driver: TransferDriver) -> None:
        """``driver`` stopped dallying (closed): forget it. Anything else at ``addr`` stays."""
        if self._all.get(addr) is driver:
            del self._all[addr]
            left = self._count[addr[0]] - 1
            if left:
                self._count[addr[0]] = left
            else:
                del self._count[addr[0]]

    def clear(self) -> None:
        self._all.clear()
        self._count.clear()

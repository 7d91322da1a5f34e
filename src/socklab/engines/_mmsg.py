"""Many datagrams per system call for the declared UDP echo: ``recvmmsg``/``sendmmsg`` (Linux).

Why this exists: a UDP echo in Python pays two system calls and a Python round per datagram; the
kernel's work per datagram is the same for every server, so that overhead is what separates one
Python server from another. Linux can receive a batch of datagrams into separate buffers with one
``recvmmsg`` and send each back to its sender with one ``sendmmsg``: the buffers, lengths and
sender addresses stay in C structures prepared once, and Python only copies each received length
into the matching send length. The echo then costs well under one system call per datagram, and
no ``bytes`` object or address tuple is ever made (issue 19: a plain blocking ``recvfrom`` loop is
the bar, and this is how servers written in C beat it).

Python's ``socket`` module has no ``recvmmsg``, so it is called through ``ctypes`` from the C
library; where that is missing (not Linux, no ``ctypes``), :data:`AVAILABLE` is False and the
engines use their one-datagram-at-a-time echo.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
from typing import Any

from socklab.engines._libc import functions

__all__ = ["AVAILABLE", "MSG_WAITFORONE", "MmsgEcho"]

SLOT = 64 * 1024  # any UDP payload (65,507 bytes) fits; pages never written are never resident
_NAME = 28  # sizeof(struct sockaddr_in6), the larger of the two address structures


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _load() -> tuple[Any, Any] | None:
    calls = functions("recvmmsg", "sendmmsg")
    if calls is None:
        return None
    recv, send = calls
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    recv.restype = ctypes.c_int
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    send.restype = ctypes.c_int
    return recv, send


_CALLS = _load()
AVAILABLE = _CALLS is not None
MSG_WAITFORONE = 0x10000  # recvmmsg: block for the first datagram only (Linux; not in Python's socket)


_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def _oserror() -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code))  # EAGAIN -> BlockingIOError, EINTR -> InterruptedError


class MmsgEcho:
    """``slots`` receive buffers (64 KiB each) with their address and length fields, for one socket."""

    WAITFORONE = MSG_WAITFORONE

    def __init__(self, fd: int, slots: int = 32) -> None:
        assert _CALLS is not None
        self._recv, self._send = _CALLS
        self.fd, self.slots = fd, slots
        # Anonymous pages: only those the kernel writes become resident (64 B datagrams: one
        # page per slot), where a ctypes buffer would be zeroed - all 2 MiB - at once.
        self._map = mmap.mmap(-1, slots * SLOT)
        self._bufs = ctypes.c_char.from_buffer(self._map)
        self._names = ctypes.create_string_buffer(slots * _NAME)
        self._iovs = (_Iovec * slots)()
        self._msgs = (_Mmsghdr * slots)()
        for i in range(slots):
            self._iovs[i].iov_base = ctypes.addressof(self._bufs) + i * SLOT
            self._iovs[i].iov_len = SLOT
            hdr = self._msgs[i].msg_hdr
            hdr.msg_name = ctypes.addressof(self._names) + i * _NAME
            hdr.msg_namelen = _NAME
            hdr.msg_iov = ctypes.addressof(self._iovs) + i * ctypes.sizeof(_Iovec)
            hdr.msg_iovlen = 1
        self._addr = ctypes.addressof(self._msgs)
        # The fields Python touches per datagram, as flat arrays of integers (no ctypes objects):
        # iov_len is every second 8-byte word of the iovec array; msg_len and msg_namelen are
        # 4-byte words at fixed places in each mmsghdr.
        self._iov_words = memoryview(self._iovs).cast("B").cast("Q")
        self._msg_words = memoryview(self._msgs).cast("B").cast("I")
        self._stride = ctypes.sizeof(_Mmsghdr) // 4
        self._len_at = _Mmsghdr.msg_len.offset // 4
        self._namelen_at = _Msghdr.msg_namelen.offset // 4

    def receive(self, flags: int) -> int:
        """Up to ``slots`` datagrams into the buffers (``MSG_WAITFORONE``: wait for the first only).

        Returns how many; raises OSError (``BlockingIOError``: nothing was waiting).
        """
        got: int = self._recv(self.fd, self._addr, self.slots, flags, None)
        if got < 0:
            raise _oserror()
        return got

    def send_back(self, got: int, flags: int) -> tuple[tuple[tuple[bytes, Any], ...], OSError | None]:
        """Each of the ``got`` datagrams just received back to its sender, in one ``sendmmsg``.

        Returns (unsent, error): ``unsent`` holds, in order and as Python objects, the replies the
        kernel did not take (a full send buffer, or an error on one of them); ``error`` is the
        error that stopped the very first one (``unsent`` then starts with it). Usually ``((), None)``.
        """
        iov, msg, stride = self._iov_words, self._msg_words, self._stride
        at = self._len_at
        for i in range(got):
            iov[2 * i + 1] = msg[i * stride + at]
        sent: int = self._send(self.fd, self._addr, got, flags) if got else 0
        unsent: tuple[tuple[bytes, Any], ...] = ()
        error = None
        if sent < got:
            if sent < 0:
                error, sent = _oserror(), 0
                if error.errno in _AGAIN:
                    error = None
            unsent = tuple(self._datagram(i, iov[2 * i + 1]) for i in range(sent, got))
        at = self._namelen_at
        for i in range(got):
            iov[2 * i + 1] = SLOT
            msg[i * stride + at] = _NAME  # the receive writes each sender's address length here
        return unsent, error

    def _datagram(self, i: int, length: int) -> tuple[bytes, Any]:
        """Datagram ``i`` of the batch (``length`` bytes) and its sender, as Python objects."""
        data = self._map[i * SLOT:i * SLOT + length]
        name = ctypes.string_at(ctypes.addressof(self._names) + i * _NAME, _NAME)
        family, port = struct.unpack_from("=H", name)[0], struct.unpack_from("!H", name, 2)[0]
        if family == socket.AF_INET6:
            flow, scope = struct.unpack_from("!I", name, 4)[0], struct.unpack_from("=I", name, 24)[0]
            return data, (socket.inet_ntop(socket.AF_INET6, name[8:24]), port, flow, scope)
        return data, (socket.inet_ntop(socket.AF_INET, name[4:8]), port)

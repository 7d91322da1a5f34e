"""The Linux C-library calls the engines make that Python 3.11's ``os`` and ``socket`` do not wrap.

Why this exists: ``recvmmsg``/``sendmmsg`` (the declared UDP echo's batches,
:mod:`socklab.engines._mmsg`) and ``timerfd`` (the asyncio engine's idle sweep,
:mod:`socklab.engines.aio`) are reached through ``ctypes``, loaded once here. Off Linux, or where
the C library lacks a call, :func:`functions` and :func:`timerfd` return None and the engines use
their portable path.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Any

__all__ = ["functions", "timerfd"]


def functions(*names: str) -> tuple[Any, ...] | None:
    """The C library's functions ``names`` (set their ``argtypes`` before calling), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return tuple(getattr(libc, name) for name in names)
    except (OSError, AttributeError):
        return None


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def timerfd(interval: float) -> int | None:
    """A non-blocking ``timerfd`` that becomes readable every ``interval`` seconds, or None.

    Reading it (8 bytes) returns how many intervals passed since the last read.
    """
    calls = functions("timerfd_create", "timerfd_settime")
    if calls is None:
        return None
    create, settime = calls
    create.argtypes = [ctypes.c_int, ctypes.c_int]
    settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]
    fd = create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)  # TFD_NONBLOCK | TFD_CLOEXEC
    if fd < 0:
        return None
    sec, frac = divmod(interval, 1.0)
    every = _Timespec(int(sec), int(frac * 1e9))
    if settime(fd, 0, ctypes.byref(_Itimerspec(every, every)), None) != 0:
        os.close(fd)
        return None
    return int(fd)

"""Compile the benchmark's C programs on demand into a cache outside git.

Why this exists: the load generator and the C yardstick server ship as source (package data, so an
installed socklab has them too) and are compiled with ``gcc -O2`` the first time they are needed.
The binary's name carries a hash of its source, the headers beside it and the flags, so editing a
``.c`` or ``.h`` file recompiles, and two runs compiling at once never see a half-written binary
(compile, then rename).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from socklab.core.errors import SocklabError

__all__ = ["C_DIR", "PROGRAMS", "BuildError", "binary", "cache_dir"]

C_DIR = Path(__file__).resolve().parent / "c"
PROGRAMS = ("echo_server", "loadgen", "udp_echo_server", "udp_loadgen", "tls_loadgen")
LIBS = {"tls_loadgen": ("-lssl", "-lcrypto")}  # linked after the source (OpenSSL: libssl-dev)
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")


class BuildError(SocklabError):
    """A C program could not be compiled (no compiler, or a compile error)."""


def cache_dir() -> Path:
    """Where compiled programs live: ``$SOCKLAB_BENCH_CACHE``, else ``~/.cache/socklab/bench``."""
    env = os.environ.get("SOCKLAB_BENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "socklab" / "bench"


def binary(name: str, *, compiler: str | None = None) -> Path:
    """The path of the compiled program ``name``, compiling it first if its source changed.

    Args:
        name: one of :data:`PROGRAMS` (``"loadgen"``, ``"echo_server"``, their ``udp_`` twins...).
        compiler: the C compiler (default ``$CC`` or ``gcc``).

    Returns:
        An executable path in :func:`cache_dir`.

    Raises:
        BuildError: unknown program, no compiler, or the compiler failed (its output is included).
    """
    if name not in PROGRAMS:
        raise BuildError(f"unknown benchmark program {name!r}; choose one of: {', '.join(PROGRAMS)}")
    source = C_DIR / f"{name}.c"
    cc = compiler or os.environ.get("CC") or "gcc"
    libs = LIBS.get(name, ())
    headers = b"".join(h.read_bytes() for h in sorted(C_DIR.glob("*.h")))  # common.h, included by the sources
    digest = hashlib.sha256(source.read_bytes() + headers + " ".join((cc, *CFLAGS, *libs)).encode()).hexdigest()[:16]
    out_dir = cache_dir()
    target = out_dir / f"{name}-{digest}"
    if target.exists():
        return target
    if shutil.which(cc) is None:
        raise BuildError(f"no C compiler {cc!r} on PATH: install gcc (scripts/setup.sh does) to run benchmarks")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", dir=out_dir)
    os.close(fd)
    try:
        done = subprocess.run([cc, *CFLAGS, "-o", tmp, str(source), *libs], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise BuildError(f"compiling {source.name} failed:\n{done.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: a concurrent run sees the whole binary or none
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target

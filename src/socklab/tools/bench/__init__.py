"""Benchmarks for socklab's engines: ``socklab bench echo`` and ``socklab bench sweep``.

Why this exists: "which engine is fast" is only worth saying with a number measured fairly. This
package runs each engine's echo server in its own process pinned to one core, drives it from
another core with a load generator written in C (:mod:`socklab.tools.bench.build` compiles it on
demand), and compares it, in the same run, with a plain reference server written directly on the
same mechanism and with a single-threaded C epoll server. See ``docs/benchmarks.md``.

Modules: :mod:`.build` (compile the C programs), :mod:`.procs` (start, pin and watch servers),
:mod:`.runner` (run the load, take medians, the connection sweep), :mod:`.report` (table, JSON,
SVG/HTML chart), :mod:`.cli` (the click commands).
"""

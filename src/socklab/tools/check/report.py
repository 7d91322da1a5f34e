"""What a probe found, and the three ways ``socklab check`` reports it: lines, JSON, Gradescope.

Why this exists: a grader is only as good as what it tells the learner. Every probe ends in one
:class:`Result`: passed, or failed with *what happened* (observed on the wire), *the mistake* that
usually causes it, and *the fix*. The same results print as one line each for a terminal, as JSON
for scripts, and as the ``results.json`` that Gradescope's autograder reads
(https://gradescope-autograders.readthedocs.io/en/latest/specs/ : a ``tests`` list of objects with
``name``, ``score``, ``max_score``, ``status`` and ``output``).

Anything the server sent that is quoted in a result goes through
:func:`socklab.protocols.text.escape_peer_text`: a learner's server must not drive the terminal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from socklab.core.errors import SocklabError
from socklab.protocols.text import escape_peer_text

__all__ = ["Probe", "ProbeFailed", "Result", "format_line", "gradescope_json", "quote", "results_json",
           "run_probes"]


class ProbeFailed(SocklabError):
    """Raised inside a probe: what happened, the mistake that causes it, and the fix."""

    def __init__(self, happened: str, mistake: str, fix: str) -> None:
        super().__init__(happened)
        self.happened = happened
        self.mistake = mistake
        self.fix = fix


@dataclass(frozen=True)
class Result:
    """One probe's verdict. ``mistake`` and ``fix`` are empty when it passed."""

    name: str
    title: str
    passed: bool
    happened: str
    mistake: str = ""
    fix: str = ""


@dataclass(frozen=True)
class Probe:
    """A named check: ``run()`` returns what it saw when it passes, raises ProbeFailed when not."""

    name: str
    title: str
    run: Callable[[], str]


def quote(data: bytes | str, limit: int = 60) -> str:
    """Bytes or text from the server, shortened and made safe for a terminal."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # binary: show the bytes as hex, 16 at most
            return "bytes " + data[:16].hex(" ") + (" ..." if len(data) > 16 else "")
    else:
        text = data
    short = text if len(text) <= limit else text[:limit] + "..."
    return '"' + escape_peer_text(short) + '"'


def run_probes(probes: Iterable[Probe], on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Run each probe in turn; a probe that crashes fails with the exception, never the grader."""
    results = []
    for probe in probes:
        try:
            result = Result(probe.name, probe.title, True, probe.run())
        except ProbeFailed as fail:
            result = Result(probe.name, probe.title, False, fail.happened, fail.mistake, fail.fix)
        except OSError as exc:
            result = Result(probe.name, probe.title, False, f"{type(exc).__name__}: {exc}",
                            "the connection failed in a way this probe did not expect",
                            "run the server in a terminal and look at what it printed")
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results


def format_line(result: Result) -> str:
    """``PASS name: what happened`` or ``FAIL name: what happened. Mistake: ... Fix: ...``."""
    if result.passed:
        return f"PASS {result.name}: {result.happened}"
    return f"FAIL {result.name}: {result.happened}. Mistake: {result.mistake}. Fix: {result.fix}."


def results_json(kind: str, target: str, results: list[Result]) -> str:
    """Every result as one JSON document (for scripts)."""
    doc: dict[str, Any] = {
        "check": kind, "target": target, "passed": sum(r.passed for r in results), "total": len(results),
        "results": [asdict(r) for r in results],
    }
    return json.dumps(doc, indent=2)


def gradescope_json(results: list[Result], points_each: float = 1.0) -> str:
    """Gradescope's results.json: one test per probe, full points when it passed."""
    tests = []
    for r in results:
        output = r.title + "\n" + (r.happened if r.passed else
                                   f"{r.happened}\nMistake: {r.mistake}\nFix: {r.fix}")
        tests.append({"name": r.name, "score": points_each if r.passed else 0.0, "max_score": points_each,
                      "status": "passed" if r.passed else "failed", "output": output})
    doc = {"score": sum(t["score"] for t in tests), "tests": tests}  # type: ignore[misc]
    return json.dumps(doc, indent=2)


def write_gradescope(path: str, results: list[Result]) -> None:
    Path(path).write_text(gradescope_json(results) + "\n", encoding="utf-8")

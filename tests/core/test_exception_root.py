"""One exception hierarchy with one root: every exception class socklab defines is a SocklabError.

Read from the source (no module is imported, so lessons and optional engines need not load): a
class whose bases name a builtin exception must be ``SocklabError`` itself; every other exception
class derives from a socklab one. No class takes a builtin's name, and control flow is not an
exception (a rate limit that drops a message returns False).
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import click
import pytest

import socklab
from socklab.cli.main import COMMANDS, LazyGroup

SRC = Path(socklab.__file__).parent
BUILTIN_EXCEPTIONS = {name for name, obj in vars(builtins).items()
                      if isinstance(obj, type) and issubclass(obj, BaseException)}


def exceptions_outside_the_root(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                     for b in node.bases}
            where = f"{path.relative_to(root)}:{node.lineno} {node.name}"
            if bases & BUILTIN_EXCEPTIONS and node.name != "SocklabError":
                out.append(f"{where} derives from {sorted(bases & BUILTIN_EXCEPTIONS)}")
            if node.name in BUILTIN_EXCEPTIONS or node.name.rstrip("_") in BUILTIN_EXCEPTIONS:
                out.append(f"{where} shadows a builtin")
    return out


def test_every_exception_is_under_the_root() -> None:
    assert exceptions_outside_the_root(SRC) == []


def test_the_check_sees_a_stray_exception_and_a_shadowing_name(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("class _Dropped(Exception):\n    pass\n\n"
                                   "class TimeoutError_(NetworkError):\n    pass\n\n"
                                   "class Fine(SocklabError):\n    pass\n")
    found = exceptions_outside_the_root(tmp_path)
    assert [f.split(" ", 2)[1] for f in found] == ["_Dropped", "TimeoutError_"], found


def test_the_old_timeout_name_is_an_alias() -> None:
    from socklab.core import errors

    assert errors.TimeoutError_ is errors.OperationTimeout
    assert issubclass(errors.OperationTimeout, errors.NetworkError)


def test_every_command_loads_and_a_missing_one_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command table names modules that exist; a missing one fails loudly (it was hidden as 'not written yet')."""
    for name in COMMANDS:
        assert isinstance(LazyGroup._load(name), click.Command), name
    monkeypatch.setitem(COMMANDS, "ghost", "socklab.tools.ghost:ghost")
    with pytest.raises(ModuleNotFoundError):
        LazyGroup._load("ghost")

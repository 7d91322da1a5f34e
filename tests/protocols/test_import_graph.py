"""Sans-I/O means sans-I/O: protocol modules import no socket, selector, thread or event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import socklab

FORBIDDEN = {"socket", "selectors", "threading", "asyncio", "select", "ssl", "time", "uvloop"}
SRC = Path(socklab.__file__).parent
PROTOCOL_FILES = [*sorted((SRC / "protocols").rglob("*.py")), SRC / "core" / "protocol.py",
                  SRC / "core" / "transport.py"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("socklab.") and not node.module.startswith(
                    ("socklab.protocols", "socklab.core.errors", "socklab.core.protocol",
                     "socklab.core.transport")):
                names.add(node.module)
    return names


@pytest.mark.parametrize("path", PROTOCOL_FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_protocol_module_is_sans_io(path: Path) -> None:
    bad = {n for n in imported_modules(path) if n in FORBIDDEN or n.startswith("socklab.")}
    assert not bad, f"{path.name} imports {sorted(bad)}: protocols must stay sans-I/O"


def test_the_checker_catches_a_socket_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nfrom socklab.engines import make_engine\n")
    assert imported_modules(bad) >= {"socket", "socklab.engines"}

"""The layers, as data, and a check that no import statement anywhere runs backward.

socklab is built in layers; each may import only the layers named beside it below. The table is
the rule (as h11 keeps its state machine in a table at the top of ``_state.py``); the checker
reads every ``import`` statement in ``src/socklab`` - at module level, inside functions, under
``TYPE_CHECKING`` alike - and names each one the table does not allow::

    core  <-  engines  <-  runtime  <-  apps  <-  cli
      ^                                  |
      +-- protocols (sans-I/O) <---------+        tools: on any layer below cli, apps where stated

A *unit* is ``layer`` or ``layer.part`` (``core.errors``, ``apps.chat``, ``tools.tap``); an entry
in a rule allows that unit and everything under it. See docs/architecture.md for the prose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import socklab

SRC = Path(socklab.__file__).parent

# Modules of the ``socklab.cli`` package that are not the command line itself but the kit every
# command module uses (click option helpers and parameter types, the progress bar, the -v/-q logging
# options and access line, tables and JSON that pipe cleanly): they stand on core only, so an app's
# or a tool's command may use them without importing upward.
KIT = {"cli.options", "cli.params", "cli.progress", "cli.access", "cli.output"}

# layer -> the units it may import (besides itself; an app also imports itself, see APPS_USE)
RULES: dict[str, set[str]] = {
    "core": set(),
    "protocols": {"core.errors", "core.protocol", "core.transport"},
    "engines": {"core"},
    "runtime": {"core", "engines"},
    "kit": {"core"},
    "apps": {"core", "protocols", "engines", "runtime", "kit"},
    "tools": {"core", "protocols", "engines", "runtime", "kit", "root"},
    "cli": {"core", "protocols", "engines", "runtime", "kit", "apps", "tools", "root"},
    "lessons": set(),  # plain socket code a learner reads in one sitting: nothing of socklab
    "root": {"core", "protocols", "engines", "runtime", "kit", "apps", "tools", "cli"},  # the package's face
}

# An app uses another only where stated here (chat's web page and rpc's HTTP transport run on the
# HTTP app; a peer moves files with the transfer app's sender and receiver).
APPS_USE: dict[str, set[str]] = {
    "apps.chat": {"apps.http"},
    "apps.rpc": {"apps.http"},
    "apps.peer": {"apps.transfer"},
}

# Tools may use each other; an app only where stated (the tap serves toxiproxy's API on the HTTP
# app; bench measures the rpc server, its stand-in serves the echo app without the CLI, its
# WebSocket server is the HTTP app's /ws route, and the TFTP benchmark drives the tftp app).
TOOLS_USE: dict[str, set[str]] = {
    "tools.tap": {"apps.http"},
    "tools.bench": {"apps.rpc", "apps.echo", "apps.http", "apps.tftp"},
}

# Sans-I/O: these modules never touch the socket world, a clock or a thread.
SANS_IO_LAYERS = {"protocols"}
SANS_IO_MODULES = {"core.protocol", "core.transport"}
FORBIDDEN_STDLIB = {"socket", "selectors", "threading", "asyncio", "select", "ssl", "time", "uvloop"}


def unit_of(module: str) -> tuple[str, str]:
    """``socklab.apps.chat.web`` -> (``apps``, ``apps.chat.web``); the package root is ``root``."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in {"__init__", "__main__", "rpc"}:
        return "root", "root"
    dotted = ".".join(parts)
    if any(dotted == k or dotted.startswith(k + ".") for k in KIT):
        return "kit", dotted
    return parts[0], dotted


def module_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([root.name, *parts])


def _exists(module: str, root: Path) -> bool:
    rel = Path(*module.split(".")[1:]) if "." in module else Path()
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """Every module an import statement in ``path`` names: (line, dotted name), stdlib too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module_of(path, root).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from socklab.runtime import registry` names a module
                full = f"{base}.{alias.name}"
                yield node.lineno, full if _exists(full, root) else base


def allowed(importer: str, target: str) -> bool:
    """Whether the table lets module ``importer`` import module ``target``."""
    layer, dotted = unit_of(importer)
    t_layer, t_dotted = unit_of(target)
    own = ".".join(dotted.split(".")[:2])  # apps.chat, tools.tap
    if layer == "apps":  # an app: itself, the layers below, and the apps it states
        grants = RULES["apps"] | {own} | APPS_USE.get(own, set())
    else:
        grants = RULES[layer] | {layer} | TOOLS_USE.get(own, set())
    return any(t_layer == g or t_dotted == g or t_dotted.startswith(g + ".") for g in grants)


def _sans_io_allows(name: str) -> bool:
    t_layer, t_dotted = unit_of(name)
    return t_layer == "protocols" or t_dotted in RULES["protocols"]


def violations(root: Path) -> list[str]:
    """One line per import the table does not allow, and per socket-world import in sans-I/O code."""
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        importer = module_of(path, root)
        layer, dotted = unit_of(importer)
        sans_io = layer in SANS_IO_LAYERS or dotted in SANS_IO_MODULES
        for line, name in imports_of(path, root):
            where = f"{path.relative_to(root)}:{line}"
            if name.split(".")[0] == root.name:
                if not allowed(importer, name):
                    out.append(f"{where}: {importer} ({layer}) imports {name} ({unit_of(name)[0]})")
                elif sans_io and not _sans_io_allows(name):
                    out.append(f"{where}: sans-I/O {importer} imports {name}")
            elif sans_io and name.split(".")[0] in FORBIDDEN_STDLIB:
                out.append(f"{where}: sans-I/O {importer} imports {name}")
    return list(dict.fromkeys(out))  # `from x import a, b` is one import


def test_every_layer_imports_only_the_layers_below_it() -> None:
    assert violations(SRC) == []


def test_every_package_has_a_rule() -> None:
    layers = {unit_of(module_of(p, SRC))[0] for p in SRC.rglob("*.py")}
    assert layers <= set(RULES), f"packages without a rule: {sorted(layers - set(RULES))}"
    assert {"core", "engines", "runtime", "apps", "tools", "cli", "protocols"} <= layers


@pytest.mark.parametrize(("importer", "target"), [
    ("socklab.core.sockets", "socklab.engines.base"),  # core <- engines: backward
    ("socklab.engines.reactor", "socklab.runtime.server"),  # engines must not import runtime
    ("socklab.runtime.server", "socklab.apps.echo.protocol"),
    ("socklab.apps.echo.protocol", "socklab.cli.main"),
    ("socklab.apps.echo.server", "socklab.apps.chat.hub"),  # an app on another, not stated
    ("socklab.tools.ss", "socklab.apps.chat.hub"),  # a tool on an app, not stated
    ("socklab.protocols.lines", "socklab.core.settings"),  # protocols: errors/protocol/transport only
    ("socklab.lessons.tcp_echo_server", "socklab.core.errors"),
])
def test_the_table_refuses_backward_imports(importer: str, target: str) -> None:
    assert not allowed(importer, target)


@pytest.mark.parametrize(("importer", "target"), [
    ("socklab.engines.reactor", "socklab.core.transport"),
    ("socklab.runtime.server", "socklab.engines"),
    ("socklab.apps.chat.cli", "socklab.cli.options"),  # the kit
    ("socklab.apps.chat.web", "socklab.apps.http.api"),  # stated in APPS_USE
    ("socklab.tools.tap.cli", "socklab.apps.http.api"),  # stated in TOOLS_USE
    ("socklab.cli.main", "socklab.apps.echo.cli"),
    ("socklab.protocols.lines", "socklab.core.errors"),
])
def test_the_table_allows_forward_imports(importer: str, target: str) -> None:
    assert allowed(importer, target)


def test_the_checker_catches_a_planted_backward_import(tmp_path: Path) -> None:
    """A copy of the layout with three planted faults: each is named, nothing else is."""
    root = tmp_path / "socklab"
    files = {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/errors.py": "",
        "core/sockets.py": "def f():\n    from socklab.runtime import Server  # lazy, still backward\n",
        "engines/__init__.py": "from socklab.core import errors\n",
        "engines/base.py": "from . import __name__ as _n\nfrom ..runtime import server\n",  # relative, backward
        "runtime/__init__.py": "",
        "runtime/server.py": "from socklab.engines import base\n",
        "protocols/__init__.py": "",
        "protocols/lines.py": "import socket\nfrom socklab.core.errors import X\n",  # sans-I/O broken
        "apps/__init__.py": "",
        "apps/echo/__init__.py": "from socklab.runtime import server\nfrom socklab.cli import options\n",
        "cli/__init__.py": "",
        "cli/options.py": "",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    found = violations(root)
    assert [v.split(":")[0] for v in found] == ["core/sockets.py", "engines/base.py", "protocols/lines.py"], found

"""``--help`` shows a default of 0 (options_from, cli/options.py).

The defect: options_from hid a setting's default with ``default not in (None, False, "")`` - and
``0 in (None, False, "")`` is true in Python (``0 == False``), so every option whose default is 0
or 0.0 (``--port``, ``listen --idle-timeout``, ``rpc serve --threads-per-connection``) showed no
``[default: 0]``. Only None, False and the empty string are left unshown.
"""

from __future__ import annotations

import dataclasses
import re

import click
import pytest
from click.testing import CliRunner

from socklab.cli.main import cli
from socklab.cli.options import options_from
from socklab.core.settings import setting


def help_line(args: list[str], option: str) -> str:
    """The help text of ``option``, its wrapped lines joined (a wide terminal keeps most on one)."""
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    m = re.search(rf"^\s+{re.escape(option)}\b(.*(?:\n\s{{20,}}\S.*)*)", result.output, re.M)
    assert m, f"{option} is not in `socklab {' '.join(args)} --help`:\n{result.output}"
    return " ".join(m.group(1).split())


@pytest.mark.parametrize(("args", "option", "shown"), [
    (["echo", "serve"], "--port", "[default: 0]"),
    (["listen"], "--idle-timeout", "[default: 0.0]"),
    (["rpc", "serve"], "--threads-per-connection", "[default: 0]"),
    (["echo", "serve"], "--shutdown-timeout", "[default: 10.0]"),  # (non-zero ones were always shown)
])
def test_a_default_of_zero_is_shown(args: list[str], option: str, shown: str) -> None:
    assert help_line(args, option).endswith(shown)


@pytest.mark.parametrize(("args", "option"), [
    (["echo", "serve"], "--tls-cert"),      # None
    (["echo", "serve"], "--reuse-port"),    # False
    (["echo", "client"], "--server-name"),  # None
])
def test_none_and_false_still_show_no_default(args: list[str], option: str) -> None:
    assert "[default:" not in help_line(args, option)


@dataclasses.dataclass
class _Zeros:
    count: int = setting(0, "An int.")
    ratio: float = setting(0.0, "A float.")
    name: str = setting("", "An empty string.")
    flag: bool = setting(False, "A flag.")
    nothing: str | None = setting(None, "Nothing.")


def test_every_kind_of_default() -> None:
    @click.command()
    @options_from(_Zeros)
    def cmd(**values: object) -> None:
        """A command."""

    shown = {p.name: p.show_default for p in cmd.params if isinstance(p, click.Option)}
    assert shown == {"count": True, "ratio": True, "name": False, "flag": False, "nothing": False}

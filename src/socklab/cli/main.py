"""The ``socklab`` command: a lazy group, so ``socklab echo`` never imports the HTTP stack.

Each app or tool owns its click command in its own module; :data:`COMMANDS` says where, and a
command's module is imported only when that command runs (or when ``--help`` lists it).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from socklab import __version__

# name -> "module:attribute" of a click command or group, in the order --help lists them
COMMANDS: dict[str, str] = {
    "engines": "socklab.cli.engines:engines",
    "echo": "socklab.apps.echo.cli:echo",
    "connect": "socklab.tools.netcat:connect",
    "listen": "socklab.tools.listen:listen",
    "nc": "socklab.tools.nc:nc",
    "ss": "socklab.tools.ss:ss",
    "tap": "socklab.tools.tap:tap",
    "http": "socklab.apps.http.cli:http",
    "chat": "socklab.apps.chat.cli:chat",
    "send": "socklab.apps.transfer.cli:send",
    "receive": "socklab.apps.transfer.cli:receive",
    "tftp": "socklab.apps.tftp.cli:tftp",
    "rpc": "socklab.apps.rpc.cli:rpc",
    "peer": "socklab.apps.peer.cli:peer",
    "bench": "socklab.tools.bench.cli:bench",
    "trace": "socklab.tools.tracing.cli:trace",
    "check": "socklab.tools.check.cli:check",
    "learn": "socklab.tools.learn.cli:learn",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._load(name) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        _add_debug_option(command)
        return command


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["SOCKLAB_DEBUG"] = "1"
        root = ctx.find_root()
        root.ensure_object(dict)
        root.obj["debug"] = True


def _debug_option() -> click.Option:
    return click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Show full tracebacks instead of one-line errors (or SOCKLAB_DEBUG=1).")


def _add_debug_option(command: click.Command) -> None:
    """``--debug`` on every subcommand too: the one-line error tells users to add it, wherever they do."""
    if not any(isinstance(p, click.Option) and "--debug" in p.opts for p in command.params):
        command.params.append(_debug_option())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_debug_option(sub)


def usage_line(exc: click.ClickException) -> str:
    """One line for a click usage error: ``socklab: --port: 'abc' is not a valid integer.``"""
    if isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter) \
            and exc.param is not None:
        hint = exc.param_hint if isinstance(exc.param_hint, str) else None
        if hint is None:
            opts = [o for o in getattr(exc.param, "opts", []) if o.startswith("--")] or \
                getattr(exc.param, "opts", []) or [exc.param.human_readable_name]
            hint = opts[0] if isinstance(exc.param, click.Option) else exc.param.human_readable_name
        line = f"socklab: {hint}: {exc.message}"
    else:
        line = f"socklab: {exc.format_message()}"
    line = " ".join(line.split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        line += f" (see '{ctx.command_path} --help')"
    return line


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="socklab")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """socklab: socket programming made real.

    Every classic network pattern as a program you can run, read and take apart. Servers take
    --engine to choose how they handle many clients (see `socklab engines`), and --trace to
    print every socket call as it happens.

    \b
    Start here:
      socklab learn                                 # lessons in plain socket code, then a grader
      socklab echo serve --port 7007 --trace        # a traced echo server
      socklab echo client 127.0.0.1:7007 --trace    # talk to it; each line comes back with its RTT
      socklab engines                               # the eight ways to serve many clients
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug or ctx.obj.get("debug", False)
    if debug:
        os.environ["SOCKLAB_DEBUG"] = "1"


def main(argv: Any = None) -> None:
    """Run the command; click's own usage errors become one line on stderr and exit 2."""
    try:
        status = cli.main(args=argv, prog_name="socklab", standalone_mode=False)
    except click.ClickException as exc:
        click.echo(usage_line(exc), err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("socklab: interrupted", err=True)
        sys.exit(130)
    # without standalone mode click returns ctx.exit()'s status (--help, --version: 0) instead of exiting
    if isinstance(status, int) and not isinstance(status, bool) and status:
        sys.exit(status)


if __name__ == "__main__":
    main()

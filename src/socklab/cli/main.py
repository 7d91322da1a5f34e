"""The ``socklab`` command: a lazy group, so ``socklab echo`` never imports the HTTP stack.

Each app or tool owns its click command in its own module; :data:`COMMANDS` says where, and a
command's module is imported only when that command runs (or when ``--help`` lists it).
"""

from __future__ import annotations

import importlib
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
        return command


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
    ctx.obj["debug"] = debug


def main(argv: Any = None) -> None:
    cli.main(args=argv, prog_name="socklab")


if __name__ == "__main__":
    main()

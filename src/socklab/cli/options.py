"""CLI plumbing shared by every command: options from settings, one-line errors, --trace.

Why this exists: each settings dataclass declares its fields once (with help text); the
decorator :func:`options_from` turns them into click options and :func:`build_settings` turns
the parsed values back into the dataclass, so the CLI never restates an option. :func:`run_cli`
is the single place where exceptions become one line on stderr and an exit status (``--debug``
shows the traceback).

Exit statuses (documented in ``docs/cli.md``): 0 success, 1 a network or protocol failure,
2 a usage error, 3 a verification failure (data did not match), 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import click

from socklab.cli.params import Number, WritablePath
from socklab.core.errors import ProtocolError, SocklabError, UsageError
from socklab.core.settings import option_name

__all__ = ["EXIT_NETWORK", "EXIT_USAGE", "EXIT_VERIFY", "Number", "WritablePath", "build_settings", "options_from",
           "run_cli", "trace_options"]

EXIT_NETWORK, EXIT_USAGE, EXIT_VERIFY, EXIT_INTERRUPTED = 1, 2, 3, 130

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S")


def _value_type(f: dataclasses.Field[Any], typ: Any) -> Any:
    """The click type of a field: its choices, its declared range, a writable path, or the plain type."""
    if f.metadata.get("choices"):
        return click.Choice(f.metadata["choices"])
    output = f.metadata.get("output")
    if output:
        return WritablePath(special=output if isinstance(output, tuple) else ())
    base = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if base[0] in (int, float) and (lo is not None or hi is not None):
        return Number(base[0], lo, hi)
    return {int: int, float: float, str: str}.get(base[0], str)


def options_from(settings_cls: type[Any], *, exclude: tuple[str, ...] = (),
                 defaults: dict[str, Any] | None = None, transport: str | None = None,
                 only: tuple[str, ...] | None = None) -> Callable[[F], F]:
    """Add one click option per field of ``settings_cls`` (fields with ``cli=""`` are skipped).

    Args:
        exclude: field names the command sets itself (a positional argument, say). Leaving out
            ``tls_cert`` leaves out ``tls_self_signed`` too: a server serves TLS both ways or not at all.
        only: just these fields (``only=("cafile", "insecure", "pin")``: a command that takes a few).
        defaults: per-command defaults that differ from the dataclass's.
        transport: ``"udp"`` for a datagram server: settings declared for other transports only
            (``setting(..., transports=("tcp", "unix"))``) are left out.
    """
    hints = typing.get_type_hints(settings_cls)
    if "tls_cert" in exclude:
        exclude = (*exclude, "tls_self_signed")

    def decorate(func: F) -> F:
        for f in reversed(dataclasses.fields(settings_cls)):
            if f.name in exclude or f.metadata.get("cli") == "" or "help" not in f.metadata:
                continue
            if only is not None and f.name not in only:
                continue
            if transport is not None and transport not in f.metadata.get("transports", (transport,)):
                continue
            default = (defaults or {}).get(f.name, f.default)
            typ = hints[f.name]
            # identity, not ``in (None, False, "")``: 0 == False, and a default of 0 (--port) is worth showing
            shown = not (default is None or default is False or (isinstance(default, str) and default == ""))
            kwargs: dict[str, Any] = {"help": f.metadata["help"], "hidden": f.metadata.get("hidden", False),
                                      "show_default": shown}
            if f.metadata.get("metavar"):
                kwargs["metavar"] = f.metadata["metavar"]
            name = option_name(f)
            if typ is bool:
                decl = [f"{name}/--no-{name[2:]}"] if default else [name]
                func = click.option(*decl, f.name, default=default, is_flag=True, **kwargs)(func)
                continue
            if typing.get_origin(typ) is tuple:  # a repeatable option (tuple[str, ...])
                func = click.option(name, f.name, default=default, multiple=True, type=str, **kwargs)(func)
                continue
            kwargs["type"] = _value_type(f, typ)
            func = click.option(name, f.name, default=default, **kwargs)(func)
        return func

    return decorate


def build_settings(settings_cls: type[S], values: dict[str, Any], *, transport: str | None = None,
                   **overrides: Any) -> S:
    """The settings dataclass from parsed CLI values (unknown keys are ignored).

    ``transport``: the transport the command chose at run time (``echo serve --udp``): an option
    given on the command line that does not apply to it is a usage error naming it.
    """
    if transport is not None:
        _refuse_unused(settings_cls, transport)
    names = {f.name for f in dataclasses.fields(settings_cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in values.items() if k in names}
    kwargs.update(overrides)
    settings = settings_cls(**kwargs)
    validate = getattr(settings, "validate", None)
    if validate is not None:
        validate()
    return settings


def _refuse_unused(settings_cls: type[Any], transport: str) -> None:
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return
    for f in dataclasses.fields(settings_cls):
        if transport in f.metadata.get("transports", (transport,)):
            continue
        if ctx.get_parameter_source(f.name) == click.core.ParameterSource.COMMANDLINE:
            applies = "/".join(t.upper() for t in f.metadata["transports"])
            raise UsageError(f"{option_name(f)} applies to {applies} only, not {transport.upper()}: drop it")


def trace_options(func: F) -> F:
    """``--trace`` and ``--trace-json FILE``: the lifecycle trace on stderr and/or as JSON lines."""
    func = click.option("--trace-json", "trace_json", metavar="FILE", default=None, type=WritablePath(),
                        help="Also write every traced event as one JSON object per line to FILE.")(func)
    func = click.option("--trace", "trace", is_flag=True, default=False,
                        help="Print every socket call (socket, bind, accept, recv, send, close...) as it "
                             "happens, with fd, byte counts and TCP state.")(func)
    return func


def make_tracer(engine: str, trace: bool, trace_json: str | None) -> Any:
    """The tracer the trace options ask for, or ``None``."""
    if not trace and not trace_json:
        return None
    from socklab.core.trace import Tracer

    return Tracer(engine=engine, console=sys.stderr if trace else None, json_file=trace_json)


def run_cli(func: F) -> F:
    """Turn exceptions into one line on stderr and an exit status (``--debug``: the traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("socklab: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # stdout went away (| head): quietly stop, as cat does
            with_devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(with_devnull, sys.stdout.fileno())
            sys.exit(EXIT_NETWORK)
        except Exception as exc:
            if debug_enabled():
                raise
            code = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_NETWORK
            kind = "" if isinstance(exc, (SocklabError, ProtocolError)) else f"{type(exc).__name__}: "
            click.echo(f"socklab: error: {kind}{exc}", err=True)
            if not isinstance(exc, SocklabError):
                click.echo("socklab: (an unexpected error; run with --debug for the traceback)", err=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]


def debug_enabled() -> bool:
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and root.obj and root.obj.get("debug")) or os.environ.get("SOCKLAB_DEBUG") == "1"

"""The settings tables of the docs, generated from the settings classes (issue 18 part 5).

Why this exists: a limit named once, with its default and help, must not drift from its docs.
``python -m socklab.cli.settings_doc`` prints the tables that ``docs/cli.md`` carries between
``<!-- settings:NAME -->`` markers; ``tests/cli/test_settings_doc.py`` fails when they differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from socklab.core.settings import ClientSettings, ServerSettings, option_name

__all__ = ["TABLES", "markdown_table", "show_default"]

TABLES: dict[str, type[Any]] = {"server": ServerSettings, "client": ClientSettings}


def show_default(value: Any, unit_bytes: bool = False) -> str:
    """A default as the docs write it: ``none``, ``on``/``off``, ``256 KiB`` for a size in bytes."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if unit_bytes and isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        return f"{value // 1024} KiB" if value < 1024 * 1024 else f"{value // (1024 * 1024)} MiB"
    return str(value)


def markdown_table(settings_cls: type[Any]) -> str:
    """One row per setting the CLI offers: option, field, default, transports, help."""
    rows = ["| option | setting | default | applies to | meaning |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(settings_cls):
        if f.metadata.get("cli") == "" or "help" not in f.metadata:
            continue
        transports = "/".join(t.upper() for t in f.metadata.get("transports", ()))
        rows.append(f"| `{option_name(f)}` | `{f.name}` | {show_default(f.default, 'bytes' in f.metadata['help'])} | {transports} | "
                    f"{f.metadata['help']} |")
    return "\n".join(rows)


def main() -> None:
    for name, cls in TABLES.items():
        print(f"<!-- settings:{name} -->\n{markdown_table(cls)}\n<!-- /settings:{name} -->\n")


if __name__ == "__main__":
    main()

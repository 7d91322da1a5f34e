"""The docs' settings tables match the settings classes (issue 18 part 5)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from socklab.apps.http.settings import HttpSettings
from socklab.cli.settings_doc import TABLES, markdown_table, show_default

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_cli_md_carries_the_generated_table(name: str) -> None:
    text = (DOCS / "cli.md").read_text()
    m = re.search(rf"<!-- settings:{name} -->\n(.*?)\n<!-- /settings:{name} -->", text, re.S)
    assert m, f"docs/cli.md lacks the {name} table"
    assert m.group(1) == markdown_table(TABLES[name]), "regenerate: python -m socklab.cli.settings_doc"


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_setting_appears_with_its_default_and_no_row_is_invented(name: str) -> None:
    text = (DOCS / "cli.md").read_text()
    block = text.split(f"<!-- settings:{name} -->")[1].split(f"<!-- /settings:{name} -->")[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `--[\w-]+` \| `(\w+)` \| ([^|]+) \|", block, re.M)}
    fields = {f.name: f for f in dataclasses.fields(TABLES[name]) if f.metadata.get("cli") != ""}
    assert set(rows) == set(fields)
    for field_name, default in rows.items():
        f = fields[field_name]
        assert default.strip() == show_default(f.default, "bytes" in f.metadata["help"])


def test_http_limits_table_names_only_settings_that_exist() -> None:
    names = {f.name for f in dataclasses.fields(HttpSettings)}
    text = (DOCS / "http.md").read_text()
    rows = re.findall(r"^\| `(\w+)`(?: / `(\w+)`)?", text, re.M)
    named = {n for row in rows for n in row if n}
    assert len(named) > 10
    assert named <= names, named - names

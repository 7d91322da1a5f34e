"""Optional dependencies are extras named in one-line errors; the default engine is the platform's
best; shell completion is documented and produced (issue 17)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOCKLAB = str(Path(sys.executable).with_name("socklab"))


def test_redis_is_an_extra_and_cryptography_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(project["dependencies"])
    assert "redis" not in deps
    assert "cryptography" in deps
    assert any(d.startswith("redis") for d in project["optional-dependencies"]["redis"])


def test_broker_without_redis_names_the_extra() -> None:
    code = ("import sys; sys.modules['redis'] = None\n"
            "from socklab.cli.main import main\n"
            "sys.argv = ['socklab', 'chat', 'serve', '--broker', 'redis://127.0.0.1:1', '--tcp-port', '0',"
            " '--http-port', '-1']\nmain()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "pip install 'socklab[redis]'" in lines[0] and "--broker" in lines[0]


def test_default_engine_is_the_best_the_platform_has(monkeypatch: pytest.MonkeyPatch) -> None:
    import select

    from socklab.core.settings import ServerSettings, best_engine

    assert ServerSettings().engine == best_engine()
    if sys.platform == "linux":
        assert best_engine() == "epoll"
    monkeypatch.delattr(select, "epoll", raising=False)
    assert best_engine() == "poll"
    monkeypatch.delattr(select, "poll", raising=False)
    assert best_engine() == "select"


@pytest.mark.parametrize(("shell", "marker"), [("bash", "_socklab_completion"), ("zsh", "#compdef socklab"),
                                               ("fish", "complete --no-files --command socklab")])
def test_completion_script_is_produced_and_documented(shell: str, marker: str) -> None:
    env = dict(os.environ, _SOCKLAB_COMPLETE=f"{shell}_source")
    r = subprocess.run([SOCKLAB], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and marker in r.stdout, r.stdout[:200]
    assert f"_SOCKLAB_COMPLETE={shell}_source socklab" in (ROOT / "docs" / "cli.md").read_text()


def test_completion_answers_subcommands_and_options() -> None:
    env = dict(os.environ, _SOCKLAB_COMPLETE="bash_complete", COMP_WORDS="socklab ec", COMP_CWORD="1")
    r = subprocess.run([SOCKLAB], env=env, capture_output=True, text=True, timeout=30)
    assert "plain,echo" in r.stdout.splitlines()
    env.update(COMP_WORDS="socklab echo serve --engine ep", COMP_CWORD="4")
    r = subprocess.run([SOCKLAB], env=env, capture_output=True, text=True, timeout=30)
    assert "plain,epoll" in r.stdout.splitlines(), r.stdout

"""scripts/run.sh, the main job, installs only what it needs: a venv and `pip install -e .` - never
apt-get, sudo or dpkg, never the dev extra - and leaves the listening addresses to the server, which
prints the real ones (issue 17). Runs a copy of the scripts with stubs for every program they could
call, so it is offline and takes a second."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _copy(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A copy of the repository's scripts and pyproject, stubbed system tools, and an env."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    log = tmp_path / "calls.log"
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name in ("apt-get", "apt", "sudo", "dpkg-query", "dpkg", "debconf-set-selections"):
        _stub(bin_ / name, f'echo "SYSTEM {name} $*" >> {log}; exit 1')
    # a python that makes a venv of stubs: pip and socklab only record how they were called
    venv_maker = bin_ / "fake-python"
    _stub(venv_maker, f"""echo "python $*" >> {log}
[ "$1 $2" = "-m venv" ] || exit 1
mkdir -p "$3/bin"
printf '#!/bin/sh\\nexit 0\\n' > "$3/bin/python"
printf '#!/bin/sh\\necho "pip $*" >> {log}\\n' > "$3/bin/pip"
printf '#!/bin/sh\\necho "socklab $*" >> {log}\\n' > "$3/bin/socklab"
chmod +x "$3/bin/python" "$3/bin/pip" "$3/bin/socklab"
""")
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "PYTHON": str(venv_maker), "HOME": str(tmp_path)}
    return repo, log, env


def _run(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(repo / "scripts" / "run.sh"), *args], env=env, cwd=tmp_cwd(repo),
                          capture_output=True, text=True, timeout=30)


def tmp_cwd(repo: Path) -> str:
    return str(repo.parent)


def test_run_sh_installs_runtime_only_without_system_packages(tmp_path: Path) -> None:
    repo, log, env = _copy(tmp_path)
    r = _run(repo, env, "--tcp-port", "7000", "--http-port", "8000")
    calls = log.read_text().splitlines() if log.exists() else []
    assert r.returncode == 0, (r.stderr, calls)
    assert not [c for c in calls if c.startswith("SYSTEM")], calls  # no apt-get, sudo, dpkg
    assert "python -m venv .venv" in calls
    pips = [c for c in calls if c.startswith("pip ")]
    assert pips and all("dev" not in c for c in pips), pips
    assert any(c.split()[-1] == "." for c in pips), pips  # the package itself, no extra
    assert calls[-1] == "socklab chat serve --tcp-port 7000 --http-port 8000"
    # the banner is the server's (real addresses); the script prints no fixed port of its own
    assert "7070" not in r.stderr and "7080" not in r.stderr, r.stderr


def test_run_sh_second_start_skips_pip(tmp_path: Path) -> None:
    repo, log, env = _copy(tmp_path)
    assert _run(repo, env).returncode == 0
    log.unlink()
    r = _run(repo, env)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == ["socklab chat serve"]


def test_run_sh_accepts_the_full_install_of_setup_sh(tmp_path: Path) -> None:
    """A .venv made by scripts/setup.sh (dev extra, for the tests) is not reinstalled by run.sh:
    an editable dev install must not be replaced by a narrower one."""
    repo, log, env = _copy(tmp_path)
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    _stub(venv / "python", "exit 0")
    _stub(venv / "pip", f'echo "pip $*" >> {log}')
    _stub(venv / "socklab", f'echo "socklab $*" >> {log}')
    want = subprocess.run(f"sha256sum < {repo / 'pyproject.toml'} | cut -c1-16", shell=True,
                          capture_output=True, text=True, check=True).stdout.strip()
    (repo / ".venv" / ".socklab-installed").write_text(want + "\n")
    r = _run(repo, env)
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == ["socklab chat serve"]


def test_venv_failure_names_the_package(tmp_path: Path) -> None:
    repo, log, env = _copy(tmp_path)
    _stub(Path(env["PYTHON"]), "exit 1")
    r = _run(repo, env)
    assert r.returncode != 0
    assert "python3-venv" in r.stderr
    assert not (log.exists() and "SYSTEM" in log.read_text())


def test_setup_sh_still_installs_the_test_peers() -> None:
    """The test command keeps its peers: setup.sh still lists them and installs the dev extra."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    for peer in ("netcat-openbsd", "socat", "curl", "tftp-hpa", "redis-server", "chromium"):
        assert peer in text
    assert "'.[dev]'" in text
    assert "setup.sh" in (ROOT / "scripts" / "test.sh").read_text()
    assert os.access(ROOT / "scripts" / "setup-run.sh", os.X_OK)

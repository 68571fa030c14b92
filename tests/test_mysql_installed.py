"""``pip install claude-db-mysql`` adds the engine without touching core (issue 4's acceptance).

Wheels of core, the postgres plugin and the mysql plugin are built here, and a fresh
virtual environment (no system site-packages, no index: those wheels and the
third-party wheels they need) first gets core and postgres only, then the mysql plugin.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from claude_db.testing import ClaudeCli, assert_one_line_error, traversable_tmpdir

pytestmark = pytest.mark.slow  # a fresh install: `./dev test --all` (CI) runs it

ROOT = Path(__file__).resolve().parents[1]


def pip(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
    )
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture
def wheelhouse(project_wheels: Path) -> Path:
    return project_wheels


def test_pip_install_claude_db_mysql_adds_the_engine(
    wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    venv = tmp_path_factory.mktemp("venv") / "mysql"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")

    def install(*requirements: str) -> None:
        pip("--python", python, "install", "-q", "--no-index", "--find-links", str(wheelhouse),
            *requirements)

    install("claude-db", "claude-db-postgres")
    workdir = tmp_path / "work"
    workdir.mkdir()
    state = traversable_tmpdir(tmp_path_factory, "mysql-installed-state")
    cli = ClaudeCli(state, workdir, venv / "bin", {"CLAUDE_DB_RUNTIME": "local"})

    missing = cli.session("start", "shop", "--db", "mysql")
    assert_one_line_error(missing, 2)
    assert "pip install ./plugins/mysql" in missing.stderr, missing

    install("claude-db-mysql")
    plugins = cli.ok("claude-db", "plugins", "--json").json()
    assert plugins["engines"]["mysql"] == "mysql", plugins
    started = cli.session("start", "shop", "--db", "mysql")
    assert started.code == 0, started
    try:
        assert cli.ok("claude-db", "status").stdout.startswith("ready: mysql")
        cli.ok("claude-db", "query", "CREATE TABLE t (x INT)")
        cli.ok("claude-db", "import", "-", input="INSERT INTO t VALUES (1), (2);\n")
        assert cli.ok("claude-db", "query", "SELECT SUM(x) AS s FROM t", "--csv").stdout == "s\n3\n"
        shell = cli.ok("claude-db", "mysql", "-N", "-e", "SELECT COUNT(*) FROM t")
        assert shell.stdout.strip() == "2"
    finally:
        cli.ok("claude-session", "delete", "shop", "--yes")

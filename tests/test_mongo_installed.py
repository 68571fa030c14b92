"""``pip install claude-db-mongo`` adds the engine without touching core (issue 5's acceptance).

Wheels of core, the postgres plugin and the mongo plugin are built here, and a fresh virtual
environment (no system site-packages, no index: those wheels and the third-party wheels they
need) first gets core and postgres only, then the mongo plugin. The installed engine then
works against the MongoDB-wire-protocol stand-in through ``DATABASE_URL``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from claude_db.testing import (
    ClaudeCli,
    assert_one_line_error,
    fresh_environment,
    pip,
    traversable_tmpdir,
    wheel_metadata,
)

# the stand-in server lives with the driver-level tests
from test_mongo_standin import StandIn, standin  # noqa: F401

pytestmark = pytest.mark.slow  # a fresh install: `./dev test --all` (CI) runs it

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def wheelhouse(project_wheels: Path) -> Path:
    return project_wheels


def test_the_wheel_declares_the_entry_point_and_dependencies(wheelhouse: Path) -> None:
    wheel = next(wheelhouse.glob("claude_db_mongo-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    assert "[claude_db]\nmongo = claude_db_mongo" in entry_points
    _, requires = wheel_metadata(wheel)
    assert {Requirement(r).name for r in requires} == {"claude-db", "pymongo"}
    # the package only: no tests, no stand-in image recipe
    assert all(n.startswith(("claude_db_mongo/", "claude_db_mongo-")) for n in names), names


def test_pip_install_claude_db_mongo_adds_the_engine(
    wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
    standin: StandIn,  # noqa: F811
) -> None:
    venv = tmp_path_factory.mktemp("venv") / "mongo"
    bin_dir = fresh_environment(wheelhouse, venv, "claude-db", "claude-db-postgres")

    def install(*requirements: str) -> None:
        pip("--python", str(bin_dir / "python"), "install", "-q", "--no-index",
            "--find-links", str(wheelhouse), *requirements)

    workdir = tmp_path / "work"
    workdir.mkdir()
    state = traversable_tmpdir(tmp_path_factory, "mongo-installed-state")
    cli = ClaudeCli(state, workdir, bin_dir, {"CLAUDE_DB_RUNTIME": "local"})

    missing = cli.session("start", "shop", "--db", "mongo")
    assert_one_line_error(missing, 2)
    assert "pip install ./plugins/mongo" in missing.stderr, missing
    assert "mongo" not in cli.ok("claude-db", "plugins", "--json").json()["engines"]

    install("claude-db-mongo")
    plugins = cli.ok("claude-db", "plugins", "--json").json()
    assert plugins["engines"]["mongo"] == "mongo", plugins
    assert {p["name"]: p["distribution"] for p in plugins["plugins"]}["mongo"] == "claude-db-mongo"
    assert "mongosh" in cli.ok("claude-db", "--help").stdout

    env = standin.env()
    assert cli.ok("claude-db", "status", env=env).stdout.startswith("ready: mongo")
    cli.ok("claude-db", "query", '{"insert": "installed", "documents": [{"x": 1}, {"x": 2}]}',
           env=env)
    found = cli.ok("claude-db", "query", '{"find": "installed", "projection": {"_id": 0}}',
                   env=env)
    assert json.loads(found.stdout) == [{"x": 1}, {"x": 2}]
    cli.ok("claude-db", "query", '{"drop": "installed"}', env=env)

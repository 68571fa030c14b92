"""``pip install claude-db-mongo`` adds the engine without touching core (issue 5's acceptance).

Wheels of core, the postgres plugin and the mongo plugin are built here, and a fresh virtual
environment (no system site-packages, no index: those wheels and the third-party wheels they
need) first gets core and postgres only, then the mongo plugin. The installed engine then
works against the MongoDB-wire-protocol stand-in through ``DATABASE_URL``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from claude_db.testing import ClaudeCli, assert_one_line_error, traversable_tmpdir

# the stand-in server lives with the driver-level tests
from test_mongo_standin import StandIn, standin  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
OURS = {"claude-db", "claude-db-postgres", "claude-db-mongo"}


def pip(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
    )
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def requirements_of(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        head = archive.read(name).decode().split("\n\n", 1)[0]
    return [line.split(": ", 1)[1] for line in head.splitlines()
            if line.startswith("Requires-Dist: ")]


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    house = tmp_path_factory.mktemp("mongo-wheelhouse")
    projects = [ROOT / "core", ROOT / "plugins" / "postgres", ROOT / "plugins" / "mongo"]
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    pip("wheel", "-q", "--no-deps", *isolation, "-w", str(house), *map(str, projects))
    wanted: set[str] = set()
    for wheel in house.glob("*.whl"):
        for line in requirements_of(wheel):
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) in OURS:
                continue
            if requirement.marker and "extra" in str(requirement.marker):
                continue
            wanted.add(f"{requirement.name}[{','.join(requirement.extras)}]"
                       if requirement.extras else requirement.name)
    # the versions this environment runs: the fresh one tests the same code
    constraints = house / "constraints.txt"
    constraints.write_text("".join(
        f"{d.metadata['Name']}=={d.version}\n" for d in metadata.distributions()
        if canonicalize_name(d.metadata["Name"]) not in OURS
    ))
    pip("download", "-q", "--only-binary=:all:", "-d", str(house), "-c", str(constraints),
        *sorted(wanted))
    return house


def test_the_wheel_declares_the_entry_point_and_dependencies(wheelhouse: Path) -> None:
    wheel = next(wheelhouse.glob("claude_db_mongo-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    assert "[claude_db]\nmongo = claude_db_mongo" in entry_points
    assert {Requirement(r).name for r in requirements_of(wheel)} == {"claude-db", "pymongo"}
    # the package only: no tests, no stand-in image recipe
    assert all(n.startswith(("claude_db_mongo/", "claude_db_mongo-")) for n in names), names


def test_pip_install_claude_db_mongo_adds_the_engine(
    wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
    standin: StandIn,  # noqa: F811
) -> None:
    venv = tmp_path_factory.mktemp("venv") / "mongo"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")

    def install(*requirements: str) -> None:
        pip("--python", python, "install", "-q", "--no-index", "--find-links", str(wheelhouse),
            *requirements)

    install("claude-db", "claude-db-postgres")
    workdir = tmp_path / "work"
    workdir.mkdir()
    state = traversable_tmpdir(tmp_path_factory, "mongo-installed-state")
    cli = ClaudeCli(state, workdir, venv / "bin", {"CLAUDE_DB_RUNTIME": "local"})

    missing = cli.session("start", "shop", "--db", "mongo")
    assert_one_line_error(missing, 2)
    assert "pip install claude-db-mongo" in missing.stderr, missing
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

"""Plugins installed the way users install them, driven through the CLIs.

Wheels are built in a temporary directory (core, the postgres plugin, the example engine in
tests/example_engine, and broken plugins written below), then ``pip install``-ed into fresh
virtual environments (no system site-packages, no index: only those wheels and the
third-party wheels core needs). The CLIs of those environments find the plugins through
their entry points, as after ``pip install claude-db-example``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from claude_db.testing import (
    ClaudeCli,
    CliResult,
    EngineContract,
    assert_one_line_error,
    build_wheelhouse,
    fresh_environment,
    traversable_tmpdir,
)

ROOT = Path(__file__).resolve().parents[1]
# one worker of a parallel run builds the wheelhouse once for the whole file; fresh
# environments installed with pip are slow: `./dev test --all` (CI) runs them
pytestmark = [pytest.mark.xdist_group("plugins-installed"), pytest.mark.slow]
EXAMPLE_HOOKS = [
    "register_commands", "register_engines", "session_deleted", "session_env",
    "session_started", "session_stopped",
]

# -- broken plugins: each its own distribution, each broken in its own way -------------

BROKEN: dict[str, str] = {
    # entry point name -> module source
    "broken-import": """
        import claude_db_no_such_dependency  # noqa: F401
    """,
    "broken-duplicate": """
        from claude_db import hookimpl
        from claude_db_postgres import PostgresEngine

        class Impostor(PostgresEngine):
            name = "postgres"

        @hookimpl
        def register_engines(register):
            register(Impostor)

        @hookimpl
        def session_env(session):
            return {"IMPOSTOR": "1"}  # never seen: a skipped plugin is skipped whole
    """,
    "broken-hook": """
        from claude_db import hookimpl

        @hookimpl
        def register_engine(register):  # misspelled: the hook is register_engines
            pass
    """,
    "broken-exit": """
        import sys

        sys.exit("a plugin must not be able to end the CLI")
    """,
    "broken-commands": """
        from claude_db import hookimpl

        @hookimpl
        def register_commands(app):
            @app.command("half-added")
            def half_added():
                pass

            raise RuntimeError("no command for you")
    """,
}
#: found when ``claude-db`` adds plugin commands; ``claude-session`` has none to add
COMMAND_TIME = {"broken-commands"}


def distribution(entry_point: str) -> str:
    return f"claude-db-{entry_point}"


def write_broken_distribution(parent: Path, entry_point: str, source: str) -> Path:
    module = entry_point.replace("-", "_")
    project = parent / entry_point
    (project / "src" / module).mkdir(parents=True)
    (project / "src" / module / "__init__.py").write_text(textwrap.dedent(source))
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["hatchling"]
        build-backend = "hatchling.build"

        [project]
        name = "{distribution(entry_point)}"
        version = "1.0"
        dependencies = ["claude-db", "claude-db-postgres"]

        [project.entry-points.claude_db]
        {entry_point} = "{module}"

        [tool.hatch.build.targets.wheel]
        packages = ["src/{module}"]
    """))
    return project


# -- building and installing ------------------------------------------------------------


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, project_wheels: Path) -> Path:
    """Wheels of this project (the test run's), the broken plugins and every third-party
    dependency."""
    sources = tmp_path_factory.mktemp("broken-sources")
    house = tmp_path_factory.mktemp("wheelhouse")
    for wheel in project_wheels.glob("*.whl"):
        shutil.copy2(wheel, house)
    broken = [write_broken_distribution(sources, ep, src) for ep, src in BROKEN.items()]
    return build_wheelhouse(house, broken)


@pytest.fixture(scope="session")
def example_bin(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install claude-db-example`` (which brings claude-db and claude-db-postgres)."""
    return fresh_environment(wheelhouse, tmp_path_factory.mktemp("venv") / "example",
                             "claude-db-example")


@pytest.fixture(scope="session")
def broken_bin(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """claude-db with its postgres plugin, and every broken plugin installed beside it."""
    return fresh_environment(wheelhouse, tmp_path_factory.mktemp("venv") / "broken",
                             "claude-db", *(distribution(ep) for ep in BROKEN))


@pytest.fixture(scope="module")
def installed_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return traversable_tmpdir(tmp_path_factory, "installed-state")


@pytest.fixture
def make_cli(installed_state: Path, tmp_path: Path) -> Callable[[Path], ClaudeCli]:
    def make(bin_dir: Path) -> ClaudeCli:
        workdir = tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        return ClaudeCli(installed_state, workdir, bin_dir, {"CLAUDE_DB_RUNTIME": "local"})

    return make


@pytest.fixture
def example(make_cli: Callable[[Path], ClaudeCli], example_bin: Path) -> ClaudeCli:
    return make_cli(example_bin)


@pytest.fixture
def broken(make_cli: Callable[[Path], ClaudeCli], broken_bin: Path) -> ClaudeCli:
    return make_cli(broken_bin)


def warnings(result: CliResult) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# -- the example engine, installed --------------------------------------------------------


def test_fresh_environment_imports_only_its_own_installation(example_bin: Path) -> None:
    code = (
        "import claude_db, claude_db_example, claude_db_postgres as p; "
        "print(claude_db.__file__, claude_db_example.__file__, p.__file__)"
    )
    out = subprocess.run([str(example_bin / "python"), "-c", code], capture_output=True,
                         text=True, check=True).stdout
    venv = str(example_bin.parent)
    assert all(path.startswith(venv) for path in out.split()), out
    assert f"{ROOT}/" not in out


def test_installed_example_is_listed_by_plugins(example: ClaudeCli) -> None:
    report = example.ok("claude-db", "plugins", "--json").json()
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["example"] == {
        "name": "example", "distribution": "claude-db-example", "version": "0.3.0",
        "hooks": EXAMPLE_HOOKS, "engines": ["example"], "runtimes": [],
    }
    assert plugins["example-runtime"]["runtimes"] == ["example-local"]
    assert plugins["example-runtime"]["distribution"] == "claude-db-example"
    assert plugins["postgres"]["distribution"] == "claude-db-postgres"
    assert report["engines"] == {"example": "example", "postgres": "postgres"}
    assert report["runtimes"]["example-local"] == "example-runtime"
    assert report["errors"] == [] and report["not_loaded"] == []
    text = example.ok("claude-db", "plugins")
    assert "example  (claude-db-example 0.3.0)" in text.stdout
    assert "  runtimes: example-local" in text.stdout


class TestExampleEngineContract(EngineContract):
    """The example engine, installed by pip alone, keeps the whole contract on the runtime
    its distribution adds (which wraps ``local``: the built-in runtime is exercised by the
    other tests here and by every other engine's contract)."""

    engine_name = "example"
    runtimes = ("example-local",)

    @pytest.fixture(scope="class")
    @classmethod
    def contract_bin_dir(cls, example_bin: Path) -> Path:
        return example_bin


def test_example_plugin_command_env_and_lifecycle_hooks(example: ClaudeCli) -> None:
    assert "example-tables" in example.ok("claude-db", "--help").stdout
    started = example.ok("claude-session", "start", "ex-hooks", "--db", "example")
    assert "example: session ex-hooks started" in started.stderr
    try:
        example.ok("claude-db", "query", "CREATE TABLE visits (id serial PRIMARY KEY)")
        assert example.ok("claude-db", "example-tables").stdout.split() == ["visits"]
        env = example.ok("claude-session", "env", "ex-hooks", "-f", "json").json()
        assert env["EXAMPLE_SESSION"] == "ex-hooks"
        assert env["DATABASE_URL"].startswith("example://example:")
        stopped = example.ok("claude-session", "stop", "ex-hooks")
        assert "example: session ex-hooks stopped" in stopped.stderr
        assert_one_line_error(example("claude-db", "example-tables"), 4)
    finally:
        deleted = example("claude-session", "delete", "ex-hooks", "--yes")
    assert deleted.code == 0, deleted
    assert "example: session ex-hooks deleted" in deleted.stderr


def test_plugin_runtime_serves_another_plugins_engine(
    example: ClaudeCli, installed_state: Path
) -> None:
    """``--runtime example-local`` (a plugin's runtime) with the postgres plugin's engine."""
    example.ok("claude-session", "start", "rt-pg", "--db", "postgres", "--runtime", "example-local")
    try:
        info = example.ok("claude-db", "info", "--json").json()
        assert (info["engine"], info["runtime"]) == ("postgres", "example-local")
        assert info["status"] == "running"
        record = json.loads((installed_state / "sessions" / "rt-pg" / "session.json").read_text())
        assert record["runtime_state"]["wraps"] == "local"
        answer = example.ok("claude-db", "query", "--csv", "SELECT 6 * 7 AS answer")
        assert answer.stdout.splitlines() == ["answer", "42"]
        assert_one_line_error(example("claude-db", "example-tables"), 2)  # not an example session
    finally:
        example.ok("claude-session", "delete", "rt-pg", "--yes")


def test_empty_allow_list_loads_no_plugin(example: ClaudeCli) -> None:
    env = {"CLAUDE_DB_LOAD_PLUGINS": ""}
    report = example.ok("claude-db", "plugins", "--json", env=env).json()
    assert [p["name"] for p in report["plugins"]] == ["claude_db.runtimes"]  # core's, always
    assert report["engines"] == {}
    assert {e["plugin"] for e in report["not_loaded"]} == {"example", "example-runtime", "postgres"}
    assert_one_line_error(example("claude-session", "start", "none", env=env), 2)
    assert "example-tables" not in example.ok("claude-db", "--help", env=env).stdout


def test_allow_list_by_entry_point_name(example: ClaudeCli) -> None:
    report = example.ok("claude-db", "plugins", "--json",
                        env={"CLAUDE_DB_LOAD_PLUGINS": "example"}).json()
    assert report["engines"] == {"example": "example"}
    assert "example-local" not in report["runtimes"]  # its own entry point, not allowed


def test_deny_list_by_distribution_name(example: ClaudeCli) -> None:
    env = {"CLAUDE_DB_DISABLE_PLUGINS": "claude-db-example"}
    report = example.ok("claude-db", "plugins", "--json", env=env).json()
    assert report["engines"] == {"postgres": "postgres"}
    assert "example-local" not in report["runtimes"]
    unknown = example("claude-db", "example-tables", env=env)
    assert_one_line_error(unknown, 2)


# -- broken plugins, installed ------------------------------------------------------------


def test_broken_plugins_are_reported_once_each_and_skipped(broken: ClaudeCli) -> None:
    for program, expected in (
        ("claude-db", list(BROKEN)),
        ("claude-session", [ep for ep in BROKEN if ep not in COMMAND_TIME]),
    ):
        result = broken(program, "--help")
        assert result.code == 0, result
        lines = warnings(result)
        assert len(lines) == len(expected), result
        for entry_point in expected:
            mine = [line for line in lines if f"(distribution {distribution(entry_point)})" in line]
            assert len(mine) == 1, result
            assert mine[0].startswith(f"warning: plugin '{entry_point}' "), result
            assert " skipped: " in mine[0]
        assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("entry_point", list(BROKEN))
def test_each_broken_plugin_alone(broken: ClaudeCli, entry_point: str) -> None:
    env = {"CLAUDE_DB_LOAD_PLUGINS": f"postgres,{entry_point}"}
    result = broken("claude-db", "--help", env=env)
    assert result.code == 0, result
    assert len(warnings(result)) == 1 and distribution(entry_point) in result.stderr, result

    report = broken("claude-db", "plugins", "--json", env=env)
    assert report.code == 0, report
    data = report.json()
    assert [(e["plugin"], e["distribution"]) for e in data["errors"]] == [
        (entry_point, distribution(entry_point))
    ]
    assert entry_point not in [p["name"] for p in data["plugins"]]
    assert data["engines"] == {"postgres": "postgres"}  # the impostor took nothing

    strict = broken("claude-db", "--help", env={**env, "CLAUDE_DB_STRICT_PLUGINS": "1"})
    assert_one_line_error(strict, 8)
    assert distribution(entry_point) in strict.stderr
    assert "CLAUDE_DB_STRICT_PLUGINS" in strict.stderr


def test_each_problem_names_its_cause(broken: ClaudeCli) -> None:
    data = broken("claude-db", "plugins", "--json").json()
    messages = {e["plugin"]: e["message"] for e in data["errors"]}
    assert "claude_db_no_such_dependency" in messages["broken-import"]
    assert "'postgres' is registered twice" in messages["broken-duplicate"]
    assert "register_engine" in messages["broken-hook"]
    assert "SystemExit" in messages["broken-exit"]
    assert messages["broken-commands"] == "RuntimeError: no command for you"
    assert "half-added" not in broken("claude-db", "--help").stdout  # taken out again
    listing = broken("claude-db", "plugins")
    assert listing.code == 0, listing
    for entry_point in BROKEN:
        assert (f"load error: plugin '{entry_point}' (distribution {distribution(entry_point)})"
                f" skipped: {messages[entry_point]}") in listing.stdout.splitlines()


def test_cli_keeps_working_beside_broken_plugins(broken: ClaudeCli) -> None:
    broken.ok("claude-session", "start", "beside-broken", "--db", "postgres")
    try:
        env = broken.ok("claude-session", "env", "beside-broken", "-f", "json").json()
        assert "IMPOSTOR" not in env  # the skipped plugin's other hooks do not run either
        query = broken.ok("claude-db", "query", "--csv", "SELECT 'still here' AS answer")
        assert query.stdout.splitlines() == ["answer", "still here"]
        assert len(warnings(query)) == len(BROKEN)  # every run says what it skipped
    finally:
        broken.ok("claude-session", "delete", "beside-broken", "--yes")

"""Every hook, in-process, through claude_db.testing's isolated plugin manager.

No installed plugin is loaded here (claude_db.testing's fixtures, enabled in conftest.py):
each test registers the plugin objects it needs (``register_plugin``), and they are
unregistered when it ends. The lifecycle hooks run around real sessions (real PostgreSQL
servers on the local runtime).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pluggy
import pytest
import typer
from typer.testing import CliRunner

from claude_db import Engine, Runtime, hookimpl
from claude_db.app import App
from claude_db.engine import Credentials
from claude_db.errors import PluginError, UnknownEngineError, UsageError
from claude_db.lifecycle import delete_session, session_env, start_session, stop_session
from claude_db.plugins import LoadError, Plugins, load_plugins, unregister_plugin
from claude_db.plugins import register_plugin as register_in
from claude_db.runtimes.local import LocalRuntime
from claude_db.session import Session
from claude_db.settings import Settings
from claude_db.testing import ClaudeCli, assert_one_line_error
from claude_db_postgres import PostgresEngine

Register = Callable[..., str]


@pytest.fixture
def engine_class() -> type[Engine]:
    return PostgresEngine


class Observer:
    """Records the lifecycle hooks it sees."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    @hookimpl
    def session_started(self, session: Session) -> None:
        self.events.append(("started", session.name))

    @hookimpl
    def session_stopped(self, session: Session) -> None:
        self.events.append(("stopped", session.name))

    @hookimpl
    def session_deleted(self, session: Session) -> None:
        self.events.append(("deleted", session.name))


@pytest.fixture
def observer(registered_engine: Engine, register_plugin: Register) -> Observer:
    watcher = Observer()
    register_plugin(watcher, name="observer")
    return watcher


@pytest.fixture
def session_in(claude_app: App, tmp_path: Path) -> Iterator[Callable[..., Session]]:
    """Start real sessions in-process; whatever is left is deleted at the end."""
    names: list[str] = []

    def start(name: str, engine_name: str, runtime_name: str = "local") -> Session:
        workdir = tmp_path / name
        workdir.mkdir()
        session, _ = start_session(
            claude_app, name, engine_name=engine_name, runtime_name=runtime_name, workdir=workdir
        )
        names.append(name)
        return session

    yield start
    for name in names:
        if claude_app.store.exists(name):
            delete_session(claude_app, name)


# -- the isolated plugin manager -----------------------------------------------------------


def test_isolated_plugins_load_no_installed_plugin(isolated_plugins: Plugins) -> None:
    # claude-db-postgres is installed in this environment, yet nothing of it is loaded
    assert isolated_plugins.engines.names() == []
    assert [i.name for i in isolated_plugins.describe()] == ["claude_db.runtimes"]
    assert "local" in isolated_plugins.runtimes  # core's own runtimes are always there
    with pytest.raises(UnknownEngineError, match=r"pip install \./plugins/postgres"):
        isolated_plugins.engine("postgres")


def test_register_plugin_fixture_unregisters(
    isolated_plugins: Plugins, register_plugin: Register
) -> None:
    class Temporary:
        @hookimpl
        def register_engines(self, register: Callable[[type[Engine]], None]) -> None:
            register(PostgresEngine)

    name = register_plugin(Temporary(), name="temporary")
    assert isolated_plugins.engines.owner("postgres") == "temporary"
    unregister_plugin(isolated_plugins, name)
    assert "postgres" not in isolated_plugins.engines
    assert not isolated_plugins.pm.has_plugin("temporary")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLAUDE_DB_LOAD_PLUGINS", "postgres"),  # entry-point name
        ("CLAUDE_DB_LOAD_PLUGINS", " claude-db-postgres , "),  # distribution name, spaces
        ("CLAUDE_DB_LOAD_PLUGINS", "Claude_DB_Postgres"),  # as pip normalises names
    ],
)
def test_allow_list_names_entry_points_or_distributions(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    loaded = load_plugins(Settings.from_env())
    assert loaded.engines.names() == ["postgres"]
    assert loaded.errors == []
    assert ("postgres", "claude-db-postgres") not in loaded.not_selected


def test_deny_list_and_empty_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_DB_DISABLE_PLUGINS", "claude-db-postgres")
    assert "postgres" not in load_plugins(Settings.from_env()).engines
    monkeypatch.delenv("CLAUDE_DB_DISABLE_PLUGINS")
    monkeypatch.setenv("CLAUDE_DB_LOAD_PLUGINS", "")
    nothing = load_plugins(Settings.from_env())
    assert nothing.engines.names() == []
    assert [i.name for i in nothing.describe()] == ["claude_db.runtimes"]  # always there
    assert ("postgres", "claude-db-postgres") in nothing.not_selected


# -- register_engines ----------------------------------------------------------------------


def test_hook_register_engines(isolated_plugins: Plugins, registered_engine: Engine) -> None:
    assert isinstance(registered_engine, PostgresEngine)
    assert isolated_plugins.engines.owner("postgres") == "test-engine-postgres"
    assert isolated_plugins.engine_for_scheme("postgresql").name == "postgres"

    class Impostor(PostgresEngine):
        pass

    class Duplicate:
        @hookimpl
        def register_engines(self, register: Callable[[type[Engine]], None]) -> None:
            register(Impostor)

    twice = r"'postgres' is registered twice.*'test-engine-postgres'"
    with pytest.raises(PluginError, match=twice):
        register_in(isolated_plugins, Duplicate(), name="duplicate", strict=True)
    assert isolated_plugins.engines.get("postgres") is PostgresEngine
    assert not isolated_plugins.pm.has_plugin("duplicate")  # skipped whole


def test_a_failing_register_hook_is_skipped_whole(isolated_plugins: Plugins) -> None:
    class Unnamed(PostgresEngine):
        pass

    nameless = type("Nameless", (Engine,), {})  # no `name`: rejected by the registry

    class HalfBroken:
        @hookimpl
        def register_engines(self, register: Callable[[type[Engine]], None]) -> None:
            register(Unnamed)  # fine ("postgres")...
            register(nameless)  # ...then a failure: nothing of this plugin may stay

        @hookimpl
        def session_env(self, session: Session) -> dict[str, str]:
            return {"HALF": "1"}

    register_in(isolated_plugins, HalfBroken(), name="half", strict=False)
    assert isolated_plugins.engines.names() == []
    assert not isolated_plugins.pm.has_plugin("half")
    [error] = isolated_plugins.errors
    assert (error.plugin, error.distribution) == ("half", None)
    assert "has no 'name' attribute" in error.message
    assert str(error).startswith("plugin 'half' skipped: PluginError: ")


def test_misspelled_hook_is_rejected(isolated_plugins: Plugins) -> None:
    class Misspelled:
        @hookimpl
        def register_engine(self, register: Callable[[type[Engine]], None]) -> None:
            register(PostgresEngine)

    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'register_engine'"):
        register_in(isolated_plugins, Misspelled(), name="misspelled")
    assert not isolated_plugins.pm.has_plugin("misspelled")


def test_load_error_messages_name_the_distribution() -> None:
    error = LoadError("broken", "claude-db-broken", "ImportError: no module named x")
    assert str(error) == (
        "plugin 'broken' (distribution claude-db-broken) skipped: ImportError: no module named x"
    )
    assert error.fatal().endswith("failed to load: ImportError: no module named x "
                                  "(CLAUDE_DB_STRICT_PLUGINS is set)")


# -- register_runtimes ---------------------------------------------------------------------


class WrappedLocal(LocalRuntime):
    """A plugin runtime: the local runtime under another name, marking what it made."""

    name = "wrapped-local"
    auto_priority = -1

    def create(self, session: Session, engine: Engine) -> None:
        super().create(session, engine)
        session.runtime_state["made_by"] = self.name


class RuntimePlugin:
    @hookimpl
    def register_runtimes(self, register: Callable[[type[Runtime]], None]) -> None:
        register(WrappedLocal)


def test_hook_register_runtimes(
    claude_app: App, registered_engine: Engine, register_plugin: Register,
    session_in: Callable[..., Session],
) -> None:
    register_plugin(RuntimePlugin(), name="wrapped")
    assert claude_app.plugins.runtimes.owner("wrapped-local") == "wrapped"
    chosen, _ = claude_app.choose_runtime("auto", registered_engine, "any:image")
    assert chosen.name != "wrapped-local"  # lowest priority
    with pytest.raises(UsageError, match="unknown runtime 'nope'"):
        claude_app.runtime("nope")
    mine = session_in("wrapped-rt", engine_name="postgres", runtime_name="wrapped-local")
    assert mine.runtime == "wrapped-local"
    assert mine.runtime_state["made_by"] == "wrapped-local"
    runtime = claude_app.runtime("wrapped-local")
    assert runtime.status(mine) == "running"
    endpoint = runtime.endpoint(mine, registered_engine)
    with registered_engine.query(endpoint, "SELECT 1 AS one") as result:
        assert (result.columns, list(result.rows)) == (["one"], [(1,)])
    delete_session(claude_app, "wrapped-rt")
    assert runtime.status(mine) == "missing"


# -- register_commands ---------------------------------------------------------------------


def test_hook_register_commands(
    claude_app: App, register_plugin: Register, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Commands:
        @hookimpl
        def register_commands(self, app: typer.Typer) -> None:
            @app.command("hello")
            def hello(name: str = typer.Argument("world")) -> None:
                """Say hello (a plugin's command)."""
                print(f"hello, {name}")

    register_plugin(Commands(), name="commands")
    import claude_db.cli.db as db_cli

    monkeypatch.setattr(db_cli, "get_app", lambda: claude_app)
    app = db_cli.create_app()  # the real claude-db application, built with our plugins
    runner = CliRunner()
    result = runner.invoke(app, ["hello", "plugin"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello, plugin\n"
    assert "Say hello" in runner.invoke(app, ["--help"]).output


def test_a_failing_register_commands_is_skipped_whole(
    claude_app: App, registered_engine: Engine, register_plugin: Register,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Failing:
        @hookimpl
        def register_commands(self, app: typer.Typer) -> None:
            @app.command("half")
            def half() -> None:
                """Added before the failure."""

            raise RuntimeError("commands failed")

        @hookimpl
        def register_runtimes(self, register: Callable[[type[Runtime]], None]) -> None:
            register(WrappedLocal)

    register_plugin(Failing(), name="failing")
    assert "wrapped-local" in claude_app.plugins.runtimes
    import claude_db.cli.db as db_cli

    monkeypatch.setattr(db_cli, "get_app", lambda: claude_app)
    runner = CliRunner()
    result = runner.invoke(db_cli.create_app(), ["--help"])
    assert result.exit_code == 0, result.output
    assert "half" not in result.output and "query" in result.output
    assert [(e.plugin, e.message) for e in claude_app.plugins.errors] == [
        ("failing", "RuntimeError: commands failed")
    ]
    assert "wrapped-local" not in claude_app.plugins.runtimes  # skipped whole
    assert not claude_app.plugins.pm.has_plugin("failing")


# -- session_env ---------------------------------------------------------------------------


def test_hook_session_env(
    claude_app: App, registered_engine: Engine, register_plugin: Register
) -> None:
    class Extra:
        @hookimpl
        def session_env(self, session: Session) -> dict[str, str] | None:
            return {"EXTRA_FOR": session.name, "DATABASE_URL": "overridden://no"}

    class Nothing:
        @hookimpl
        def session_env(self, session: Session) -> dict[str, str] | None:
            return None

    register_plugin(Extra(), name="extra")
    register_plugin(Nothing(), name="nothing")
    session = Session(
        name="env-only", workdir="/tmp", engine="postgres", runtime="local",
        credentials=Credentials("postgres", "secret", "appdb"), runtime_state={"port": 5999},
    )
    env = session_env(claude_app, session)
    assert env["EXTRA_FOR"] == "env-only"
    assert env["DATABASE_URL"] == "postgresql://postgres:secret@127.0.0.1:5999/appdb"  # core wins
    assert env["CLAUDE_SESSION"] == "env-only"


# -- the lifecycle events ------------------------------------------------------------------


def test_hook_session_started(observer: Observer, session_in: Callable[..., Session]) -> None:
    session_in("observed-start", engine_name="postgres")
    assert observer.events == [("started", "observed-start")]


def test_hook_session_stopped(
    claude_app: App, observer: Observer, session_in: Callable[..., Session]
) -> None:
    session_in("observed-stop", engine_name="postgres")
    stop_session(claude_app, "observed-stop")
    assert observer.events[-1] == ("stopped", "observed-stop")


def test_hook_session_deleted(
    claude_app: App, observer: Observer, session_in: Callable[..., Session]
) -> None:
    session_in("observed-delete", engine_name="postgres")
    delete_session(claude_app, "observed-delete")
    assert observer.events == [("started", "observed-delete"), ("deleted", "observed-delete")]
    assert not claude_app.store.exists("observed-delete")


def test_a_failing_observer_harms_no_one(
    claude_app: App, observer: Observer, register_plugin: Register,
    session_in: Callable[..., Session], capsys: pytest.CaptureFixture[str],
) -> None:
    class Failing:
        @hookimpl
        def session_started(self, session: Session) -> None:
            raise RuntimeError("observer bug")

        @hookimpl
        def session_env(self, session: Session) -> dict[str, str]:
            raise KeyError("env bug")

    class Extra:
        @hookimpl
        def session_env(self, session: Session) -> dict[str, str]:
            return {"EXTRA": "kept"}

    register_plugin(Extra(), name="extra")
    register_plugin(Failing(), name="failing")
    session = session_in("observed-failing", engine_name="postgres")
    assert observer.events == [("started", "observed-failing")]  # the others still ran
    assert session_env(claude_app, session)["EXTRA"] == "kept"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    bug = "warning: plugin 'failing' failed in session_started: RuntimeError: observer bug"
    assert bug in warnings
    assert all(line.startswith("warning: plugin 'failing' failed in ") for line in warnings)

    claude_app.plugins.strict = True  # CLAUDE_DB_STRICT_PLUGINS: fatal, naming the plugin
    try:
        with pytest.raises(PluginError, match="plugin 'failing' failed in session_env: KeyError"):
            session_env(claude_app, session)
    finally:
        claude_app.plugins.strict = False


def test_a_failed_start_announces_nothing(
    claude_app: App, observer: Observer, tmp_path: Path
) -> None:
    with pytest.raises(UnknownEngineError):
        start_session(claude_app, "never", engine_name="nosuch", workdir=tmp_path)
    assert observer.events == []


# -- the CLI runner ------------------------------------------------------------------------


def test_claude_cli_runs_the_installed_cli_isolated(
    claude_cli: ClaudeCli, claude_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the developer's variables never reach the CLI under test
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone:secret@db.invalid/theirs")
    monkeypatch.setenv("CLAUDE_SESSION", "the-developers-session")
    assert_one_line_error(claude_cli("claude-db", "status"), 3)
    env = claude_cli.environment()
    assert env["CLAUDE_DB_STATE_DIR"] == str(claude_state_dir)
    assert "DATABASE_URL" not in env and "CLAUDE_SESSION" not in env
    report = claude_cli.ok("claude-db", "plugins", "--json").json()
    assert report["engines"]["postgres"] == "postgres"  # the installed plugins, discovered


def test_an_unknown_engine_gets_a_suggestion_not_a_made_up_package(
    registered_engine: Engine, isolated_plugins: Plugins
) -> None:
    with pytest.raises(UnknownEngineError, match="did you mean 'postgres'"):
        isolated_plugins.engine("postgress")
    with pytest.raises(UnknownEngineError) as raised:
        isolated_plugins.engine("oracle")
    assert "pip install" not in str(raised.value) and "claude-db plugins" in str(raised.value)

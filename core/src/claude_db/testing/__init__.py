"""Test helpers for claude-db plugin authors: pytest fixtures and the engine contract suite.

Everything here drives real things: the installed ``claude-db``/``claude-session`` as
subprocesses, real servers, real plugin discovery. Nothing auto-loads the plugins
installed next to yours unless you ask for it.

Fixtures: enable them with ``pytest_plugins = ["claude_db.testing"]`` in your root
``conftest.py`` (as this project's tests/conftest.py does; it also makes pytest rewrite the
contract suite's assertions into readable diffs):

``isolated_plugins``
    A :class:`~claude_db.plugins.Plugins` holding only core's built-in runtimes: no
    installed plugin is loaded.
``register_plugin``
    ``register_plugin(obj, name=None)`` adds a plugin object (a module or any object with
    ``@hookimpl`` functions) to ``isolated_plugins`` and fills the registries; it is
    unregistered again when the test ends.
``claude_app``
    An application context (:class:`~claude_db.app.App`) over ``isolated_plugins``, to
    drive core in-process (``claude_db.lifecycle.start_session(claude_app, ...)``).
``registered_engine``
    An instance of your engine, registered in ``isolated_plugins``. Define an
    ``engine_class`` fixture returning your :class:`~claude_db.engine.Engine` subclass.
``claude_cli``
    A :class:`ClaudeCli`: runs the installed CLIs in a fresh work directory with an
    isolated ``CLAUDE_DB_STATE_DIR`` (shared by the test session, so cached server
    templates are built once) and none of the developer's ``CLAUDE_*``/``DATABASE_URL``
    variables.

The engine contract suite: subclass :class:`EngineContract`, name your engine and the
runtimes it supports, and pytest runs every contract test on each runtime::

    # tests/test_contract.py
    import pytest
    from claude_db.testing import EngineContract

    class TestMySQLContract(EngineContract):
        engine_name = "mysql"
        runtimes = ("local", "docker")           # "docker" cases carry @pytest.mark.docker
        docker_image = "claude-db-test/mariadb:10.11"  # default: $CLAUDE_DB_IMAGE

The suite starts a session per runtime (``claude-session start --db ENGINE --runtime
RUNTIME``) with a password full of URL-special characters (:data:`CONTRACT_PASSWORD`)
and checks: the session is ready; ``DATABASE_URL`` percent-encodes the credentials, matches
the component variables and ``.env``, and works on its own; ``query`` returns rows as JSON
and CSV and turns a bad query into one ``error:`` line; export → reset → import round-trips
through a ``.gz`` file and through stdin/stdout; ``reset`` empties the database and asks
before it does; ``status`` on a stopped server exits 4 and ``attach`` brings it back with
its data; ``delete`` leaves no process, port, directory (and on docker no container,
network or volume). The default data statements are plain SQL; a non-SQL engine (e.g. a
document store) overrides :attr:`EngineContract.seed_queries`, :attr:`probe_query`,
:meth:`EngineContract.assert_seeded_rows`, :attr:`invalid_query` and :attr:`shell_input`.

To run the suite against CLIs installed elsewhere (e.g. a fresh virtual environment
where your distribution was ``pip install``-ed), override the class-scoped
``contract_bin_dir`` fixture in your subclass::

    class TestInstalledContract(EngineContract):
        engine_name = "example"

        @pytest.fixture(scope="class")
        @classmethod
        def contract_bin_dir(cls, my_venv_bin: Path) -> Path:
            return my_venv_bin

docs/writing-an-engine.md has the whole story: hooks, contracts, loading rules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

import pytest

if TYPE_CHECKING:
    from claude_db.app import App
    from claude_db.engine import Engine
    from claude_db.plugins import Plugins
    from claude_db.runtime import Runtime

#: the password every contract session gets: each of these characters must be encoded in URLs
CONTRACT_PASSWORD = "p@ss:w/rd%?#x"
#: environment variables of claude-db and of database clients: never inherited by test CLIs
OUR_VARIABLES = ("CLAUDE_", "DATABASE_URL", "DB_", "PG", "MYSQL", "MARIADB", "MONGO", "DOCKER_HOST")
#: variables that would make a CLI import modules from somewhere else than its environment
FOREIGN_PYTHON = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV")


# -- running the real CLIs ----------------------------------------------------------------


@dataclass
class CliResult:
    """What one CLI run did."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str
    #: stdout as it came (``stdout`` is decoded text): binary dumps (e.g. MongoDB's) need it
    raw_stdout: bytes = field(default=b"", repr=False)

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.code}\n--- stdout\n{self.stdout}"
            f"--- stderr\n{self.stderr}"
        )


@dataclass
class ClaudeCli:
    """Runs ``claude-db``/``claude-session`` from ``bin_dir`` as real processes.

    The environment is the caller's without any claude-db or database-client variable,
    plus ``CLAUDE_DB_STATE_DIR=state_dir`` and ``env``; ``bin_dir`` leads ``PATH``.
    """

    state_dir: Path
    workdir: Path
    bin_dir: Path = field(default_factory=lambda: Path(sys.executable).parent)
    env: dict[str, str] = field(default_factory=dict)

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(OUR_VARIABLES) and key not in FOREIGN_PYTHON
        }
        base["PATH"] = os.pathsep.join([str(self.bin_dir), base.get("PATH", os.defpath)])
        base["CLAUDE_DB_STATE_DIR"] = str(self.state_dir)
        return {**base, **self.env, **(extra or {})}

    def __call__(
        self,
        *argv: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        input: bytes | str | None = None,
        timeout: float = 300,
    ) -> CliResult:
        program = self.bin_dir / argv[0]
        if not program.exists():
            raise FileNotFoundError(f"{argv[0]} is not installed in {self.bin_dir}")
        proc = subprocess.run(
            [str(program), *argv[1:]],
            cwd=cwd or self.workdir,
            env=self.environment(env),
            input=input.encode() if isinstance(input, str) else input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        return CliResult(
            list(argv), proc.returncode, proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"), raw_stdout=proc.stdout,
        )

    def db(self, *argv: str, **kwargs: Any) -> CliResult:
        return self("claude-db", *argv, **kwargs)

    def session(self, *argv: str, **kwargs: Any) -> CliResult:
        return self("claude-session", *argv, **kwargs)

    def ok(self, *argv: str, **kwargs: Any) -> CliResult:
        """Run and insist on exit 0."""
        result = self(*argv, **kwargs)
        assert result.code == 0, result
        return result


def assert_one_line_error(result: CliResult | Any, code: int) -> None:
    """A user error: exit ``code``, exactly one ``error: `` line on stderr, no traceback."""
    assert result.code == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result
    assert lines[0].startswith("error: "), result
    assert "Traceback" not in result.stderr + result.stdout, result


def traversable_tmpdir(factory: pytest.TempPathFactory, name: str) -> Path:
    """A temporary directory an unprivileged server user can traverse (servers run as one
    when the tests run as root; pytest's base temporary directory is 0700)."""
    path = factory.mktemp(name)
    os.chmod(path, 0o711)
    for parent in path.parents:
        with contextlib.suppress(OSError):
            ours = parent.stat().st_uid == os.geteuid()
            if ours and str(parent).startswith(("/tmp/", "/var/tmp/")):
                os.chmod(parent, parent.stat().st_mode | 0o111)
    return path


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def claude_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A claude-db state directory for the whole test session (never the developer's)."""
    return traversable_tmpdir(tmp_path_factory, "claude-db-state")


@pytest.fixture
def claude_cli(claude_state_dir: Path, tmp_path: Path) -> ClaudeCli:
    workdir = tmp_path / "work"
    workdir.mkdir()
    return ClaudeCli(state_dir=claude_state_dir, workdir=workdir)


@pytest.fixture
def isolated_plugins(monkeypatch: pytest.MonkeyPatch, claude_state_dir: Path) -> Plugins:
    """Core's built-in runtimes only: no installed plugin is loaded."""
    from claude_db.plugins import load_plugins
    from claude_db.settings import Settings

    monkeypatch.setenv("CLAUDE_DB_STATE_DIR", str(claude_state_dir))
    return load_plugins(Settings.from_env(), discover=False)


@pytest.fixture
def register_plugin(isolated_plugins: Plugins) -> Iterator[Callable[..., str]]:
    """``register_plugin(obj, name=None) -> name``: register into ``isolated_plugins``."""
    from claude_db.plugins import register_plugin as register
    from claude_db.plugins import unregister_plugin

    names: list[str] = []

    def add(plugin: object, name: str | None = None) -> str:
        plugin_name = name or getattr(plugin, "__name__", None) or f"test-plugin-{len(names)}"
        register(isolated_plugins, plugin, name=plugin_name)
        names.append(plugin_name)
        return plugin_name

    yield add
    for plugin_name in reversed(names):
        unregister_plugin(isolated_plugins, plugin_name)


@pytest.fixture
def claude_app(isolated_plugins: Plugins) -> App:
    """An application context over ``isolated_plugins``, for driving core in-process
    (``claude_db.lifecycle.start_session(claude_app, ...)``)."""
    from claude_db.app import App
    from claude_db.settings import Settings

    return App(Settings.from_env(), isolated_plugins)


@pytest.fixture
def engine_class() -> type[Engine]:
    """Override in your conftest: return the Engine subclass under test."""
    raise pytest.UsageError(
        "define an `engine_class` fixture returning your Engine subclass to use `registered_engine`"
    )


@pytest.fixture
def registered_engine(
    engine_class: type[Engine], register_plugin: Callable[..., str], isolated_plugins: Plugins
) -> Engine:
    """Your engine, registered through ``register_engines`` into ``isolated_plugins``."""
    from claude_db import hookimpl

    class EnginePlugin:
        @hookimpl
        def register_engines(self, register: Callable[[type[Engine]], None]) -> None:
            register(engine_class)

    register_plugin(EnginePlugin(), name=f"test-engine-{engine_class.name}")
    return isolated_plugins.engine(engine_class.name)


# -- the engine contract suite ----------------------------------------------------------


@dataclass
class ContractSession:
    """One running session of the engine under test, made by ``claude-session start``."""

    name: str
    engine: str
    runtime: str
    cli: ClaudeCli
    started: dict[str, Any]

    @property
    def workdir(self) -> Path:
        return self.cli.workdir

    def db(self, *argv: str, **kwargs: Any) -> CliResult:
        """``claude-db ARGV`` in the session's work directory (found through its ``.env``)."""
        return self.cli.db(*argv, **kwargs)

    def env(self) -> dict[str, str]:
        result = self.cli.ok("claude-session", "env", self.name, "-f", "json")
        values: dict[str, str] = result.json()
        return values


class EngineContract:
    """The contract every engine keeps, run through the real CLIs on each runtime.

    Subclass with a ``Test`` name and set :attr:`engine_name` (and :attr:`runtimes`).
    """

    #: the engine's name (what ``--db`` takes)
    engine_name: ClassVar[str]
    #: runtimes to run the suite on; cases on a runtime that runs containers are marked
    #: ``@pytest.mark.docker`` (they need a container engine and the test images)
    runtimes: ClassVar[Sequence[str]] = ("local",)
    #: the database image on docker (default: ``$CLAUDE_DB_IMAGE``)
    docker_image: ClassVar[str | None] = None

    #: statements that create a small data set (run one by one with ``claude-db query``)
    seed_queries: ClassVar[Sequence[str]] = (
        "CREATE TABLE contract_items (id integer PRIMARY KEY, label varchar(100))",
        "INSERT INTO contract_items (id, label) VALUES (1, 'one'), (2, 'it''s ünïcode ✓')",
    )
    #: a query returning the seeded data (``query --json``); fails or returns [] when empty
    probe_query: ClassVar[str] = "SELECT id, label FROM contract_items ORDER BY id"
    #: what ``query --json probe_query`` prints after seeding
    expected_rows: ClassVar[list[Any]] = [
        {"id": 1, "label": "one"},
        {"id": 2, "label": "it's ünïcode ✓"},
    ]
    #: a query the server rejects
    invalid_query: ClassVar[str] = "SELEKT nothing FROM nowhere"
    #: fed to ``claude-db shell`` on stdin, and a text its output must contain (None: no check)
    shell_input: ClassVar[str | None] = "SELECT 40 + 2 AS answer;\n"
    shell_expected: ClassVar[str] = "42"

    # -- parametrisation and fixtures -----------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "contract_runtime" not in metafunc.fixturenames:
            return
        params = [
            pytest.param(runtime, id=runtime,
                         marks=[pytest.mark.docker] if runtime_class(runtime).runs_containers
                         else [])
            for runtime in self.runtimes
        ]
        metafunc.parametrize("contract_runtime", params, scope="class")

    @pytest.fixture(scope="class")
    @classmethod
    def contract_bin_dir(cls) -> Path:
        """Where ``claude-db``/``claude-session`` are installed (default: this Python's)."""
        return Path(sys.executable).parent

    @pytest.fixture(scope="class")
    @classmethod
    def contract_state_dir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return traversable_tmpdir(tmp_path_factory, "contract-state")

    @pytest.fixture(scope="class")
    @classmethod
    def contract_cli_factory(
        cls, contract_bin_dir: Path, contract_state_dir: Path, contract_runtime: str,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Callable[[], ClaudeCli]:
        env = {"CLAUDE_DB_PASSWORD": CONTRACT_PASSWORD, "CLAUDE_DB_RUNTIME": contract_runtime}
        if runtime_class(contract_runtime).runs_containers:
            image = cls.docker_image or os.environ.get("CLAUDE_DB_IMAGE")
            if not image:
                raise pytest.UsageError(
                    f"{cls.__name__}: set docker_image or CLAUDE_DB_IMAGE for docker cases"
                )
            env["CLAUDE_DB_IMAGE"] = image

        def make() -> ClaudeCli:
            workdir = tmp_path_factory.mktemp(f"contract-{contract_runtime}-work")
            return ClaudeCli(contract_state_dir, workdir, contract_bin_dir, dict(env))

        return make

    @pytest.fixture(scope="class")
    @classmethod
    def contract_session(
        cls, contract_cli_factory: Callable[[], ClaudeCli], contract_runtime: str
    ) -> Iterator[ContractSession]:
        """A session shared by the contract tests of one runtime (each test resets it)."""
        with cls.started_session(contract_cli_factory(), contract_runtime) as session:
            yield session

    @classmethod
    @contextlib.contextmanager
    def started_session(cls, cli: ClaudeCli, runtime: str) -> Iterator[ContractSession]:
        name = f"contract-{runtime}-{secrets.token_hex(3)}"[:48]
        result = cli.session(
            "start", name, "--db", cls.engine_name, "--runtime", runtime, "--json"
        )
        try:
            assert result.code == 0, result
            yield ContractSession(name, cls.engine_name, runtime, cli, result.json())
        finally:
            # whatever a test did, nothing of the session may outlive it
            if (Path(cli.state_dir) / "sessions" / name).exists():
                cli.session("delete", name, "--yes")

    # -- helpers an engine may override ---------------------------------------------------

    def seed(self, session: ContractSession) -> None:
        for text in self.seed_queries:
            result = session.db("query", text)
            assert result.code == 0, result

    def probe(self, session: ContractSession) -> CliResult:
        return session.db("query", "--json", self.probe_query)

    def assert_seeded_rows(self, rows: Any) -> None:
        assert rows == self.expected_rows

    def assert_seeded(self, session: ContractSession) -> None:
        result = self.probe(session)
        assert result.code == 0, result
        self.assert_seeded_rows(result.json())

    def assert_empty(self, session: ContractSession) -> None:
        """The seeded data is gone: the probe fails cleanly (no such table) or finds nothing."""
        result = self.probe(session)
        if result.code == 0:
            assert result.json() in ([], None), result
        else:
            assert_one_line_error(result, 1)

    def reset(self, session: ContractSession) -> None:
        """Empty the database between steps (without the automatic snapshot: faster; the
        reset test itself runs ``reset`` as users do)."""
        result = session.db("reset", "--yes", env={"CLAUDE_DB_AUTO_SNAPSHOTS": "0"})
        assert result.code == 0, result

    # -- the contract ---------------------------------------------------------------------

    def test_start_gives_a_ready_session(
        self, contract_session: ContractSession, contract_runtime: str
    ) -> None:
        started = contract_session.started
        assert started["name"] == contract_session.name
        assert (started["engine"], started["runtime"]) == (self.engine_name, contract_runtime)
        assert started["status"] == "running"
        status = contract_session.db("status", "--json")
        assert status.code == 0, status
        report = status.json()
        assert report["ready"] is True and report["engine"] == self.engine_name
        assert report["version"], status
        listed = contract_session.cli.ok("claude-session", "list", "--json").json()
        mine = [s for s in listed if s["name"] == contract_session.name]
        assert len(mine) == 1 and mine[0]["status"] == "running", listed

    def test_database_url_encodes_credentials(self, contract_session: ContractSession) -> None:
        env = contract_session.env()
        url = env["DATABASE_URL"]
        scheme, rest = url.split("://", 1)
        assert scheme, url
        # every special character of the password is percent-encoded, and decodes back
        assert f":{quote(CONTRACT_PASSWORD, safe='')}@" in rest, url
        parts = urlsplit(url)
        assert parts.password is not None and parts.username is not None
        from urllib.parse import unquote

        assert unquote(parts.password) == env["DB_PASSWORD"] == CONTRACT_PASSWORD
        assert unquote(parts.username) == env["DB_USER"]
        assert parts.hostname == env["DB_HOST"] and str(parts.port) == env["DB_PORT"]
        assert unquote(parts.path.lstrip("/")) == env["DB_NAME"]
        assert env["CLAUDE_SESSION"] == contract_session.name
        # the .env beside the work holds the same URL, and only the owner may read it
        from dotenv import dotenv_values

        dotenv = contract_session.workdir / ".env"
        assert dotenv_values(dotenv)["DATABASE_URL"] == url
        assert dotenv.stat().st_mode & 0o077 == 0
        # the URL alone (no session, no .env) reaches the database: claude-db parses it back
        info = contract_session.db("info", "--json", "--show-password")
        assert info.code == 0, info
        host_url = info.json().get("HOST_DATABASE_URL") or info.json()["DATABASE_URL"]
        elsewhere = contract_session.workdir.parent
        masked = contract_session.db("info")  # without --show-password: in no form at all
        assert masked.code == 0, masked
        for secret in (CONTRACT_PASSWORD, quote(CONTRACT_PASSWORD, safe="")):
            assert secret not in masked.stdout + masked.stderr, masked
        bare = contract_session.cli.db("status", cwd=elsewhere, env={"DATABASE_URL": host_url})
        assert bare.code == 0, bare

    def test_query(self, contract_session: ContractSession) -> None:
        self.reset(contract_session)
        self.seed(contract_session)
        self.assert_seeded(contract_session)
        # by name, from anywhere
        named = contract_session.cli.db(
            "query", "--json", "--session", contract_session.name, self.probe_query,
            cwd=contract_session.workdir.parent,
        )
        assert named.code == 0, named
        self.assert_seeded_rows(named.json())
        csv = contract_session.db("query", "--csv", self.probe_query)
        assert csv.code == 0 and csv.stdout.strip(), csv
        table = contract_session.db("query", self.probe_query)
        assert table.code == 0 and table.stdout.strip(), table
        assert_one_line_error(contract_session.db("query", self.invalid_query), 1)

    def test_export_reset_import_round_trip(
        self, contract_session: ContractSession, tmp_path: Path
    ) -> None:
        self.reset(contract_session)
        self.seed(contract_session)
        dump = tmp_path / "dump.sql.gz"
        exported = contract_session.db("export", str(dump))
        assert exported.code == 0, exported
        assert dump.read_bytes()[:2] == b"\x1f\x8b", "a .gz export is gzip-compressed"
        to_stdout = contract_session.db("export", "-")
        assert to_stdout.code == 0 and to_stdout.stdout, to_stdout
        assert not [p for p in tmp_path.iterdir() if p.name != dump.name], "temporary files left"

        self.reset(contract_session)
        self.assert_empty(contract_session)
        imported = contract_session.db("import", str(dump))
        assert imported.code == 0, imported
        self.assert_seeded(contract_session)

        self.reset(contract_session)
        piped = contract_session.db("import", "-", input=to_stdout.raw_stdout)
        assert piped.code == 0, piped
        self.assert_seeded(contract_session)

    def test_reset_empties_and_asks_first(self, contract_session: ContractSession) -> None:
        self.reset(contract_session)
        self.seed(contract_session)
        # no terminal and no --yes: refused, nothing destroyed
        assert_one_line_error(contract_session.db("reset"), 6)
        self.assert_seeded(contract_session)
        emptied = contract_session.db("reset", "--yes")
        assert emptied.code == 0, emptied
        self.assert_empty(contract_session)
        self.seed(contract_session)  # the reset database is usable as before
        self.assert_seeded(contract_session)

    def test_shell_runs_the_engines_client(self, contract_session: ContractSession) -> None:
        if self.shell_input is None:
            pytest.skip(f"{type(self).__name__} declares no shell_input")
        result = contract_session.db("shell", input=self.shell_input)
        assert result.code == 0, result
        assert self.shell_expected in result.stdout, result

    def test_status_on_a_stopped_server_exits_4(self, contract_session: ContractSession) -> None:
        self.reset(contract_session)
        self.seed(contract_session)
        contract_session.cli.ok("claude-session", "stop", contract_session.name)
        assert_one_line_error(contract_session.db("status"), 4)
        assert_one_line_error(contract_session.db("query", self.probe_query), 4)
        contract_session.cli.ok("claude-session", "attach", contract_session.name, "--no-shell")
        assert contract_session.db("status").code == 0
        self.assert_seeded(contract_session)  # stop keeps the data

    def test_delete_leaves_nothing(
        self, contract_cli_factory: Callable[[], ClaudeCli], contract_runtime: str
    ) -> None:
        cli = contract_cli_factory()
        with self.started_session(cli, contract_runtime) as session:
            env = session.env()
            record = json.loads(
                (cli.state_dir / "sessions" / session.name / "session.json").read_text()
            )
            deleted = cli.session("delete", session.name, "--yes")
            assert deleted.code == 0, deleted
            assert leftovers(cli.state_dir, session.name, env, record) == []
            dotenv = cli.workdir / ".env"
            assert not dotenv.exists() or "DATABASE_URL" not in dotenv.read_text()
            listed = cli.ok("claude-session", "list", "--json").json()
            assert session.name not in [s["name"] for s in listed]
            assert_one_line_error(cli.db("status", "--session", session.name), 3)


def leftovers(
    state_dir: Path, name: str, env: dict[str, str], record: dict[str, Any]
) -> list[str]:
    """What a deleted session left behind, described in words (empty: nothing)."""
    from claude_db.processes import is_running

    found: list[str] = []
    session_dir = state_dir / "sessions" / name
    if session_dir.exists():
        found.append(f"directory {session_dir}")
    for path in state_dir.rglob(f"*{name}*"):
        if path.is_dir():
            found.append(f"directory {path}")
    for key in ("datadir", "socket_dir"):
        value = record.get("runtime_state", {}).get(key)
        if value and Path(value).exists():
            found.append(f"{key} {value}")
    found += [f"process {pid}: {cmd}" for pid, cmd in processes_mentioning(str(session_dir))]
    pid = record.get("runtime_state", {}).get("pid")
    if isinstance(pid, int) and is_running(pid):
        found.append(f"process {pid} (the server)")
    if env.get("DB_HOST") in ("127.0.0.1", "localhost", "::1") and _port_answers(
        env["DB_HOST"], int(env["DB_PORT"])
    ):
        found.append(f"port {env['DB_HOST']}:{env['DB_PORT']} still answers")
    if record.get("runtime"):
        found += runtime_leftovers(state_dir, name, record["runtime"])
    return found


def runtime_leftovers(state_dir: Path, name: str, runtime_name: str) -> list[str]:
    """What session ``name``'s runtime still holds for it (its containers, its servers...),
    as the runtime itself finds it for ``claude-session gc``."""
    from claude_db.settings import Settings

    settings = dataclasses.replace(Settings.from_env(), state_dir=state_dir)
    runtime = runtime_class(runtime_name)(settings)
    if not runtime.available():
        return []
    return [f"{o.kind} {o.what}" for o in runtime.leftovers(state_dir).get(name, [])]


@functools.cache
def runtime_class(name: str) -> type[Runtime]:
    """The installed runtime called ``name`` (as the ``claude-db`` command finds it)."""
    from claude_db.plugins import load_plugins
    from claude_db.settings import Settings

    return load_plugins(Settings.from_env()).runtime_class(name)


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text``."""
    from claude_db import processes

    return processes.processes_mentioning(text)


def _port_answers(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


# -- installing as users do ------------------------------------------------------------


def pip(*args: str) -> str:
    """Run this environment's pip; fail with its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
    )
    if proc.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def wheel_metadata(wheel: Path) -> tuple[str, list[str]]:
    """A wheel's distribution name and its ``Requires-Dist`` lines."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = archive.read(name).decode().split("\n\n", 1)[0].splitlines()
    dist = next(line.split(": ", 1)[1] for line in headers if line.startswith("Name: "))
    requires = [line.split(": ", 1)[1] for line in headers if line.startswith("Requires-Dist: ")]
    return dist, requires


def build_wheelhouse(dest: Path, projects: Sequence[Path]) -> Path:
    """Build wheels of ``projects`` (source directories) into ``dest``, and download the
    third-party wheels they need, pinned to the versions this environment runs with.

    Installing from ``dest`` alone (:func:`fresh_environment`) then needs no index, so a
    name that also exists on a public index can never be picked instead of yours.
    """
    import importlib.util
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dest.mkdir(parents=True, exist_ok=True)
    # hatchling from this environment when it has one (fast, offline); else pip fetches it
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    pip("wheel", "-q", "--no-deps", *isolation, "-w", str(dest), *map(str, projects))
    ours: set[str] = set()
    requirements: set[str] = set()
    for wheel in dest.glob("*.whl"):
        dist, requires = wheel_metadata(wheel)
        ours.add(canonicalize_name(dist))
        requirements.update(r for r in requires if "extra ==" not in r)
    third_party = sorted(
        r for r in requirements if canonicalize_name(Requirement(r).name) not in ours
    )
    constraints = dest / "constraints.txt"
    constraints.write_text("".join(
        f"{d.metadata['Name']}=={d.version}\n" for d in metadata.distributions()
        if canonicalize_name(d.metadata["Name"]) not in ours
    ))
    if third_party:
        pip("download", "-q", "--only-binary=:all:", "-d", str(dest), "-c", str(constraints),
            *third_party)
    return dest


def fresh_environment(wheelhouse: Path, where: Path, *requirements: str) -> Path:
    """A new virtual environment (no system site-packages) with ``requirements`` installed
    from ``wheelhouse`` alone, as ``pip install`` does for a user; returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    assert "include-system-site-packages = false" in (where / "pyvenv.cfg").read_text()
    if requirements:
        pip("--python", str(where / "bin" / "python"), "install", "-q", "--no-index",
            "--find-links", str(wheelhouse), *requirements)
    return where / "bin"


__all__ = [
    "CONTRACT_PASSWORD",
    "ClaudeCli",
    "CliResult",
    "ContractSession",
    "EngineContract",
    "assert_one_line_error",
    "build_wheelhouse",
    "claude_app",
    "claude_cli",
    "claude_state_dir",
    "docker_leftovers",
    "engine_class",
    "fresh_environment",
    "isolated_plugins",
    "leftovers",
    "pip",
    "processes_mentioning",
    "register_plugin",
    "registered_engine",
    "traversable_tmpdir",
    "wheel_metadata",
]

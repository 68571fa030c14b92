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

The modules, one concept each: :mod:`~claude_db.testing.cli` (running the CLIs),
:mod:`~claude_db.testing.fixtures`, :mod:`~claude_db.testing.contract` (the suite),
:mod:`~claude_db.testing.leaks` (what a deleted session left) and
:mod:`~claude_db.testing.install` (wheels and fresh environments); this package re-exports
their public names. Two more serve this project's own suite and any that wants them:
:mod:`~claude_db.testing.safety` (own state directories, data fingerprints, leak checks of
a state directory) and :mod:`~claude_db.testing.docker` (the docker runtime's harness and
fixtures: ``pytest_plugins = ["claude_db.testing.docker"]``).

docs/writing-an-engine.md has the whole story: hooks, contracts, loading rules.
"""

from claude_db.testing.cli import (
    BIN,
    FOREIGN_PYTHON,
    OUR_VARIABLES,
    ClaudeCli,
    Cli,
    CliResult,
    assert_one_line_error,
    read_dotenv,
    run_on_terminal,
)
from claude_db.testing.contract import (
    CONTRACT_PASSWORD,
    ContractSession,
    EngineContract,
    QueryStreamingContract,
)
from claude_db.testing.fixtures import (
    claude_app,
    claude_cli,
    claude_state_dir,
    engine_class,
    isolated_plugins,
    register_plugin,
    registered_engine,
    traversable_tmpdir,
)
from claude_db.testing.install import (
    build_wheelhouse,
    fresh_environment,
    pip,
    shared_wheelhouse,
    wheel_metadata,
)
from claude_db.testing.leaks import (
    leftovers,
    processes_mentioning,
    runtime_class,
    runtime_leftovers,
)

__all__ = [
    "BIN",
    "CONTRACT_PASSWORD",
    "FOREIGN_PYTHON",
    "OUR_VARIABLES",
    "ClaudeCli",
    "Cli",
    "CliResult",
    "ContractSession",
    "EngineContract",
    "QueryStreamingContract",
    "assert_one_line_error",
    "build_wheelhouse",
    "claude_app",
    "claude_cli",
    "claude_state_dir",
    "engine_class",
    "fresh_environment",
    "isolated_plugins",
    "leftovers",
    "pip",
    "processes_mentioning",
    "read_dotenv",
    "register_plugin",
    "registered_engine",
    "run_on_terminal",
    "runtime_class",
    "runtime_leftovers",
    "shared_wheelhouse",
    "traversable_tmpdir",
    "wheel_metadata",
]

"""Shared fixtures: every test gets its own claude-db state and runs the real, installed CLIs."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest rewrites claude_db.testing's assertions (the contract suite's) into readable diffs
# only when told before the package is first imported: here, before the imports below
pytest.register_assert_rewrite("claude_db.testing")

from claude_db.testing import BIN, OUR_VARIABLES, Cli, CliResult  # noqa: E402
from claude_db.testing.cli import TEST_ENV  # noqa: E402
from claude_db.testing.contract import QueryStreamingContract  # noqa: E402
from claude_db.testing.docker import (  # noqa: E402
    DOCKER_IMAGES,
    docker_daemon,  # noqa: F401 - engine_session's
    remove_everything,
)
from claude_db.testing.install import shared_wheelhouse  # noqa: E402
from claude_db.testing.safety import cleanup, fresh_state  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# claude_db.testing's fixtures (isolated_plugins, register_plugin, claude_cli...) for every
# test, with pytest's assertion rewriting for the engine contract suite it holds
pytest_plugins = ["claude_db.testing"]

#: The quick loop (``./dev test``) runs every behaviour on the local runtime once, and the
#: docker runtime's own modules whole; ``slow`` tests are what CI (``./dev test --all``)
#: adds. Besides the modules and tests marked ``slow`` themselves (other runtimes, scale,
#: fresh installs): the docker-marked tests of other modules (a scenario's docker cells,
#: session containers), a scenario's MySQL cells where it runs on PostgreSQL too (MySQL's
#: own modules stay whole), a kill at every step but the first (``step``), and the engine
#: contract's million-row streaming checks.
DOCKER_RUNTIME_OWN = {"test_contract_postgres", "test_contract_mysql", "test_mongo_docker"}


def _slow(item: pytest.Item) -> bool:
    module = item.module.__name__.rpartition(".")[2] if isinstance(item, pytest.Function) else ""
    docker_own = module.startswith("test_docker_") or module in DOCKER_RUNTIME_OWN
    spec = getattr(item, "callspec", None)
    engine = spec.params.get("engine") if spec else None
    return ((item.get_closest_marker("docker") is not None and not docker_own)
            or (isinstance(engine, str) and not engine.startswith("postgres"))
            or (spec is not None and spec.indices.get("step", 0) > 0)
            or (getattr(item, "originalname", "") == "test_query_streams"
                and issubclass(getattr(item, "cls", None) or object, QueryStreamingContract)))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that share a module- or class-scoped fixture (a running session, a wheelhouse,
    a second user) run on one worker of a parallel run, so that it is made once, not once
    per worker. A test's own ``xdist_group`` mark wins."""
    for item in items:
        if _slow(item):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("xdist_group") or not hasattr(item, "_fixtureinfo"):
            continue
        shared = [
            defs[-1] for defs in item._fixtureinfo.name2fixturedefs.values()
            if defs[-1].scope in ("class", "module")
        ]
        if not shared:
            continue
        scopes = {fixture.scope for fixture in shared}
        node = item.getparent(pytest.Class if scopes == {"class"} else pytest.Module)
        params = getattr(item, "callspec", None)
        # a class- or module-scoped parameter (the contract's runtime) makes a group of its own
        keys = sorted(f"{fixture.argname}={params.params[fixture.argname]}" for fixture in shared
                      if params is not None and fixture.argname in params.params)
        assert node is not None
        item.add_marker(pytest.mark.xdist_group("-".join([node.nodeid, *keys])))


@pytest.fixture(scope="session")
def state_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("state")
    os.chmod(root, 0o711)  # the unprivileged server user must reach its data directory
    for parent in root.parents:  # pytest's base temp dir is 0700 for root
        if str(parent).startswith("/tmp/") and parent.stat().st_uid == os.geteuid():
            os.chmod(parent, parent.stat().st_mode | 0o111)
    return root


@pytest.fixture(scope="session")
def project_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of core, every plugin and the example engine, and of the third-party packages
    they need: built once per test run, for every test that installs as users do."""
    plugins = sorted(path.parent for path in (ROOT / "plugins").glob("*/pyproject.toml"))
    projects = [ROOT / "core", *plugins, ROOT / "tests" / "example_engine"]
    return shared_wheelhouse(tmp_path_factory, "project-wheels", projects)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, state_root: Path) -> Iterator[None]:
    """No test sees the developer's sessions, settings or plugins' variables."""
    for key in list(os.environ):
        if key.startswith(OUR_VARIABLES):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CLAUDE_DB_STATE_DIR", str(state_root))
    monkeypatch.setenv("CLAUDE_DB_RUNTIME", "local")
    for key, value in TEST_ENV.items():  # a loaded machine's servers may take minutes
        monkeypatch.setenv(key, value)
    from claude_db.app import reset_app

    reset_app()
    yield
    reset_app()


@pytest.fixture
def state(tmp_path: Path, state_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state directory of this test's own (``fresh_state``): what is left in it is what
    leaked; its sessions are deleted at the end, even when the test fails."""
    path = fresh_state(tmp_path, state_root)
    monkeypatch.setenv("CLAUDE_DB_STATE_DIR", str(path))
    yield path
    cleanup(path)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def cli(workdir: Path) -> Cli:
    """Run ``claude-db``/``claude-session`` as a user does: a real process, in ``workdir``."""

    def run(
        *argv: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        input: bytes | str | None = None,
        timeout: float = 600,  # a guard against a hang, never a measure (a loaded machine)
    ) -> CliResult:
        program = shutil.which(argv[0], path=str(BIN)) or argv[0]
        proc = subprocess.run(
            [program, *argv[1:]],
            cwd=cwd or workdir,
            env={**os.environ, **(env or {})},
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        return CliResult(list(argv), proc.returncode, proc.stdout.decode(), proc.stderr.decode(),
                         raw_stdout=proc.stdout)

    return run


@pytest.fixture
def engine_session(cli: Cli, engine: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A session of ``engine`` (a fixture of the test's module: "postgres", "mysql@docker";
    see ``claude_db.testing.docker.EVERYWHERE``), named after the module, deleted at the end."""
    db, _, runtime = engine.partition("@")
    prefix = request.module.__name__.removeprefix("test_")
    name = f"{prefix}-{db}-{uuid.uuid4().hex[:8]}"  # Docker names are global: unique
    argv = ["claude-session", "start", name, "--db", db]
    if runtime == "docker":
        request.getfixturevalue("docker_daemon")  # fails loudly without Docker or images
        argv += ["--runtime", "docker", "--db-image", DOCKER_IMAGES[db]]
    started = cli(*argv)
    assert started.code == 0, started
    yield name
    cli("claude-session", "delete", name, "--yes")
    if runtime == "docker":
        remove_everything(name)

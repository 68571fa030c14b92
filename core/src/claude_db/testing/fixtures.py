"""The pytest fixtures ``pytest_plugins = ["claude_db.testing"]`` enables (see the package
docstring), and :func:`traversable_tmpdir` for directories a server user must reach."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from claude_db.testing.cli import ClaudeCli

if TYPE_CHECKING:
    from claude_db.app import App
    from claude_db.engine import Engine
    from claude_db.plugins import Plugins


def traversable_tmpdir(factory: pytest.TempPathFactory, name: str) -> Path:
    """A temporary directory an unprivileged server user can traverse (servers run as one
    when the tests run as root; pytest's base temporary directory is 0700)."""
    path = factory.mktemp(name)
    make_traversable(path)
    return path


def make_traversable(path: Path) -> None:
    """Let every user through ``path`` (0711) and through its temporary parents of ours."""
    os.chmod(path, path.stat().st_mode & 0o7777 | 0o711)
    for parent in path.parents:
        with contextlib.suppress(OSError):
            ours = parent.stat().st_uid == os.geteuid()
            if ours and str(parent).startswith(("/tmp/", "/var/tmp/")):
                os.chmod(parent, parent.stat().st_mode | 0o111)


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

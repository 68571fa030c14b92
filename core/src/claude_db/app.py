"""The application context: settings, loaded plugins, the session store."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from claude_db.errors import ClaudeDbError
from claude_db.plugins import Plugins, load_plugins
from claude_db.runtime import Runtime
from claude_db.session import SessionStore
from claude_db.settings import Settings
from claude_db.statedir import check_state_dir

if TYPE_CHECKING:
    from claude_db.engine import Engine


@dataclass
class App:
    settings: Settings
    plugins: Plugins

    @property
    def store(self) -> SessionStore:
        return SessionStore(self.settings.state_dir)

    def runtime(self, name: str) -> Runtime:
        return self.plugins.runtime_class(name)(self.settings)

    def choose_runtime(
        self, requested: str, engine: Engine, image: str
    ) -> tuple[Runtime, str | None]:
        """The runtime for a new session of ``engine`` (``image``: its database image), and
        a note when ``auto`` passed over one. ``auto`` takes the first runtime by priority
        that is available and can make the session; if none can, the first available one
        (its ``create`` says why not)."""
        if requested != "auto":
            runtime = self.runtime(requested)
            if not runtime.available():
                raise runtime.unavailable_error()
            return runtime, None
        ranked = sorted((cls for _, cls in self.plugins.runtimes.items()),
                        key=lambda cls: cls.auto_priority, reverse=True)
        passed: list[str] = []  # why each runtime before the chosen one was not taken
        first_available: Runtime | None = None
        for cls in ranked:
            runtime = cls(self.settings)
            if not runtime.available():
                passed.append(runtime.unavailable_reason())
                continue
            first_available = first_available or runtime
            reason = runtime.cannot_create(engine, image)
            if reason is None:
                note = f"{'; '.join(passed)}; using the {runtime.name} runtime" if passed else None
                return runtime, note
            passed.append(f"the {runtime.name} runtime cannot run a {engine.name} session "
                          f"here: {reason}")
        if first_available is not None:
            return first_available, None
        raise ClaudeDbError("no runtime is available on this machine")


@functools.cache
def get_app() -> App:
    settings = Settings.from_env()
    check_state_dir(settings.state_dir)  # before anything acts on what it holds
    return App(settings, load_plugins(settings))


def reset_app() -> None:
    """Forget the cached context (tests change the environment between runs)."""
    get_app.cache_clear()

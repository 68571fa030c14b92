"""The application context: settings, loaded plugins, the session store."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from claude_db.errors import ClaudeDbError
from claude_db.plugins import Plugins, load_plugins
from claude_db.runtime import Runtime
from claude_db.session import SessionStore
from claude_db.settings import Settings
from claude_db.statedir import check_state_dir


@dataclass
class App:
    settings: Settings
    plugins: Plugins

    @property
    def store(self) -> SessionStore:
        return SessionStore(self.settings.state_dir)

    def runtime(self, name: str) -> Runtime:
        return self.plugins.runtime_class(name)(self.settings)

    def choose_runtime(self, requested: str) -> tuple[Runtime, str | None]:
        """The runtime for a new session, and a note when ``auto`` fell back."""
        if requested != "auto":
            runtime = self.runtime(requested)
            if not runtime.available():
                raise runtime.unavailable_error()
            return runtime, None
        ranked = sorted(
            self.plugins.runtimes.items(), key=lambda item: item[1].auto_priority, reverse=True
        )
        skipped: list[Runtime] = []
        for _, cls in ranked:
            runtime = cls(self.settings)
            if runtime.available():
                note = None
                if skipped:
                    reasons = "; ".join(r.unavailable_reason() for r in skipped)
                    note = f"{reasons}; using the {runtime.name} runtime"
                return runtime, note
            skipped.append(runtime)
        raise ClaudeDbError("no runtime is available on this machine")


@functools.cache
def get_app() -> App:
    settings = Settings.from_env()
    check_state_dir(settings.state_dir)  # before anything acts on what it holds
    return App(settings, load_plugins(settings))


def reset_app() -> None:
    """Forget the cached context (tests change the environment between runs)."""
    get_app.cache_clear()

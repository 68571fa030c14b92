"""The ``example-local`` runtime: a plugin runtime wrapping core's local runtime.

Registered under its own entry point (``example-runtime``) to show that runtimes are
plugins like engines: ``claude-session start --runtime example-local``. It runs the
engine's :class:`~claude_db.LocalServer` exactly as ``local`` does, and records in the
session which runtime it wrapped.
"""

from __future__ import annotations

from collections.abc import Callable

from claude_db import Endpoint, Engine, Runtime, Tools, hookimpl
from claude_db.runtime import Status
from claude_db.runtimes.local import LocalRuntime
from claude_db.session import Session
from claude_db.settings import Settings


class ExampleRuntime(Runtime):
    name = "example-local"
    auto_priority = -10  # never chosen by --runtime auto over the built-in runtimes

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.inner = LocalRuntime(settings)

    def create(self, session: Session, engine: Engine) -> None:
        self.inner.create(session, engine)
        session.runtime_state["wraps"] = self.inner.name

    def start(self, session: Session, engine: Engine) -> None:
        self.inner.start(session, engine)

    def stop(self, session: Session, engine: Engine) -> None:
        self.inner.stop(session, engine)

    def delete(self, session: Session, engine: Engine, *, keep_data: bool) -> None:
        self.inner.delete(session, engine, keep_data=keep_data)

    def status(self, session: Session) -> Status:
        return self.inner.status(session)

    def endpoint(self, session: Session, engine: Engine) -> Endpoint:
        return self.inner.endpoint(session, engine)

    def tools(self, session: Session, engine: Engine, database: str | None = None) -> Tools:
        return self.inner.tools(session, engine, database)

    def failure_details(self, session: Session) -> str | None:
        return self.inner.failure_details(session)


@hookimpl
def register_runtimes(register: Callable[[type[Runtime]], None]) -> None:
    register(ExampleRuntime)

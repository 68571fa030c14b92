"""What ``claude-db`` works on: a database, its engine, and the runtime that holds it."""

from __future__ import annotations

from dataclasses import dataclass

from claude_db.app import App
from claude_db.engine import Endpoint, Engine, Tools
from claude_db.errors import NotRunningError, UsageError
from claude_db.readiness import listening as listening  # imported from here too
from claude_db.runtime import Runtime
from claude_db.runtimes.url import UrlRuntime
from claude_db.session import Session


def parts(app: App, session: Session) -> tuple[Engine, Runtime]:
    """A session's engine and runtime."""
    assert session.engine is not None and session.runtime is not None
    return app.plugins.engine(session.engine), app.runtime(session.runtime)


@dataclass
class Target:
    """A database as claude-db reaches it: a session's, or one a bare URL names (its
    runtime a :class:`UrlRuntime`, its session an unsaved record of the URL)."""

    name: str
    engine: Engine
    runtime: Runtime
    session: Session
    #: an inherited variable names another database than the one resolved (see resolve)
    conflict: str | None = None
    #: a bare URL that is a session's own (its session container's environment)
    owned: bool = False

    @property
    def bare_url(self) -> bool:
        """Whether only a URL names the database: no session of this state directory."""
        return isinstance(self.runtime, UrlRuntime)

    def endpoint(self, database: str | None = None) -> Endpoint:
        self._refuse_internal(database)
        return self.runtime.endpoint(self.session, self.engine).with_database(database)

    def tools(self, database: str | None = None) -> Tools:
        self._refuse_internal(database)
        return self.runtime.tools(self.session, self.engine, database)

    def _refuse_internal(self, database: str | None) -> None:
        """A database the engine keeps for itself (its snapshot history) is no command's."""
        if database is not None and database.lower() in self.engine.internal_databases:
            raise UsageError(f"database {database!r} is claude-db's own (it keeps the "
                             "snapshots there): name another with --database")

    def require_running(self) -> None:
        status = self.runtime.status(self.session)
        if status == "running":
            return
        if self.bare_url:
            endpoint = self.endpoint()
            raise NotRunningError(
                f"nothing answers at {endpoint.host}:{endpoint.port} ({self.name})"
            )
        raise NotRunningError(
            f"the database of session {self.name!r} is {status}; "
            f"start it with: claude-session attach {self.name} --no-shell"
        )

"""What ``claude-db`` works on: a database, its engine, and the runtime that holds it."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from claude_db.app import App
from claude_db.engine import Endpoint, Engine, Tools
from claude_db.errors import NotRunningError
from claude_db.processes import HostTools
from claude_db.runtime import Runtime
from claude_db.session import Session


def parts(app: App, session: Session) -> tuple[Engine, Runtime]:
    """A session's engine and runtime."""
    assert session.engine is not None and session.runtime is not None
    return app.plugins.engine(session.engine), app.runtime(session.runtime)


@dataclass
class Target:
    """A session's database as claude-db reaches it (``runtime`` is None for a bare URL)."""

    name: str
    engine: Engine
    runtime: Runtime | None
    session: Session | None
    url_endpoint: Endpoint | None = None
    #: an inherited variable names another database than the one resolved (see resolve)
    conflict: str | None = None
    #: a bare URL that is a session's own (its session container's environment)
    owned: bool = False

    def endpoint(self, database: str | None = None) -> Endpoint:
        if self.runtime is None or self.session is None:
            assert self.url_endpoint is not None
            return self.url_endpoint.with_database(database)
        return self.runtime.endpoint(self.session, self.engine).with_database(database)

    def tools(self, database: str | None = None) -> Tools:
        if self.runtime is None or self.session is None:
            return HostTools(self.endpoint(database))
        tools = self.runtime.tools(self.session, self.engine)
        tools.endpoint = tools.endpoint.with_database(database)
        tools.client_endpoint = self.endpoint(database)
        return tools

    def require_running(self) -> None:
        if self.runtime is None or self.session is None:
            endpoint = self.endpoint()
            if not listening(endpoint):  # a bare URL has no session to ask
                raise NotRunningError(
                    f"nothing answers at {endpoint.host}:{endpoint.port} ({self.name})"
                )
            return
        status = self.runtime.status(self.session)
        if status != "running":
            raise NotRunningError(
                f"the database of session {self.name!r} is {status}; "
                f"start it with: claude-session attach {self.name} --no-shell"
            )


def listening(endpoint: Endpoint, timeout: float = 5) -> bool:
    """Whether something accepts TCP connections at ``endpoint`` (a unix socket directory
    is taken as yes: the engine's own connection tells)."""
    if not endpoint.host or endpoint.host.startswith("/"):
        return True
    try:
        socket.create_connection((endpoint.host, endpoint.port), timeout=timeout).close()
    except OSError:  # refused, unreachable, unresolvable, timed out
        return False
    return True

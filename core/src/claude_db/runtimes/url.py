"""A database only a URL names (a bare ``DATABASE_URL``): a runtime that reaches it.

It is not registered: ``claude-session start`` never picks it; resolving a command's
database makes one for the URL it found (see :func:`claude_db.database.resolve`).
claude-db never makes, starts, stops or removes such a database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from claude_db.engine import Endpoint, Engine, Tools
from claude_db.errors import UsageError
from claude_db.processes import HostTools
from claude_db.readiness import listening
from claude_db.runtime import Runtime, Status
from claude_db.session import Session

if TYPE_CHECKING:
    from claude_db.settings import Settings


class UrlRuntime(Runtime):
    """The database at one URL's endpoint, with this host's client tools."""

    name: ClassVar[str] = "url"

    def __init__(self, settings: Settings, endpoint: Endpoint) -> None:
        super().__init__(settings)
        self.url_endpoint = endpoint

    def record(self, label: str, engine: Engine, workdir: str) -> Session:
        """The session-like record of the URL's database (never saved): ``label`` says
        where the URL came from (``DATABASE_URL``, or the session name beside it)."""
        return Session(label, workdir, engine.name, self.name,
                       credentials=self.url_endpoint.credentials)

    def _refuse(self, what: str) -> UsageError:
        return UsageError(f"cannot {what} a database only a URL names "
                          f"({self.url_endpoint.host}:{self.url_endpoint.port})")

    def create(self, session: Session, engine: Engine) -> None:
        raise self._refuse("create")

    def start(self, session: Session, engine: Engine) -> None:
        raise self._refuse("start")

    def stop(self, session: Session, engine: Engine) -> None:
        raise self._refuse("stop")

    def delete(self, session: Session, engine: Engine, *, keep_data: bool) -> None:
        raise self._refuse("delete")

    def status(self, session: Session) -> Status:
        """Whether something listens at the URL's address (no session to ask)."""
        return "running" if listening(self.url_endpoint) else "stopped"

    def endpoint(self, session: Session, engine: Engine) -> Endpoint:
        return self.url_endpoint

    def tools(self, session: Session, engine: Engine, database: str | None = None) -> Tools:
        return HostTools(self.url_endpoint.with_database(database))

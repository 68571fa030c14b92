"""The Runtime base class: where a session's database runs (docker, local, or a plugin's)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from claude_db.errors import ClaudeDbError

if TYPE_CHECKING:
    from claude_db.engine import Endpoint, Engine, Tools
    from claude_db.session import Session
    from claude_db.settings import Settings

Status = Literal["running", "stopped", "missing"]


@dataclass
class Orphan:
    """Something left behind by a gone session, or unused by a live one (``claude-session
    gc`` lists and removes it)."""

    kind: str  # session, process, directory, lock, container, network, volume...
    what: str  # a pid, a path or a runtime's name for it
    detail: str
    removed: bool = False
    error: str | None = None
    remove: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)
    #: also taken while its session lives: nothing a command of it can still be using (a
    #: tools container an interrupted command created and never started)
    unused: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "detail": self.detail,
                "removed": self.removed, "error": self.error}


class Runtime(ABC):
    """Creates, starts, stops and deletes a session's database server.

    Registered through the ``register_runtimes`` hook; ``name`` is what ``--runtime`` takes.
    A runtime records what it needs to find its resources again in
    ``session.runtime_state`` (saved with the session).
    """

    name: ClassVar[str]
    #: ``--runtime auto`` tries runtimes by descending priority and takes the first available
    auto_priority: ClassVar[int] = 0
    #: whether ``--db-image``, ``--image`` and ``--publish`` mean anything to this runtime
    runs_containers: ClassVar[bool] = False
    #: whether :meth:`leftovers` only reads this machine's files, cheaply: then the sweep on
    #: every ``start`` asks it; else only while a live session uses this runtime
    cheap_leftovers: ClassVar[bool] = False
    #: what :meth:`unavailable_error` raises (its exit code tells scripts why)
    unavailable_error_class: ClassVar[type[ClaudeDbError]] = ClaudeDbError

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def available(self) -> bool:
        """Whether this runtime can be used on this machine right now (cheap check)."""
        return True

    def unavailable_reason(self) -> str:
        return f"the {self.name} runtime is not available here"

    def unavailable_error(self) -> ClaudeDbError:
        """The error of a command that needs this runtime while it is not available."""
        return self.unavailable_error_class(self.unavailable_reason())

    def cannot_create(self, engine: Engine, image: str) -> str | None:
        """Why a new session of ``engine`` cannot be made here although the runtime is
        :meth:`available` (``image``: its database image, for a runtime that runs
        containers), found cheaply; None when it can as far as can be told. ``--runtime
        auto`` passes over a runtime that says why."""
        return None

    def leftovers(self, state_dir: Path) -> dict[str, list[Orphan]]:
        """What this runtime holds for sessions of ``state_dir``, by session name, in the
        order to remove it (what holds the rest first): never anything of another state
        directory or user. ``gc`` removes a session's part only while it holds the session's
        lock and the session is gone (live sessions' parts are listed and left alone).
        Only called while :meth:`available`."""
        return {}

    @abstractmethod
    def create(self, session: Session, engine: Engine) -> None:
        """Make the session's resources and start its database (readiness is checked by core)."""

    def create_copy(self, session: Session, engine: Engine, source: Session) -> str | None:
        """Fork: :meth:`create`, with a copy of ``source``'s running database as its data,
        made the fastest consistent way this runtime has; return that way (``reflink``,
        ``copy``), or None without one (core creates, then dumps and restores)."""
        return None

    @abstractmethod
    def start(self, session: Session, engine: Engine) -> None:
        """Start whatever of the session stopped; a no-op when all runs (readiness is
        checked by core)."""

    def start_workspace(self, session: Session, engine: Engine, env: dict[str, str]) -> None:
        """Once the database answers (after :meth:`create` or :meth:`start`): start what
        the session's programs run in, if this runtime makes one (the docker runtime's
        session container), with ``env``, the environment core computed for them
        (``DATABASE_URL``...); a no-op when it runs already."""
        return  # most runtimes make none

    @abstractmethod
    def stop(self, session: Session, engine: Engine) -> None:
        """Stop the session's database, keeping its data."""

    @abstractmethod
    def delete(self, session: Session, engine: Engine, *, keep_data: bool) -> None:
        """Remove every resource of the session (the data too, unless ``keep_data``)."""

    def kept_record(self, session: Session) -> dict[str, Any] | None:
        """After ``delete(keep_data=True)``: what was kept, as JSON data that
        :meth:`remove_kept` takes later (``None``: nothing was kept)."""
        return None

    def remove_kept(self, record: Mapping[str, Any]) -> None:
        """Remove data a ``delete(keep_data=True)`` kept (``record``: from
        :meth:`kept_record`), after checking it still is what was kept."""
        raise ClaudeDbError(f"the {self.name} runtime keeps no data it could remove")

    @abstractmethod
    def status(self, session: Session) -> Status:
        """Whether the session's database server is running."""

    @abstractmethod
    def endpoint(self, session: Session, engine: Engine) -> Endpoint:
        """The database as reached from where claude-db runs (this host)."""

    def session_endpoint(self, session: Session, engine: Engine) -> Endpoint:
        """The database as reached by the session's programs (what ``DATABASE_URL`` says)."""
        return self.endpoint(session, engine)

    @abstractmethod
    def tools(self, session: Session, engine: Engine, database: str | None = None) -> Tools:
        """The engine's client tools for the session's database (``database``: another
        database of its server; None: the session's own), complete: ``endpoint`` as seen
        where they run and ``client_endpoint`` as seen from claude-db's process (None when
        it is ``endpoint``). Core sets nothing on them but an import's ``workdir``."""

    def failure_details(self, session: Session) -> str | None:
        """If the server is known to have died, a short reason (e.g. its last log lines)."""
        return None

    def enter_shell(self, session: Session, env: dict[str, str]) -> int:
        """Open an interactive shell for ``attach`` (in the session container, if any)."""
        from claude_db.processes import run_shell

        return run_shell(session.workdir, env)

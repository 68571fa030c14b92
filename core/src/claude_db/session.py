"""Sessions: the model and its on-disk state (one JSON file per session, under a lock)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import unicodedata
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from claude_db.engine import Credentials
from claude_db.errors import ClaudeDbError, SessionExistsError, SessionNotFoundError, UsageError
from claude_db.locks import hold, lock_for
from claude_db.statedir import check_owned, make_dirs

# Docker names allow more, but these also make valid DNS labels and file names.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
#: in a session's directory while its start runs (see claude_db.gc)
STARTING_MARKER = ".starting"


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or name.endswith("-"):
        raise UsageError(
            f"invalid session name {name!r}: use 1-48 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return name


def name_from_directory(path: Path) -> str:
    """A session name derived from a working directory's name (``My Project`` → ``my-project``)."""
    return slug(path.resolve().name)[:48].strip("-") or "session"


def slug(text: str) -> str:
    """``text`` in the letters of a session name: ``Ünïcödé Dir`` → ``unicode-dir``
    (accents dropped rather than the letters they sit on)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


@dataclass
class Session:
    name: str
    workdir: str
    engine: str | None  # None: a session without a database (CLAUDE_DB_ENABLED=false)
    runtime: str | None
    credentials: Credentials | None = None
    image: str | None = None  # database image (docker runtime)
    session_image: str | None = None  # image of the session container, if any
    publish: bool = False  # docker runtime: publish the database port on 127.0.0.1
    runtime_state: dict[str, Any] = field(default_factory=dict)
    # the git worktree it was started in (claude_db.worktrees.Worktree): gc reclaims the
    # session when that directory is removed
    worktree: dict[str, Any] | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def has_database(self) -> bool:
        return self.engine is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        """The session ``data`` describes; keys of a newer claude-db are ignored.
        Raises ``ValueError`` when ``data`` is not a session."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(cls)}
        data = {key: value for key, value in data.items() if key in known}
        creds = data.pop("credentials", None)
        try:
            session = cls(credentials=Credentials(**creds) if creds else None, **data)
        except TypeError as exc:  # a required key missing, credentials not an object
            raise ValueError(str(exc)) from None
        for name, kinds in _FIELD_TYPES.items():
            if not isinstance(getattr(session, name), kinds):
                raise ValueError(f"{name!r} is not a {kinds[0].__name__}")
        return session


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "workdir": (str,), "engine": (str, type(None)), "runtime": (str, type(None)),
    "runtime_state": (dict,), "created_at": (str,), "worktree": (dict, type(None)),
}


class BrokenSessionError(ClaudeDbError):
    """A session whose ``session.json`` cannot be read: only ``delete`` and gc act on it."""


@dataclass
class BrokenSession:
    """A session directory whose record is unreadable (see :class:`BrokenSessionError`)."""

    name: str
    reason: str


class SessionStore:
    """``<state>/sessions/<name>/session.json``; the directory also holds runtime files."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "sessions"

    def directory(self, name: str) -> Path:
        return self.root / name

    def _file(self, name: str) -> Path:
        return self.directory(name) / "session.json"

    def exists(self, name: str) -> bool:
        return self._file(name).exists()

    def lock_file(self, name: str) -> Path:
        return lock_for(self.directory(name))

    def reserve(self, name: str) -> Path:
        """Create the session's directory; fails if the name is taken (atomic: mkdir)."""
        self._make_root()
        path = self.directory(name)
        try:
            path.mkdir(mode=0o711)
        except FileExistsError:
            raise SessionExistsError(
                f"session {name!r} already exists (claude-session attach {name} to use it, "
                f"or delete it first)"
            ) from None
        os.chmod(path, 0o711)  # mkdir's mode is filtered by the umask
        return path

    def release(self, name: str) -> None:
        """Remove a session's directory and everything in it (the caller holds its lock)."""
        shutil.rmtree(self.directory(name), ignore_errors=True)
        # the lock file goes too; whoever waits for it notices and takes a new one (hold())
        self.lock_file(name).unlink(missing_ok=True)

    def save(self, session: Session) -> None:
        path = self._file(session.name)
        tmp = path.with_name(f".session.{os.getpid()}.tmp")  # never shared with another writer
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds a password
        with os.fdopen(fd, "w") as out:
            json.dump(session.to_json(), out, indent=2)
        os.replace(tmp, path)

    def load(self, name: str) -> Session:
        """Session ``name``; raises if it does not exist, if another user may have written
        its record (:class:`UnsafeStateError`) or if the record is unreadable."""
        path = self._file(name)
        check_owned(self.directory(name), "session directory")
        check_owned(path, "session file")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise SessionNotFoundError(
                f"no session named {name!r} (see claude-session list)"
            ) from None
        try:
            session = Session.from_json(json.loads(raw))
            if session.name != name:
                raise ValueError(f"it names session {session.name!r}")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
            raise BrokenSessionError(
                f"the record of session {name!r} ({path}) is unreadable ({exc}): "
                f"claude-session delete {name} removes the session"
            ) from None
        return session

    def all(self) -> list[Session | BrokenSession]:
        """Every session, those whose record cannot be trusted or read as broken ones."""
        if not self.root.is_dir():
            return []
        sessions: list[Session | BrokenSession] = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith(".") or not (path / "session.json").exists():
                continue
            try:
                sessions.append(self.load(path.name))
            except SessionNotFoundError:
                pass  # deleted while we looked
            except ClaudeDbError as exc:
                sessions.append(BrokenSession(path.name, str(exc)))
        return sessions

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Serialise commands that change one session (start/stop/attach/delete/snapshots)."""
        self._make_root()
        return hold(self.lock_file(name), f"session {name}")

    def _make_root(self) -> None:
        make_dirs(self.root)
        _make_traversable(self.root)


def _make_traversable(path: Path) -> None:
    # Servers run as an unprivileged user when we are root: it must reach its data directory.
    for part in (path.parent, path):
        with contextlib.suppress(OSError):
            if part.stat().st_uid == os.geteuid():
                os.chmod(part, part.stat().st_mode | 0o111)

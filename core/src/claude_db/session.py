"""Sessions: the model and its on-disk state (one JSON file per session, under a lock)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from claude_db.engine import Credentials
from claude_db.errors import SessionExistsError, SessionNotFoundError, UsageError

# Docker names allow more, but these also make valid DNS labels and file names.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or name.endswith("-"):
        raise UsageError(
            f"invalid session name {name!r}: use 1-48 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return name


def name_from_directory(path: Path) -> str:
    """A session name derived from a working directory's name (``My Project`` → ``my-project``)."""
    # "Ünïcödé Dir" → "unicode-dir": accents dropped rather than the letters they sit on
    ascii_name = unicodedata.normalize("NFKD", path.resolve().name).encode("ascii", "ignore")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.decode().lower()).strip("-")[:48].strip("-")
    return slug or "session"


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
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def has_database(self) -> bool:
        return self.engine is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        data = dict(data)
        creds = data.pop("credentials", None)
        return cls(credentials=Credentials(**creds) if creds else None, **data)


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

    def reserve(self, name: str) -> Path:
        """Create the session's directory; fails if the name is taken (atomic: mkdir)."""
        self.root.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.root)
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
        # the lock file goes too; whoever waits for it notices and takes a new one (lock())
        (self.root / f".{name}.lock").unlink(missing_ok=True)

    def save(self, session: Session) -> None:
        path = self._file(session.name)
        tmp = path.with_name(f".session.{os.getpid()}.tmp")  # never shared with another writer
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds a password
        with os.fdopen(fd, "w") as out:
            json.dump(session.to_json(), out, indent=2)
        os.replace(tmp, path)

    def load(self, name: str) -> Session:
        try:
            data = json.loads(self._file(name).read_text())
        except FileNotFoundError:
            raise SessionNotFoundError(
                f"no session named {name!r} (see claude-session list)"
            ) from None
        return Session.from_json(data)

    def all(self) -> list[Session]:
        if not self.root.is_dir():
            return []
        sessions = []
        for path in sorted(self.root.iterdir()):
            if (path / "session.json").exists():
                with contextlib.suppress(SessionNotFoundError):  # deleted while we looked
                    sessions.append(self.load(path.name))
        return sessions

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise commands that change one session (start/stop/attach/delete)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".{name}.lock"
        while True:
            with open(path, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                # gc removes the lock files of gone sessions while holding them: if ours was
                # removed while we waited, it locks nothing any more; take the new one
                try:
                    same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield
                    return


def _make_traversable(path: Path) -> None:
    # Servers run as an unprivileged user when we are root: it must reach its data directory.
    for part in (path.parent, path):
        with contextlib.suppress(OSError):
            if part.stat().st_uid == os.geteuid():
                os.chmod(part, part.stat().st_mode | 0o111)

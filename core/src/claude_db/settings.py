"""Settings from the environment (the seed's CLAUDE_DB_* variables and ours)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from claude_db.errors import UsageError

FALSE = {"0", "false", "no", "off"}
TRUE = {"1", "true", "yes", "on"}


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in FALSE:
        return False
    if raw in TRUE:
        return True
    raise UsageError(f"{name}={raw!r} is not a boolean (use true or false)")


def _names(name: str) -> frozenset[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def default_state_dir() -> Path:
    """Where sessions live. As root, a system directory the unprivileged server user can reach."""
    if os.geteuid() == 0:
        return Path("/var/lib/claude-db")
    from platformdirs import user_state_dir

    return Path(user_state_dir("claude-db"))


@dataclass(frozen=True)
class Settings:
    enabled: bool
    engine: str
    runtime: str
    image: str | None
    session_image: str | None
    user: str | None
    password: str | None
    database: str | None
    state_dir: Path
    ready_timeout: float
    strict_plugins: bool
    load_plugins: frozenset[str] | None
    disable_plugins: frozenset[str]
    auto_snapshots: int = 5  # automatic snapshots kept per session (0: take none)
    checkpoints: int = 20  # checkpoints kept per session (0: checkpoint takes none)
    snapshot_space: int = 2 << 30  # bytes all of a session's snapshots may take (0: no cap)
    superuser: bool = False  # local runtime: the session's user is the server's superuser
    allow_url_destructive: bool = False  # reset & co. on a DATABASE_URL no session owns

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        try:
            timeout = float(env("CLAUDE_DB_READY_TIMEOUT", "60"))
        except ValueError:
            timeout = -1.0
        if not 0 < timeout < float("inf"):  # also NaN
            raise UsageError("CLAUDE_DB_READY_TIMEOUT must be a positive number of seconds")
        raw_snapshots = env("CLAUDE_DB_AUTO_SNAPSHOTS", "5").strip() or "5"
        if not (raw_snapshots.isascii() and raw_snapshots.isdigit()):
            raise UsageError("CLAUDE_DB_AUTO_SNAPSHOTS must be a whole number (0: take none)")
        raw_checkpoints = env("CLAUDE_DB_CHECKPOINTS", "20").strip() or "20"
        if not (raw_checkpoints.isascii() and raw_checkpoints.isdigit()):
            raise UsageError("CLAUDE_DB_CHECKPOINTS must be a whole number (0: take none)")
        return cls(
            enabled=_flag("CLAUDE_DB_ENABLED", True),
            engine=env("CLAUDE_DB_ENGINE") or "postgres",
            runtime=env("CLAUDE_DB_RUNTIME") or "auto",
            image=env("CLAUDE_DB_IMAGE") or None,
            session_image=env("CLAUDE_SESSION_IMAGE") or None,
            user=env("CLAUDE_DB_USER") or None,
            password=env("CLAUDE_DB_PASSWORD") or None,
            database=env("CLAUDE_DB_NAME") or None,
            state_dir=Path(env("CLAUDE_DB_STATE_DIR") or default_state_dir()).absolute(),
            ready_timeout=timeout,
            strict_plugins=_flag("CLAUDE_DB_STRICT_PLUGINS", False),
            load_plugins=_names("CLAUDE_DB_LOAD_PLUGINS"),
            disable_plugins=_names("CLAUDE_DB_DISABLE_PLUGINS") or frozenset(),
            auto_snapshots=int(raw_snapshots),
            checkpoints=int(raw_checkpoints),
            snapshot_space=_bytes_setting("CLAUDE_DB_SNAPSHOT_SPACE", "2G"),
            superuser=_flag("CLAUDE_DB_SUPERUSER", False),
            allow_url_destructive=_flag("CLAUDE_DB_ALLOW_URL_DESTRUCTIVE", False),
        )


def _bytes_setting(name: str, default: str) -> int:
    """A size such as ``500M``, ``2G`` or a number of bytes (K, M, G, T: powers of 1024)."""
    raw = (os.environ.get(name) or default).strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(raw[-1:], 1)
    number = raw[:-1] if raw[-1:] in units else raw
    try:
        value = float(number) if number.isascii() else -1.0
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UsageError(f"{name} must be a size such as 500M or 2G (0: no cap)")
    return int(value * scale)

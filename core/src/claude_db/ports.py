"""Loopback ports for new servers: each handed out once, so concurrent starts never share one,
and never a port a session still records, so a stopped session's port stays its own.

``bind(0)`` names a port that is free right now; the server binds it a moment later, and
meanwhile another start's ``bind(0)`` may name the same port (the kernel picks at random
from ~28,000: 20 starts at once share one in about 1 run of 150). A port handed out is
recorded in ``<state>/ports.json`` under a lock, with the session it is for: it is not
handed out again while that session exists (running or stopped: a new session on a stopped
one's port would get the stopped one's clients, .env and all), nor for :data:`HOLD_SECONDS`
(by then its server listens on it, or its start failed).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import NamedTuple

from claude_db.errors import ClaudeDbError
from claude_db.locks import hold, lock_for
from claude_db.session import SessionStore

HOLD_SECONDS = 300
REGISTRY = "ports.json"


class Claim(NamedTuple):
    session: str | None  # None: for no session, or recorded by an older claude-db
    at: float


def claim_port(state_dir: Path, session: str | None = None) -> int:
    """A free loopback port that no session of this state directory records and no other
    start got lately; recorded as ``session``'s while it exists."""
    registry = state_dir / REGISTRY
    with hold(lock_for(registry), "the port registry"):
        claimed = _held(state_dir)
        port = _free_port_except(set(claimed))
        claimed[port] = Claim(session, time.time())
        _write(registry, claimed)
        return port


def keep_port(state_dir: Path, port: int, session: str) -> bool:
    """Record ``port``, where ``session`` is about to start again, as the session's (an
    older claude-db recorded no session with it); False if another start or session has it."""
    registry = state_dir / REGISTRY
    with hold(lock_for(registry), "the port registry"):
        claimed = _held(state_dir)
        if port in claimed and claimed[port].session != session:
            return False
        claimed[port] = Claim(session, time.time())
        _write(registry, claimed)
        return True


def _held(state_dir: Path) -> dict[int, Claim]:
    """The claims that still hold their ports (the caller holds the registry's lock)."""
    now, store = time.time(), SessionStore(state_dir)
    return {port: claim for port, claim in _read(state_dir / REGISTRY).items()
            if 0 <= now - claim.at < HOLD_SECONDS
            or (claim.session and store.directory(claim.session).is_dir())}


def _free_port_except(taken: set[int]) -> int:
    """A free loopback port not in ``taken``. Each taken one the kernel names stays bound
    until we return, so it names another next (it prefers some ports: asked again, it may
    name the same one every time)."""
    with contextlib.ExitStack() as held:
        while True:
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                sock.bind(("127.0.0.1", 0))
            except OSError as exc:
                raise ClaudeDbError(
                    f"no free loopback port left ({exc.strerror}): sessions hold "
                    f"{len(taken)}; delete some, or widen net.ipv4.ip_local_port_range"
                ) from None
            port: int = sock.getsockname()[1]
            if port not in taken:
                return port


def _read(registry: Path) -> dict[int, Claim]:
    try:
        fd = os.open(registry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as handle:
            data = json.load(handle)
        return {int(port): Claim(str(claim["session"]) if claim["session"] else None,
                                 float(claim["at"]))
                if isinstance(claim, dict) else Claim(None, float(claim))  # an older one's
                for port, claim in data.items()}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return {}  # none yet, or unreadable (then only the servers' ports are safe from reuse)


def _write(registry: Path, claimed: dict[int, Claim]) -> None:
    tmp = registry.with_name(f".{REGISTRY}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({str(port): claim._asdict() for port, claim in claimed.items()}, out)
    os.replace(tmp, registry)

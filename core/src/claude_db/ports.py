"""Loopback ports for new servers: each handed out once, so concurrent starts never share one.

``bind(0)`` names a port that is free right now; the server binds it a moment later, and
meanwhile another start's ``bind(0)`` may name the same port (the kernel picks at random
from ~28,000: 20 starts at once share one in about 1 run of 150). A port handed out is
recorded in ``<state>/ports.json`` under a lock, and not handed out again for
:data:`HOLD_SECONDS`, by then its server listens on it (or its start failed).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from claude_db.locks import hold, lock_for

HOLD_SECONDS = 300
REGISTRY = "ports.json"


def claim_port(state_dir: Path) -> int:
    """A free loopback port no other start of this state directory got lately."""
    registry = state_dir / REGISTRY
    with hold(lock_for(registry), "the port registry"):
        now = time.time()
        claimed = {port: at for port, at in _read(registry).items() if 0 <= now - at < HOLD_SECONDS}
        port = free_port()
        while port in claimed:
            port = free_port()
        claimed[port] = now
        _write(registry, claimed)
        return port


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _read(registry: Path) -> dict[int, float]:
    try:
        fd = os.open(registry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as handle:
            data = json.load(handle)
        return {int(port): float(at) for port, at in data.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}  # none yet, or unreadable: it is only a hint against reuse


def _write(registry: Path, claimed: dict[int, float]) -> None:
    tmp = registry.with_name(f".{REGISTRY}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({str(port): at for port, at in claimed.items()}, out)
    os.replace(tmp, registry)

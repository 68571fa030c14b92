"""The one waiting loop: poll an authenticated query until it answers or time runs out, or
any other condition until it holds."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

from claude_db.engine import Endpoint, Engine
from claude_db.errors import ClaudeDbError, NotReadyError, NotRunningError

T = TypeVar("T")

POLL_INTERVAL = 0.02  # seconds; a failed connect costs little, waiting costs the user


def wait_until_ready(
    engine: Engine,
    endpoint: Endpoint,
    *,
    timeout: float,
    failure: Callable[[], str | None] = lambda: None,
    what: str = "database",
) -> str:
    """Return the server version once ``engine.check_ready`` succeeds over ``endpoint``;
    fail at once on an error ``engine.never_ready`` says waiting will not clear."""
    attempt_timeout = max(1.0, min(5.0, timeout))
    return poll_until(
        lambda: engine.check_ready(endpoint, timeout=attempt_timeout),
        timeout=timeout,
        failure=failure,
        permanent=engine.never_ready,
        what=what,
    )


def poll_until(
    probe: Callable[[], T],
    *,
    timeout: float,
    failure: Callable[[], str | None] = lambda: None,
    permanent: Callable[[Exception], bool] = lambda error: False,
    what: str = "database",
) -> T:
    """Call ``probe`` until it returns instead of raising; return what it returned.

    ``failure`` is asked between attempts; when it returns a reason (the process
    exited, the container died), waiting stops at once with that reason. So does an
    error of ``probe`` that ``permanent`` says never clears (the server's own refusal).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            return probe()
        except Exception as exc:  # any other failure means "not yet"
            if permanent(exc):
                raise ClaudeDbError(f"{what} refused: {_one_line(exc)}") from None
            last_error = exc
        reason = failure()
        if reason:
            raise NotRunningError(f"{what} failed to start: {reason}")
        if time.monotonic() >= deadline:
            detail = _one_line(last_error)
            raise NotReadyError(f"{what} not ready after {timeout:.0f}s: {detail}")
        time.sleep(POLL_INTERVAL)


def _one_line(exc: BaseException | None) -> str:
    text = str(exc or "no answer").strip().splitlines()
    return text[0] if text else type(exc).__name__


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


def wait_until(
    condition: Callable[[], bool], *, timeout: float | None, interval: float = POLL_INTERVAL
) -> bool:
    """Whether ``condition`` came true within ``timeout`` seconds (None: however long it
    takes); asked at once, then every ``interval`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not condition():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True

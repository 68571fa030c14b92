"""claude-db: an isolated database for every coding-agent session.

What plugins import from here (``from claude_db import Engine, hookimpl``) loads on first use:
the CLIs' entry points (``claude_db.cli``) run before any of it, so that an interrupt while
the program loads is theirs to handle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from claude_db.engine import (
        Credentials,
        Endpoint,
        Engine,
        LocalServer,
        QueryResult,
        RunAs,
        Tools,
    )
    from claude_db.errors import ClaudeDbError, ExitCode
    from claude_db.hookspecs import hookimpl
    from claude_db.runtime import Runtime

#: each name this package exports, and the module that defines it
_HOME = {
    **dict.fromkeys(["Credentials", "Endpoint", "Engine", "LocalServer", "QueryResult", "RunAs",
                     "Tools"], "claude_db.engine"),
    **dict.fromkeys(["ClaudeDbError", "ExitCode"], "claude_db.errors"),
    "hookimpl": "claude_db.hookspecs",
    "Runtime": "claude_db.runtime",
}

__all__ = [
    "ClaudeDbError",
    "Credentials",
    "Endpoint",
    "Engine",
    "ExitCode",
    "LocalServer",
    "QueryResult",
    "RunAs",
    "Runtime",
    "Tools",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'claude_db' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: the next lookup finds it without us
    return value

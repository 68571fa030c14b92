"""claude-db: an isolated database for every coding-agent session."""

from __future__ import annotations

import pluggy

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
from claude_db.runtime import Runtime

#: mark hook implementations with ``@hookimpl`` (plugins never import pluggy)
hookimpl = pluggy.HookimplMarker("claude_db")

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

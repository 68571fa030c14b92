"""The local runtime: each session's database served by processes on this machine."""

from claude_db.runtimes.local.runtime import LocalRuntime

__all__ = ["LocalRuntime"]

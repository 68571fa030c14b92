"""The Podman runtime for claude-db: ``pip install claude-db-podman``, then ``--runtime podman``."""

from __future__ import annotations

from collections.abc import Callable

from claude_db import hookimpl
from claude_db.runtime import Runtime
from claude_db_podman.runtime import PodmanRuntime

__all__ = ["PodmanRuntime"]


@hookimpl
def register_runtimes(register: Callable[[type[Runtime]], None]) -> None:
    register(PodmanRuntime)

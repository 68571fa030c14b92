"""Core's runtimes, registered through the same hook third-party runtimes use."""

from __future__ import annotations

from collections.abc import Callable

from claude_db import hookimpl
from claude_db.runtime import Runtime


@hookimpl
def register_runtimes(register: Callable[[type[Runtime]], None]) -> None:
    from claude_db.runtimes.docker import DockerRuntime
    from claude_db.runtimes.local import LocalRuntime

    register(LocalRuntime)
    register(DockerRuntime)

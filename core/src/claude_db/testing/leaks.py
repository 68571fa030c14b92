"""What a deleted session left behind: directories, processes, ports and what its runtime
still holds (as ``claude-session gc`` finds it)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from claude_db import processes
from claude_db.errors import ClaudeDbError
from claude_db.plugins import load_plugins
from claude_db.settings import Settings

if TYPE_CHECKING:
    from claude_db.runtime import Runtime


def leftovers(
    state_dir: Path, name: str, env: dict[str, str], record: dict[str, Any]
) -> list[str]:
    """What a deleted session left behind, described in words (empty: nothing)."""
    found: list[str] = []
    session_dir = state_dir / "sessions" / name
    if session_dir.exists():
        found.append(f"directory {session_dir}")
    for path in state_dir.rglob(f"*{name}*"):
        if path.is_dir():
            found.append(f"directory {path}")
    for key in ("datadir", "socket_dir"):
        value = record.get("runtime_state", {}).get(key)
        if value and Path(value).exists():
            found.append(f"{key} {value}")
    found += [f"process {pid}: {cmd}" for pid, cmd in processes_mentioning(str(session_dir))]
    pid = record.get("runtime_state", {}).get("pid")
    if isinstance(pid, int) and processes.is_running(pid):
        found.append(f"process {pid} (the server)")
    if env.get("DB_HOST") in ("127.0.0.1", "localhost", "::1") and _port_answers(
        env["DB_HOST"], int(env["DB_PORT"])
    ) and not _taken_by_another_session(int(env["DB_PORT"]), state_dir):
        found.append(f"port {env['DB_HOST']}:{env['DB_PORT']} still answers")
    if record.get("runtime"):
        found += runtime_leftovers(state_dir, name, record["runtime"])
    return found


def runtime_leftovers(state_dir: Path, name: str, runtime_name: str) -> list[str]:
    """What session ``name``'s runtime still holds for it (its containers, its servers...),
    as the runtime itself finds it for ``claude-session gc``."""
    settings = dataclasses.replace(Settings.from_env(), state_dir=state_dir)
    try:
        runtime = runtime_class(runtime_name)(settings)
    except ClaudeDbError:  # installed only where the suite's CLIs run: their gc asks it
        return []
    if not runtime.available():
        return []
    return [f"{o.kind} {o.what}" for o in runtime.leftovers(state_dir).get(name, [])]


@functools.cache
def runtime_class(name: str) -> type[Runtime]:
    """The installed runtime called ``name`` (as the ``claude-db`` command finds it)."""
    return load_plugins(Settings.from_env()).runtime_class(name)


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains ``text``."""
    return processes.processes_mentioning(text)


def port_listeners(port: int) -> list[tuple[int | None, str]]:
    """The processes listening on TCP ``port`` (any address), with their command lines
    (pid None, command line empty: a listener whose process this user cannot see)."""
    found: list[tuple[int | None, str]] = []
    for conn in psutil.net_connections("tcp"):
        if conn.status != psutil.CONN_LISTEN or getattr(conn.laddr, "port", None) != port:
            continue
        cmdline = ""
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(psutil.Process(conn.pid).cmdline()) if conn.pid else ""
        found.append((conn.pid, cmdline))
    return found


def _taken_by_another_session(port: int, state_dir: Path) -> bool:
    """Whether every listener on ``port`` is another claude-db session's server (its command
    line names a ``sessions/`` directory outside ``state_dir``): a port a deleted session
    freed may be taken at once by a session another test starts meanwhile (pytest-xdist
    runs tests side by side)."""
    listeners = port_listeners(port)
    return bool(listeners) and all(
        "/sessions/" in cmdline and str(state_dir) not in cmdline for _, cmdline in listeners
    )


def _port_answers(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0

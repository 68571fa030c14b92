"""The orphan sweep: remove what no live session owns (``claude-session gc``).

A session is live while ``<state>/sessions/<name>/session.json`` exists and its start
finished (``start`` keeps a ``.starting`` marker until then). Left behind by a killed
``start``, a crash or a failed ``delete`` can be: a session whose start never finished
(removed with its runtime's own ``delete``), a session directory without ``session.json``,
a session whose ``session.json`` is unreadable (not by the cheap sweep), a server process
of a gone session, half made template caches and snapshots of running sessions (with the
databases they made on the server; those of a ``DATABASE_URL`` the next snapshot command
sweeps), lock files of gone sessions, and Docker containers, networks and volumes
labelled ``claude-db.session`` (and ``claude-db.state`` = this state directory) whose
session is gone. Data kept by ``delete --keep-data`` is never touched.

What is removed is found only from what no other user could have made: entries of the
state directory that are ours (never a link, never ``..``), and server processes named
by our records (a pid with its process identity in ``session.json``, a pid file in the
server's data directory whose owner owns the process, which started before the file was
written). Never from a process's arguments: anyone can write those.

Everything a session owns is judged while holding that session's lock, taken without
waiting: a session being started or deleted right now is busy, never an orphan.

The cheap sweep (on every ``start``) reads only the state directory and ``/proc``;
it looks at Docker only when a live session uses the docker runtime.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_db.errors import ClaudeDbError
from claude_db.lifecycle import STARTING_MARKER
from claude_db.locks import LOCKS_DIR, lock_for, try_hold
from claude_db.processes import is_running, process_identity, process_started_at
from claude_db.runtimes.local import remove_socket_dir
from claude_db.session import NAME_PATTERN, Session
from claude_db.statedir import UnsafeStateError, unsafe

if TYPE_CHECKING:
    from claude_db.app import App
    from claude_db.database import Target

#: docker label naming the state directory that made a resource (the docker runtime sets it)
STATE_LABEL = "claude-db.state"
SESSION_LABEL = "claude-db.session"
STOP_WAIT = 5.0  # seconds a stray server gets to exit after SIGTERM before SIGKILL


@dataclass
class Orphan:
    kind: str  # session, process, directory, lock, container, network, volume
    what: str  # a pid, a path or a Docker name
    detail: str
    removed: bool = False
    error: str | None = None
    remove: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "detail": self.detail,
                "removed": self.removed, "error": self.error}


def collect_garbage(
    app: App, *, dry_run: bool = False, cheap: bool = False, docker: bool = False
) -> list[Orphan]:
    """Find orphans and (unless ``dry_run``) remove them; failures are recorded, not raised.

    ``cheap``: look at Docker only if ``docker`` or a live session uses it, and leave
    sessions with an unreadable record alone (only ``gc`` and ``delete`` remove those).
    """
    sweeper = _Sweeper(app, dry_run, cheap)
    sweeper.local()
    from claude_db.worktrees import orphans  # sessions of removed git worktrees

    for orphan in orphans(app, docker=not cheap or docker):
        sweeper._take(orphan)
    if not cheap or docker or sweeper.docker_in_use():
        sweeper.docker()
    sweeper.lock_files()  # last: the sweeps above may have freed some
    return sweeper.found


def remove_broken(app: App, name: str) -> list[Orphan]:
    """``delete`` of session ``name`` whose record is unreadable: its servers (as far as
    our records find them), its directory and its Docker resources go."""
    sweeper = _Sweeper(app, dry_run=False, cheap=False)
    with app.store.lock(name):
        directory = app.store.directory(name)
        problem = unsafe(directory)
        if problem:
            raise UnsafeStateError(f"session directory {directory} {problem}")
        sweeper.remains(name, directory, None, "session", "its session.json is unreadable")
        sweeper.docker_of(name)
        app.store.release(name)  # its lock file
    return sweeper.found


class _Sweeper:
    def __init__(self, app: App, dry_run: bool, cheap: bool) -> None:
        self.app = app
        self.dry_run = dry_run
        self.cheap = cheap
        self.root = app.store.root
        self.found: list[Orphan] = []

    def _take(self, orphan: Orphan) -> None:
        self.found.append(orphan)
        if self.dry_run:
            return
        try:
            orphan.remove()
            orphan.removed = True
        except Exception as exc:  # one stubborn orphan must not stop the sweep
            orphan.error = str(exc) or type(exc).__name__

    def session_dirs(self) -> list[Path]:
        """Entries of the sessions directory that may be sessions: directories that are
        ours alone (never a link: what it leads to is not ours to judge)."""
        if not self.root.is_dir():
            return []
        return [path for path in sorted(self.root.iterdir())
                if not path.name.startswith(".") and unsafe(path) is None and path.is_dir()]

    # -- the state directory and /proc -------------------------------------------------------

    def local(self) -> None:
        for directory in self.session_dirs():
            name = directory.name
            with try_hold(self.app.store.lock_file(name), create=False) as locked:
                if locked:  # else being started, deleted or snapshotted right now
                    self._judge(name, directory)
        self._templates()

    def _judge(self, name: str, directory: Path) -> None:
        if not (directory / "session.json").exists():
            self.remains(name, directory, None, "directory", f"remains of session {name}")
            return
        unfinished = (directory / STARTING_MARKER).exists()  # its start was killed
        if self.cheap and not unfinished:
            self._snapshots_cut_short(name, directory / "snapshots")
            return
        try:
            session = self.app.store.load(name)
        except UnsafeStateError:
            return  # not ours to judge
        except ClaudeDbError:  # its record is unreadable
            if not self.cheap:
                self.remains(name, directory, None, "session", "its session.json is unreadable")
            return
        if not unfinished:
            self._snapshots_cut_short(name, directory / "snapshots")
            return
        for pid, identity in _servers(directory, session).items():
            self._take(Orphan("process", str(pid), f"server of gone session {name}",
                              remove=partial(_stop_process, pid, identity)))
        self._take(Orphan("session", name, "its start never finished",
                          remove=partial(_abandon_start, self.app, name)))

    def remains(self, name: str, directory: Path, session: Session | None, kind: str,
                detail: str) -> None:
        """A session directory no usable record describes: its servers, then itself."""
        for pid, identity in _servers(directory, session).items():
            self._take(Orphan("process", str(pid), f"server of gone session {name}",
                              remove=partial(_stop_process, pid, identity)))
        what = name if kind == "session" else str(directory)
        self._take(Orphan(kind, what, detail, remove=partial(_remove_session_dir, directory)))

    def lock_files(self) -> None:
        """Lock files of gone sessions (and those of an older claude-db, beside them)."""
        if not self.root.is_dir():
            return
        locks = self.root / LOCKS_DIR
        found = [(path, path.name[:-len(".lock")]) for path in sorted(locks.glob("*.lock"))]
        found += [(path, path.name[1:-len(".lock")]) for path in sorted(self.root.glob(".*.lock"))]
        for path, name in found:
            if os.path.lexists(self.root / name) or path.is_symlink():
                continue
            with try_hold(path) as locked:
                if locked and not os.path.lexists(self.root / name):
                    self._take(Orphan("lock", str(path), f"lock file of gone session {name}",
                                      remove=partial(path.unlink, missing_ok=True)))

    def _templates(self) -> None:
        root = self.app.settings.state_dir / "templates"
        if not root.is_dir():
            return
        with try_hold(lock_for(root)) as locked:
            if not locked:
                return  # a template is being built
            for path in sorted(root.iterdir()):
                if path.name.startswith(".") and not path.is_symlink() and path.is_dir():
                    self._take(Orphan("directory", str(path), "unfinished server template",
                                      remove=partial(shutil.rmtree, path)))

    def _snapshots_cut_short(self, name: str, snapshots: Path) -> None:
        """Snapshots half saved or half deleted by a process that died (the lock is ours).

        What they hold on the server (a template database) goes with them, so only while
        the session's server runs; otherwise the next snapshot command frees them.
        """
        from claude_db.snapshots import discard_unfinished, unfinished

        found = unfinished(snapshots)
        target = self._running_target(name) if found else None
        if target is None:
            return
        for path in found:
            self._take(Orphan("directory", str(path), f"unfinished snapshot of session {name}",
                              remove=partial(discard_unfinished, target, path)))

    def _running_target(self, name: str) -> Target | None:
        """Session ``name``'s database if its server runs (None if not, or unreadable)."""
        from claude_db.database import Target
        from claude_db.lifecycle import parts

        with contextlib.suppress(Exception):
            session = self.app.store.load(name)
            if session.has_database:
                engine, runtime = parts(self.app, session)
                if runtime.status(session) == "running":
                    return Target(name, engine, runtime, session)
        return None

    # -- docker ------------------------------------------------------------------------------

    def docker_in_use(self) -> bool:
        for directory in self.session_dirs():
            with contextlib.suppress(Exception):
                if self.app.store.load(directory.name).runtime == "docker":
                    return True
        return False

    def docker(self) -> None:
        for name, resources in self._docker_resources().items():
            with try_hold(self.app.store.lock_file(name), create=False) as locked:
                if locked and not (self.root / name / "session.json").is_file():
                    self._take_docker(name, resources)

    def docker_of(self, name: str) -> None:
        """Session ``name``'s Docker resources (its lock is ours)."""
        self._take_docker(name, self._docker_resources().get(name, []))

    def _take_docker(self, name: str, resources: list[tuple[str, Any]]) -> None:
        for kind, resource in resources:
            attrs = resource.attrs
            shown = attrs.get("Name") or (attrs.get("Names") or [resource.id])[0]
            self._take(Orphan(kind, shown.lstrip("/"), f"Docker {kind} of gone session {name}",
                              remove=partial(_remove_docker, kind, resource)))

    def _docker_resources(self) -> dict[str, list[tuple[str, Any]]]:
        """This state directory's Docker resources by session, containers first (they hold
        the others); none when no Docker engine answers."""
        try:
            runtime = self.app.runtime("docker")
        except Exception:
            return {}  # no docker runtime registered
        if not runtime.available():
            return {}
        from claude_db.runtimes.docker_client import client

        docker = client()
        state = str(self.app.settings.state_dir)
        # only what this state directory made: other users and test runs share the daemon
        mine = {"label": [SESSION_LABEL, f"{STATE_LABEL}={state}"]}
        found: dict[str, list[tuple[str, Any]]] = {}
        for kind, resource in [
            *(("container", c)
              for c in docker.containers.list(all=True, sparse=True, filters=mine)),
            *(("network", n) for n in docker.networks.list(filters=mine)),
            *(("volume", v) for v in docker.volumes.list(filters=mine)),
        ]:
            name = (resource.attrs.get("Labels") or {}).get(SESSION_LABEL, "")
            if NAME_PATTERN.fullmatch(name):  # a name, never a path
                found.setdefault(name, []).append((kind, resource))
        return found


# -- helpers ---------------------------------------------------------------------------------


def _servers(directory: Path, session: Session | None) -> dict[int, str]:
    """The live server processes of a session directory, with their process identities,
    found only from records no other user could have made: the pid and identity
    ``session.json`` holds, and pid files (``postmaster.pid``, ``mariadbd.pid``) in the
    server's data and socket directories, trusted for processes of the file's owner that
    started before it was written (a pid used again later started after)."""
    found: dict[int, str] = {}
    if session is not None:
        pid = session.runtime_state.get("pid")
        identity = session.runtime_state.get("pid_identity")
        if isinstance(pid, int) and identity and process_identity(pid) == identity:
            found[pid] = identity
    for pid_file in _pid_files(directory / "server"):
        try:
            info = pid_file.lstat()
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        identity, started = process_identity(pid), process_started_at(pid)
        if (pid > 1 and pid != os.getpid() and identity and started is not None
                and started <= info.st_mtime + 1 and _owner(pid) == info.st_uid
                and _session_leader(pid)):
            found[pid] = identity
    return found


def _pid_files(server: Path) -> list[Path]:
    """``*.pid`` files in ``server/data`` and ``server/run``, following no link."""
    found: list[Path] = []
    for directory in (server, server / "data", server / "run"):
        if not _real_dir(directory):
            return found
        if directory != server:
            with contextlib.suppress(OSError):
                found += [p for p in directory.glob("*.pid")
                          if stat.S_ISREG(p.lstat().st_mode)]
    return found


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _session_leader(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def _stop_process(pid: int, identity: str) -> None:
    """SIGTERM, then SIGKILL to the whole process group (a server and its workers); each
    signal only while ``pid`` is still the process found (``identity``)."""

    def alive() -> bool:
        return is_running(pid) and process_identity(pid) == identity

    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline and alive():
        time.sleep(0.05)
    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    while alive():
        time.sleep(0.02)


def _abandon_start(app: App, name: str) -> None:
    """Delete a session whose start died half-way (its lock is held by the sweep)."""
    from claude_db.lifecycle import parts, remove_session_env

    session = app.store.load(name)
    if session.has_database:
        engine, runtime = parts(app, session)
        runtime.delete(session, engine, keep_data=False)
    remove_session_env(app, session)  # a start killed late had written it already
    _remove_session_dir(app.store.directory(name))
    app.store.release(name)


def _remove_session_dir(directory: Path) -> None:
    remove_socket_dir(directory / "server")  # the local runtime's, when it is in /tmp
    shutil.rmtree(directory)


def _remove_docker(kind: str, resource: Any) -> None:
    if kind == "container":
        resource.remove(force=True, v=True)
    elif kind == "volume":
        resource.remove(force=True)
    else:
        resource.remove()

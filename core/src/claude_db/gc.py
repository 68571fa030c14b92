"""The orphan sweep: remove what no live session owns (``claude-session gc``).

A session is live while ``<state>/sessions/<name>/session.json`` exists and its start
finished (``start`` keeps a ``.starting`` marker until then). Left behind by a killed
``start``, a crash or a failed ``delete`` can be: a session whose start never finished
(removed with its runtime's own ``delete``), a session directory without ``session.json``,
a server process whose data directory is under a gone session, half made template caches
and snapshots of running sessions (with the databases they made on the server; those of
a ``DATABASE_URL`` the next snapshot command sweeps), lock files of gone sessions, and
Docker containers, networks and volumes labelled ``claude-db.session`` (and
``claude-db.state`` = this state directory) whose session is gone. Data kept by
``delete --keep-data`` is never touched.

Everything a session owns is judged while holding that session's lock, taken without
waiting: a session being started or deleted right now is busy, never an orphan.

The cheap sweep (on every ``start``) reads only the state directory and ``/proc``;
it looks at Docker only when a live session uses the docker runtime.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_db.lifecycle import STARTING_MARKER
from claude_db.processes import is_running

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

    ``cheap``: look at Docker only if ``docker`` or a live session uses it.
    """
    sweeper = _Sweeper(app, dry_run)
    sweeper.local()
    if not cheap or docker or sweeper.docker_in_use():
        sweeper.docker()
    sweeper.lock_files()  # last: the sweeps above may have freed some
    return sweeper.found


class _Sweeper:
    def __init__(self, app: App, dry_run: bool) -> None:
        self.app = app
        self.dry_run = dry_run
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

    def live_names(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if (p / "session.json").is_file()}

    # -- the state directory and /proc -------------------------------------------------------

    def local(self) -> None:
        if not self.root.is_dir():
            return
        servers = _server_processes(self.root)
        names = {p.name for p in self.root.iterdir() if not p.name.startswith(".") and p.is_dir()}
        for name in sorted(names | set(servers)):
            with _try_lock(self.root / f".{name}.lock", create=False) as locked:
                if not locked:
                    continue  # being started, deleted or snapshotted right now
                directory = self.root / name
                recorded = (directory / "session.json").is_file()
                unfinished = (directory / STARTING_MARKER).exists()  # its start was killed
                if recorded and not unfinished:
                    self._snapshots_cut_short(name, directory / "snapshots")
                    continue
                for pid in servers.get(name, []):
                    self._take(Orphan("process", str(pid), f"server of gone session {name}",
                                      remove=partial(_stop_process, pid)))
                if recorded:
                    self._take(Orphan("session", name, "its start never finished",
                                      remove=partial(_abandon_start, self.app, name)))
                elif directory.is_dir():
                    self._take(Orphan("directory", str(directory), f"remains of session {name}",
                                      remove=partial(_remove_session_dir, directory)))
        self._templates()

    def lock_files(self) -> None:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob(".*.lock")):
            name = path.name[1:-len(".lock")]
            if (self.root / name).exists():
                continue
            with _try_lock(path) as locked:
                if locked and not (self.root / name).exists():
                    self._take(Orphan("lock", str(path), f"lock file of gone session {name}",
                                      remove=partial(path.unlink, missing_ok=True)))

    def _templates(self) -> None:
        root = self.app.settings.state_dir / "templates"
        if not root.is_dir():
            return
        with _try_lock(root / ".lock") as locked:
            if not locked:
                return  # a template is being built
            for path in sorted(root.iterdir()):
                if path.name.startswith(".") and path.is_dir():
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
        for name in self.live_names():
            with contextlib.suppress(Exception):
                if self.app.store.load(name).runtime == "docker":
                    return True
        return False

    def docker(self) -> None:
        try:
            runtime = self.app.runtime("docker")
        except Exception:
            return  # no docker runtime registered
        if not runtime.available():
            return
        from claude_db.runtimes.docker_client import client

        docker = client()
        state = str(self.app.settings.state_dir)
        # only what this state directory made: other users and test runs share the daemon
        mine = {"label": [SESSION_LABEL, f"{STATE_LABEL}={state}"]}
        resources: list[tuple[str, Any]] = [  # containers first: they hold the others
            *(("container", c)
              for c in docker.containers.list(all=True, sparse=True, filters=mine)),
            *(("network", n) for n in docker.networks.list(filters=mine)),
            *(("volume", v) for v in docker.volumes.list(filters=mine)),
        ]
        for kind, resource in resources:
            attrs = resource.attrs
            name = (attrs.get("Labels") or {}).get(SESSION_LABEL, "")
            if not name or "/" in name or name.startswith("."):
                continue
            shown = attrs.get("Name") or (attrs.get("Names") or [resource.id])[0]
            with _try_lock(self.root / f".{name}.lock", create=False) as locked:
                if locked and not (self.root / name / "session.json").is_file():
                    what = f"Docker {kind} of gone session {name}"
                    self._take(Orphan(kind, shown.lstrip("/"), what,
                                      remove=partial(_remove_docker, kind, resource)))


# -- helpers ---------------------------------------------------------------------------------


def _server_processes(sessions_root: Path) -> dict[str, list[int]]:
    """Processes with an argument under ``<sessions_root>/<name>/`` (servers), by name.

    Server processes are started as session leaders; only those are listed (their
    children go with them).
    """
    prefix = f"{sessions_root}/"
    found: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for raw in args:
            arg = raw.decode(errors="replace").split("=", 1)[-1]
            if arg.startswith(prefix):
                name = arg[len(prefix):].split("/", 1)[0]
                if name and _session_leader(pid):
                    found.setdefault(name, []).append(pid)
                break
    return found


def _session_leader(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except ProcessLookupError:
        return False


def _stop_process(pid: int) -> None:
    """SIGTERM, then SIGKILL to the whole process group (a server and its workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline and is_running(pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    while is_running(pid):
        time.sleep(0.02)


def _abandon_start(app: App, name: str) -> None:
    """Delete a session whose start died half-way (its lock is held by the sweep)."""
    from claude_db.lifecycle import parts

    session = app.store.load(name)
    if session.has_database:
        engine, runtime = parts(app, session)
        runtime.delete(session, engine, keep_data=False)
    _remove_session_dir(app.store.directory(name))
    app.store.release(name)


def _remove_session_dir(directory: Path) -> None:
    from claude_db.runtimes.local import remove_socket_dir

    remove_socket_dir(directory / "server")  # the local runtime's, when it is in /tmp
    shutil.rmtree(directory)


def _remove_docker(kind: str, resource: Any) -> None:
    if kind == "container":
        resource.remove(force=True, v=True)
    elif kind == "volume":
        resource.remove(force=True)
    else:
        resource.remove()


@contextlib.contextmanager
def _try_lock(path: Path, create: bool = True) -> Iterator[bool]:
    """Hold ``path``'s lock if it is free right now; yield whether we hold it.

    A missing lock file counts as free when ``create`` is false: a session's lock file
    exists before anything of the session does (``start`` locks, then makes things).
    """
    if not create and not path.exists():
        yield True
        return
    try:
        handle = open(path, "a")  # noqa: SIM115 - held across the yield
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        # the lock file may have been replaced meanwhile (gc removes gone sessions' ones)
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        yield same

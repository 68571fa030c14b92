"""The orphan sweep: remove what no live session owns (``claude-session gc``).

A session is live while ``<state>/sessions/<name>/session.json`` exists and its start
finished (``start`` keeps a ``.starting`` marker until then). Left behind by a killed
``start``, a crash or a failed ``delete`` can be: a session whose start never finished
(removed with its runtime's own ``delete``), a session directory without ``session.json``,
a session whose ``session.json`` is unreadable (not by the cheap sweep), a server process
of a gone session, half made template caches and snapshots of running sessions (with the
databases they made on the server; those of a ``DATABASE_URL`` the next snapshot command
sweeps), lock files of gone sessions, and what each runtime still holds for a gone
session (:meth:`Runtime.leftovers <claude_db.runtime.Runtime.leftovers>`: the local
runtime's server processes, the docker runtime's labelled containers, networks and
volumes). Data kept by ``delete --keep-data`` is never touched.

What is removed is found only from what no other user could have made: entries of the
state directory that are ours (never a link, never ``..``), and what the runtimes find
from their own records.

Everything a session owns is judged while holding that session's lock, taken without
waiting: a session being started or deleted right now is busy, never an orphan.

The cheap sweep (on every ``start``) reads the state directory and asks only the runtimes
whose leftovers are cheap to find (``Runtime.cheap_leftovers``) and those a live session
(or the session being started) uses: no Docker probe on a machine that uses none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Collection
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from claude_db import worktrees
from claude_db.envfile import Owner, remove_env
from claude_db.errors import ClaudeDbError
from claude_db.locks import LOCKS_DIR, lock_for, try_hold
from claude_db.runtime import Orphan
from claude_db.session import STARTING_MARKER
from claude_db.snapshots import discard_unfinished, unfinished
from claude_db.statedir import UnsafeStateError, unsafe
from claude_db.target import Target, parts

if TYPE_CHECKING:
    from claude_db.app import App

__all__ = ["Orphan", "collect_garbage", "remove_broken"]


def collect_garbage(
    app: App, *, dry_run: bool = False, cheap: bool = False, runtimes: Collection[str] = ()
) -> list[Orphan]:
    """Find orphans and (unless ``dry_run``) remove them; failures are recorded, not raised.

    ``cheap``: ask only the runtimes named in ``runtimes``, those a live session uses and
    those whose leftovers are cheap to find; leave sessions with an unreadable record alone
    (only ``gc`` and ``delete`` remove those).
    """
    sweeper = _Sweeper(app, dry_run, cheap, runtimes)
    sweeper.sessions()
    sweeper.leftovers_without_directory()
    # sessions of removed git worktrees; their kept data past its grace period (the cheap
    # sweep leaves kept volumes alone: it probes no engine it need not)
    for orphan in worktrees.orphans(app, engines=not cheap):
        sweeper._take(orphan)
    sweeper.lock_files()  # last: the sweeps above may have freed some
    return sweeper.found


def remove_broken(app: App, name: str) -> list[Orphan]:
    """``delete`` of session ``name`` whose record is unreadable: what the runtimes hold
    for it (its servers, its containers...) and its directory go."""
    sweeper = _Sweeper(app, dry_run=False, cheap=False)
    with app.store.lock(name):
        directory = app.store.directory(name)
        problem = unsafe(directory)
        if problem:
            raise UnsafeStateError(f"session directory {directory} {problem}")
        sweeper.remains(name, directory, "session", "its session.json is unreadable")
        app.store.release(name)  # its lock file
    return sweeper.found


class _Sweeper:
    def __init__(
        self, app: App, dry_run: bool, cheap: bool, runtimes: Collection[str] = ()
    ) -> None:
        self.app = app
        self.dry_run = dry_run
        self.cheap = cheap
        self.root = app.store.root
        self.found: list[Orphan] = []
        #: what the runtimes hold, by session; a session's part is taken (or known to be
        #: live) while its lock is held, and then dropped from here
        self.held = self._ask_runtimes(runtimes)

    def _ask_runtimes(self, named: Collection[str]) -> dict[str, list[Orphan]]:
        registered = dict(self.app.plugins.runtimes.items())
        if self.cheap:
            in_use = self._runtimes_in_use()
            registered = {name: cls for name, cls in registered.items()
                          if cls.cheap_leftovers or name in named or name in in_use}
        held: dict[str, list[Orphan]] = {}
        for cls in registered.values():
            runtime = cls(self.app.settings)
            if runtime.available():  # else nothing of it can be reached, nor removed
                for session, orphans in runtime.leftovers(self.app.settings.state_dir).items():
                    held.setdefault(session, []).extend(orphans)
        return held

    def _runtimes_in_use(self) -> set[str]:
        used = set()
        for directory in self.session_dirs():
            with contextlib.suppress(Exception):
                used.add(self.app.store.load(directory.name).runtime)
        return {name for name in used if name}

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

    # -- the state directory --------------------------------------------------------------

    def sessions(self) -> None:
        for directory in self.session_dirs():
            name = directory.name
            with try_hold(self.app.store.lock_file(name), create=False) as locked:
                if locked:  # else being started, deleted or snapshotted right now
                    self._judge(name, directory)
        self._templates()

    def _judge(self, name: str, directory: Path) -> None:
        if not (directory / "session.json").exists():
            self.remains(name, directory, "directory", f"remains of session {name}")
            return
        held = self.held.pop(name, [])  # a live session's, unless its start never finished
        unfinished = (directory / STARTING_MARKER).exists()  # its start was killed
        if not unfinished:  # live: only what none of its commands can be using
            for orphan in held:
                if orphan.unused:
                    self._take(orphan)
            held = [orphan for orphan in held if not orphan.unused]
        if self.cheap and not unfinished:
            self._snapshots_cut_short(name, directory / "snapshots")
            return
        try:
            self.app.store.load(name)
        except UnsafeStateError:
            return  # not ours to judge
        except ClaudeDbError:  # its record is unreadable
            if not self.cheap:
                self.held[name] = held
                self.remains(name, directory, "session", "its session.json is unreadable")
            return
        if not unfinished:
            self._snapshots_cut_short(name, directory / "snapshots")
            return
        for orphan in held:
            self._take(orphan)
        self._take(Orphan("session", name, "its start never finished",
                          remove=partial(_abandon_start, self.app, name)))

    def remains(self, name: str, directory: Path, kind: str, detail: str) -> None:
        """A session directory no usable record describes: what the runtimes hold for it,
        then itself."""
        for orphan in self.held.pop(name, []):
            self._take(orphan)
        what = name if kind == "session" else str(directory)
        self._take(Orphan(kind, what, detail, remove=partial(shutil.rmtree, directory)))

    def leftovers_without_directory(self) -> None:
        """What the runtimes hold for sessions whose directory is gone (or was busy)."""
        for name, orphans in sorted(self.held.items()):
            with try_hold(self.app.store.lock_file(name), create=False) as locked:
                if locked and not (self.root / name / "session.json").is_file():
                    for orphan in orphans:
                        self._take(orphan)

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
        found = unfinished(snapshots)
        target = self._running_target(name) if found else None
        if target is None:
            return
        for path in found:
            self._take(Orphan("directory", str(path), f"unfinished snapshot of session {name}",
                              remove=partial(discard_unfinished, target, path)))

    def _running_target(self, name: str) -> Target | None:
        """Session ``name``'s database if its server runs (None if not, or unreadable)."""
        with contextlib.suppress(Exception):
            session = self.app.store.load(name)
            if session.has_database:
                engine, runtime = parts(self.app, session)
                if runtime.status(session) == "running":
                    return Target(name, engine, runtime, session)
        return None


# -- helpers ---------------------------------------------------------------------------------


def _abandon_start(app: App, name: str) -> None:
    """Delete a session whose start died half-way (its lock is held by the sweep)."""
    session = app.store.load(name)
    if session.has_database:
        engine, runtime = parts(app, session)
        runtime.delete(session, engine, keep_data=False)
    # a start killed late had written it already (as lifecycle.remove_session_env)
    remove_env(Path(session.workdir), Owner(name, str(app.settings.state_dir)))
    shutil.rmtree(app.store.directory(name))
    app.store.release(name)

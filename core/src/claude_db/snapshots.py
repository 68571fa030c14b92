"""Snapshots: named copies of a session's database to go back to, and ``undo``.

A snapshot is a directory ``<state>/sessions/<session>/snapshots/<name>/`` holding
``snapshot.json`` (which database, when, why) and whatever the engine keeps: a dump by
default, a template database's name for PostgreSQL (see ``Engine.snapshot_save``). They
live and die with the session. A database reached only through ``DATABASE_URL`` (e.g.
inside a session container) keeps its snapshots under ``<state>/url-snapshots/<digest>/``.

Automatic snapshots are taken before every command that destroys data (``reset``,
``import --replace``, ``snapshot restore``, ``undo``); ``CLAUDE_DB_AUTO_SNAPSHOTS`` bounds
how many are kept (0: none are taken). ``undo`` restores the latest snapshot, skipping the
ones ``undo`` itself took, so running it twice is harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_db.engine import Engine
from claude_db.errors import ClaudeDbError, PartlyAppliedError, UsageError
from claude_db.locks import hold, lock_for
from claude_db.processes import signals_held

if TYPE_CHECKING:
    from claude_db.app import App
    from claude_db.database import Target
    from claude_db.engine import Endpoint

META = "snapshot.json"
PARTIAL = ".partial"  # suffix of a snapshot being saved (``.<name>.<pid>.partial``)
DELETING = ".deleting"  # suffix of a snapshot being deleted (both are swept if the pid died)
#: in a partial snapshot the engine moved the database into: maybe the data's only copy
MOVED = ".moved"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: reasons of automatic snapshots (the command that was about to destroy data)
RESET, IMPORT, RESTORE, UNDO = "reset", "import", "restore", "undo"


class SnapshotNotFoundError(UsageError):
    pass


class SnapshotExistsError(ClaudeDbError):
    pass


class NothingToUndoError(ClaudeDbError):
    pass


@dataclass
class Snapshot:
    name: str
    database: str
    engine: str
    created_at: str  # UTC, ISO 8601 with microseconds: sorts in time order
    automatic: bool = False
    reason: str = ""  # automatic snapshots: the command that took it
    path: Path = field(default=Path(), compare=False)
    #: taken with ``empty``: the engine moved the data into it, the database is now empty
    emptied: bool = field(default=False, compare=False)

    def describe(self) -> str:
        when = self.created_at[:19].replace("T", " ")
        why = f"taken before {self.reason}" if self.automatic else "saved"
        return f"{self.name} ({why} at {when} UTC, database {self.database})"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data.pop("emptied")
        return data


def validate_snapshot_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid snapshot name {name!r}: use 1-64 letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


class SnapshotStore:
    """The snapshots of one database server; every method expects :meth:`lock` to be held."""

    def __init__(self, root: Path, lock: Callable[[], contextlib.AbstractContextManager[None]]):
        self.root = root
        self.lock = lock

    def all(self) -> list[Snapshot]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or not (path / META).is_file():
                continue
            with contextlib.suppress(OSError, ValueError, TypeError):
                data = json.loads((path / META).read_text())
                found.append(Snapshot(**data, path=path))
        return sorted(found, key=lambda s: (s.created_at, s.name))

    def get(self, name: str) -> Snapshot:
        validate_snapshot_name(name)
        for snapshot in self.all():
            if snapshot.name == name:
                return snapshot
        raise SnapshotNotFoundError(f"no snapshot named {name!r} (see claude-db snapshot list)")

    def free_name(self, prefix: str) -> str:
        name, n = prefix, 1
        while (self.root / name).exists():
            n += 1
            name = f"{prefix}-{n}"
        return name


def store_for(app: App, target: Target) -> SnapshotStore:
    """Where ``target``'s snapshots live, and the lock that guards them."""
    if target.session is not None:
        root = app.store.directory(target.name) / "snapshots"
        return SnapshotStore(root, lambda: app.store.lock(target.name))
    endpoint = target.endpoint()
    key = f"{target.engine.name}|{endpoint.host}|{endpoint.port}|{endpoint.user}"
    root = app.settings.state_dir / "url-snapshots" / hashlib.sha256(key.encode()).hexdigest()[:16]
    return SnapshotStore(root, lambda: hold(lock_for(root), f"the snapshots of {target.name}"))


# -- commands ------------------------------------------------------------------------------


def save(app: App, target: Target, name: str | None, database: str | None) -> Snapshot:
    """``claude-db snapshot save [NAME]``."""
    if name is not None:
        validate_snapshot_name(name)
    target.require_running()
    store = store_for(app, target)
    with store.lock():
        return _save(target, store, name, database, reason="")


def list_snapshots(app: App, target: Target) -> list[Snapshot]:
    store = store_for(app, target)
    return store.all()


def restore(app: App, target: Target, name: str) -> tuple[Snapshot, Snapshot | None]:
    """``claude-db snapshot restore NAME``: returns the snapshot and the safety snapshot taken."""
    validate_snapshot_name(name)
    target.require_running()
    store = store_for(app, target)
    with store.lock():
        return _restore(app, target, store, store.get(name), reason=RESTORE)


def undo(app: App, target: Target) -> tuple[Snapshot, Snapshot | None]:
    """``claude-db undo``: restore the snapshot taken before the last destructive command."""
    target.require_running()
    store = store_for(app, target)
    with store.lock():
        return _restore(app, target, store, _undo_candidate(store), reason=UNDO)


def find(app: App, target: Target, name: str | None) -> Snapshot:
    """The snapshot ``restore`` (``name``) or ``undo`` (None) would restore; raise if none."""
    store = store_for(app, target)
    return store.get(name) if name is not None else _undo_candidate(store)


def _undo_candidate(store: SnapshotStore) -> Snapshot:
    """The snapshot taken before the last reset, import --replace or restore: snapshots
    saved by name are not operations to undo, and undo's own are skipped (twice is harmless)."""
    candidates = [s for s in store.all() if s.automatic and s.reason != UNDO]
    if not candidates:
        raise NothingToUndoError(
            "nothing to undo: no reset, import --replace or restore was made "
            "(claude-db snapshot list; claude-db snapshot restore NAME)"
        )
    return candidates[-1]


def delete(app: App, target: Target, name: str) -> Snapshot:
    validate_snapshot_name(name)
    target.require_running()
    store = store_for(app, target)
    with store.lock():
        snapshot = store.get(name)
        _sweep(target, store)
        _delete(target, snapshot)
        return snapshot


def before_destroying(
    app: App, target: Target, database: str | None, reason: str, *, empty: bool = False
) -> Snapshot | None:
    """The automatic snapshot taken before ``reset`` (None when they are turned off).

    If it cannot be taken the command must not go on: the error says so. With ``empty``
    (the caller empties the database next) an engine that can move the data into the
    snapshot instead of copying it does both; ``snapshot.emptied`` then says so.
    """
    store = store_for(app, target)
    with store.lock():
        return _automatic(app, target, store, database, reason, move=empty)


def replace_from(app: App, target: Target, source: str, database: str | None) -> Snapshot | None:
    """``claude-db import --replace``: snapshot, empty the database, import; all or nothing.

    If the import fails the snapshot is restored, so the database is as it was. The caller
    has checked the source (``check_source``) and that the server runs, before asking.
    """
    from claude_db.database import import_from

    store = store_for(app, target)
    with store.lock():
        snapshot = _automatic(app, target, store, database, IMPORT, prune=False)
        try:
            target.engine.reset(target.endpoint(database))
            import_from(target, source, database)
        except BaseException as exc:
            if snapshot is None:
                raise
            try:
                _engine_restore(target, snapshot)
            except Exception as again:
                raise ClaudeDbError(
                    f"{_message(exc)}; putting the previous data back failed too "
                    f"({_message(again)}): it is in snapshot {snapshot.name} "
                    f"(claude-db snapshot restore {snapshot.name})"
                ) from None
            with contextlib.suppress(Exception):  # the data is back: the copy adds nothing
                _delete(target, snapshot)
            if isinstance(exc, ClaudeDbError):  # what the file committed went too
                failure = exc.failure if isinstance(exc, PartlyAppliedError) else _message(exc)
                raise ClaudeDbError(f"{failure}; the previous data is back") from None
            raise
        if snapshot is not None:  # only now: a failed command leaves every snapshot there
            _prune(app, target, store, keep=snapshot)
        return snapshot


def check_source(source: str) -> None:
    if source != "-" and not Path(source).is_file():
        what = "is a directory" if Path(source).is_dir() else "does not exist"
        raise UsageError(f"{source} {what}: give a .sql or .sql.gz file, or - for stdin")


def unfinished(root: Path) -> list[Path]:
    """Snapshots in ``root`` half saved or half deleted, by a process that died if the
    store's lock is ours. Not listed: one the engine moved the database into, as it may hold
    the only copy of the data (a ``reset`` killed with SIGKILL): it is left for a human."""
    if not root.is_dir():
        return []
    return sorted(
        path for path in root.iterdir()
        if path.name.startswith(".") and path.is_dir()
        and not (path.name.endswith(PARTIAL) and (path / MOVED).exists())
    )


def discard_unfinished(target: Target, path: Path) -> None:
    """Free what an :func:`unfinished` snapshot holds (e.g. a template database on the
    server, which must run), then its directory."""
    target.engine.snapshot_delete(target.endpoint(), target.tools(), path)
    shutil.rmtree(path)


# -- internals (the store's lock is held) ---------------------------------------------------


def _sweep(target: Target, store: SnapshotStore) -> None:
    for path in unfinished(store.root):
        with contextlib.suppress(Exception):  # a leftover is no reason to fail the command
            discard_unfinished(target, path)


def _save(
    target: Target, store: SnapshotStore, name: str | None, database: str | None, reason: str,
    move: bool = False,
) -> Snapshot:
    now = datetime.now(UTC)
    if name is None:
        stamp = now.strftime("%Y%m%d-%H%M%S")
        name = store.free_name(f"auto-{stamp}-{reason}" if reason else stamp)
    elif (store.root / name).exists():
        raise SnapshotExistsError(
            f"snapshot {name!r} already exists (claude-db snapshot delete {name} first)"
        )
    endpoint = target.endpoint(database)
    snapshot = Snapshot(
        name=name, database=endpoint.database, engine=target.engine.name,
        created_at=now.isoformat(timespec="microseconds"), automatic=bool(reason), reason=reason,
        path=store.root / name,
    )
    _sweep(target, store)
    store.root.mkdir(parents=True, exist_ok=True)
    partial = store.root / f".{name}.{os.getpid()}{PARTIAL}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    # Moving takes the user's data out of its database: no interruption between the move and
    # the snapshot's record, or the cleanup could free the only copy (nor may the sweep of a
    # process killed meanwhile: the mark keeps it off the list).
    moves = move and type(target.engine).snapshot_move is not Engine.snapshot_move
    if moves:
        (partial / MOVED).touch()
    with signals_held() if moves else contextlib.nullcontext():
        return _save_into(target, endpoint, database, snapshot, partial, move)


def _save_into(
    target: Target, endpoint: Endpoint, database: str | None, snapshot: Snapshot,
    partial: Path, move: bool,
) -> Snapshot:
    moved = False
    try:
        moved = move and target.engine.snapshot_move(endpoint, target.tools(database), partial)
        if not moved:
            (partial / MOVED).unlink(missing_ok=True)  # nothing was moved: a copy follows
            target.engine.snapshot_save(endpoint, target.tools(database), partial)
        (partial / META).write_text(json.dumps(snapshot.to_json(), indent=2))
        os.rename(partial, snapshot.path)  # atomic: a snapshot is listed whole or not at all
    except BaseException as exc:
        # A move cut short, or one whose data did not go back, may have left the user's data
        # in what ``partial`` names: then it stays, marked, for a human (gc never takes it).
        maybe_data = (partial / MOVED).exists()
        with contextlib.suppress(Exception):  # e.g. a template database made before the failure
            if moved:  # the data lives in the snapshot: put it back before freeing anything
                target.engine.snapshot_restore(endpoint, target.tools(database), partial)
                maybe_data = False
            if not maybe_data:
                target.engine.snapshot_delete(endpoint, target.tools(database), partial)
        if not maybe_data:
            shutil.rmtree(partial, ignore_errors=True)
        elif isinstance(exc, Exception):
            kept = ClaudeDbError(
                f"{_message(exc)}; the data may be in what {partial} names (kept as it is)"
            )
            kept.exit_code = getattr(exc, "exit_code", kept.exit_code)  # e.g. 4: server gone
            raise kept from None
        raise
    snapshot.emptied = moved
    return snapshot


def _automatic(
    app: App, target: Target, store: SnapshotStore, database: str | None, reason: str,
    move: bool = False, prune: bool = True,
) -> Snapshot | None:
    if app.settings.auto_snapshots == 0:
        return None
    try:
        snapshot = _save(target, store, None, database, reason, move=move)
    except ClaudeDbError as exc:
        # same class, same exit code (a server that does not answer stays exit 4)
        raise type(exc)(
            f"could not take the automatic snapshot before {reason}, nothing was changed: "
            f"{_message(exc)} (CLAUDE_DB_AUTO_SNAPSHOTS=0 skips it)"
        ) from None
    if prune:
        _prune(app, target, store, keep=snapshot)
    return snapshot


def _restore(
    app: App, target: Target, store: SnapshotStore, snapshot: Snapshot, reason: str
) -> tuple[Snapshot, Snapshot | None]:
    if snapshot.engine != target.engine.name:
        raise UsageError(
            f"snapshot {snapshot.name!r} is of a {snapshot.engine} database, "
            f"not {target.engine.name}"
        )
    # the data about to be replaced is kept too: nothing is lost by a wrong restore
    safety = _automatic(app, target, store, snapshot.database, reason, prune=False)
    _engine_restore(target, snapshot)
    if safety is not None:  # after the restore: the one restored may be the oldest
        _prune(app, target, store, keep=safety)
    return snapshot, safety


def _engine_restore(target: Target, snapshot: Snapshot) -> None:
    target.engine.snapshot_restore(
        target.endpoint(snapshot.database), target.tools(snapshot.database), snapshot.path
    )


def _prune(app: App, target: Target, store: SnapshotStore, keep: Snapshot) -> None:
    """Delete the oldest automatic snapshots beyond the retention setting."""
    automatic = [s for s in store.all() if s.automatic]
    excess = len(automatic) - app.settings.auto_snapshots
    for snapshot in automatic[: max(excess, 0)]:
        if snapshot.name != keep.name:
            with contextlib.suppress(Exception):  # a snapshot left over is no reason to fail
                _delete(target, snapshot)


def _delete(target: Target, snapshot: Snapshot) -> None:
    doomed = snapshot.path.with_name(f".{snapshot.name}.{os.getpid()}{DELETING}")
    os.rename(snapshot.path, doomed)  # off the list first: never listed but half deleted
    try:
        target.engine.snapshot_delete(
            target.endpoint(snapshot.database), target.tools(snapshot.database), doomed
        )
    except BaseException:
        os.rename(doomed, snapshot.path)
        raise
    shutil.rmtree(doomed, ignore_errors=True)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc).rstrip(".") or type(exc).__name__

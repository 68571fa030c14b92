"""Snapshots: named copies of a session's database to go back to, and ``undo``.

A snapshot is a directory ``<state>/sessions/<session>/snapshots/<name>/`` holding
``snapshot.json`` (which database, when, why) and whatever the engine keeps: a dump by
default. A database reached only through ``DATABASE_URL`` (e.g. inside a session
container) keeps them under ``<state>/url-snapshots/<digest>/``.

Engines that keep snapshots on the server itself (PostgreSQL: template databases whose
comment holds the record, see ``Engine.snapshot_catalog``) make the server the history:
every command first brings the directories in line with it (:func:`_sync`), so the host and
a session container list, restore and undo the same snapshots, and a re-created container
finds them all. The engine records a snapshot atomically with moving the data into it, and
marks what must follow (make the database again) as pending, so a command killed at any
point leaves either the old state or a recorded snapshot plus a step the next command
finishes (``Engine.snapshot_recover``): ``undo`` then brings the data back.

Automatic snapshots are taken before every command that destroys data (``reset``,
``import --replace``, ``snapshot restore``, ``undo``); ``CLAUDE_DB_AUTO_SNAPSHOTS`` bounds
how many are kept (0: none are kept, and the command is noted so that ``undo`` says there
is nothing to undo for it). ``undo`` restores the latest snapshot, skipping the ones
``undo`` itself took, so running it twice is harmless.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from claude_db.database import check_source, import_from, opened
from claude_db.engine import DumpDirectory, Engine, ImportOptions
from claude_db.errors import ClaudeDbError, PartlyAppliedError, UsageError
from claude_db.faults import checkpoint
from claude_db.locks import hold, lock_for
from claude_db.processes import signals_held
from claude_db.target import Target

if TYPE_CHECKING:
    from claude_db.app import App

META = "snapshot.json"
PARTIAL = ".partial"  # suffix of a snapshot being saved (``.<name>.<pid>.partial``)
DELETING = ".deleting"  # suffix of a snapshot being deleted (both are swept if the pid died)
#: in a partial snapshot an older claude-db moved the database into (its template stays,
#: listed from the server as unrecorded)
MOVED = ".moved"
#: the last destructive command that took no snapshot (CLAUDE_DB_AUTO_SNAPSHOTS=0)
UNSNAPSHOTTED = ".unsnapshotted.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: reasons of automatic snapshots (the command that was about to destroy data)
RESET, IMPORT, RESTORE, UNDO = "reset", "import", "restore", "undo"
#: reasons of checkpoints: ``claude-db checkpoint``, and the same run by an agent's hook
CHECKPOINT, HOOK = "checkpoint", "hook"
CHECKPOINTS = (CHECKPOINT, HOOK)
LABEL_MAX = 200
#: the reason of a snapshot the server holds without a record (a save cut short elsewhere)
UNRECORDED = "unrecorded"


class SnapshotNotFoundError(UsageError):
    pass


class SnapshotExistsError(ClaudeDbError):
    pass


class NothingToUndoError(ClaudeDbError):
    pass


class NoCheckpointError(ClaudeDbError):
    pass


@dataclass
class Snapshot:
    name: str
    database: str
    engine: str
    created_at: str  # UTC, ISO 8601 with microseconds: sorts in time order
    automatic: bool = False
    reason: str = ""  # automatic snapshots: the command that took it
    label: str = ""  # checkpoints: what the user or the hook said it is
    path: Path = field(default=Path(), compare=False)
    #: taken with ``empty``: the engine moved the data into it, the database is made again
    emptied: bool = field(default=False, compare=False)
    #: False: its snapshot.json is unreadable; it can only be deleted
    readable: bool = field(default=True, compare=False)

    def describe(self) -> str:
        if not self.readable:
            return f"{self.name} (its record is unreadable)"
        if self.reason == UNRECORDED:
            return f"{self.name} (found on the server without a record)"
        when = self.created_at[:19].replace("T", " ")
        why = f"taken before {self.reason}" if self.automatic else "saved"
        if self.reason in CHECKPOINTS:
            why = f"checkpoint {self.label!r}" if self.label else "checkpoint"
        return f"{self.name} ({why} at {when} UTC, database {self.database})"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for internal in ("path", "emptied", "readable"):
            data.pop(internal)
        return data


RECORD_FIELDS = ("name", "database", "engine", "created_at", "automatic", "reason")


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
            if path.name.startswith(".") or not path.is_dir():
                continue
            found.append(_load(path))
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


def _load(path: Path) -> Snapshot:
    """The snapshot in ``path``; one whose record is unreadable is listed as such (it can
    be deleted: its name and what it holds are not lost with its record)."""
    try:
        data = json.loads((path / META).read_text())
        return Snapshot(**{k: data[k] for k in RECORD_FIELDS}, path=path,
                        label=_label(data))
    except (OSError, ValueError, TypeError, KeyError):
        stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return Snapshot(name=path.name, database="", engine="", path=path, readable=False,
                        created_at=stamp.isoformat(timespec="microseconds"))


def store_for(app: App, target: Target) -> SnapshotStore:
    """Where ``target``'s snapshots live, and the lock that guards them."""
    if not target.bare_url:
        root = app.store.directory(target.name) / "snapshots"
        return SnapshotStore(root, lambda: _batch(target, app.store.lock(target.name)))
    import hashlib  # late: hashlib loads OpenSSL, a cost every command would pay
    endpoint = target.endpoint()
    key = f"{target.engine.name}|{endpoint.host}|{endpoint.port}|{endpoint.user}"
    root = app.settings.state_dir / "url-snapshots" / hashlib.sha256(key.encode()).hexdigest()[:16]
    return SnapshotStore(root, lambda: _batch(
        target, hold(lock_for(root), f"the snapshots of {target.name}")))


@contextlib.contextmanager
def _batch(target: Target, lock: contextlib.AbstractContextManager[None]) -> Iterator[None]:
    """The store's lock, and the engine's batch (``Engine.snapshot_batch``) inside it."""
    with lock, target.engine.snapshot_batch():
        yield


@contextlib.contextmanager
def _synced(app: App, target: Target) -> Iterator[SnapshotStore]:
    """The target's snapshot store, locked and in step with the server, which must run: what
    every command that changes or compares snapshots starts with."""
    target.require_running()
    store = store_for(app, target)
    with store.lock():
        _sync(target, store)
        yield store


# -- commands ------------------------------------------------------------------------------


def save(app: App, target: Target, name: str | None, database: str | None) -> Snapshot:
    """``claude-db snapshot save [NAME]``: a copy; other clients go on undisturbed."""
    if name is not None:
        validate_snapshot_name(name)
    with _synced(app, target) as store:
        return _save(target, store, name, database, reason="")


def list_snapshots(app: App, target: Target) -> list[Snapshot]:
    """The snapshots, as the server has them when it runs (else as last seen)."""
    store = store_for(app, target)
    with store.lock():
        with contextlib.suppress(ClaudeDbError):
            target.require_running()
            _sync(target, store)
        return store.all()


def restore(app: App, target: Target, name: str) -> tuple[Snapshot, Snapshot | None]:
    """``claude-db snapshot restore NAME``: returns the snapshot and the safety snapshot taken."""
    validate_snapshot_name(name)
    with _synced(app, target) as store:
        return _restore(app, target, store, store.get(name), reason=RESTORE)


def undo(app: App, target: Target) -> tuple[Snapshot, Snapshot | None]:
    """``claude-db undo``: restore the snapshot taken before the last destructive command."""
    with _synced(app, target) as store:
        return _restore(app, target, store, _undo_candidate(store), reason=UNDO)


def find(app: App, target: Target, name: str | None) -> Snapshot:
    """The snapshot ``restore`` (``name``) or ``undo`` (None) would restore; raise if none."""
    if name is not None:
        validate_snapshot_name(name)
    store = store_for(app, target)
    with store.lock():
        with contextlib.suppress(ClaudeDbError):  # not running: the command itself says so
            target.require_running()
            _sync(target, store)
        return store.get(name) if name is not None else _undo_candidate(store)


def _undo_candidate(store: SnapshotStore) -> Snapshot:
    """The snapshot taken before the last reset, import --replace or restore: snapshots
    saved by name are not operations to undo, nor is one undone already (twice is harmless).
    A later such command that took no snapshot leaves nothing to undo, not an older one."""
    taken = [s for s in _before_commands(store) if s.readable]
    candidates = [s for s in taken if s.reason != UNDO]
    unsnapshotted = _read_unsnapshotted(store)
    if unsnapshotted and (not candidates or unsnapshotted["at"] > candidates[-1].created_at):
        raise NothingToUndoError(
            f"nothing to undo for the last {unsnapshotted['reason']} (it took no snapshot: "
            "CLAUDE_DB_AUTO_SNAPSHOTS=0)"
        )
    if not candidates:
        raise NothingToUndoError(
            "nothing to undo: no reset, import --replace or restore was made "
            "(claude-db snapshot list; claude-db snapshot restore NAME)"
        )
    undos = [s for s in taken if s.reason == UNDO]
    if undos and undos[-1].created_at > candidates[-1].created_at:
        # undone already: restoring it again would throw away what was done since
        raise NothingToUndoError(
            f"nothing to undo: the last {candidates[-1].reason} was undone already "
            f"(claude-db snapshot restore {undos[-1].name} goes back to before that undo)"
        )
    return candidates[-1]


def take_checkpoint(app: App, target: Target, label: str, hook: bool = False
                    ) -> tuple[Snapshot, list[str]]:
    """``claude-db checkpoint``: a snapshot to go back to (``undo --to``), taken without
    disturbing any client; then retention. Returns it and what retention has to say."""
    if any(not c.isprintable() for c in label) or len(label) > LABEL_MAX:
        raise UsageError(f"invalid label: at most {LABEL_MAX} printable characters")
    with _synced(app, target) as store:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        snapshot = _save(target, store, store.free_name(f"cp-{stamp}"), None,
                         HOOK if hook else CHECKPOINT, label=label)
        return snapshot, _retain(app, target, store, keep=snapshot)


def with_sizes(target: Target, found: list[Snapshot]) -> list[tuple[Snapshot, int | None]]:
    """Each snapshot with the bytes it takes (None: not known, e.g. the server is down)."""
    try:
        target.require_running()
        sizes: list[int | None] = list(_sizes(target, found))
    except ClaudeDbError:
        sizes = [None] * len(found)
    return list(zip(found, sizes, strict=True))


def diff(app: App, target: Target, name: str | None) -> tuple[Snapshot, dict[str, Any]]:
    """``claude-db diff [ID]``: the tables added, dropped and altered since snapshot ``name``
    (default: the latest checkpoint), and every table's rows then and now."""
    if name is not None:
        validate_snapshot_name(name)
    with _synced(app, target) as store:
        if name is not None:
            snapshot = store.get(name)
        else:
            checkpoints = [s for s in _checkpoints(store) if s.readable]
            if not checkpoints:
                raise NoCheckpointError("no checkpoint to compare with (claude-db checkpoint "
                                        "takes one; claude-db diff ID compares with a snapshot)")
            snapshot = checkpoints[-1]
        if not snapshot.readable or snapshot.engine != target.engine.name:
            raise UsageError(f"snapshot {snapshot.name!r} cannot be compared: "
                             + ("its record is unreadable" if not snapshot.readable
                                else f"it is of a {snapshot.engine} database"))
        endpoint = target.endpoint(snapshot.database or None)
        before = target.engine.tables(endpoint, snapshot.path)
        after = target.engine.tables(endpoint)
    return snapshot, compare_tables(before, after)


def compare_tables(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What :func:`diff` reports, from two ``Engine.tables`` results."""
    altered = {}
    for table in sorted(before.keys() & after.keys()):
        old, new = before[table]["columns"], after[table]["columns"]
        change = {
            "columns_added": {c: t for c, t in new.items() if c not in old},
            "columns_dropped": {c: t for c, t in old.items() if c not in new},
            "types_changed": {c: [old[c], new[c]] for c in old if c in new and old[c] != new[c]},
        }
        if any(change.values()):
            altered[table] = change
    return {
        "added": sorted(after.keys() - before.keys()),
        "dropped": sorted(before.keys() - after.keys()),
        "altered": altered,
        "rows": {t: {"before": before[t]["rows"] if t in before else None,
                     "after": after[t]["rows"] if t in after else None}
                 for t in sorted(before.keys() | after.keys())},
    }


def made_by(snapshot: Snapshot) -> str:
    """What made a snapshot, as ``undo --list`` says it."""
    if not snapshot.readable:
        return "unknown (its record is unreadable)"
    if snapshot.reason == UNRECORDED:
        return "unknown (found on the server without a record)"
    if snapshot.reason == CHECKPOINT:
        return "checkpoint"
    if snapshot.reason == HOOK:
        return "checkpoint by a hook"
    return f"before {snapshot.reason}" if snapshot.automatic else "snapshot save"


def delete(app: App, target: Target, name: str) -> Snapshot:
    validate_snapshot_name(name)
    with _synced(app, target) as store:
        snapshot = store.get(name)
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
        _sync(target, store)
        return _automatic(app, target, store, database, reason, move=empty)


def replace_from(app: App, target: Target, source: str, database: str | None) -> Snapshot | None:
    """``claude-db import --replace``: snapshot, empty the database, import; all or nothing.

    If the import fails the snapshot is restored, so the database is as it was. The caller
    has checked the source (``database.check_source``) and that the server runs, before asking.
    """
    store = store_for(app, target)
    # opened before the lock (a pipe may wait for a command that takes it) and before the
    # snapshot: empty input is refused with nothing changed
    with opened(source) as data, store.lock():
        _sync(target, store)
        snapshot = _automatic(app, target, store, database, IMPORT, move=True, prune=False)
        try:
            if snapshot is None or not snapshot.emptied:
                target.engine.reset(target.endpoint(database))
            import_from(target, source, database, data=data)
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


def unfinished(root: Path) -> list[Path]:
    """Snapshots in ``root`` half saved or half deleted, by a process that died if the
    store's lock is ours."""
    if not root.is_dir():
        return []
    return sorted(
        path for path in root.iterdir()
        if path.name.startswith(".") and path.is_dir()
    )


def discard_unfinished(target: Target, path: Path) -> None:
    """Free what an :func:`unfinished` snapshot holds (e.g. a template database on the
    server, which must run), then its directory. A save the server recorded before its
    command died is whole, not unfinished: then the save is finished (its directory may
    hold the only copy of table files); a database an older claude-db moved stays on the
    server (listed unrecorded), only the directory goes."""
    endpoint = target.endpoint()
    held = target.engine.snapshot_catalog(endpoint)
    if held is not None and path.name.endswith(PARTIAL):
        match = _match(held, path)
        record = _checked(match["record"]) if match is not None else None
        if record is not None:
            _finish(path, path.parent / record["name"])
            return
        if match is not None and (path / MOVED).exists():
            shutil.rmtree(path)
            return
    target.engine.snapshot_delete(endpoint, target.tools(), path)
    shutil.rmtree(path)


# -- internals (the store's lock is held) ---------------------------------------------------


def _finish(partial: Path, path: Path) -> None:
    """Finish a save the server recorded: ``partial`` becomes ``path`` (a listing may have
    made ``path`` already, with the server's files only: what it lacks moves into it)."""
    if not path.exists():
        os.rename(partial, path)
        return
    for item in partial.iterdir():
        if not (path / item.name).exists():
            os.rename(item, path / item.name)
    shutil.rmtree(partial)



def _sync(target: Target, store: SnapshotStore) -> None:
    """Finish what killed commands left, sweep what they cut short and, for engines whose
    server keeps the snapshots, make the directories what the server has."""
    engine, endpoint = target.engine, target.endpoint()
    for done in engine.snapshot_recover(endpoint):
        print(done, file=sys.stderr)
    for path in unfinished(store.root):
        with contextlib.suppress(Exception):  # a leftover is no reason to fail the command
            discard_unfinished(target, path)
    held = engine.snapshot_catalog(endpoint)
    if held is None:
        return
    noted, here = engine.snapshot_noted(endpoint), _read_unsnapshotted(store)
    if noted is not None and (here is None or noted["at"] > here["at"]):  # noted elsewhere
        store.root.mkdir(parents=True, exist_ok=True)
        (store.root / UNSNAPSHOTTED).write_text(json.dumps(noted))
    adopted, stays = False, set()
    for snapshot in store.all():
        match = _match(held, snapshot.path)
        if not snapshot.readable or (match is not None and match["record"] is not None):
            continue
        # known here only (an older claude-db, a server that lost its history): its data
        # may be here only, so the server keeps it again; if it cannot, it stays here
        try:
            engine.snapshot_keep(endpoint, snapshot.path)
            adopted = True
        except (ClaudeDbError, OSError) as exc:
            stays.add(snapshot.name)
            print(f"warning: snapshot {snapshot.name} is kept here only: {exc}", file=sys.stderr)
    if adopted:
        held = engine.snapshot_catalog(endpoint) or []
    kept = set()
    for entry in held:
        record = _checked(entry["record"]) or _unrecorded(engine, entry["key"])
        if (not NAME_PATTERN.fullmatch(record["name"])  # the server's names become paths
                or record["database"].lower() in engine.internal_databases):  # never ours
            continue
        kept.add(record["name"])
        _write_cached(store.root / record["name"], record, entry["files"])
    for snapshot in store.all():
        if snapshot.name not in kept | stays and engine.snapshot_deleted(endpoint, snapshot.path):
            shutil.rmtree(snapshot.path, ignore_errors=True)  # deleted elsewhere


def _checked(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A server's record as snapshot.json, if it is a whole one with a valid name (anyone
    who may write on the server may have written it); None otherwise."""
    if not isinstance(record, dict):
        return None
    fields = {k: record.get(k) for k in RECORD_FIELDS}
    if not (all(isinstance(fields[k], str) for k in RECORD_FIELDS if k != "automatic")
            and isinstance(fields["automatic"], bool)
            and NAME_PATTERN.fullmatch(str(fields["name"]))):
        return None
    # the label always, as Snapshot.to_json writes it: else every listing rewrote the
    # record of an unlabelled snapshot (a failed command changed a state file)
    return {**fields, "label": _label(record)}


def _label(record: dict[str, Any]) -> str:
    """A record's label: optional (older records have none), text of bounded length."""
    label = record.get("label")
    return label[:LABEL_MAX] if isinstance(label, str) else ""


def _unrecorded(engine: Engine, key: str) -> dict[str, Any]:
    """The record of a snapshot the server holds without one: named after what holds it."""
    return {"name": key, "database": "", "engine": engine.name, "created_at": "",
            "automatic": False, "reason": UNRECORDED}


def _write_cached(path: Path, record: dict[str, Any], files: dict[str, str]) -> None:
    """Make ``path`` hold the server's snapshot: its files, then its record (a directory
    without its record is not listed, and written again next time)."""
    text = json.dumps(record, indent=2)
    with contextlib.suppress(OSError):
        if (path / META).read_text() == text and all(
            (path / name).read_text() == content for name, content in files.items()
        ):
            return
    path.mkdir(parents=True, exist_ok=True)
    (path / META).unlink(missing_ok=True)
    for name, content in files.items():
        (path / name).write_text(content)
    (path / META).write_text(text)


def _match(held: list[dict[str, Any]], path: Path) -> dict[str, Any] | None:
    """The server's snapshot that directory ``path`` reaches (same files), if any."""
    for entry in held:
        with contextlib.suppress(OSError):
            if all(_same(c, (path / n).read_text()) for n, c in entry["files"].items()):
                return entry
    return None


def _same(server: str, local: str) -> bool:
    """The same file, or (JSON) one that says at least what the server's says: a
    directory an older claude-db wrote holds more."""
    if server == local:
        return True
    with contextlib.suppress(ValueError):
        wanted, found = json.loads(server), json.loads(local)
        return isinstance(wanted, dict) and isinstance(found, dict) and all(
            found.get(k) == v for k, v in wanted.items())
    return False


def _moves(engine: Engine) -> bool:
    return type(engine).snapshot_move is not Engine.snapshot_move


def _server_kept(engine: Engine) -> bool:
    return type(engine).snapshot_catalog is not Engine.snapshot_catalog


def _save(
    target: Target, store: SnapshotStore, name: str | None, database: str | None, reason: str,
    move: bool = False, source: Snapshot | None = None, label: str = "",
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
        label=label, path=store.root / name,
    )
    store.root.mkdir(parents=True, exist_ok=True)
    partial = store.root / f".{name}.{os.getpid()}{PARTIAL}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    # the record first: an engine that keeps snapshots on the server records it there
    (partial / META).write_text(json.dumps(snapshot.to_json(), indent=2))
    moves = move and _moves(target.engine)
    tools = target.tools(database)
    moved = False
    try:
        # moving takes the data out of its database: no Ctrl-C until it is made again and
        # the snapshot holding the data is listed (the command is then as good as done)
        with signals_held() if moves else contextlib.nullcontext():
            moved = moves and target.engine.snapshot_move(
                endpoint, tools, partial, source.path if source else None)
            if not moved:
                target.engine.snapshot_save(endpoint, tools, partial)
            checkpoint("saved")
            os.rename(partial, snapshot.path)  # atomic: a snapshot is listed whole or not at all
    except BaseException:
        # What the server recorded (a move's data) stays and is listed; the rest goes.
        with contextlib.suppress(Exception):
            if _server_kept(target.engine):
                discard_unfinished(target, partial)
            else:
                target.engine.snapshot_delete(endpoint, tools, partial)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    snapshot.emptied = moved
    return snapshot


def _automatic(
    app: App, target: Target, store: SnapshotStore, database: str | None, reason: str,
    move: bool = False, prune: bool = True, source: Snapshot | None = None,
) -> Snapshot | None:
    """The automatic snapshot before ``reason``; with snapshots turned off, None (the
    command is noted for undo) unless a ``source`` is restored by a move: that snapshot is
    the caller's to delete."""
    if app.settings.auto_snapshots == 0:
        if reason != UNDO:
            _write_unsnapshotted(target, store, reason)
        if source is None or not _moves(target.engine):
            return None
    try:
        snapshot = _save(target, store, None, database, reason, move=move, source=source)
    except ClaudeDbError as exc:
        # same class, same exit code (a server that does not answer stays exit 4)
        raise type(exc)(
            f"could not take the automatic snapshot before {reason}, nothing was changed: "
            f"{_message(exc)} (CLAUDE_DB_AUTO_SNAPSHOTS=0 skips it)"
        ) from None
    if prune:  # after a move the command has changed the data: it goes on to its end
        with signals_held() if snapshot.emptied else contextlib.nullcontext():
            checkpoint("pruning")
            _prune(app, target, store, keep=snapshot)
    return snapshot


def _write_unsnapshotted(target: Target, store: SnapshotStore, reason: str) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    note = {"reason": reason, "at": datetime.now(UTC).isoformat(timespec="microseconds")}
    (store.root / UNSNAPSHOTTED).write_text(json.dumps(note))
    target.engine.snapshot_note(target.endpoint(), note)  # seen from the container, the host


def _read_unsnapshotted(store: SnapshotStore) -> dict[str, str] | None:
    with contextlib.suppress(OSError, ValueError, TypeError):
        data = json.loads((store.root / UNSNAPSHOTTED).read_text())
        if isinstance(data, dict) and {"reason", "at"} <= data.keys():
            return {"reason": str(data["reason"]), "at": str(data["at"])}
    return None


def _restore(
    app: App, target: Target, store: SnapshotStore, snapshot: Snapshot, reason: str
) -> tuple[Snapshot, Snapshot | None]:
    if not snapshot.readable:
        raise UsageError(f"snapshot {snapshot.name!r} cannot be restored: its record is "
                         f"unreadable (claude-db snapshot delete {snapshot.name})")
    if snapshot.engine != target.engine.name:
        raise UsageError(
            f"snapshot {snapshot.name!r} is of a {snapshot.engine} database, "
            f"not {target.engine.name}"
        )
    # The data about to be replaced is kept too: nothing is lost by a wrong restore. An
    # engine that can moves it aside and makes the database from the snapshot in one step.
    database = snapshot.database or None
    safety = _automatic(app, target, store, database, reason, move=True, prune=False,
                        source=snapshot)
    if safety is None or not safety.emptied:
        _engine_restore(target, snapshot)
    if safety is not None and app.settings.auto_snapshots == 0:  # moved aside only to restore
        with contextlib.suppress(Exception):
            _delete(target, safety)
        safety = None
    if safety is not None:  # after the restore: the one restored may be the oldest
        _prune(app, target, store, keep=safety)
    return snapshot, safety


def _engine_restore(target: Target, snapshot: Snapshot) -> None:
    database = snapshot.database or None
    target.engine.snapshot_restore(
        target.endpoint(database), target.tools(database), snapshot.path
    )


def _before_commands(store: SnapshotStore) -> list[Snapshot]:
    """The automatic snapshots taken before a destructive command (``undo``'s own
    included), oldest first: what plain ``undo`` restores and ``_prune`` bounds."""
    return [s for s in store.all() if s.automatic and s.reason not in CHECKPOINTS]


def _checkpoints(store: SnapshotStore) -> list[Snapshot]:
    """The checkpoints, oldest first: what ``diff`` compares with and ``_retain`` bounds."""
    return [s for s in store.all() if s.reason in CHECKPOINTS]


def _prune(app: App, target: Target, store: SnapshotStore, keep: Snapshot) -> None:
    """Delete the oldest automatic snapshots beyond the retention setting (checkpoints
    have their own, :func:`_retain`)."""
    automatic = _before_commands(store)
    excess = len(automatic) - app.settings.auto_snapshots
    for snapshot in automatic[: max(excess, 0)]:
        if snapshot.name != keep.name:
            with contextlib.suppress(Exception):  # a snapshot left over is no reason to fail
                _delete(target, snapshot)
    for line in _retain(app, target, store, keep):
        print(f"warning: {line}", file=sys.stderr)


def _retain(app: App, target: Target, store: SnapshotStore, keep: Snapshot) -> list[str]:
    """Keep the last ``CLAUDE_DB_CHECKPOINTS`` checkpoints, then all snapshots within
    ``CLAUDE_DB_SNAPSHOT_SPACE``: the oldest checkpoints go first, then the oldest taken
    before a command; named ones, ``keep`` and the one plain ``undo`` restores never. What
    could not be freed: one line."""
    checkpoints = _checkpoints(store)
    excess = len(checkpoints) - max(app.settings.checkpoints, 1)
    for snapshot in checkpoints[: max(excess, 0)]:
        if snapshot.name != keep.name:
            with contextlib.suppress(Exception):  # left over: no reason to fail
                _delete(target, snapshot)
    cap = app.settings.snapshot_space
    if cap == 0:
        return []
    found = store.all()
    sized = list(zip(found, _sizes(target, found), strict=True))
    total = sum(size for _, size in sized)
    kept = {keep.name}
    with contextlib.suppress(ClaudeDbError):  # what plain undo restores stays, always
        kept.add(_undo_candidate(store).name)
    # checkpoints first, then the other automatic ones; each group oldest first
    doomed = sorted((pair for pair in sized if pair[0].automatic and pair[0].name not in kept),
                    key=lambda pair: pair[0].reason not in CHECKPOINTS)
    for snapshot, size in doomed:
        if total <= cap:
            break
        with contextlib.suppress(Exception):
            _delete(target, snapshot)
            total -= size
    if total <= cap:
        return []
    named = sum(size for s, size in sized if not s.automatic)
    return [f"snapshots take {human_bytes(total)}, over CLAUDE_DB_SNAPSHOT_SPACE={human_bytes(cap)}"
            + (f": named snapshots take {human_bytes(named)} and are never deleted by retention "
               "(claude-db snapshot delete NAME)" if named else "")
            + ("; the snapshot plain undo restores is kept too" if len(kept) > 1 else "")]


def _sizes(target: Target, found: list[Snapshot]) -> list[int]:
    return target.engine.snapshot_sizes(target.endpoint(), [s.path for s in found])


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _delete(target: Target, snapshot: Snapshot) -> None:
    doomed = snapshot.path.with_name(f".{snapshot.name}.{os.getpid()}{DELETING}")
    os.rename(snapshot.path, doomed)  # off the list first: never listed but half deleted
    database = snapshot.database or None
    try:
        target.engine.snapshot_delete(target.endpoint(database), target.tools(database), doomed)
    except BaseException:
        os.rename(doomed, snapshot.path)
        raise
    shutil.rmtree(doomed, ignore_errors=True)


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc).rstrip(".") or type(exc).__name__


def import_outside_a_transaction(
    app: App, target: Target, source: str, database: str | None, options: ImportOptions
) -> Snapshot:
    """``import --no-transaction``: for statements no transaction block may hold (CREATE
    INDEX CONCURRENTLY, VACUUM, a new enum value used at once). All or nothing still: an
    automatic snapshot first, put back if the import fails. Returns that snapshot."""
    check_source(source)
    # refused before the snapshot: a refusal must not cost an undo point (nor record a
    # command that took none)
    if type(target.engine).restore_with is Engine.restore_with:
        raise UsageError(f"import --no-transaction is not for {target.engine.name}")
    if app.settings.auto_snapshots == 0:
        raise UsageError(
            "import --no-transaction needs the automatic snapshot it would put back on "
            "failure: CLAUDE_DB_AUTO_SNAPSHOTS is 0"
        )
    target.require_running()
    with opened(source) as data:  # empty input is refused before the snapshot
        return _import_after_snapshot(app, target, source, database, options, data)


def _import_after_snapshot(
    app: App, target: Target, source: str, database: str | None, options: ImportOptions,
    data: Iterator[bytes] | DumpDirectory,
) -> Snapshot:
    taken = before_destroying(app, target, database, IMPORT)
    assert taken is not None  # automatic snapshots are on
    try:
        import_from(target, source, database, replace(options, transaction=False), data)
    except BaseException as exc:
        try:
            _, safety = restore(app, target, taken.name)
        except Exception as again:
            raise ClaudeDbError(
                f"{exc}; putting the previous data back failed too ({again}): it is in "
                f"snapshot {taken.name} (claude-db snapshot restore {taken.name})"
            ) from None
        for done in (safety, taken):  # the data is back: the copies add nothing
            if done is not None:
                with contextlib.suppress(Exception):
                    delete(app, target, done.name)
        if isinstance(exc, ClaudeDbError):
            raise ClaudeDbError(f"{exc}; the previous data is back") from None
        raise
    return taken

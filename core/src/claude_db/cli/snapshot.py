"""``claude-db snapshot save|list|restore|delete`` and ``claude-db undo``."""

from __future__ import annotations

import typer

from claude_db import snapshots
from claude_db.app import get_app
from claude_db.cli.common import (
    DatabaseOption,
    JsonOption,
    SessionOption,
    confirm,
    note,
    print_json,
    resolve_target,
)
from claude_db.snapshots import Snapshot

HELP = (
    "Save, list, restore and delete snapshots of the session's database.\n\n"
    "reset and import --replace take a snapshot first, automatically (the latest "
    "$CLAUDE_DB_AUTO_SNAPSHOTS are kept, default 5); claude-db undo restores the latest "
    "snapshot. Restoring first saves the data it replaces, as one more snapshot.\n\n"
    "save disturbs no one. reset, restore and undo need the database to themselves: they "
    "end its other connections (after a line saying how many); clients reconnect."
)

YesOption = typer.Option(
    False, "--yes", "-y", help="Needed only when CLAUDE_DB_AUTO_SNAPSHOTS=0 (nothing is kept)."
)


def create_snapshot_app() -> typer.Typer:
    app = typer.Typer(help=HELP, no_args_is_help=True)
    app.command("save")(save)
    app.command("list")(list_)
    app.command("restore")(restore)
    app.command("delete")(delete)
    return app


def save(
    name: str | None = typer.Argument(None, help="Snapshot name (default: the date and time)."),
    session: str | None = SessionOption,
    database: str | None = DatabaseOption,
    as_json: bool = JsonOption,
) -> None:
    """Save the database as it is now, under NAME (other clients are not disturbed)."""
    app = get_app()
    target = resolve_target(session)
    snapshot = snapshots.save(app, target, name, database)
    if as_json:
        print_json(snapshot.to_json())
    else:
        print(snapshot.name)
        note(f"saved snapshot {snapshot.describe()} of {target.name}")


def list_(session: str | None = SessionOption, as_json: bool = JsonOption) -> None:
    """List the snapshots, oldest first."""
    app = get_app()
    target = resolve_target(session)
    found = snapshots.list_snapshots(app, target)
    if as_json:
        print_json([s.to_json() for s in found])
        return
    if not found:
        note(f"no snapshots of {target.name}")
        return
    rows = [(s.name, s.created_at[:19].replace("T", " "), s.database, _kind(s)) for s in found]
    header = ("NAME", "CREATED (UTC)", "DATABASE", "KIND")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def restore(
    name: str = typer.Argument(..., help="The snapshot to restore."),
    session: str | None = SessionOption,
    yes: bool = YesOption,
    as_json: bool = JsonOption,
) -> None:
    """Replace the database with snapshot NAME (the current data is saved first).

    Ends the database's other connections first (clients reconnect)."""
    app = get_app()
    target = resolve_target(session, destructive="restore a snapshot")
    snapshots.find(app, target, name)  # an unknown name fails before any question
    _confirm_without_safety(app.settings.auto_snapshots, f"Replace the data of {target.name}", yes)
    restored, safety = snapshots.restore(app, target, name)
    _report(target.name, restored, safety, as_json)


def delete(
    name: str = typer.Argument(..., help="The snapshot to delete."),
    session: str | None = SessionOption,
) -> None:
    """Delete snapshot NAME."""
    app = get_app()
    target = resolve_target(session, destructive="delete a snapshot")
    snapshot = snapshots.delete(app, target, name)
    note(f"deleted snapshot {snapshot.name} of {target.name}")


def undo(
    session: str | None = SessionOption,
    yes: bool = YesOption,
    as_json: bool = JsonOption,
) -> None:
    """Undo the last reset, import --replace or restore (from the snapshot taken before it).

    Ends the database's other connections first (clients reconnect)."""
    app = get_app()
    target = resolve_target(session, destructive="undo")
    snapshots.find(app, target, None)  # nothing to undo fails before any question
    _confirm_without_safety(app.settings.auto_snapshots, f"Replace the data of {target.name}", yes)
    restored, safety = snapshots.undo(app, target)
    _report(target.name, restored, safety, as_json)


def _confirm_without_safety(auto_snapshots: int, question: str, yes: bool) -> None:
    if auto_snapshots == 0:  # the data being replaced will not be kept
        confirm(f"{question} without keeping it (CLAUDE_DB_AUTO_SNAPSHOTS=0)?", yes)


def _report(name: str, restored: Snapshot, safety: Snapshot | None, as_json: bool) -> None:
    if as_json:
        print_json({
            "restored": restored.to_json(),
            "saved_before": safety.to_json() if safety else None,
        })
        return
    note(f"restored snapshot {restored.describe()} into {name}")
    if safety is not None:
        note(f"the data it replaced is in snapshot {safety.name} "
             f"(claude-db snapshot restore {safety.name} goes back to it)")


def _kind(snapshot: Snapshot) -> str:
    if not snapshot.readable:
        return "damaged (its record is unreadable: delete it)"
    if snapshot.reason == snapshots.UNRECORDED:
        return "unrecorded (a save or reset cut short: restore or delete it)"
    return f"auto (before {snapshot.reason})" if snapshot.automatic else "manual"

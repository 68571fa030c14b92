"""``claude-db snapshot save|list|restore|delete`` and ``claude-db undo``."""

# No `from __future__ import annotations`: typer reads these commands' signatures, and
# an annotation kept as a string costs it a compile and an eval (~2 ms a command).

import typer

from claude_db import snapshots
from claude_db.app import App, get_app
from claude_db.cli.common import (
    DatabaseOption,
    JsonOption,
    SessionOption,
    confirm,
    note,
    print_json,
    resolve_target,
)
from claude_db.errors import ClaudeDbError, SessionNotFoundError, UsageError
from claude_db.snapshots import Snapshot
from claude_db.target import Target

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
    _confirm_without_safety(app, target, name, yes)
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
    list_: bool = typer.Option(
        False, "--list", help="List the checkpoints and snapshots undo can go back to."),
    to: str | None = typer.Option(
        None, "--to", metavar="ID",
        help="Go back to checkpoint or snapshot ID (later ones stay; the data replaced is "
             "kept as one more snapshot: plain undo then goes back to it)."),
) -> None:
    """Undo the last reset, import --replace or restore (from the snapshot taken before it);
    --to ID goes back to a checkpoint; --list lists them.

    Ends the database's other connections first (clients reconnect)."""
    if list_:
        if to is not None:
            raise UsageError("undo: --list and --to do not go together")
        _list_undoable(session, as_json)
        return
    app = get_app()
    target = resolve_target(session, destructive="undo")
    _confirm_without_safety(app, target, to, yes)
    restored, safety = (snapshots.undo(app, target) if to is None
                        else snapshots.restore(app, target, to))
    _report(target.name, restored, safety, as_json)


def checkpoint(
    label: str = typer.Option("", "--label", "-m", help="What this checkpoint is (free text)."),
    hook: bool = typer.Option(
        False, "--hook",
        help="Taken by an agent's hook: listed as such, and a failure is a warning (exit 0)."),
    session: str | None = SessionOption,
    as_json: bool = JsonOption,
) -> None:
    """Take a checkpoint of the database: cheap, other clients are not disturbed.

    claude-db undo --list lists checkpoints, undo --to ID goes back to one, diff [ID] shows
    what changed since. Prints one line. Exit 0 without one where there is nothing to
    checkpoint: no session here (without --session), or CLAUDE_DB_CHECKPOINTS=0."""
    app = get_app()
    try:
        target = resolve_target(session)
    except SessionNotFoundError as exc:
        if session is not None and not hook:
            raise
        print(f"no checkpoint taken: {exc}")
        return
    if app.settings.checkpoints == 0:
        print("no checkpoint taken: CLAUDE_DB_CHECKPOINTS=0")
        return
    try:
        taken, warnings = snapshots.take_checkpoint(app, target, label, hook=hook)
    except ClaudeDbError as exc:
        if not hook:
            raise
        print(f"warning: no checkpoint of {target.name} taken: {exc}")
        return
    if as_json:
        print_json({**taken.to_json(), "warnings": warnings})
        return
    print("; ".join([f"checkpoint {taken.name} of {target.name} "
                     f"(claude-db undo --to {taken.name} goes back to it)", *warnings]))


def diff(
    name: str | None = typer.Argument(
        None, metavar="[ID]", help="The checkpoint or snapshot (default: the latest checkpoint)."),
    session: str | None = SessionOption,
    as_json: bool = JsonOption,
) -> None:
    """What changed since a checkpoint: tables added, dropped, altered, rows per table."""
    app = get_app()
    target = resolve_target(session)
    snapshot, changes = snapshots.diff(app, target, name)
    if as_json:
        print_json({"since": snapshot.to_json(), **changes})
        return
    note(f"since {snapshot.describe()}:")
    for table in changes["added"]:
        print(f"+ {table} (added)")
    for table in changes["dropped"]:
        print(f"- {table} (dropped)")
    for table, change in changes["altered"].items():
        parts = [f"+{c} {t}" for c, t in change["columns_added"].items()]
        parts += [f"-{c} {t}" for c, t in change["columns_dropped"].items()]
        parts += [f"{c} {old} -> {new}" for c, (old, new) in change["types_changed"].items()]
        print(f"~ {table} (altered: {', '.join(parts)})")
    rows = [(t, _count(r["before"]), _count(r["after"])) for t, r in changes["rows"].items()]
    header = ("TABLE", "ROWS BEFORE", "ROWS NOW")
    if rows:
        _table([header, *rows])
    elif not any(changes[k] for k in ("added", "dropped", "altered")):
        note("no tables then or now")


def _list_undoable(session: str | None, as_json: bool) -> None:
    app = get_app()
    target = resolve_target(session)
    found = snapshots.with_sizes(target, snapshots.list_snapshots(app, target))
    if as_json:
        print_json([{**s.to_json(), "size": size, "made_by": snapshots.made_by(s)}
                    for s, size in found])
        return
    if not found:
        note(f"nothing to undo to: no checkpoints or snapshots of {target.name}")
        return
    rows = [(s.name, s.created_at[:19].replace("T", " "), "?" if size is None
             else snapshots.human_bytes(size), snapshots.made_by(s), s.label) for s, size in found]
    _table([("ID", "TIME (UTC)", "SIZE", "MADE BY", "LABEL"), *rows])


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _count(rows: int | None) -> str:
    return "-" if rows is None else str(rows)


def _confirm_without_safety(app: App, target: Target, name: str | None, yes: bool) -> None:
    """Ask before replacing data that will not be kept (CLAUDE_DB_AUTO_SNAPSHOTS=0);
    nothing to undo, or an unknown ``name``, fails before the question (without one the
    command itself finds that: no second look at the server)."""
    if app.settings.auto_snapshots == 0 and not yes:
        snapshots.find(app, target, name)
        confirm(f"Replace the data of {target.name} without keeping it "
                "(CLAUDE_DB_AUTO_SNAPSHOTS=0)?", yes)


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
    if snapshot.reason in snapshots.CHECKPOINTS:
        return snapshots.made_by(snapshot)
    return f"auto (before {snapshot.reason})" if snapshot.automatic else "manual"

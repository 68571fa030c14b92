"""``claude-session``: the session lifecycle."""

# No `from __future__ import annotations`: typer reads these commands' signatures, and
# an annotation kept as a string costs it a compile and an eval (~2 ms a command).

import shlex
from functools import partial
from pathlib import Path

import typer

from claude_db import hooks
from claude_db.app import App, get_app
from claude_db.cli.common import (
    JsonOption,
    confirm,
    note,
    print_json,
    program_app,
    run,
)
from claude_db.database import locate
from claude_db.envfile import format_value
from claude_db.errors import ClaudeDbError, ExitCode, SessionNotFoundError, UsageError
from claude_db.fork import fork_session
from claude_db.gc import collect_garbage, remove_broken
from claude_db.lifecycle import (
    ALREADY_HERE,
    delete_session,
    ensure_running,
    kept_settings,
    session_env,
    start_here,
    start_session,
    stop_session,
)
from claude_db.locks import try_hold
from claude_db.processes import run_shell
from claude_db.session import (
    STARTING_MARKER,
    BrokenSession,
    BrokenSessionError,
    Session,
    validate_name,
)
from claude_db.target import parts
from claude_db.worktrees import find_worktree, session_name

HELP = """Start, list, attach, stop and delete sessions, each with its own database."""


def create_app() -> typer.Typer:
    app = program_app("claude-session", HELP)
    for command in (start, fork, list_, env, attach, stop, delete, gc):
        name = command.__name__.rstrip("_")
        app.command(name)(command)
    app.add_typer(hooks_app(), name="hooks")
    for error in get_app().plugins.errors:
        note(f"warning: {error}")
    return app


def main() -> None:
    run(create_app, "claude-session")


def start(
    name: str | None = typer.Argument(
        None, help="Session name (default: from the work directory)."
    ),
    db: str | None = typer.Option(
        None, "--db", help="Engine (default: $CLAUDE_DB_ENGINE or postgres)."
    ),
    runtime: str | None = typer.Option(
        None, "--runtime", help="docker, local or auto (default: $CLAUDE_DB_RUNTIME or auto)."
    ),
    workdir: Path = typer.Option(
        Path("."), "--workdir", "-w", help="Work directory (.env goes here)."
    ),
    image: str | None = typer.Option(
        None, "--db-image", help="Database image (docker; default: $CLAUDE_DB_IMAGE)."
    ),
    session_image: str | None = typer.Option(
        None, "--image", help="Session container image (docker; default: $CLAUDE_SESSION_IMAGE)."
    ),
    publish: bool = typer.Option(
        False, "--publish", help="Docker: publish the database on 127.0.0.1."
    ),
    superuser: bool = typer.Option(
        False, "--superuser",
        help="Local: the session's user is the server's superuser; gives up its isolation "
        "(default: $CLAUDE_DB_SUPERUSER or false).",
    ),
    source: str | None = typer.Option(
        None, "--from", help="Start with a copy of this running session's data (a fork)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Start a session with its own database, ready, and DATABASE_URL in .env."""
    app = get_app()
    if source is not None:
        fork_name = name or session_name(app, workdir, find_worktree(workdir))
        if not _started_here(app, fork_name, workdir):
            _fork(source, fork_name, workdir, db, runtime, image, as_json,
                  refused=[("--image", session_image), ("--publish", publish),
                           ("--superuser", superuser)])
            return
        # start is idempotent: this directory's session was forked before
        note(f"session {fork_name} of {workdir} exists: --from {source} is not applied again")
        name = fork_name
    start = partial(start_session, app, name) if name is not None else partial(start_here, app)
    session, notes = start(
        engine_name=db,
        runtime_name=runtime,
        workdir=workdir,
        image=image,
        session_image=session_image,
        publish=publish,
        superuser=superuser,
    )
    for line in notes:
        note(line)
    if as_json:
        print_json(_describe(session, with_env=True))
    else:
        what = (
            f"{session.engine} on the {session.runtime} runtime"
            if session.has_database
            else "no database"
        )
        existed = any(line.endswith(ALREADY_HERE) for line in notes)
        print(f"session {session.name} {'runs' if existed else 'started'} ({what})")


# -- fork ----------------------------------------------------------------------------------


def fork(
    source: str = typer.Argument(..., help="The running session whose data to copy."),
    name: str = typer.Argument(..., help="The new session's name."),
    workdir: Path = typer.Option(
        Path("."), "--workdir", "-w", help="The new session's work directory (.env goes here)."
    ),
    db: str | None = typer.Option(None, "--db", help="Must be the source's engine."),
    runtime: str | None = typer.Option(None, "--runtime", help="Must be the source's runtime."),
    as_json: bool = JsonOption,
) -> None:
    """Start session NAME with a copy of SOURCE's data; SOURCE keeps serving."""
    _fork(source, name, workdir, db, runtime, None, as_json)


def _fork(
    source: str, name: str, workdir: Path, db: str | None, runtime: str | None,
    image: str | None, as_json: bool, refused: list[tuple[str, object]] | None = None,
) -> None:
    for option, value in refused or []:
        if value:
            raise UsageError(f"{option} does not go with --from: a fork has its source's")
    worktree = find_worktree(workdir)  # a fork in a worktree is that worktree's session
    made = fork_session(get_app(), source, name, workdir=workdir, engine_name=db,
                        runtime_name=runtime, image=image,
                        worktree=worktree.to_json() if worktree and worktree.linked else None)
    for line in made.notes:
        note(line)
    if as_json:
        print_json({**_describe(made.session, with_env=True), "source": made.source,
                    "method": made.method})
    else:
        session = made.session
        print(f"session {session.name} started with a copy of {made.source}'s data "
              f"({made.method}; {session.engine} on the {session.runtime} runtime)")


def _started_here(app: App, name: str, workdir: Path) -> bool:
    if not app.store.exists(name):
        return False
    try:
        return Path(app.store.load(name).workdir) == workdir.resolve()
    except Exception:  # unreadable: the fork's own refusal says what is wrong
        return False


# -- end of fork ---------------------------------------------------------------------------


def list_(as_json: bool = JsonOption) -> None:
    """List sessions and whether their databases run."""
    sessions = [_describe(s) for s in get_app().store.all()]
    if as_json:
        print_json(sessions)
        return
    if not sessions:
        note("no sessions")
        return
    rows = [
        (s["name"], s["engine"] or "-", s["runtime"] or "-", s["status"], s["workdir"] or "-")
        for s in sessions
    ]
    header = ("NAME", "ENGINE", "RUNTIME", "STATUS", "WORKDIR")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    for s in sessions:
        if s.get("error"):
            note(f"warning: {s['error']}")


def env(
    name: str | None = typer.Argument(None, help="Session name (default: the current session)."),
    format: str = typer.Option(
        "env", "--format", "-f", help="env (KEY=value), json, or shell (export lines)."
    ),
) -> None:
    """Print a session's environment (eval "$(claude-session env -f shell)")."""
    app = get_app()
    values = session_env(app, _load(name))
    if format == "json":
        print_json(values)
    elif format == "shell":
        for key, value in values.items():
            print(f"export {key}={shlex.quote(value)}")
    elif format == "env":
        for key, value in values.items():
            print(f"{key}={format_value(value)}")
    else:
        raise UsageError(f"unknown format {format!r} (use env, json or shell)")


def attach(
    name: str | None = typer.Argument(None, help="Session name (default: the current session)."),
    no_shell: bool = typer.Option(False, "--no-shell", help="Only make sure everything runs."),
) -> None:
    """Restart whatever stopped, wait until ready, then open a shell in the session."""
    app = get_app()
    session = _load(name)
    for message in [*kept_settings(app, session), *ensure_running(app, session)]:
        note(message)
    if no_shell:
        note(f"session {session.name} is ready")
        return
    runtime = parts(app, session)[1] if session.has_database else None
    values = session_env(app, session)
    if runtime is not None:
        raise typer.Exit(runtime.enter_shell(session, values))

    raise typer.Exit(run_shell(session.workdir, values))


def stop(
    name: str | None = typer.Argument(None, help="Session name (default: the current session)."),
) -> None:
    """Stop a session's database; its data is kept."""
    session = stop_session(get_app(), _name(name))
    note(f"session {session.name} stopped")


def delete(
    name: str | None = typer.Argument(None, help="Session name (default: the current session)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    keep_data: bool = typer.Option(False, "--keep-data", help="Keep the database's data."),
) -> None:
    """Delete a session: its database, containers, network and (unless --keep-data) data."""
    app = get_app()
    session_name = _name(name, destructive="delete it")
    try:
        app.store.load(session_name)  # fail on an unknown name before asking
    except BrokenSessionError:  # what can be found of it still goes
        note(f"warning: the record of session {session_name} is unreadable: removing what "
             "can be found of it")
        confirm(f"Delete session {session_name} and destroy its data?", yes)
        _delete_broken(app, session_name)
        return
    what = "and keep its data" if keep_data else "and destroy its data"
    confirm(f"Delete session {session_name} {what}?", yes)
    _, notes = delete_session(app, session_name, keep_data=keep_data)
    for line in notes:
        note(line)
    note(f"session {session_name} deleted")


def _delete_broken(app: App, name: str) -> None:
    """``delete`` of a session whose record is unreadable: what our records find of it."""

    found = remove_broken(app, name)
    for orphan in found:
        if orphan.kind != "session":
            note(f"removed {orphan.kind} {orphan.what}" if orphan.removed
                 else f"failed to remove {orphan.kind} {orphan.what}: {orphan.error}")
    if any(orphan.error for orphan in found):
        raise ClaudeDbError(f"session {name} could not be removed completely (see above)")
    note(f"session {name} deleted (its work directory's .env, if any, was left as it was)")


def gc(
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only list what would go."),
    as_json: bool = JsonOption,
) -> None:
    """Remove what no live session owns: servers, directories, containers, networks, volumes."""

    found = collect_garbage(get_app(), dry_run=dry_run)
    if as_json:
        print_json([orphan.to_json() for orphan in found])
    else:
        for orphan in found:
            done = "removed" if orphan.removed else "failed to remove"
            done = "would remove" if dry_run else done
            why = f": {orphan.error}" if orphan.error else ""
            print(f"{done} {orphan.kind} {orphan.what} ({orphan.detail}){why}")
        if not found:
            note("nothing to remove")
    failed = [o for o in found if o.error]
    if failed:
        raise ClaudeDbError(f"{len(failed)} of {len(found)} leftovers could not be removed")


# -- claude-session hooks: agent and git hooks (claude_db.hooks) ----------------------------


def hooks_app() -> typer.Typer:
    group = typer.Typer(help="Install the Claude Code and git hooks that give each agent "
                        "session and worktree its database.", no_args_is_help=True)
    group.command("install")(hooks_install)
    group.command("uninstall")(hooks_uninstall)
    group.command("run", hidden=True)(hooks_run)
    return group


HooksDirOption = typer.Option(Path("."), "--dir", help="The project (default: here).")
PrintOption = typer.Option(False, "--print", help="Only show what would be written.")
ClaudeOption = typer.Option(True, "--claude/--no-claude",
                            help="Claude Code's .claude/settings.json.")
GitOption = typer.Option(True, "--git/--no-git", help="git's post-checkout hook.")


def hooks_install(directory: Path = HooksDirOption, print_only: bool = PrintOption,
                  claude: bool = ClaudeOption, git: bool = GitOption) -> None:
    """Add our hooks beside yours: SessionStart, Stop and WorktreeRemove in
    .claude/settings.json, and git's post-checkout (yours is chained, not replaced)."""
    _hooks(directory, install=True, print_only=print_only, claude=claude, git=git)


def hooks_uninstall(directory: Path = HooksDirOption, print_only: bool = PrintOption,
                    claude: bool = ClaudeOption, git: bool = GitOption) -> None:
    """Remove our hooks only; yours stay as they were."""
    _hooks(directory, install=False, print_only=print_only, claude=claude, git=git)


def _hooks(directory: Path, *, install: bool, print_only: bool, claude: bool, git: bool) -> None:

    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    changes = hooks.plan(hooks.project_dir(directory), install=install, claude=claude, git=git)
    if print_only:
        for change in changes:
            print(change.describe())
        if not changes:
            note("nothing to change")
        return
    hooks.apply(changes)
    for change in changes:
        note(change.describe(done=True))
    if not changes:
        note(f"the hooks are {'installed' if install else 'not installed'} already")


def hooks_run(action: str = typer.Argument(..., help="session-start, stop, worktree-remove or "
                                           "git-post-checkout.")) -> None:
    """What an installed hook runs: one line, exit 0 (see claude_db.hooks)."""
    import sys


    git_hook = action == "git-post-checkout"  # git gives a hook no input; stdin is yours
    payload = {} if git_hook or sys.stdin.isatty() else hooks.read_payload(sys.stdin)
    line = hooks.run_hook(action, payload)
    print(line, file=sys.stderr if git_hook else sys.stdout)


def _name(name: str | None, destructive: str | None = None) -> str:
    """The session NAME names, else the one named here (as claude-db finds it); a
    ``destructive`` command refuses when an inherited CLAUDE_SESSION names another."""
    if name:
        return validate_name(name)  # also keeps names from reaching outside the state dir
    found = locate(get_app())
    if found is None or not found.name:
        raise SessionNotFoundError("which session? pass its name (see claude-session list)")
    if found.conflict:
        if destructive:
            raise UsageError(f"refusing to {destructive}: {found.conflict}; pass the session's "
                             "name")
        note(f"note: {found.conflict}; using {found.name}")
    return found.name


def _load(name: str | None) -> Session:
    return get_app().store.load(_name(name))


def _describe(session: Session | BrokenSession, with_env: bool = False) -> dict[str, object]:
    app = get_app()
    if isinstance(session, BrokenSession):
        return {"name": session.name, "engine": None, "runtime": None, "status": "broken",
                "workdir": None, "created_at": None, "error": session.reason}
    status = "no database"
    error = None
    starting = _start_state(app, session.name)
    if starting is not None:
        status = starting
        if starting == "unfinished":
            error = (f"the start of session {session.name} was interrupted: claude-session gc "
                     "removes it")
    elif session.has_database:
        try:
            status = parts(app, session)[1].status(session)
        except Exception as exc:  # an engine or runtime plugin that is gone
            status = f"unknown ({exc})"
    data: dict[str, object] = {
        "name": session.name,
        "engine": session.engine,
        "runtime": session.runtime,
        "status": status,
        "workdir": session.workdir,
        "created_at": session.created_at,
    }
    if error:
        data["error"] = error
    if with_env:
        data["env"] = session_env(app, session)
    return data


def _start_state(app: App, name: str) -> str | None:
    """``starting`` while session ``name``'s start (or fork) runs: it holds the lock;
    ``unfinished`` once one was cut short; None when it was made whole."""
    if not (app.store.directory(name) / STARTING_MARKER).exists():
        return None
    with try_hold(app.store.lock_file(name), create=False) as free:
        return "unfinished" if free else "starting"


__all__ = ["ExitCode", "create_app", "main"]

"""``claude-db``: work with the current session's database."""

# No `from __future__ import annotations`: typer reads these commands' signatures, and
# an annotation kept as a string costs it a compile and an eval (~2 ms a command).

import csv
import itertools
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import typer

from claude_db import faults, snapshots
from claude_db.app import get_app
from claude_db.cli.common import (
    DatabaseOption,
    JsonOption,
    SessionOption,
    confirm,
    note,
    print_json,
    program_app,
    resolve_target,
    run,
)
from claude_db.cli.snapshot import checkpoint, create_snapshot_app, diff, undo
from claude_db.database import (
    check_source,
    describe_url,
    export_to,
    import_from,
    listening,
)
from claude_db.engine import Endpoint, Engine, ImportOptions, QueryResult
from claude_db.errors import (
    ClaudeDbError,
    NotRunningError,
    UsageError,
)
from claude_db.lifecycle import database_env, stale_dotenv
from claude_db.plugins import add_commands
from claude_db.processes import signals_held
from claude_db.target import Target

HELP = """Work with the current session's database.

Which session, first match wins: --session NAME; the .env naming a session in this
directory or the nearest one above it; $CLAUDE_SESSION; $DATABASE_URL. An inherited
$CLAUDE_SESSION or $DATABASE_URL that disagrees with that .env gets a note, and
reset, import --replace, snapshot restore and undo refuse (exit 2) until --session
says which. Those also refuse a $DATABASE_URL no session here owns, unless
CLAUDE_DB_ALLOW_URL_DESTRUCTIVE=true.
"""


def create_app() -> typer.Typer:
    app = program_app("claude-db", HELP)
    app.command()(status)
    app.command()(info)
    app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(shell)
    # a query may start with "-" ("-- note" then SQL): text, not an unknown option
    app.command(context_settings={"ignore_unknown_options": True})(query)
    app.command("import")(import_)
    app.command("export")(export)
    app.command()(reset)
    app.add_typer(create_snapshot_app(), name="snapshot")
    app.command()(undo)
    app.command()(checkpoint)
    app.command()(diff)
    app.command()(plugins)
    context = get_app()
    add_shell_aliases(app, context.plugins.engines.items())
    add_commands(context.plugins, app, context.settings.strict_plugins)
    for error in context.plugins.errors:
        note(f"warning: {error}")
    return app


def main() -> None:
    run(create_app, "claude-db")


def _answering(target: Target, endpoint: Endpoint) -> str:
    """The server's version once ``endpoint`` answers an authenticated query; else one
    line saying why not (a database that does not exist: exit 1)."""
    try:
        return target.engine.check_ready(endpoint, timeout=5)
    except NotRunningError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"{target.engine.name} at {endpoint.host}:{endpoint.port}"
        if not listening(endpoint):
            raise NotRunningError(f"{where} does not answer: {reason}") from None
        # it answered, but no: wrong password, no such database...
        raise ClaudeDbError(f"{where} answers but refused: {reason}") from None


def _exists(target: Target, endpoint: Endpoint) -> bool:
    """Whether ``endpoint``'s database answers (a stopped server is the caller's error)."""
    try:
        _answering(target, endpoint)
    except NotRunningError:
        raise
    except ClaudeDbError:
        return False
    return True


def status(
    session: str | None = SessionOption,
    database: str | None = DatabaseOption,
    as_json: bool = JsonOption,
) -> None:
    """Check that the database answers an authenticated query."""
    target = resolve_target(session)
    target.require_running()
    endpoint = target.endpoint(database)
    version = _answering(target, endpoint)
    stale = None
    if not target.bare_url:
        stale = stale_dotenv(get_app(), target.session)
    if as_json:
        print_json(
            {
                "session": target.name,
                "engine": target.engine.name,
                "ready": True,
                "version": version,
                "host": endpoint.host,
                "port": endpoint.port,
                "database": endpoint.database,
                "dotenv_current": stale is None,
            }
        )
    else:
        print(
            f"ready: {target.engine.name} {version} at {endpoint.host}:{endpoint.port}, "
            f"database {endpoint.database} (session {target.name})"
        )
    if stale is not None:  # programs reading .env would not reach it
        raise NotRunningError(
            f"{target.session.workdir}/.env still holds the old address "
            f"{describe_url(stale[0])} (the database is at {describe_url(stale[1])}): "
            f"claude-session attach {target.name} --no-shell writes the new one"
        )


def info(
    session: str | None = SessionOption,
    database: str | None = DatabaseOption,
    show_password: bool = typer.Option(False, "--show-password", help="Print the password."),
    as_json: bool = JsonOption,
) -> None:
    """Show connection details (the password is masked unless --show-password)."""
    target = resolve_target(session)
    engine = target.engine
    here = target.endpoint(database)
    inside = target.runtime.session_endpoint(target.session, engine).with_database(database)
    if not show_password:  # built with a masked password: nothing else can be mangled
        here, inside = _masked(here), _masked(inside)
    env = database_env(engine, inside)
    if inside != here:  # e.g. a session container: the URL from this host differs
        env["HOST_DATABASE_URL"] = engine.url(here)
    if not show_password:  # URLs percent-encode the mask: show it as typed
        env = {key: value.replace(quote(MASK, safe=""), MASK) for key, value in env.items()}
    details: dict[str, Any] = {"session": target.name, "engine": engine.name}
    if not target.bare_url:  # a bare URL's record tells nothing the URL does not
        details |= {"runtime": target.runtime.name, "workdir": target.session.workdir,
                    "status": target.runtime.status(target.session)}
    details |= env
    if as_json:
        print_json(details)
        return
    width = max(len(k) for k in details)
    for key, value in details.items():
        print(f"{key.ljust(width)}  {value}")


MASK = "****"


def _masked(endpoint: Endpoint) -> Endpoint:
    return replace(endpoint, credentials=replace(endpoint.credentials, password=MASK))


def shell(
    ctx: typer.Context, session: str | None = SessionOption, database: str | None = DatabaseOption
) -> None:
    """Open the engine's interactive client (psql, mysql, mongosh...)."""
    open_shell(session, database, list(ctx.args))


def add_shell_aliases(app: typer.Typer, engines: Iterable[tuple[str, type[Engine]]]) -> None:
    """``claude-db psql``, ``claude-db mysql``...: ``shell`` for one engine's sessions, named
    after its client (``Engine.shell_name``); the first engine to claim a name keeps it."""
    taken = {command.name for command in app.registered_commands}
    for engine_name, engine in engines:
        if engine.shell_name in taken:
            continue
        taken.add(engine.shell_name)
        app.command(
            engine.shell_name,
            help=f"Open {engine.shell_name} on the session's database (extra arguments go "
                 f"to {engine.shell_name}).",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )(_shell_alias(engine_name))


def _shell_alias(engine_name: str) -> Callable[..., None]:
    def alias(
        ctx: typer.Context,
        session: str | None = typer.Option(None, "--session", "-s", help="Session name."),
        database: str | None = typer.Option(None, "--database", "-d", help="Database to open."),
    ) -> None:
        open_shell(session, database, list(ctx.args), engine_name=engine_name)

    return alias


def open_shell(
    session: str | None, database: str | None, extra: list[str], engine_name: str | None = None
) -> None:
    """Run the session engine's interactive client; extra arguments are passed on."""
    target = resolve_target(session)
    if engine_name and target.engine.name != engine_name:
        raise UsageError(
            f"session {target.name!r} uses {target.engine.name}, not {engine_name}; "
            "use claude-db shell"
        )
    target.require_running()
    tools = target.tools(database)
    argv = target.engine.shell_argv(tools.endpoint) + extra
    code = tools.run_interactive(argv, env=target.engine.native_env(tools.endpoint))
    raise typer.Exit(code)


def query(
    text: str = typer.Argument(..., help="SQL (or the engine's query language); - reads it "
                               "from stdin."),
    session: str | None = SessionOption,
    database: str | None = DatabaseOption,
    as_json: bool = typer.Option(False, "--json", help="Rows as a JSON array of objects."),
    as_csv: bool = typer.Option(False, "--csv", help="Rows as CSV with a header."),
) -> None:
    """Run a query and print its result (several statements: the last one's)."""
    if as_json and as_csv:
        raise UsageError("--json and --csv exclude each other")
    if text == "-":  # a script from a pipe or a heredoc
        text = sys.stdin.buffer.read().decode(errors="surrogateescape")
    if not text.strip():
        raise UsageError("the query is empty")
    try:
        text.encode()
    except UnicodeEncodeError:  # bytes the locale could not decode arrive as surrogates
        raise UsageError("the query is not valid UTF-8 text") from None
    target = resolve_target(session)
    target.require_running()
    # rows go out as the server sends them: the result never has to fit in memory
    with target.engine.query(target.endpoint(database), text) as result:
        if as_json:
            _write_json(result)
        elif as_csv:
            _write_csv(result)
        else:
            _print_table(result)


def _write_json(result: QueryResult) -> None:
    """Rows as objects: JSON values as they are, repeated column names made unique."""
    if result.documents is not None:
        _write_json_array(result.documents, ensure_ascii=False)
        return
    keys = _json_keys(result.columns)
    _write_json_array(
        ({key: _json_value(value) for key, value in zip(keys, row, strict=False)}
         for row in result.rows),
        ensure_ascii=False,
    )


def _write_json_array(items: Iterable[Any], *, ensure_ascii: bool) -> None:
    """``json.dumps(list(items), indent=2)`` written item by item."""
    out = sys.stdout
    first = True
    for item in items:
        text = json.dumps(item, indent=2, default=str, ensure_ascii=ensure_ascii)
        out.write(("[\n  " if first else ",\n  ") + text.replace("\n", "\n  "))
        first = False
    out.write("[]\n" if first else "\n]\n")


def _write_csv(result: QueryResult) -> None:
    columns, rows = result.columns, result.rows
    if result.documents is not None:  # the header needs every document's fields first
        columns, rows = _document_rows(list(result.documents))
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(v) for v in row] for row in rows)


def _document_rows(documents: list[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Documents as columns (their top-level fields, in order of appearance) and rows."""
    columns: list[str] = []
    for document in documents:
        if isinstance(document, dict):
            columns += [key for key in document if key not in columns]
    return columns, [
        tuple(document.get(c) if isinstance(document, dict) else None for c in columns)
        for document in documents
    ]


def _json_keys(columns: list[str]) -> list[str]:
    """Column names as JSON keys: a repeated name gets ``_2``, ``_3``... (never another
    column's name), so no value is lost; one note on stderr says which were renamed."""
    names = set(columns)
    used: set[str] = set()
    keys: list[str] = []
    renamed: list[str] = []
    for name in columns:
        key, n = name, 2
        while key in used:
            key, n = f"{name}_{n}", n + 1
            if key in names:
                key = name  # another column's own name: try the next suffix
        if key != name:
            renamed.append(f"{name} -> {key}")
        used.add(key)
        keys.append(key)
    if renamed:
        note(f"note: repeated column names renamed in the JSON keys: {', '.join(renamed)}")
    return keys


#: non-finite floats as PostgreSQL spells them (JSON has no NaN or Infinity)
NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return NONFINITE.get(str(value), str(value))
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


#: rows a table is aligned over: a longer result prints in blocks of this many, each
#: aligned on its own (as psql's FETCH_COUNT does), so its rows need not fit in memory
TABLE_ROWS = 1000


def _print_table(result: QueryResult) -> None:
    if result.documents is not None:
        _write_json_array(result.documents, ensure_ascii=True)
        return
    if not result.columns:
        print(result.status)
        return
    rows = iter(result.rows)
    count = 0
    header = True  # the first block, even an empty one, prints the header
    while True:
        block = [[_cell(v) for v in row] for row in itertools.islice(rows, TABLE_ROWS)]
        if not block and not header:
            break
        if sys.stdout.isatty():
            _print_rich_table(result.columns, block, header)
        else:
            _print_plain_table(result.columns, block, header)
        header = False
        count += len(block)
    note(f"({count} row{'s' if count != 1 else ''})")


def _print_rich_table(columns: list[str], cells: list[list[str]], header: bool) -> None:
    # imported here, not at the top: only a terminal's table needs rich, and its import
    # would cost every scripted query (tests/test_bench.py checks the query path skips it)
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text, not str: rich would read "[1, 2]" or "[/x]" in a value as markup
    table = Table(show_lines=False, show_header=header)
    for column in columns:
        table.add_column(Text(column))
    for row in cells:
        table.add_row(*(Text(c) for c in row))
    Console().print(table)


def _print_plain_table(columns: list[str], cells: list[list[str]], header: bool) -> None:
    """Aligned columns; a value with line breaks takes several lines, each but its last
    marked with a ``+`` as psql does (so they cannot pass for rows)."""
    split = [[value.splitlines() or [""] for value in row] for row in cells]
    widths = [max([len(c), *(len(line) for row in split for line in row[i])])
              for i, c in enumerate(columns)]
    if header:
        print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        print("-+-".join("-" * w for w in widths))
    for row in split:
        for n in range(max(len(lines) for lines in row)):
            print("| ".join(
                (lines[n] if n < len(lines) else "").ljust(w) + ("+" if n < len(lines) - 1 else " ")
                for lines, w in zip(row, widths, strict=True)
            ).rstrip())


def _cell(value: Any) -> str:
    """A value as table and CSV text, as psql shows it: NULL empty, booleans t/f, JSON
    values and arrays as JSON text; the rest as the engine gave it (for PostgreSQL, the
    server's own text: ``1.50``, ``1 day``, ``\\x78``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dict | list):
        return json.dumps(_json_value(value), ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return NONFINITE.get(str(value), str(value))
    return str(value)


def import_(
    source: str = typer.Argument(
        ..., metavar="FILE|-",
        help="Dump to apply: SQL, a pg_dump archive (-Fc, -Ft), compressed or not "
        "(gzip, bzip2, xz, zstd, zip); - for stdin.",
    ),
    session: str | None = SessionOption,
    database: str | None = DatabaseOption,
    replace: bool = typer.Option(
        False, "--replace", help="Empty the database first (a snapshot is taken: undo works)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="With --replace: do not ask."),
    skip_ownership: bool = typer.Option(
        False, "--skip-ownership",
        help="Leave out OWNER TO, GRANT and REVOKE (roles this server lacks).",
    ),
    create_roles: bool = typer.Option(
        False, "--create-roles",
        help="First create the roles the dump names that this server lacks (NOLOGIN); "
        "dropped again if the import fails.",
    ),
    no_transaction: bool = typer.Option(
        False, "--no-transaction",
        help="Run outside one transaction (CREATE INDEX CONCURRENTLY, VACUUM...): a snapshot "
        "is taken first and put back if the import fails.",
    ),
) -> None:
    """Apply a dump or SQL script: stops at the first error, applies all or nothing."""
    destructive = ("replace its data" if replace
                   else "import outside one transaction" if no_transaction else None)
    options = ImportOptions(skip_ownership=skip_ownership, create_roles=create_roles)
    if replace and (skip_ownership or create_roles or no_transaction):
        raise UsageError(
            "--replace takes none of --skip-ownership, --create-roles, --no-transaction"
        )
    if create_roles and no_transaction:
        # the roles would outlive a failed import: its objects (owned by them) are gone only
        # once the snapshot is put back
        raise UsageError("--create-roles takes no --no-transaction")
    target = resolve_target(session, destructive=destructive)
    # an engine whose killed import may stay part-applied takes a snapshot first too (of
    # a database there is: a file may make the one it is imported into)
    snapshot_first = (not replace and options == ImportOptions()
                      and not target.engine.imports_survive_kills
                      and get_app().settings.auto_snapshots > 0
                      and _exists(target, target.endpoint(database)))
    if no_transaction or snapshot_first:
        before = snapshots.import_outside_a_transaction(
            get_app(), target, source, database, options
        )
        how = "outside one transaction; " if no_transaction else ""
        note(f"imported {source if source != '-' else 'stdin'} into {target.name} "
             f"({how}the previous data is in snapshot {before.name}: claude-db undo)")
        return
    if replace:
        check_source(source)
        target.require_running()
        endpoint = target.endpoint(database)
        _answering(target, endpoint)  # as reset: never creates a misspelt database
        name = endpoint.database
        confirm(f"Replace all data in {name} of session {target.name}?", yes)
        taken = snapshots.replace_from(get_app(), target, source, database)
        kept = f" (the previous data is in snapshot {taken.name}: claude-db undo)" if taken else ""
        note(f"replaced {name} of {target.name} with {source if source != '-' else 'stdin'}{kept}")
        return
    import_from(target, source, database, options)
    note(f"imported {source if source != '-' else 'stdin'} into {target.name}")


def export(
    destination: str = typer.Argument(
        ..., metavar="FILE|-", help="Where to write (.gz compresses, - for stdout)."
    ),
    session: str | None = SessionOption,
    database: str | None = DatabaseOption,
    export_format: str = typer.Option(
        "plain", "--format", "-F",
        help="plain (SQL), or the engine's own archive: custom (PostgreSQL's pg_dump -Fc).",
    ),
) -> None:
    """Dump the database to a file (written to a temporary file, then renamed)."""
    target = resolve_target(session)
    formats = ("plain", *target.engine.export_formats)
    if export_format not in formats:
        raise UsageError(
            f"unknown export format {export_format!r} for {target.engine.name}: "
            f"{', '.join(formats)}"
        )
    written = export_to(target, destination, database, export_format)
    if destination != "-":
        compressed = " before compression" if destination.endswith(".gz") else ""
        note(f"exported {target.name} to {destination} ({written:,} bytes{compressed})")


def reset(
    session: str | None = SessionOption,
    database: str | None = DatabaseOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Drop the database with everything in it and create it again, empty.

    Ends the database's other connections first (clients reconnect)."""
    target = resolve_target(session, destructive="reset")
    target.require_running()
    endpoint = target.endpoint(database)
    _answering(target, endpoint)  # reset empties a database, never creates a misspelt one
    confirm(f"Destroy all data in {endpoint.database} of session {target.name}?", yes)
    taken = snapshots.before_destroying(get_app(), target, database, snapshots.RESET, empty=True)
    if taken is None or not taken.emptied:  # PostgreSQL moves the data instead: no copy
        with signals_held():  # begun, it ends: a Ctrl-C must not leave it dropped, not made
            faults.checkpoint("resetting")
            target.engine.reset(endpoint)
    kept = f" (snapshot {taken.name} taken first: claude-db undo brings it back)" if taken else ""
    note(f"reset {endpoint.database} of session {target.name}{kept}")


def plugins(as_json: bool = JsonOption) -> None:
    """List plugins: distribution, version, hooks, what each registered, and load errors."""
    loaded = get_app().plugins
    listed = [
        {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "hooks": list(info.hooks),
            "engines": loaded.engines.owned_by(info.name),
            "runtimes": loaded.runtimes.owned_by(info.name),
        }
        for info in loaded.describe()
    ]
    errors = [
        {"plugin": e.plugin, "distribution": e.distribution, "message": e.message}
        for e in loaded.errors
    ]
    not_loaded = [{"plugin": n, "distribution": d} for n, d in loaded.not_selected]
    if as_json:
        print_json({
            "plugins": listed,
            "engines": {name: loaded.engines.owner(name) for name in loaded.engines.names()},
            "runtimes": {name: loaded.runtimes.owner(name) for name in loaded.runtimes.names()},
            "errors": errors,
            "not_loaded": not_loaded,
        })
        return
    for info in loaded.describe():
        dist = f"{info.distribution or 'no distribution'} {info.version or ''}".strip()
        print(f"{info.name}  ({dist})")
        for key, names in (("hooks", list(info.hooks)),
                           ("engines", loaded.engines.owned_by(info.name)),
                           ("runtimes", loaded.runtimes.owned_by(info.name))):
            if names:
                print(f"  {key}: {', '.join(names)}")
    for entry in not_loaded:
        print(f"not loaded: {entry['plugin']} ({entry['distribution']}): "
              "CLAUDE_DB_LOAD_PLUGINS / CLAUDE_DB_DISABLE_PLUGINS")
    for error in loaded.errors:
        print(f"load error: {error}")

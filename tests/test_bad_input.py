"""Bad input, across both CLIs: one clear line, its documented exit code, nothing changed.

Every case runs the installed CLI against one set of real sessions (a running one with
data and a snapshot, a stopped one, one without a database, one without snapshots) and
proves: exit code as documented (claude_db.errors.ExitCode), exactly one stderr line
starting ``error: ``, no traceback, and no change to any data or state — the databases'
checksums, every file of the state directory, and which servers run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from claude_db.errors import ExitCode
from claude_db.testing import BIN, Cli, assert_one_line_error
from claude_db.testing.safety import cleanup, fresh_state, pg_fingerprint, server_processes

USAGE, FAILED, NO_SESSION = ExitCode.USAGE, ExitCode.FAILED, ExitCode.NO_SESSION
NOT_RUNNING, CONFIRM = ExitCode.NOT_RUNNING, ExitCode.CONFIRMATION_NEEDED


@dataclass
class World:
    state: Path
    home: Path  # the running session's work directory (its .env names it)
    nowhere: Path  # a directory no session owns
    files: Path
    urls: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, state_root: Path) -> Iterator[World]:
    base = tmp_path_factory.mktemp("bad-input")
    state = fresh_state(base, state_root)
    world = World(state, base / "home", base / "nowhere", base / "files")
    for path in (world.home, world.nowhere, world.files):
        path.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLAUDE_", "DATABASE_URL"))}
    env |= {"CLAUDE_DB_STATE_DIR": str(state), "CLAUDE_DB_RUNTIME": "local"}

    def run(*argv: str, cwd: Path = world.home, **extra: str) -> str:
        program = str(BIN / argv[0])
        done = subprocess.run([program, *argv[1:]], cwd=cwd, env={**env, **extra},
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done
        return done.stdout

    try:
        run("claude-session", "start", "bad-main")
        run("claude-db", "query", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        run("claude-db", "query",
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 500) g")
        run("claude-db", "snapshot", "save", "base")
        run("claude-db", "snapshot", "restore", "base", "--yes")  # something for undo
        for name, extra in (("bad-empty", {}), ("bad-stopped", {}),
                            ("bad-nodb", {"CLAUDE_DB_ENABLED": "false"})):
            run("claude-session", "start", name, "--workdir", str(world.nowhere), **extra)
            (world.nowhere / ".env").unlink()  # no session owns this directory
        run("claude-session", "stop", "bad-stopped")
        for name in ("bad-main", "bad-empty"):
            world.urls[name] = json.loads(run("claude-session", "env", name, "-f", "json"))[
                "DATABASE_URL"]
        files = world.files
        (files / "broken.sql").write_text(
            "CREATE TABLE fresh (id int);\nINSERT INTO fresh VALUES (1);\n"
            "INSERT INTO no_such_table VALUES (1);\n")
        whole = gzip.compress(b"CREATE TABLE gz (id int);\n" * 2000)
        (files / "truncated.sql.gz").write_bytes(whole[: len(whole) // 2])
        (files / "a-directory").mkdir()
        (files / "dump.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(range(256)))
        (files / "random.bin").write_bytes(b"\x00garbage\x01\x02" * 50)
        (files / "empty.sql.gz").write_bytes(b"")
        (files / "nothing.sql.gz").write_bytes(gzip.compress(b""))  # empty once decompressed
        yield world
    finally:
        cleanup(state)


def snapshot_of_everything(world: World) -> dict[str, Any]:
    """What no bad input may change."""
    files = {}
    for path in sorted(world.state.rglob("*")):
        relative = str(path.relative_to(world.state))
        if relative.startswith("templates") or "/server/" in relative:
            continue  # the servers' own files change as they run
        files[relative] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    with psycopg.connect(world.urls["bad-main"], autocommit=True) as conn:
        names = conn.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()
    return {
        "databases": {name: pg_fingerprint(url) for name, url in world.urls.items()},
        "bad-main's server holds": names,  # none created (reset of a misspelt --database)
        "state files": files,
        "servers": sorted(cmd for _, cmd in server_processes(world.state)),
        "home .env": (world.home / ".env").read_text(),
        "nowhere": sorted(p.name for p in world.nowhere.iterdir()),
    }


F = "{files}"  # replaced by the fixture's files directory
CASES: list[tuple[str, tuple[str, ...], int, dict[str, str]]] = [
    # -- claude-session -----------------------------------------------------------------------
    ("invalid session name", ("claude-session", "start", "Bad_Name"), USAGE, {}),
    ("session name too long", ("claude-session", "start", "a" * 49), USAGE, {}),
    ("unknown engine", ("claude-session", "start", "x1", "--db", "oracle"), USAGE, {}),
    ("unknown runtime", ("claude-session", "start", "x2", "--runtime", "cloud"), USAGE, {}),
    ("name taken", ("claude-session", "start", "bad-main", "--workdir", F), FAILED, {}),
    ("unknown flag", ("claude-session", "start", "x3", "--turbo"), USAGE, {}),
    ("not a boolean", ("claude-session", "start", "x4"), USAGE, {"CLAUDE_DB_ENABLED": "maybe"}),
    ("bad timeout", ("claude-session", "start", "x5"), USAGE, {"CLAUDE_DB_READY_TIMEOUT": "soon"}),
    ("negative timeout", ("claude-session", "start", "x9"), USAGE,
     {"CLAUDE_DB_READY_TIMEOUT": "-5"}),
    ("start in a file", ("claude-session", "start", "x10", "--workdir", f"{F}/broken.sql"), USAGE,
     {}),
    ("bad retention", ("claude-session", "list"), USAGE, {"CLAUDE_DB_AUTO_SNAPSHOTS": "-1"}),
    ("password with a quote", ("claude-session", "start", "x6"), USAGE,
     {"CLAUDE_DB_PASSWORD": "it's"}),
    ("user with a backslash", ("claude-session", "start", "x7"), USAGE,
     {"CLAUDE_DB_USER": "a\\b"}),
    ("password dotenv would expand", ("claude-session", "start", "x12"), USAGE,
     {"CLAUDE_DB_PASSWORD": "a${HOME}b"}),
    ("postgres bindir without postgres", ("claude-session", "start", "x8", "--workdir", F), USAGE,
     {"CLAUDE_DB_POSTGRES_BINDIR": "/tmp"}),
    ("attach unknown", ("claude-session", "attach", "nosuch", "--no-shell"), NO_SESSION, {}),
    ("stop unknown", ("claude-session", "stop", "nosuch"), NO_SESSION, {}),
    ("delete unknown", ("claude-session", "delete", "nosuch", "--yes"), NO_SESSION, {}),
    ("delete without --yes", ("claude-session", "delete", "bad-main"), CONFIRM, {}),
    ("env unknown format", ("claude-session", "env", "bad-main", "-f", "xml"), USAGE, {}),
    ("env unknown session", ("claude-session", "env", "nosuch"), NO_SESSION, {}),
    ("gc unknown flag", ("claude-session", "gc", "--everything"), USAGE, {}),
    ("unknown command", ("claude-session", "frobnicate"), USAGE, {}),
    ("stop: which session?", ("claude-session", "stop", "@nowhere"), NO_SESSION, {}),
    ("start: an empty name", ("claude-session", "start", ""), USAGE, {}),
    ("stop: a path, not a name", ("claude-session", "stop", "../../x"), USAGE, {}),
    ("delete: invalid name", ("claude-session", "delete", "Bad Name", "--yes"), USAGE, {}),
    # -- claude-db --------------------------------------------------------------------------
    ("SQL error", ("claude-db", "query", "SELECT * FROM no_such_table"), FAILED, {}),
    ("SQL syntax error", ("claude-db", "query", "SELEC 1"), FAILED, {}),
    ("--json and --csv", ("claude-db", "query", "SELECT 1", "--json", "--csv"), USAGE, {}),
    ("unknown database", ("claude-db", "query", "SELECT 1", "-d", "nosuchdb"), FAILED, {}),
    ("import missing file", ("claude-db", "import", f"{F}/missing.sql"), USAGE, {}),
    ("import a directory", ("claude-db", "import", f"{F}/a-directory"), USAGE, {}),
    ("import fails at line 3", ("claude-db", "import", f"{F}/broken.sql"), FAILED, {}),
    ("import truncated gzip", ("claude-db", "import", f"{F}/truncated.sql.gz"), FAILED, {}),
    ("replace without --yes", ("claude-db", "import", "--replace", f"{F}/broken.sql"), CONFIRM, {}),
    ("replace missing file", ("claude-db", "import", "--replace", "--yes", f"{F}/nope.sql"),
     USAGE, {}),
    ("replace fails, data back", ("claude-db", "import", "--replace", "--yes",
                                  f"{F}/broken.sql"), FAILED, {}),
    ("export into missing dir", ("claude-db", "export", f"{F}/no/such/dir/x.sql"), USAGE, {}),
    ("export onto a directory", ("claude-db", "export", f"{F}/a-directory"), USAGE, {}),
    ("export unknown database", ("claude-db", "export", f"{F}/x.sql", "-d", "nosuchdb"),
     FAILED, {}),
    ("reset without --yes", ("claude-db", "reset"), CONFIRM, {}),
    ("unknown --session", ("claude-db", "status", "--session", "nosuch"), NO_SESSION, {}),
    ("no session anywhere", ("claude-db", "status", "@nowhere"), NO_SESSION, {}),
    ("stopped: status", ("claude-db", "status", "-s", "bad-stopped"), NOT_RUNNING, {}),
    ("stopped: query", ("claude-db", "query", "SELECT 1", "-s", "bad-stopped"), NOT_RUNNING, {}),
    ("stopped: reset", ("claude-db", "reset", "--yes", "-s", "bad-stopped"), NOT_RUNNING, {}),
    ("stopped: shell", ("claude-db", "psql", "-s", "bad-stopped"), NOT_RUNNING, {}),
    ("stopped: snapshot", ("claude-db", "snapshot", "save", "-s", "bad-stopped"), NOT_RUNNING, {}),
    ("no database", ("claude-db", "status", "-s", "bad-nodb"), USAGE, {}),
    ("snapshot name invalid", ("claude-db", "snapshot", "save", "bad name!"), USAGE, {}),
    ("snapshot name taken", ("claude-db", "snapshot", "save", "base"), FAILED, {}),
    ("restore unknown snapshot", ("claude-db", "snapshot", "restore", "nosuch"), USAGE, {}),
    ("restore without a name", ("claude-db", "snapshot", "restore"), USAGE, {}),
    ("delete unknown snapshot", ("claude-db", "snapshot", "delete", "nosuch"), USAGE, {}),
    ("nothing to undo", ("claude-db", "undo", "-s", "bad-empty"), FAILED, {}),
    ("undo unkept without --yes", ("claude-db", "undo"), CONFIRM,
     {"CLAUDE_DB_AUTO_SNAPSHOTS": "0"}),
    ("URL of an unknown engine", ("claude-db", "status", "@nowhere"), USAGE,
     {"DATABASE_URL": "oracle://u:p@localhost:1521/db"}),
    ("URL that is no URL", ("claude-db", "status", "@nowhere"), USAGE,
     {"DATABASE_URL": "not a url"}),
    ("URL, nothing there: query", ("claude-db", "query", "SELECT 1", "@nowhere"), NOT_RUNNING,
     {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"}),
    ("URL no session owns: reset", ("claude-db", "reset", "--yes", "@nowhere"), USAGE,
     {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"}),
    ("URL, nothing there: reset", ("claude-db", "reset", "--yes", "@nowhere"), NOT_RUNNING,
     {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db", "CLAUDE_DB_ALLOW_URL_DESTRUCTIVE": "1"}),
    ("URL, nothing there: import", ("claude-db", "import", f"{F}/broken.sql", "@nowhere"),
     NOT_RUNNING, {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"}),
    ("URL, nothing there: export", ("claude-db", "export", f"{F}/x.sql", "@nowhere"),
     NOT_RUNNING, {"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/db"}),
    ("unknown claude-db command", ("claude-db", "frobnicate"), USAGE, {}),
    ("query not UTF-8", ("claude-db", "query", os.fsdecode(b"SELECT '\xff'")), USAGE, {}),
    ("URL with a malformed IPv6 host", ("claude-db", "status", "@nowhere"), USAGE,
     {"DATABASE_URL": "postgresql://u:p@[::1/db"}),
    ("import a 7z archive", ("claude-db", "import", f"{F}/dump.7z"), USAGE, {}),
    ("import binary data", ("claude-db", "import", f"{F}/random.bin"), FAILED, {}),
    ("replace and skip ownership", ("claude-db", "import", "--replace", "--yes",
                                    "--skip-ownership", f"{F}/broken.sql"), USAGE, {}),
    ("replace from empty stdin", ("claude-db", "import", "--replace", "--yes", "-"), USAGE, {}),
    ("replace from empty stdin, no snapshots", ("claude-db", "import", "--replace", "--yes", "-"),
     USAGE, {"CLAUDE_DB_AUTO_SNAPSHOTS": "0"}),
    ("replace from a 0-byte .sql.gz", ("claude-db", "import", "--replace", "--yes",
                                       f"{F}/empty.sql.gz"), USAGE, {}),
    ("replace from a gzip of nothing", ("claude-db", "import", "--replace", "--yes",
                                        f"{F}/nothing.sql.gz"), USAGE, {}),
    ("import empty stdin", ("claude-db", "import", "-"), USAGE, {}),
    ("import a gzip of nothing", ("claude-db", "import", f"{F}/nothing.sql.gz"), USAGE, {}),
    ("import empty stdin, no transaction", ("claude-db", "import", "--no-transaction", "-"),
     USAGE, {}),
    ("reset a missing database", ("claude-db", "reset", "--yes", "-d", "nosuchdb"), FAILED, {}),
    ("reset a missing database, no snapshots", ("claude-db", "reset", "--yes", "-d", "nosuchdb"),
     FAILED, {"CLAUDE_DB_AUTO_SNAPSHOTS": "0"}),
    ("replace a missing database, no snapshots", ("claude-db", "import", "--replace", "--yes",
                                                  "-d", "nosuchdb", f"{F}/broken.sql"),
     FAILED, {"CLAUDE_DB_AUTO_SNAPSHOTS": "0"}),
    ("status of the reserved database", ("claude-db", "status", "-d", "claude_db_snapshots"),
     USAGE, {}),
    ("reset the reserved database", ("claude-db", "reset", "--yes", "-d", "claude_db_snapshots"),
     USAGE, {"CLAUDE_DB_AUTO_SNAPSHOTS": "0"}),
    ("export format unknown", ("claude-db", "export", f"{F}/x.sql", "--format", "xml"),
     USAGE, {}),
]


@pytest.mark.parametrize(("argv", "code", "env"), [pytest.param(a, c, e, id=i) for i, a, c, e
                                                   in CASES])
def test_bad_input(world: World, cli: Cli, argv: tuple[str, ...], code: int,
                   env: dict[str, str]) -> None:
    cwd = world.home
    if "@nowhere" in argv:  # run where no .env names a session
        argv = tuple(a for a in argv if a != "@nowhere")
        cwd = world.nowhere
    argv = tuple(a.replace(F, str(world.files)) for a in argv)
    environment = {"CLAUDE_DB_STATE_DIR": str(world.state), **env}
    before = snapshot_of_everything(world)
    result = cli(*argv, cwd=cwd, env=environment)
    assert_one_line_error(result, code)
    assert snapshot_of_everything(world) == before


def test_the_messages_name_the_cause(world: World, cli: Cli) -> None:
    env = {"CLAUDE_DB_STATE_DIR": str(world.state)}
    empty = cli("claude-db", "import", "--replace", "--yes", "-", cwd=world.home, env=env)
    assert empty.stderr == "error: stdin is empty: nothing to import\n", empty
    for auto in ("3", "0"):  # a missing database is no reason to turn snapshots off
        missing = cli("claude-db", "reset", "--yes", "-d", "nosuchdb", cwd=world.home,
                      env={**env, "CLAUDE_DB_AUTO_SNAPSHOTS": auto})
        assert 'database "nosuchdb" does not exist' in missing.stderr, missing
        assert "CLAUDE_DB_AUTO_SNAPSHOTS" not in missing.stderr, missing
    asked = cli("claude-db", "reset", cwd=world.home, env=env)  # no terminal: none to ask on
    assert asked.stderr == ("error: destroy all data in appdb of session bad-main: no "
                            "terminal to confirm; pass --yes\n"), asked


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({name for name, *_ in CASES}) == len(CASES)


def test_a_wrong_password_is_refused_not_absent(world: World, cli: Cli) -> None:
    url = world.urls["bad-main"]
    wrong = url.replace(":" + url.split("://", 1)[1].split("@")[0].split(":", 1)[1] + "@",
                        ":not-the-password@")
    assert wrong != url
    for argv in (("status",), ("query", "SELECT 1")):
        result = cli("claude-db", *argv, cwd=world.nowhere,
                     env={"CLAUDE_DB_STATE_DIR": str(world.state), "DATABASE_URL": wrong})
        assert_one_line_error(result, FAILED)  # the server answered: not exit 4
        assert "password authentication failed" in result.stderr, result


@pytest.mark.parametrize("debug", ["1", "true", "yes"])
def test_debug_setting_reads_like_every_boolean(world: World, cli: Cli, debug: str) -> None:
    result = cli("claude-db", "status", "--session", "nosuch",
                 env={"CLAUDE_DB_STATE_DIR": str(world.state), "CLAUDE_DB_DEBUG": debug})
    assert result.code != 0 and "Traceback" in result.stderr, result


@pytest.mark.parametrize("program", ["claude-db", "claude-session"])
def test_version(cli: Cli, program: str) -> None:
    from importlib.metadata import version

    shown = cli(program, "--version")
    assert shown.code == 0 and shown.stdout.startswith(f"{program} {version('claude-db')} "), shown

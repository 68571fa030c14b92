"""reset, restore, undo and import --replace killed at every step: the data comes back.

The CLI kills itself with SIGKILL at a named step (``CLAUDE_DB_TEST_KILL_AT``, read by
``claude_db.snapshots.checkpoint``), as the OOM killer or a cancelled CI job would; the
next command must finish what was left and ``undo`` must bring the data back. The server
killed (kill -9) while it drops the database must not leave it invalid for good. And the
history lives with the server: a state directory that never saw a snapshot (a re-created
session container) lists and undoes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from claude_db.testing import BIN, Cli, assert_one_line_error
from claude_db.testing.safety import database_url, pg_fingerprint, seed, session_json, wait_for

KILLED = -signal.SIGKILL


@pytest.fixture
def session(cli: Cli) -> Iterator[str]:
    name = f"undo-{uuid.uuid4().hex[:8]}"
    started = cli("claude-session", "start", name)
    assert started.code == 0, started
    seed(cli, "postgres", session=name)
    yield name
    cli("claude-session", "delete", name, "--yes")


def killed_at(cli: Cli, step: str, *argv: str) -> None:
    result = cli("claude-db", *argv, env={"CLAUDE_DB_TEST_KILL_AT": step})
    assert result.code == KILLED, result  # it really got there, and died


def listed(cli: Cli, session: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    result = cli("claude-db", "snapshot", "list", "--json", "--session", session, env=env)
    assert result.code == 0, result
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


@pytest.mark.parametrize("step", ["moved", "created", "saved"])
def test_reset_killed_at_each_step_then_undo(cli: Cli, session: str, step: str) -> None:
    """moved: the database is renamed into its snapshot and none has its name yet;
    created: it was made again; saved: the server holds everything, the CLI's directory not."""
    url = database_url(cli, session)
    before = pg_fingerprint(url)
    killed_at(cli, step, "reset", "--yes", "--session", session)
    assert [s["reason"] for s in listed(cli, session)] == ["reset"]
    assert pg_fingerprint(url) == {}  # the reset is finished, as if never interrupted
    undone = cli("claude-db", "undo", "--session", session)
    assert undone.code == 0, undone
    assert pg_fingerprint(url) == before


@pytest.mark.parametrize("step", ["moved", "created", "saved", "pruning", "saved:SIGHUP",
                                  "saved:SIGTERM"])
def test_reset_interrupted_once_the_data_moved_finishes_and_says_so(
    cli: Cli, session: str, step: str
) -> None:
    """A Ctrl-C once the data is out of the database (first-time user: "error: interrupted",
    exit 130, the reset done and no word of undo): the reset ends, says so, exit 0."""
    url = database_url(cli, session)
    before = pg_fingerprint(url)
    reset = cli("claude-db", "reset", "--yes", "--session", session,
                env={"CLAUDE_DB_TEST_SIGNAL_AT": step})
    assert reset.code == 0 and "claude-db undo brings it back" in reset.stderr, reset
    assert pg_fingerprint(url) == {}
    assert cli("claude-db", "undo", "--session", session).code == 0
    assert pg_fingerprint(url) == before


@pytest.mark.parametrize("step", ["moved", "created", "saved"])
@pytest.mark.parametrize("command", ["restore", "undo"])
def test_restore_and_undo_killed_at_each_step(
    cli: Cli, session: str, step: str, command: str
) -> None:
    url = database_url(cli, session)
    if command == "restore":
        assert cli("claude-db", "snapshot", "save", "v1", "--session", session).code == 0
        assert cli("claude-db", "query", "DELETE FROM items WHERE id > 10",
                   "--session", session).code == 0
        argv: tuple[str, ...] = ("snapshot", "restore", "v1")
    else:
        assert cli("claude-db", "reset", "--yes", "--session", session).code == 0
        argv = ("undo",)
    target = pg_fingerprint(url)  # what the killed command replaced
    killed_at(cli, step, *argv, "--session", session)
    # the next command finishes it (rolls forward): the restore is done ...
    safety = listed(cli, session)[-1]
    assert safety["reason"] == command
    restored = pg_fingerprint(url)
    assert restored != target and restored["public.items"][0] == 5000
    # ... and what it replaced is in its snapshot (undo after a restore goes back to it)
    back = ("undo",) if command == "restore" else ("snapshot", "restore", safety["name"])
    assert cli("claude-db", *back, "--session", session).code == 0
    assert pg_fingerprint(url) == target


def test_import_replace_killed_after_the_move_then_undo(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    """12.19: import --replace no longer drops the database: killed between moving it
    aside and making it again, undo (not refusing) brings the data back."""
    url = database_url(cli, session)
    before = pg_fingerprint(url)
    good = tmp_path / "good.sql"
    good.write_text("CREATE TABLE fresh (id int);\n")
    killed_at(cli, "moved", "import", str(good), "--replace", "--yes", "--session", session)
    undone = cli("claude-db", "undo", "--session", session)
    assert undone.code == 0, undone
    assert pg_fingerprint(url) == before
    assert [s["reason"] for s in listed(cli, session)] == ["import", "undo"]


def test_attach_finishes_a_reset_killed_with_the_database_renamed(
    cli: Cli, session: str
) -> None:
    url = database_url(cli, session)
    before = pg_fingerprint(url)
    killed_at(cli, "moved", "reset", "--yes", "--session", session)
    assert cli("claude-session", "stop", session).code == 0
    attached = cli("claude-session", "attach", session, "--no-shell")
    assert attached.code == 0, attached
    assert "was missing after an interrupted command" in attached.stderr
    assert pg_fingerprint(url) == {}
    assert cli("claude-db", "undo", "--session", session).code == 0
    assert pg_fingerprint(url) == before


def test_status_leaves_a_missing_database_to_the_command_holding_the_session(
    cli: Cli, session: str
) -> None:
    """Finishing a killed reset makes the database again: never while another command
    holds the session (a restore between its DROP and its copy would find the database
    there, empty, skip the copy and report success). ``status`` only reports; the next
    attach, with the session free, finishes it."""
    from claude_db.locks import hold, lock_for

    url = database_url(cli, session)
    database = url.rsplit("/", 1)[1]
    killed_at(cli, "moved", "reset", "--yes", "--session", session)
    state = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    with hold(lock_for(state / "sessions" / session), "the test's command"):
        cli("claude-db", "status", "--session", session)
        with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres") as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               [database]).fetchone()
        assert row is None  # left as the killed command left it
    attached = cli("claude-session", "attach", session, "--no-shell")
    assert attached.code == 0, attached
    assert pg_fingerprint(url) == {}


def test_import_replace_failing_and_killed_while_putting_the_data_back(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    url = database_url(cli, session)
    before = pg_fingerprint(url)
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE fresh (id int);\nSELECT no_such_function();\n")
    killed_at(cli, "dropped", "import", str(bad), "--replace", "--yes", "--session", session)
    assert listed(cli, session)  # recovers: the database is made again from the snapshot
    assert pg_fingerprint(url) == before


def test_undo_after_an_unsnapshotted_reset_says_so(cli: Cli, session: str) -> None:
    """12.8: a reset with CLAUDE_DB_AUTO_SNAPSHOTS=0 is the last operation: undo must not
    restore the older snapshot of an earlier reset."""
    url = database_url(cli, session)
    assert cli("claude-db", "reset", "--yes", "--session", session).code == 0  # snapshot A
    assert cli("claude-db", "query", "CREATE TABLE later (x int)", "--session", session).code == 0
    after = pg_fingerprint(url)
    off = {"CLAUDE_DB_AUTO_SNAPSHOTS": "0"}
    assert cli("claude-db", "reset", "--yes", "--session", session, env=off).code == 0
    refused = cli("claude-db", "undo", "--session", session)
    assert_one_line_error(refused, 1)
    assert "nothing to undo for the last reset (it took no snapshot: " \
           "CLAUDE_DB_AUTO_SNAPSHOTS=0)" in refused.stderr
    assert pg_fingerprint(url) == {}
    # a later reset that did take one is undone as usual
    assert cli("claude-db", "query", "CREATE TABLE later (x int)", "--session", session).code == 0
    assert cli("claude-db", "reset", "--yes", "--session", session).code == 0
    assert cli("claude-db", "undo", "--session", session).code == 0
    assert pg_fingerprint(url) == after


def test_one_history_for_host_and_a_recreated_container(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    """12.7: a state directory that never saw the snapshots (the filesystem of a session
    container, re-created) lists the host's and undoes through DATABASE_URL; the host sees
    what was done there."""
    url = database_url(cli, session)
    before = pg_fingerprint(url)
    assert cli("claude-db", "reset", "--yes", "--session", session).code == 0  # on the host
    for container in ("first", "re-created"):
        elsewhere = tmp_path / container
        elsewhere.mkdir()
        # a session container's environment: its own URL and session, and no state of it
        inside = {"DATABASE_URL": url, "CLAUDE_SESSION": session,
                  "CLAUDE_DB_STATE_DIR": str(elsewhere / "state")}
        seen = cli("claude-db", "snapshot", "list", "--json", cwd=elsewhere, env=inside)
        assert seen.code == 0, seen
        assert [s["reason"] for s in json.loads(seen.stdout)] == ["reset"]
    undone = cli("claude-db", "undo", cwd=elsewhere, env=inside)
    assert undone.code == 0, undone
    assert pg_fingerprint(url) == before
    assert [s["reason"] for s in listed(cli, session)] == ["reset", "undo"]
    # and the host undoes what the container did: back to empty
    assert cli("claude-db", "snapshot", "restore",
               listed(cli, session)[-1]["name"], "--session", session).code == 0
    assert pg_fingerprint(url) == {}


def test_an_unrecorded_snapshot_database_is_listed_restorable_and_deletable(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    """A save killed after its copy, in a container since re-created, leaves a snapshot
    database no directory knows: it is listed, can be restored, and deleted."""
    url = database_url(cli, session)
    before = pg_fingerprint(url)
    elsewhere = tmp_path / "container"
    elsewhere.mkdir()
    inside = {"DATABASE_URL": url, "CLAUDE_DB_STATE_DIR": str(elsewhere / "state"),
              "CLAUDE_DB_TEST_KILL_AT": "copied"}
    assert cli("claude-db", "snapshot", "save", "x", cwd=elsewhere, env=inside).code == KILLED
    found = listed(cli, session)
    assert [s["reason"] for s in found] == ["unrecorded"], found
    name = found[0]["name"]
    assert cli("claude-db", "query", "DROP TABLE items CASCADE", "--session", session).code == 0
    assert cli("claude-db", "snapshot", "restore", name, "--session", session).code == 0
    assert pg_fingerprint(url) == before
    assert cli("claude-db", "snapshot", "delete", name, "--session", session).code == 0
    assert name not in {s["name"] for s in listed(cli, session)}


def test_corrupt_record_is_listed_and_deletable(cli: Cli, session: str) -> None:
    """12.20: a damaged snapshot.json neither hides the snapshot nor blocks its name: the
    server's record is the truth, the directory is rewritten from it."""
    assert cli("claude-db", "snapshot", "save", "s1", "--session", session).code == 0
    state = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    (state / "sessions" / session / "snapshots" / "s1" / "snapshot.json").write_text("{oops")
    assert [s["name"] for s in listed(cli, session)] == ["s1"]
    assert cli("claude-db", "snapshot", "delete", "s1", "--session", session).code == 0
    assert cli("claude-db", "snapshot", "save", "s1", "--session", session).code == 0


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent:
                    found.append(int(entry.name))
    return found


def test_server_killed_while_dropping_the_database_is_repaired(
    cli: Cli, session: str
) -> None:
    """12.19: kill -9 the whole server while a reset (no snapshot) drops the database:
    PostgreSQL leaves it invalid (datconnlimit -2, no connection possible). The next
    attach (its readiness check) makes it again, empty, as the reset meant."""
    url = database_url(cli, session)
    state = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:  # many files: the drop takes a while
        for i in range(3000):
            conn.execute(f"CREATE TABLE t{i} (id int PRIMARY KEY, v text)")
    maintenance = psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True)
    postmaster = session_json(state, session)["runtime_state"]["pid"]
    env = {**os.environ, "CLAUDE_DB_AUTO_SNAPSHOTS": "0"}
    resetting = subprocess.Popen(
        [str(BIN / "claude-db"), "reset", "--yes", "--session", session], env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def invalid() -> bool:
        row = maintenance.execute("SELECT datconnlimit FROM pg_database WHERE datname = %s",
                                  [database]).fetchone()
        return row is not None and row[0] == -2

    wait_for("the drop to mark the database invalid", invalid)
    for pid in [postmaster, *_children(postmaster)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    resetting.communicate(timeout=120)
    maintenance.close()
    wait_for("the server to be gone", lambda: not Path(f"/proc/{postmaster}").exists())
    attached = cli("claude-session", "attach", session, "--no-shell")
    assert attached.code == 0, attached
    # the crash really left it invalid; attach made it again, empty, as the reset meant
    assert f"{database} was left invalid by a drop cut short" in attached.stderr
    assert pg_fingerprint(url) == {}
    assert cli("claude-db", "query", "SELECT 1", "--session", session).code == 0


def _plant(url: str, record: Any) -> str:
    """What the session's own SQL may do: make a snapshot-named database and write its
    comment. Returns the database's name."""
    template = f"claude_snapshot_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(template), sql.Literal(json.dumps(record))))
    return template


def test_records_written_from_the_session_are_neither_paths_nor_trusted(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    """A snapshot's record lives in a database COMMENT the session's role may write: a name
    that is a path, a record missing a field, none becomes a host path or breaks a command;
    each such database is listed unrecorded (by its own name) and deletable."""
    url = database_url(cli, session)
    outside = tmp_path / "outside"
    base = {"claude_db_snapshot": 1, "database": "x", "engine": "postgres",
            "created_at": "2026-01-01T00:00:00", "automatic": False, "reason": ""}
    planted = [
        _plant(url, {**base, "name": str(outside)}),
        _plant(url, {**base, "name": "../../../escaped"}),
        _plant(url, {k: v for k, v in base.items() if k != "automatic"} | {"name": "partial"}),
    ]
    found = listed(cli, session)
    assert sorted(s["name"] for s in found) == sorted(planted), found
    assert {s["reason"] for s in found} == {"unrecorded"}
    assert not outside.exists()
    state = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    assert not (state / "sessions" / "escaped").exists() and not (state / "escaped").exists()
    for template in planted:
        deleted = cli("claude-db", "snapshot", "delete", template, "--session", session)
        assert deleted.code == 0, deleted
    assert listed(cli, session) == []


def test_grants_in_a_record_are_never_sql_text(cli: Cli, session: str) -> None:
    """A pending record (a killed reset's) whose grants hold SQL instead of a privilege:
    the command that finishes the reset runs none of it."""
    url = database_url(cli, session)
    database = url.rsplit("/", 1)[1]
    maintenance = url.rsplit("/", 1)[0] + "/postgres"
    injected = (f'TEMPORARY ON DATABASE "{database}" TO PUBLIC; '
                "ALTER ROLE CURRENT_USER SET work_mem = '7777kB'; --")
    _plant(url, {"claude_db_snapshot": 1, "name": "planted", "database": database,
                 "engine": "postgres", "created_at": "2026-01-01T00:00:00", "automatic": False,
                 "reason": "", "owner": None,
                 "state": {"settings": [], "comment": None, "grants": [[None, injected, False]]},
                 "pending": {"database": database, "source": None}})
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    assert listed(cli, session) is not None
    with psycopg.connect(maintenance, autocommit=True) as conn:
        settings = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting WHERE setrole = "
            "(SELECT oid FROM pg_roles WHERE rolname = current_user)").fetchall()
    assert not any("work_mem=7777kB" in config for (config,) in settings), settings

"""12.7 for MySQL/MariaDB: snapshots live with the server (claude_db_mysql.history), so the
host and a session container keep one history, which outlives a re-created container.

A session container's state is its own filesystem: here a state directory of its own, with
only ``DATABASE_URL`` and ``CLAUDE_SESSION`` known (as in the container), against a real
MariaDB; the docker case runs the real thing (``docker exec`` in the session container,
``docker rm -f`` it, ``attach`` makes it again)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.testing import Cli, assert_one_line_error
from claude_db.testing.docker import (  # noqa: F401 - docker_daemon: a fixture
    SESSION_IMAGE,
    docker_daemon,
    remove_everything,
)

MARIADB_IMAGE = "claude-db-test/mariadb:10.11"
ROWS = "SELECT COUNT(*) AS n, COALESCE(SUM(n), 0) AS total FROM t"


@pytest.fixture
def session(cli: Cli, workdir: Path) -> Iterator[str]:
    name = f"myh-{uuid.uuid4().hex[:6]}"
    started = cli("claude-session", "start", name, "--db", "mysql", "--runtime", "local")
    assert started.code == 0, started
    made = cli("claude-db", "query", "CREATE TABLE t (n INT)")
    assert made.code == 0, made
    assert cli("claude-db", "query", "INSERT INTO t VALUES (1), (2), (3)").code == 0
    yield name
    cli("claude-session", "delete", name, "--yes")


def rows(cli: Cli, session: str, **kwargs: Any) -> Any:
    shown = cli("claude-db", "query", ROWS, "--json", "--session", session, **kwargs)
    assert shown.code == 0, shown
    return json.loads(shown.stdout)[0]


def emptied(cli: Cli, session: str) -> bool:
    shown = cli("claude-db", "query", "SHOW TABLES", "--json", "--session", session)
    assert shown.code == 0, shown
    return json.loads(shown.stdout) == []


def listed(cli: Cli, **kwargs: Any) -> list[dict[str, Any]]:
    shown = cli("claude-db", "snapshot", "list", "--json", **kwargs)
    assert shown.code == 0, shown
    found: list[dict[str, Any]] = json.loads(shown.stdout)
    return found


def restores(cli: Cli, session: str, name: str, before: Any, **where: Any) -> None:
    """The rows deleted, snapshot ``name`` restored (from ``where``: ``cli`` keywords)
    brings them back as ``before``."""
    assert cli("claude-db", "query", "DELETE FROM t").code == 0
    restored = cli("claude-db", "snapshot", "restore", name, **where)
    assert restored.code == 0, restored
    assert rows(cli, session) == before


def container(cli: Cli, workdir: Path, session: str, where: Path) -> dict[str, Any]:
    """``cli`` keywords that run a command as in the session's container: its URL and name,
    a state directory no one else sees."""
    where.mkdir()
    env = {"DATABASE_URL": read_env(workdir)["DATABASE_URL"], "CLAUDE_SESSION": session,
           "CLAUDE_DB_STATE_DIR": str(where / "state")}
    return {"cwd": where, "env": env}


def test_one_history_for_the_host_and_a_recreated_container(
    cli: Cli, workdir: Path, session: str, tmp_path: Path
) -> None:
    before = rows(cli, session)
    inside = container(cli, workdir, session, tmp_path / "container")
    saved = cli("claude-db", "snapshot", "save", "s1", **inside)
    assert saved.code == 0, saved
    reset = cli("claude-db", "reset", "--yes", **inside)
    assert reset.code == 0, reset
    assert emptied(cli, session)
    # the host sees what the container did
    assert [(s["name"], s["reason"]) for s in listed(cli, cwd=workdir)][:1] == [("s1", "")]
    assert [s["reason"] for s in listed(cli, cwd=workdir)] == ["", "reset"]
    # a re-created container (a new filesystem) undoes it
    again = container(cli, workdir, session, tmp_path / "re-created")
    assert [s["reason"] for s in listed(cli, **again)] == ["", "reset"]
    undone = cli("claude-db", "undo", **again)
    assert undone.code == 0, undone
    assert rows(cli, session) == before
    assert [s["reason"] for s in listed(cli, cwd=workdir)] == ["", "reset", "undo"]
    # the host restores what the container saved, and deletes it for both
    restores(cli, session, "s1", before)
    assert cli("claude-db", "snapshot", "delete", "s1").code == 0
    assert "s1" not in [s["name"] for s in listed(cli, **again)]


def test_undo_after_a_container_reset_that_took_no_snapshot_undoes_nothing(
    cli: Cli, workdir: Path, session: str, tmp_path: Path
) -> None:
    """12.8 in a container: a reset there with CLAUDE_DB_AUTO_SNAPSHOTS=0 is noted with the
    server, so undo on the host (or in a re-created container) says there is nothing to undo
    for it, and never restores the older reset's snapshot."""
    assert cli("claude-db", "reset", "--yes").code == 0  # an older reset, with its snapshot
    assert cli("claude-db", "query", "CREATE TABLE t (n INT)").code == 0
    assert cli("claude-db", "query", "INSERT INTO t VALUES (7)").code == 0
    inside = container(cli, workdir, session, tmp_path / "container")
    inside["env"]["CLAUDE_DB_AUTO_SNAPSHOTS"] = "0"
    reset = cli("claude-db", "reset", "--yes", **inside)
    assert reset.code == 0, reset
    again = container(cli, workdir, session, tmp_path / "re-created")
    for where in ({"cwd": workdir}, again):
        undone = cli("claude-db", "undo", **where)
        assert_one_line_error(undone, ExitCode.FAILED)
        assert "nothing to undo for the last reset" in undone.stderr, undone
        assert emptied(cli, session)
    assert [s["reason"] for s in listed(cli, cwd=workdir)] == ["reset"]


def test_a_dump_an_older_claude_db_kept_here_is_kept_with_the_server(
    cli: Cli, workdir: Path, session: str, tmp_path: Path
) -> None:
    """Snapshots of an older claude-db are dumps in the host's state directory only: the
    first snapshot command records them with the server (never drops them)."""
    before = rows(cli, session)
    assert cli("claude-db", "snapshot", "save", "old").code == 0
    # as an older claude-db left it: no history on the server, no mysql.json
    assert cli("claude-db", "query", "DROP DATABASE claude_db_snapshots").code == 0
    state = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    directory = state / "sessions" / session / "snapshots" / "old"
    (directory / "mysql.json").unlink()
    assert (directory / "dump.gz").is_file()
    assert [s["name"] for s in listed(cli, cwd=workdir)] == ["old"]
    inside = container(cli, workdir, session, tmp_path / "container")
    assert [s["name"] for s in listed(cli, **inside)] == ["old"]
    restores(cli, session, "old", before, **inside)


@pytest.mark.docker
@pytest.mark.usefixtures("docker_daemon")
def test_reset_and_undo_inside_a_mysql_session_container(cli: Cli, workdir: Path) -> None:
    """The seed's way, for real: claude-db in the session container, the container removed
    and made again by attach, undo there still brings every row back."""
    name = f"myhc{uuid.uuid4().hex[:8]}"
    started = cli("claude-session", "start", name, "--db", "mysql", "--runtime", "docker",
                  "--image", SESSION_IMAGE, env={"CLAUDE_DB_IMAGE": MARIADB_IMAGE})
    assert started.code == 0, started
    try:
        def inside(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["docker", "exec", name, *argv], capture_output=True,
                                  text=True, timeout=300)

        made = inside("claude-db", "query", "CREATE TABLE t (n INT); INSERT INTO t "
                      "VALUES (1), (2), (3)")
        assert made.returncode == 0, made
        before = rows(cli, name)
        saved = inside("claude-db", "snapshot", "save", "s1")
        assert saved.returncode == 0, saved
        reset = inside("claude-db", "reset", "--yes")
        assert reset.returncode == 0, reset
        assert emptied(cli, name)
        assert [s["reason"] for s in listed(cli, cwd=workdir)] == ["", "reset"]  # the host

        subprocess.run(["docker", "rm", "-f", name], check=True, capture_output=True)
        attached = cli("claude-session", "attach", name, "--no-shell")
        assert attached.code == 0, attached
        seen = inside("claude-db", "snapshot", "list", "--json")
        assert seen.returncode == 0, seen
        assert [s["reason"] for s in json.loads(seen.stdout)] == ["", "reset"]
        undone = inside("claude-db", "undo")
        assert undone.returncode == 0, undone
        assert rows(cli, name) == before
        assert [s["reason"] for s in listed(cli, cwd=workdir)] == ["", "reset", "undo"]
    finally:
        cli("claude-session", "delete", name, "--yes")
        remove_everything(name)


def test_a_file_name_planted_on_the_server_never_writes_outside_the_snapshot(
    cli: Cli, workdir: Path, session: str, tmp_path: Path
) -> None:
    """A row of ``claude_db_snapshots.files`` whose name climbs out of the snapshot's
    directory (anyone with rights on the server may plant one) is refused before anything
    is written: restore fails with one error line, the file is never made."""
    assert cli("claude-db", "snapshot", "save", "s1").code == 0
    target = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    planted = cli("claude-db", "query", "INSERT INTO claude_db_snapshots.files SELECT id, "
                  f"CONCAT('/', REPEAT('../', 40), '{str(target)[1:]}'), 0, 'x' "
                  "FROM claude_db_snapshots.snapshots")
    assert planted.code == 0, planted
    try:
        inside = container(cli, workdir, session, tmp_path / "container")
        restored = cli("claude-db", "snapshot", "restore", "s1", **inside)
        assert_one_line_error(restored, ExitCode.FAILED)
        assert "the snapshot's files on the server are not valid" in restored.stderr, restored
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_each_user_of_a_shared_server_sees_only_its_own_snapshots(
    cli: Cli, workdir: Path, session: str, tmp_path: Path
) -> None:
    """Two users of one server (bare URLs, state directories of their own) keep separate
    histories: the session's listing and undo never see another user's snapshot."""
    other = f"b{uuid.uuid4().hex[:8]}"
    url = read_env(workdir)["DATABASE_URL"]
    for statement in (f"CREATE DATABASE {other}",
                      f"CREATE USER '{other}'@'%' IDENTIFIED BY 'pw-{other}'",
                      f"CREATE USER '{other}'@'localhost' IDENTIFIED BY 'pw-{other}'",
                      f"GRANT ALL ON {other}.* TO '{other}'@'%', '{other}'@'localhost'",
                      f"GRANT ALL ON claude_db_snapshots.* TO '{other}'@'%', "
                      f"'{other}'@'localhost'"):
        made = cli("claude-db", "query", statement)
        assert made.code == 0, made
    at = url.rsplit("@", 1)[1]  # host:port/database?options
    theirs_url = f"mysql://{other}:pw-{other}@{at.split('/', 1)[0]}/{other}"
    if "?" in at:
        theirs_url += "?" + at.split("?", 1)[1]
    theirs = {"cwd": tmp_path / "b", "env": {"DATABASE_URL": theirs_url,
                                           "CLAUDE_DB_STATE_DIR": str(tmp_path / "b-state")}}
    (tmp_path / "b").mkdir()
    assert cli("claude-db", "query", "CREATE TABLE u (n INT)", **theirs).code == 0
    saved = cli("claude-db", "snapshot", "save", "x", **theirs)
    assert saved.code == 0, saved
    assert "x" not in [s["name"] for s in listed(cli, cwd=workdir)]
    undone = cli("claude-db", "undo")
    assert_one_line_error(undone, ExitCode.FAILED)
    assert "nothing to undo" in undone.stderr, undone
    assert [s["name"] for s in listed(cli, **theirs)] == ["x"]


def test_listing_snapshots_creates_nothing_on_the_server(cli: Cli, session: str) -> None:
    """``snapshot list`` only reads: the history's database is made by the first save."""
    assert listed(cli) == []
    shown = cli("claude-db", "query", "SHOW DATABASES LIKE 'claude_db_snapshots'", "--json")
    assert shown.code == 0, shown
    assert json.loads(shown.stdout) == []


def test_a_history_lost_on_the_server_is_kept_again_from_the_state_directory(
    cli: Cli, workdir: Path, session: str, tmp_path: Path
) -> None:
    """H2: the server's history dropped (a replaced volume, an agent dropping unknown
    databases): the state directory's snapshots, which hold the whole dump, are kept with
    the server again under their id, never removed; one deleted elsewhere still goes."""
    before = rows(cli, session)
    assert cli("claude-db", "snapshot", "save", "old").code == 0
    assert cli("claude-db", "snapshot", "save", "gone").code == 0
    inside = container(cli, workdir, session, tmp_path / "container")
    assert cli("claude-db", "snapshot", "delete", "gone", **inside).code == 0
    assert [s["name"] for s in listed(cli, cwd=workdir)] == ["old"]  # deleted elsewhere
    assert cli("claude-db", "query", "DROP DATABASE claude_db_snapshots").code == 0
    assert [s["name"] for s in listed(cli, cwd=workdir)] == ["old"]
    again = container(cli, workdir, session, tmp_path / "re-created")
    assert [s["name"] for s in listed(cli, **again)] == ["old"]
    restores(cli, session, "old", before, **again)


def test_the_history_database_is_no_commands(
    cli: Cli, workdir: Path, session: str, tmp_path: Path
) -> None:
    """M2: `claude_db_snapshots` holds the snapshots: no command takes it (reset would drop
    them), no import writes there; one error line, exit 2, every snapshot still listed."""
    assert cli("claude-db", "snapshot", "save", "kept").code == 0
    before = listed(cli, cwd=workdir)
    table = tmp_path / "table.sql"
    table.write_text("CREATE TABLE z (n INT);\n")
    for argv in (["reset", "--yes"], ["query", "SELECT 1"], ["snapshot", "save", "x"],
                 ["import", "--replace", "--yes", str(table)]):
        refused = cli("claude-db", *argv, "-d", "claude_db_snapshots")
        assert_one_line_error(refused, ExitCode.USAGE)
        assert "claude-db's own" in refused.stderr, refused
    dump = tmp_path / "switch.sql"
    dump.write_text("USE claude_db_snapshots;\nDELETE FROM snapshots;\n")
    imported = cli("claude-db", "import", str(dump))
    assert_one_line_error(imported, imported.code)
    assert imported.code != 0 and "claude-db keeps the snapshots" in imported.stderr, imported
    assert listed(cli, cwd=workdir) == before
    assert [s["name"] for s in before] == ["kept"]

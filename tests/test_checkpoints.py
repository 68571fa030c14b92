"""Checkpoints (issue 16.4): ``claude-db checkpoint``, ``undo --list``/``--to``, ``diff``,
retention, on real servers: PostgreSQL local and docker, MariaDB local.

A checkpoint is a snapshot (PostgreSQL: a template database on the server; MariaDB: table
files or a dump) that never ends a client's connection, that plain ``undo`` does not
restore (it keeps undoing the last destructive command) and that retention may evict.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from claude_db.testing import Cli, assert_one_line_error
from claude_db.testing.docker import (
    EVERYWHERE,
    docker_daemon,  # noqa: F401 - a fixture
    remove_everything,
)
from claude_db.testing.safety import database_url, fingerprint, seed, session_json

KILLED = -signal.SIGKILL
MONGO_STANDIN = "claude-db-test/mongo-standin:latest"


@pytest.fixture(params=["postgres"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def session(cli: Cli, engine: str, engine_session: str) -> str:
    seed(cli, engine, session=engine_session)
    return engine_session


def run(cli: Cli, session: str, *argv: str, env: dict[str, str] | None = None) -> Any:
    result = cli("claude-db", *argv, "--session", session, env=env)
    assert result.code == 0, result
    return result


def listed(cli: Cli, session: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(run(cli, session, "undo", "--list", "--json").stdout)
    return data


def take(cli: Cli, session: str, *argv: str, env: dict[str, str] | None = None) -> str:
    taken = json.loads(run(cli, session, "checkpoint", "--json", *argv, env=env).stdout)
    name: str = taken["name"]
    return name


def sql(cli: Cli, session: str, statement: str) -> None:
    run(cli, session, "query", statement)


@pytest.mark.parametrize("engine", EVERYWHERE)
def test_checkpoint_list_diff_and_undo_to(cli: Cli, engine: str, session: str) -> None:
    """The contents: what undo --list says of each, what diff reports, what --to restores;
    later checkpoints stay listed after --to, and plain undo then goes back to before it."""
    pg = engine.startswith("postgres")
    items, notes = ("public.items", "extra.notes") if pg else ("items", "notes")
    seeded = fingerprint(cli, engine, session=session)
    one_line = run(cli, session, "checkpoint", "--label", "turn 1")
    assert len(one_line.stdout.splitlines()) == 1 and "checkpoint cp-" in one_line.stdout
    first = one_line.stdout.split()[1]

    sql(cli, session, "DELETE FROM items WHERE id > 1000")
    sql(cli, session, "ALTER TABLE items ADD COLUMN stock int")
    sql(cli, session, "CREATE TABLE added (id int)")
    sql(cli, session, "DROP VIEW cheap")
    sql(cli, session, f"DROP TABLE {notes}")
    changed = fingerprint(cli, engine, session=session)

    diff = json.loads(run(cli, session, "diff", "--json").stdout)
    assert diff["since"]["name"] == first and diff["since"]["label"] == "turn 1"
    assert diff["added"] == [("public.added" if pg else "added")]
    assert diff["dropped"] == [notes]
    assert list(diff["altered"]) == [items]
    assert list(diff["altered"][items]["columns_added"]) == ["stock"]
    assert diff["rows"][items] == {"before": 5000, "after": 1000}
    assert diff["rows"][notes] == {"before": 300, "after": None}
    text = run(cli, session, "diff").stdout
    assert f"- {notes} (dropped)" in text and f"~ {items} (altered: +stock" in text

    second = take(cli, session, "--label", "turn 2")
    entries = {e["name"]: e for e in listed(cli, session)}
    assert entries[first]["made_by"] == "checkpoint" and entries[first]["label"] == "turn 1"
    assert entries[first]["size"] > 0 and entries[first]["created_at"]
    assert entries[second]["label"] == "turn 2"

    restored = json.loads(run(cli, session, "undo", "--to", first, "--json").stdout)
    assert restored["restored"]["name"] == first
    assert fingerprint(cli, engine, session=session) == seeded
    after = {e["name"]: e for e in listed(cli, session)}
    assert second in after  # later checkpoints stay: going forward again is possible
    assert after[restored["saved_before"]["name"]]["made_by"] == "before restore"
    run(cli, session, "undo")  # plain undo: back to before the undo --to
    assert fingerprint(cli, engine, session=session) == changed
    run(cli, session, "undo", "--to", second)
    assert fingerprint(cli, engine, session=session) == changed


def test_plain_undo_still_undoes_the_last_destructive_command(cli: Cli, session: str) -> None:
    """A checkpoint taken after a reset is not what plain undo restores: the reset is."""
    seeded = fingerprint(cli, "postgres", session=session)
    run(cli, session, "reset", "--yes")
    sql(cli, session, "CREATE TABLE after_reset (id int)")
    take(cli, session)
    run(cli, session, "undo", "--yes")
    assert fingerprint(cli, "postgres", session=session) == seeded


@pytest.mark.parametrize("engine", ["postgres", pytest.param("postgres@docker",
                                                             marks=pytest.mark.docker)])
def test_checkpoint_never_ends_a_connected_client(cli: Cli, engine: str, session: str) -> None:
    """An app's pooled connection in the middle of a transaction, and an idle one, go on
    undisturbed; the checkpoint holds what was committed, not the open transaction."""
    url = database_url(cli, session)
    busy = psycopg.connect(url)
    idle = psycopg.connect(url, autocommit=True)
    busy.execute("INSERT INTO items (name, price) VALUES ('uncommitted', 1)")
    taken = run(cli, session, "checkpoint", "--label", "busy")
    assert "ending" not in taken.stderr, taken
    busy.execute("INSERT INTO items (name, price) VALUES ('also', 1)")
    busy.commit()
    assert idle.execute("SELECT count(*) FROM items").fetchone() == (5002,)
    busy.close()
    idle.close()
    name = taken.stdout.split()[1]
    diff = json.loads(run(cli, session, "diff", name, "--json").stdout)
    assert diff["rows"]["public.items"] == {"before": 5000, "after": 5002}


@pytest.mark.parametrize("engine", ["postgres", pytest.param("postgres@docker",
                                                             marks=pytest.mark.docker)])
def test_checkpoint_and_undo_copy_files_not_wal(cli: Cli, engine: str, session: str) -> None:
    """The template copies of a checkpoint and of undo --to are file copies (STRATEGY
    FILE_COPY): the server's WAL grows by far less than the database, where PostgreSQL
    15's default (WAL_LOG) writes every page of the copy into it: 2-3x slower (bench/)."""
    url = database_url(cli, session)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad "
                     "FROM generate_series(1, 100000) g")  # ~25 MB
        # frozen and analysed now: an autovacuum of the new table during a measure would
        # write a full page image of every page into the WAL (seen on docker under load)
        conn.execute("VACUUM (FREEZE, ANALYZE) filler")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]

    def wal_written(*argv: str) -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        run(cli, session, *argv)
        with psycopg.connect(url, autocommit=True) as conn:
            return int(conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn",
                                    [str(before)]).fetchone()[0])

    name = json.loads(run(cli, session, "checkpoint", "--json").stdout)["name"]
    assert wal_written("checkpoint") < size / 4
    assert wal_written("undo", "--to", name, "--yes") < size / 4


def test_checkpoint_and_undo_open_one_admin_connection(cli: Cli, state: Path) -> None:
    """Each snapshot command talks to the server over one admin connection (each one
    costs a server process and an authentication), counted in the server's own log."""
    name = f"ckpt-conns-{uuid.uuid4().hex[:8]}"
    assert cli("claude-session", "start", name, "--superuser").code == 0  # for ALTER SYSTEM
    try:
        with psycopg.connect(database_url(cli, name), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET log_connections = on")
            conn.execute("SELECT pg_reload_conf()")
        log = Path(session_json(state, name)["runtime_state"]["log"])

        def admin_connections(*argv: str) -> int:
            before = log.read_text().count("database=postgres application_name=claude-db")
            run(cli, name, *argv)  # the server logs each before it answers: all are in
            return log.read_text().count("database=postgres application_name=claude-db") \
                - before

        first = take(cli, name)
        assert admin_connections("checkpoint") == 1
        assert admin_connections("undo", "--to", first, "--yes") == 1
    finally:
        cli("claude-session", "delete", name, "--yes")


def test_retention_keeps_the_last_n_and_caps_space_named_ones_kept(
    cli: Cli, session: str
) -> None:
    """CLAUDE_DB_CHECKPOINTS: the oldest checkpoints go, not a snapshot taken before a
    command. CLAUDE_DB_SNAPSHOT_SPACE: the oldest checkpoints go first; a named one never,
    nor the one plain undo restores (review: an end-of-turn checkpoint evicted the undo of
    a reset), and the line says so when those alone are over the cap."""
    run(cli, session, "snapshot", "save", "named")
    one = take(cli, session, env={"CLAUDE_DB_CHECKPOINTS": "2"})
    run(cli, session, "reset", "--yes")
    before_reset = [e["name"] for e in listed(cli, session) if e["made_by"] == "before reset"]
    seed(cli, "postgres", session=session)
    two = take(cli, session, env={"CLAUDE_DB_CHECKPOINTS": "2"})
    three = take(cli, session, env={"CLAUDE_DB_CHECKPOINTS": "2"})
    names = [e["name"] for e in listed(cli, session)]
    assert one not in names and {two, three, "named", *before_reset} <= set(names), names

    sizes = {e["name"]: e["size"] for e in listed(cli, session)}
    # room for the named one, the undo of the reset and two more: checkpoints go, oldest first
    cap = str(int(sizes["named"] + sizes[before_reset[0]] + 2 * sizes[three] + sizes[three] // 2))
    four = take(cli, session, env={"CLAUDE_DB_SNAPSHOT_SPACE": cap})
    assert [e["name"] for e in listed(cli, session)] == ["named", *before_reset, three, four]

    over = run(cli, session, "checkpoint", env={"CLAUDE_DB_SNAPSHOT_SPACE": "1K"})
    assert len(over.stdout.splitlines()) == 1, over
    assert "named snapshots take" in over.stdout and "never deleted" in over.stdout
    assert "plain undo restores is kept" in over.stdout, over
    latest = over.stdout.split()[1]
    assert [e["name"] for e in listed(cli, session)] == ["named", *before_reset, latest]
    assert run(cli, session, "undo", "--yes").code == 0  # the reset is still undoable


def _leftovers(cli: Cli, session: str, state: Path) -> dict[str, Any]:
    """Half-made snapshot directories, and snapshot databases no listed snapshot holds."""
    partial = [p.name for p in (state / "sessions" / session / "snapshots").iterdir()
               if p.name.startswith(".") and p.is_dir()]
    url = database_url(cli, session)
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        on_server = sorted(r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'claude\\_snapshot\\_%'"))
    return {"partial": partial, "databases": on_server}


#: every step of a checkpoint (claude_db.faults.checkpoint names): PostgreSQL copies the
#: database on the server ("copied"), then core renames the directory ("saved"); MariaDB
#: copies into the directory itself, so it has only the second
STEPS = [("postgres", "copied"), ("postgres", "saved"), ("mysql", "saved")]


@pytest.mark.parametrize(("engine", "step"), STEPS)
def test_checkpoint_killed_at_each_step(cli: Cli, engine: str, session: str, step: str) -> None:
    """SIGKILL at every step: the database is untouched, and gc finds what was half made
    (a copied database never recorded); a checkpoint recorded on the server is whole."""
    state = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    before = fingerprint(cli, engine, session=session)
    killed = cli("claude-db", "checkpoint", "--session", session,
                 env={"CLAUDE_DB_TEST_KILL_AT": step})
    assert killed.code == KILLED, killed
    assert fingerprint(cli, engine, session=session) == before
    snapshots = state / "sessions" / session / "snapshots"
    assert any(p.name.endswith(".partial") for p in snapshots.iterdir())  # it was cut short
    gc = cli("claude-session", "gc")
    assert gc.code == 0, gc
    assert "unfinished snapshot" in gc.stdout, gc
    assert not [p for p in snapshots.iterdir() if p.name.startswith(".") and p.is_dir()]
    found = listed(cli, session)
    if engine == "postgres":
        left = _leftovers(cli, session, state)
        assert left["partial"] == []
        held = {json.loads((snapshots / e["name"] / "postgres.json").read_text())["template"]
                for e in found}
        assert left["databases"] == sorted(held)
        # killed once the server recorded it: a whole checkpoint; before that: none
        assert len(found) == (1 if step == "saved" else 0), found
    else:  # MariaDB's copy is recorded with the server when whole: killed after, it stays
        assert [e["reason"] for e in found] == ["checkpoint"], found
    assert fingerprint(cli, engine, session=session) == before


def test_bad_input_is_one_error_line(cli: Cli, session: str, workdir: Path) -> None:
    """Unknown or malformed ids: exit 2 and one `error:` line, nothing restored."""
    before = fingerprint(cli, "postgres", session=session)
    for argv in (["undo", "--to", "nope"], ["undo", "--to", "../../etc"],
                 ["diff", "nope"], ["undo", "--list", "--to", "x"],
                 ["checkpoint", "--label", "two\nlines"], ["checkpoint", "--label", "x" * 201]):
        assert_one_line_error(cli("claude-db", *argv, "--session", session), 2)
    assert_one_line_error(cli("claude-db", "diff", "--session", session), 1)  # none yet
    assert_one_line_error(cli("claude-db", "checkpoint", "--session", "no-such"), 3)
    assert fingerprint(cli, "postgres", session=session) == before
    assert listed(cli, session) == []


def test_checkpoint_with_nothing_to_do_says_one_line_and_exits_0(
    cli: Cli, session: str, tmp_path: Path
) -> None:
    """What the agent's end-of-turn hook runs: quiet, one line, exit 0 without a session
    here, with checkpoints off, and (--hook) when the database is stopped."""
    nowhere = tmp_path / "no-session-here"
    nowhere.mkdir()
    for result in (cli("claude-db", "checkpoint", "--label", "turn", cwd=nowhere),
                   cli("claude-db", "checkpoint", "--hook", cwd=nowhere),
                   cli("claude-db", "checkpoint", "--session", session,
                       env={"CLAUDE_DB_CHECKPOINTS": "0"})):
        assert result.code == 0, result
        assert len(result.stdout.splitlines()) == 1 and not result.stderr, result
        assert result.stdout.startswith("no checkpoint taken")
    assert cli("claude-session", "stop", session).code == 0
    stopped = cli("claude-db", "checkpoint", "--hook", "--session", session)
    assert stopped.code == 0 and len(stopped.stdout.splitlines()) == 1, stopped
    assert stopped.stdout.startswith("warning: no checkpoint")
    assert cli("claude-db", "checkpoint", "--session", session).code == 4
    assert cli("claude-session", "start", session).code == 0
    hooked = take(cli, session, "--hook", "--label", "Stop")
    assert {e["name"]: e["made_by"] for e in listed(cli, session)} == {
        hooked: "checkpoint by a hook"}


def test_diff_killed_while_reading_a_snapshot_leaves_it_closed(cli: Cli, session: str) -> None:
    """diff opens a PostgreSQL snapshot's database to connections for its read; killed
    then, the next snapshot command closes it again (nothing may connect to a snapshot)."""
    name = take(cli, session)
    killed = cli("claude-db", "diff", "--session", session,
                 env={"CLAUDE_DB_TEST_KILL_AT": "reading"})
    assert killed.code == KILLED, killed
    state = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    template = json.loads((state / "sessions" / session / "snapshots" / name
                           / "postgres.json").read_text())["template"]
    template_url = database_url(cli, session).rsplit("/", 1)[0] + "/" + template
    psycopg.connect(template_url).close()  # the kill really left it open
    assert [e["name"] for e in listed(cli, session)] == [name]
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(template_url).close()
    assert run(cli, session, "diff", "--json").stdout  # and diff works again


@pytest.mark.docker
@pytest.mark.usefixtures("docker_daemon")
def test_mongo_checkpoint_and_undo_to_diff_unsupported(cli: Cli) -> None:
    """MongoDB: checkpoints are the engine default's dumps (list, --to work); diff is not
    supported: exit 2, one line."""
    if subprocess.run(["docker", "image", "inspect", MONGO_STANDIN],
                      capture_output=True).returncode != 0:
        pytest.fail(f"{MONGO_STANDIN} is missing: run tests/test_mongo_docker.py (it builds it)")
    name = f"ckptm{uuid.uuid4().hex[:8]}"
    started = cli("claude-session", "start", name, "--db", "mongo", "--runtime", "docker",
                  "--db-image", MONGO_STANDIN)
    assert started.code == 0, started

    def count() -> Any:
        result = cli("claude-db", "query", '{"count": "items"}', "--json", "--session", name)
        assert result.code == 0, result
        return json.loads(result.stdout)[0]["n"]

    try:
        documents = json.dumps({"insert": "items", "documents": [{"n": i} for i in range(300)]})
        run(cli, name, "query", documents)
        first = take(cli, name, "--label", "300")
        more = json.dumps({"insert": "items", "documents": [{"n": i} for i in range(200)]})
        run(cli, name, "query", more)
        assert count() == 500
        assert [(e["name"], e["made_by"]) for e in listed(cli, name)] == [(first, "checkpoint")]
        assert_one_line_error(cli("claude-db", "diff", "--session", name), 2)
        run(cli, name, "undo", "--to", first)
        assert count() == 300
    finally:
        cli("claude-session", "delete", name, "--yes")
        remove_everything(name)


def test_physical_checkpoint_killed_at_saved_is_finished_and_undoable(cli: Cli) -> None:
    """H4: a MariaDB checkpoint of table files (a database above MIN_BYTES, local runtime)
    killed once the server recorded it, before its directory got its name: gc finishes the
    save (the directory holds the only copy of the table files), and undo to it gives back
    every row."""
    name = f"ckphys-{uuid.uuid4().hex[:8]}"
    started = cli("claude-session", "start", name, "--db", "mysql", "--runtime", "local")
    assert started.code == 0, started
    try:
        seed(cli, "mysql", session=name)
        sql(cli, name, "CREATE TABLE big (id INT PRIMARY KEY, pad LONGBLOB) ENGINE=InnoDB")
        # 48 MiB of rows: above MIN_BYTES (32 MiB), so the checkpoint copies table files
        sql(cli, name, "INSERT INTO big SELECT seq, REPEAT(MD5(seq), 1536) FROM seq_1_to_1000")
        before = fingerprint(cli, "mysql", session=name)
        killed = cli("claude-db", "checkpoint", "--session", name,
                     env={"CLAUDE_DB_TEST_KILL_AT": "saved"})
        assert killed.code == KILLED, killed
        gc = cli("claude-session", "gc")
        assert gc.code == 0, gc
        snapshots = Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "sessions" / name / "snapshots"
        assert not [p for p in snapshots.iterdir() if p.name.startswith(".") and p.is_dir()]
        [found] = listed(cli, name)
        assert (snapshots / found["name"] / "big.ibd").is_file()  # the physical path ran
        sql(cli, name, "DELETE FROM big")
        undone = run(cli, name, "undo", "--to", found["name"], "--yes")
        assert undone.code == 0, undone
        assert fingerprint(cli, "mysql", session=name) == before
        # its table files gone: undo says so before it drops anything
        (snapshots / found["name"] / "big.ibd").unlink()
        sql(cli, name, "DELETE FROM big WHERE id > 500")
        changed = fingerprint(cli, "mysql", session=name)
        refused = cli("claude-db", "undo", "--to", found["name"], "--yes", "--session", name)
        assert_one_line_error(refused, 1)
        assert "big.ibd" in refused.stderr, refused
        assert fingerprint(cli, "mysql", session=name) == changed
    finally:
        cli("claude-session", "delete", name, "--yes")

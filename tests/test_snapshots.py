"""Snapshots and undo: nothing an agent destroys by mistake is lost.

PostgreSQL keeps snapshots as template databases on its server; MySQL uses the engine
default (a compressed dump in the session's state), so both implementations run here,
on the local runtime and (``engine@docker``) on the docker runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from claude_db.testing import Cli, assert_one_line_error
from claude_db.testing.docker import DOCKER_IMAGES as IMAGES
from claude_db.testing.docker import (
    EVERYWHERE,
    SESSION_IMAGE,
    docker_daemon,  # noqa: F401 - a fixture
    remove_everything,
)
from claude_db.testing.safety import fingerprint, seed, session_json

ENGINES = ["postgres", "mysql"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def session(engine_session: str) -> str:
    return engine_session


def snapshots(cli: Cli, session: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    listed = cli("claude-db", "snapshot", "list", "--json", "--session", session, env=env)
    assert listed.code == 0, listed
    data: list[dict[str, Any]] = json.loads(listed.stdout)
    return data


@pytest.mark.parametrize("engine", EVERYWHERE)
def test_reset_then_undo_gives_back_every_table_and_row(
    cli: Cli, engine: str, session: str
) -> None:
    seed(cli, engine, session=session)
    before = fingerprint(cli, engine, session=session)
    expected = {"items", "notes", "cheap"}  # tables and the view (PostgreSQL: with schemas)
    assert expected <= {relation.rsplit(".", 1)[-1] for relation in before}, before
    assert before[next(r for r in before if r.endswith("items"))][0] == 5000

    reset = cli("claude-db", "reset", "--yes", "--session", session)
    assert reset.code == 0, reset
    assert "claude-db undo" in reset.stderr
    assert fingerprint(cli, engine, session=session) == {}
    # a snapshot saved by name since is no operation to undo: undo still undoes the reset
    saved = cli("claude-db", "snapshot", "save", "after-reset", "--session", session)
    assert saved.code == 0, saved

    undone = cli("claude-db", "undo", "--session", session)
    assert undone.code == 0, undone
    assert fingerprint(cli, engine, session=session) == before
    # undo again is harmless: the reset is undone already, and what was done since stays
    again = cli("claude-db", "undo", "--session", session)
    assert again.code == 1 and "the last reset was undone already" in again.stderr, again
    assert fingerprint(cli, engine, session=session) == before
    kinds = [(s["automatic"], s["reason"]) for s in snapshots(cli, session)]
    assert kinds == [(True, "reset"), (False, ""), (True, "undo")]


@pytest.mark.parametrize("engine", EVERYWHERE)
def test_save_restore_delete(cli: Cli, engine: str, session: str) -> None:
    seed(cli, engine, session=session)
    saved = cli("claude-db", "snapshot", "save", "v1", "--json", "--session", session)
    assert saved.code == 0, saved
    assert json.loads(saved.stdout)["name"] == "v1"
    v1 = fingerprint(cli, engine, session=session)

    for statement in ("DELETE FROM items WHERE id % 2 = 0", "DROP VIEW cheap"):
        assert cli("claude-db", "query", statement, "--session", session).code == 0
    changed = fingerprint(cli, engine, session=session)
    assert changed != v1

    restored = cli("claude-db", "snapshot", "restore", "v1", "--json", "--session", session)
    assert restored.code == 0, restored
    report = json.loads(restored.stdout)
    assert report["restored"]["name"] == "v1"
    assert fingerprint(cli, engine, session=session) == v1
    # the data the restore replaced was kept: going back to it works too
    safety = report["saved_before"]["name"]
    back = cli("claude-db", "snapshot", "restore", safety, "--session", session)
    assert back.code == 0, back
    assert fingerprint(cli, engine, session=session) == changed

    taken = cli("claude-db", "snapshot", "save", "v1", "--session", session)
    assert_one_line_error(taken, 1)  # names are unique
    deleted = cli("claude-db", "snapshot", "delete", "v1", "--session", session)
    assert deleted.code == 0, deleted
    assert "v1" not in [s["name"] for s in snapshots(cli, session)]
    assert_one_line_error(cli("claude-db", "snapshot", "restore", "v1", "--session", session), 2)
    assert fingerprint(cli, engine, session=session) == changed


def test_import_replace_takes_a_snapshot_and_fails_whole(
    cli: Cli, engine: str, session: str, tmp_path: Path
) -> None:
    seed(cli, engine, session=session)
    original = fingerprint(cli, engine, session=session)
    dump = tmp_path / "original.sql.gz"
    assert cli("claude-db", "export", str(dump), "--session", session).code == 0
    deleted = cli("claude-db", "query", "DELETE FROM items WHERE id > 10", "--session", session)
    assert deleted.code == 0, deleted
    edited = fingerprint(cli, engine, session=session)

    # destructive: refuses without a terminal and without --yes, changes nothing
    refused = cli("claude-db", "import", "--replace", str(dump), "--session", session)
    assert_one_line_error(refused, 6)
    assert fingerprint(cli, engine, session=session) == edited

    replaced = cli("claude-db", "import", "--replace", "--yes", str(dump), "--session", session)
    assert replaced.code == 0, replaced
    assert fingerprint(cli, engine, session=session) == original
    assert cli("claude-db", "undo", "--session", session).code == 0
    assert fingerprint(cli, engine, session=session) == edited

    # a replacing import that fails part-way puts the previous data back
    broken = tmp_path / "broken.sql"
    broken.write_text("CREATE TABLE fresh (id int);\nINSERT INTO fresh VALUES (1);\n"
                      "INSERT INTO no_such_table VALUES (1);\n")
    failed = cli("claude-db", "import", "--replace", "--yes", str(broken), "--session", session)
    assert_one_line_error(failed, 1)
    assert "previous data is back" in failed.stderr
    assert fingerprint(cli, engine, session=session) == edited


def test_retention_bounds_automatic_snapshots_and_frees_them(cli: Cli, session: str,
                                                             engine: str) -> None:
    keep = {"CLAUDE_DB_AUTO_SNAPSHOTS": "2"}
    seed(cli, engine, session=session)
    assert cli("claude-db", "snapshot", "save", "manual", "--session", session).code == 0
    for _ in range(4):
        assert cli("claude-db", "reset", "--yes", "--session", session, env=keep).code == 0
    listed = snapshots(cli, session)
    assert listed[0]["name"] == "manual"  # manual snapshots are never pruned
    assert [s["automatic"] for s in listed] == [False, True, True]
    state = Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "sessions" / session / "snapshots"
    assert sorted(p.name for p in state.iterdir()) == sorted(s["name"] for s in listed)
    if engine == "postgres":  # pruned snapshots' template databases are dropped too
        url = cli("claude-session", "env", session, "-f", "json")
        with psycopg.connect(json.loads(url.stdout)["DATABASE_URL"]) as conn:
            count = conn.execute("SELECT count(*) FROM pg_database "
                                 "WHERE datname LIKE 'claude_snapshot_%'").fetchone()
        assert count == (3,)


def test_automatic_snapshots_turned_off(cli: Cli, session: str, engine: str) -> None:
    off = {"CLAUDE_DB_AUTO_SNAPSHOTS": "0"}
    seed(cli, engine, session=session)
    assert cli("claude-db", "reset", "--yes", "--session", session, env=off).code == 0
    assert snapshots(cli, session) == []
    assert_one_line_error(cli("claude-db", "undo", "--session", session, env=off), 1)
    assert cli("claude-db", "snapshot", "save", "s", "--session", session).code == 0
    # with nothing kept of the current data, restoring asks like any destructive command
    assert_one_line_error(
        cli("claude-db", "snapshot", "restore", "s", "--session", session, env=off), 6)
    assert cli("claude-db", "snapshot", "restore", "s", "--yes", "--session", session,
               env=off).code == 0
    assert [s["name"] for s in snapshots(cli, session)] == ["s"]


@pytest.mark.parametrize("engine", ["postgres"])
def test_snapshots_go_with_the_session(cli: Cli, session: str, engine: str) -> None:
    assert cli("claude-db", "snapshot", "save", "keepme", "--session", session).code == 0
    directory = Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "sessions" / session
    assert (directory / "snapshots" / "keepme").is_dir()
    assert cli("claude-session", "delete", session, "--yes").code == 0
    assert not directory.exists()
    assert cli("claude-session", "start", session).code == 0
    assert snapshots(cli, session) == []


@pytest.mark.parametrize("engine", ["postgres"])
def test_postgres_save_disturbs_no_client_and_reset_says_it_ends_them(
    cli: Cli, session: str, engine: str
) -> None:
    """12.10: an app's pooled connection with an open transaction survives a save (the
    copy is a pg_dump of one MVCC snapshot, not a template copy needing the database to
    itself); reset, which must end it, says so first. Snapshot databases refuse connections."""
    seed(cli, engine, session=session)
    url = json.loads(cli("claude-session", "env", session, "-f", "json").stdout)["DATABASE_URL"]
    app = psycopg.connect(url)  # e.g. a node-postgres Pool's client, mid-transaction
    app.execute("INSERT INTO items (id, name, price) VALUES (-1, 'uncommitted', 1)")
    saved = cli("claude-db", "snapshot", "save", "busy", "--json", "--session", session)
    assert saved.code == 0, saved
    assert "ending" not in saved.stderr
    app.execute("INSERT INTO items (id, name, price) VALUES (-2, 'also', 1)")
    app.commit()  # the transaction went on undisturbed
    app.execute("SELECT 1")
    saved_rows = fingerprint(cli, engine, session=session)["public.items"][0]
    assert saved_rows == 5002

    record = json.loads((Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "sessions" / session
                         / "snapshots" / "busy" / "postgres.json").read_text())
    template_url = url.rsplit("/", 1)[0] + "/" + record["template"]
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(template_url).close()

    reset = cli("claude-db", "reset", "--yes", "--session", session)
    assert reset.code == 0, reset
    database = url.rsplit("/", 1)[1]
    assert f"ending 1 other connection to {database}" in reset.stderr
    with pytest.raises(psycopg.OperationalError):  # it was ended (apps reconnect)
        app.execute("SELECT 1")
    app.close()
    # the snapshot saved while the app worked holds what was committed then, not the rest
    assert cli("claude-db", "snapshot", "restore", "busy", "--session", session).code == 0
    assert fingerprint(cli, engine, session=session)["public.items"][0] == 5000


@pytest.mark.parametrize("engine", ["postgres"])
def test_snapshots_through_database_url_alone(cli: Cli, session: str, engine: str,
                                              tmp_path: Path) -> None:
    """Where only DATABASE_URL is known, snapshots work too (a URL no session owns needs
    CLAUDE_DB_ALLOW_URL_DESTRUCTIVE for reset and undo; see test_resolution.py)."""
    seed(cli, engine, session=session)
    url = json.loads(cli("claude-session", "env", session, "-f", "json").stdout)["DATABASE_URL"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"DATABASE_URL": url, "CLAUDE_DB_ALLOW_URL_DESTRUCTIVE": "true"}
    before = fingerprint(cli, engine, session=session)
    reset = cli("claude-db", "reset", "--yes", cwd=elsewhere, env=env)
    assert reset.code == 0, reset
    assert fingerprint(cli, engine, session=session) == {}
    assert cli("claude-db", "undo", cwd=elsewhere, env=env).code == 0
    assert fingerprint(cli, engine, session=session) == before
    listed = cli("claude-db", "snapshot", "list", "--json", cwd=elsewhere, env=env)
    assert [s["reason"] for s in json.loads(listed.stdout)] == ["reset", "undo"]
    assert (Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "url-snapshots").is_dir()


@pytest.mark.parametrize("engine", ["postgres"])
def test_snapshot_commands_on_a_stopped_database(cli: Cli, session: str, engine: str) -> None:
    assert cli("claude-db", "snapshot", "save", "s1", "--session", session).code == 0
    assert cli("claude-db", "reset", "--yes", "--session", session).code == 0  # for undo
    names = [s["name"] for s in snapshots(cli, session)]
    assert cli("claude-session", "stop", session).code == 0
    for argv in (("snapshot", "save"), ("snapshot", "restore", "s1"), ("undo",),
                 ("snapshot", "delete", "s1"), ("reset", "--yes")):
        assert_one_line_error(cli("claude-db", *argv, "--session", session), 4)
    assert [s["name"] for s in snapshots(cli, session)] == names
    assert session_json(Path(os.environ["CLAUDE_DB_STATE_DIR"]), session)["name"] == session


@pytest.mark.docker
@pytest.mark.parametrize("engine", [pytest.param("postgres@docker", marks=pytest.mark.docker)])
def test_reset_and_undo_inside_a_session_container(cli: Cli, engine: str) -> None:
    """The seed's way: the agent works in a session container where only DATABASE_URL is
    known. reset takes its snapshot there too, the host sees the same history (12.7), and
    after the container is re-created undo still brings every row back."""
    name = f"snapc{uuid.uuid4().hex[:8]}"
    request_env = {"CLAUDE_DB_RUNTIME": "docker", "CLAUDE_DB_IMAGE": IMAGES["postgres"]}
    started = cli("claude-session", "start", name, "--image", SESSION_IMAGE, env=request_env)
    assert started.code == 0, started
    try:
        def inside(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["docker", "exec", name, *argv], capture_output=True,
                                  text=True, timeout=180)

        assert inside("claude-db", "query", "CREATE TABLE t AS SELECT generate_series(1, 2500) "
                      "AS n").returncode == 0
        before = fingerprint(cli, "postgres", session=name)
        reset = inside("claude-db", "reset", "--yes")
        assert reset.returncode == 0, reset
        assert fingerprint(cli, "postgres", session=name) == {}
        assert [s["reason"] for s in snapshots(cli, name)] == ["reset"]  # the host sees it

        subprocess.run(["docker", "rm", "-f", name], check=True, capture_output=True)
        attached = cli("claude-session", "attach", name, "--no-shell")
        assert attached.code == 0, attached
        listed = inside("claude-db", "snapshot", "list", "--json")
        assert listed.returncode == 0, listed
        assert [s["reason"] for s in json.loads(listed.stdout)] == ["reset"]
        undone = inside("claude-db", "undo")
        assert undone.returncode == 0, undone
        assert fingerprint(cli, "postgres", session=name) == before
        assert [s["reason"] for s in snapshots(cli, name)] == ["reset", "undo"]
    finally:
        cli("claude-session", "delete", name, "--yes")
        remove_everything(name)


MONGO_STANDIN = "claude-db-test/mongo-standin:latest"


@pytest.mark.docker
@pytest.mark.usefixtures("docker_daemon")
def test_mongo_reset_then_undo(cli: Cli) -> None:
    """MongoDB (the official image's contract, served by the wire-protocol stand-in that
    tests/test_mongo_docker.py builds) gets snapshots from the engine default: its dumps."""
    if subprocess.run(["docker", "image", "inspect", MONGO_STANDIN],
                      capture_output=True).returncode != 0:
        pytest.fail(f"{MONGO_STANDIN} is missing: run tests/test_mongo_docker.py (it builds it)")
    name = f"snapm{uuid.uuid4().hex[:8]}"
    started = cli("claude-session", "start", name, "--db", "mongo", "--runtime", "docker",
                  "--db-image", MONGO_STANDIN)
    assert started.code == 0, started

    def count() -> Any:
        result = cli("claude-db", "query", '{"count": "items"}', "--json", "--session", name)
        assert result.code == 0, result
        return json.loads(result.stdout)[0]["n"]

    try:
        documents = json.dumps({"insert": "items", "documents": [{"n": i} for i in range(300)]})
        assert cli("claude-db", "query", documents, "--session", name).code == 0
        assert count() == 300
        assert cli("claude-db", "reset", "--yes", "--session", name).code == 0
        assert count() == 0
        assert cli("claude-db", "undo", "--session", name).code == 0
        assert count() == 300
    finally:
        cli("claude-session", "delete", name, "--yes")
        remove_everything(name)


@pytest.mark.parametrize("engine", ["postgres"])
def test_database_level_state_survives_reset_undo_and_restore(
    cli: Cli, session: str, engine: str
) -> None:
    """14.6: settings (ALTER DATABASE/ROLE ... SET), the comment and the grants of the
    database are not in a template copy: snapshots carry them. An extension whose schema is
    on the database's search_path keeps working after reset + undo."""
    url = json.loads(cli("claude-session", "env", session, "-f", "json").stdout)["DATABASE_URL"]
    database = url.rsplit("/", 1)[1]
    setup = [
        "CREATE SCHEMA ext", "CREATE EXTENSION citext SCHEMA ext",
        f"ALTER DATABASE {database} SET search_path = public, ext",
        f"ALTER DATABASE {database} SET timezone = 'Asia/Tokyo'",
        f"ALTER DATABASE {database} SET statement_timeout = '42s'",
        f"ALTER ROLE CURRENT_USER IN DATABASE {database} SET work_mem = '7MB'",
        f"COMMENT ON DATABASE {database} IS 'the app''s database'",
        f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC",
    ]
    for statement in setup:
        assert cli("claude-db", "query", statement, "--session", session).code == 0, statement

    def state() -> dict[str, Any]:
        with psycopg.connect(url, autocommit=True) as conn:
            shown = conn.execute("SELECT current_setting('search_path'), "
                                 "current_setting('TimeZone'), "
                                 "current_setting('statement_timeout'), "
                                 "current_setting('work_mem'), "
                                 "to_regtype('citext') IS NOT NULL").fetchone()
            row = conn.execute("SELECT shobj_description(oid, 'pg_database'), datacl::text[] "
                               "FROM pg_database WHERE datname = current_database()").fetchone()
        assert row is not None
        return {"shown": shown, "comment": row[0], "acl": sorted(row[1] or [])}

    before = state()
    assert before["shown"] == ("public, ext", "Asia/Tokyo", "42s", "7MB", True)
    assert cli("claude-db", "snapshot", "save", "configured", "--session", session).code == 0
    assert cli("claude-db", "reset", "--yes", "--session", session).code == 0
    emptied = state()  # settings are the database's, not its data: reset keeps them
    assert emptied == {**before, "shown": (*before["shown"][:4], False)}
    assert cli("claude-db", "undo", "--session", session).code == 0
    assert state() == before
    # the extension is found through the database's search_path, unqualified
    assert cli("claude-db", "query", "SELECT 'MiXeD'::citext = 'mixed'",
               "--session", session).code == 0
    assert cli("claude-db", "snapshot", "restore", "configured", "--session", session).code == 0
    assert state() == before


def test_reset_and_undo_of_the_database_named_postgres(cli: Cli) -> None:
    """Review M7: the shared admin connection is keyed by the admin database too: the one
    opened on "postgres" is not reused to move or drop the database "postgres". Its owner
    is not the session's superuser: the snapshot becomes the role's, the owner comes back."""
    name = f"snap-pgdb-{uuid.uuid4().hex[:8]}"
    assert cli("claude-session", "start", name, "--superuser").code == 0  # owns "postgres"
    try:
        target = ["-d", "postgres", "--session", name]
        created = cli("claude-db", "query", "CREATE TABLE kept (n int)", *target)
        assert created.code == 0, created
        reset = cli("claude-db", "reset", "--yes", *target)
        assert reset.code == 0, reset
        gone = cli("claude-db", "query", "SELECT to_regclass('kept') IS NULL", "--csv", *target)
        assert gone.code == 0 and gone.stdout.splitlines()[1:] == ["t"], gone
        undone = cli("claude-db", "undo", "--yes", "--session", name)  # the reset's database
        assert undone.code == 0, undone
        back = cli("claude-db", "query", "SELECT count(*) FROM kept", *target)
        assert back.code == 0, back
        owners = cli("claude-db", "query", "SELECT pg_get_userbyid(datdba) FROM pg_database "
                     "WHERE datname IN ('postgres', 'template1')", "--csv", *target)
        assert len(set(owners.stdout.splitlines()[1:])) == 1, owners  # its owner again
    finally:
        cli("claude-session", "delete", name, "--yes")

"""What an import, export or snapshot of a MySQL session keeps, and what it must refuse
(issue items 14.1-14.4, 12.22), against real MariaDB servers through the installed CLIs.

- 14.1: a dump of all databases holds the ``mysql`` schema (the accounts): refused, and
  the session's account is made again at every start of a local server.
- 14.2: ``CREATE DATABASE x; USE x`` dumps are refused before anything is applied, naming
  ``--database x``, which loads them.
- 14.3: system-versioned tables keep their history through export/import and snapshots.
- 14.4: comments inside routine, trigger and event bodies survive every import.
- 14.5: on the local runtime big databases are snapshotted as their table files, which
  bring back rows, history, counters, keys and code; a writer's open transaction makes it
  a dump instead of a wait.
- 12.22: a non-ASCII password authenticates; a database named ``-x`` is not an option.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import test_mysql
from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.testing import Cli, assert_one_line_error
from claude_db_mysql.switches import ImportRefusedError, SwitchGuard
from test_mysql import DOCKER_IMAGE, LOCAL, connect, databases, fetch, tables

COMMENTED = """
DELIMITER //
CREATE PROCEDURE tally(IN n INT)
BEGIN
  -- keep this line comment
  SELECT n * 2 AS doubled; /* and this block comment */
END//
CREATE TRIGGER stamp BEFORE INSERT ON t FOR EACH ROW
BEGIN
  # a hash comment
  SET NEW.x = NEW.x + 1;
END//
CREATE EVENT sweep ON SCHEDULE EVERY 1 DAY DO
BEGIN
  -- the event's comment
  DELETE FROM t WHERE x < 0;
END//
DELIMITER ;
"""
COMMENTS = ("-- keep this line comment", "/* and this block comment */", "# a hash comment",
            "-- the event's comment")
VERSIONED = (
    "CREATE TABLE prices (id INT PRIMARY KEY, amount INT) WITH SYSTEM VERSIONING;"
    "INSERT INTO prices VALUES (1, 10);"
    "UPDATE prices SET amount = 20;"
    "UPDATE prices SET amount = 30;"
)
ALL_VERSIONS = "SELECT amount FROM prices FOR SYSTEM_TIME ALL ORDER BY amount"

#: test_mysql's fixtures: the runtimes, a session on each, a local session
runtime, session, local_session = test_mysql.runtime, test_mysql.session, test_mysql.local_session


def dump_with_client(env: dict[str, str], *args: str) -> bytes:
    """``mariadb-dump ARGS`` of the server of ``env``, as a user makes a dump by hand."""
    proc = subprocess.run(
        ["mariadb-dump", "--protocol=TCP", f"--host={env['MYSQL_HOST']}",
         f"--port={env['MYSQL_TCP_PORT']}", f"--user={env['MYSQL_USER']}", *args],
        env={**os.environ, "MYSQL_PWD": env["MYSQL_PWD"]}, capture_output=True, check=True,
    )
    return proc.stdout


def routine_code(env: dict[str, str]) -> str:
    """The stored code of the procedure, the trigger and the event, as the server has it."""
    return "\n".join([
        fetch(env, "SHOW CREATE PROCEDURE tally")[0][2],
        fetch(env, "SHOW CREATE TRIGGER stamp")[0][2],
        fetch(env, "SHOW CREATE EVENT sweep")[0][3],
    ])


# -- 14.1: the session's account cannot be replaced --------------------------------------


def test_a_dump_of_all_databases_is_refused(
    cli: Cli, local_session: dict[str, str], tmp_path: Path, workdir: Path
) -> None:
    """The dump of another server's databases, ``mysql`` (its accounts) included, would
    replace the session's account: it is refused with nothing applied, and the session
    still works after a restart."""
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    made = cli("claude-session", "start", "fid-other", "--db", "mysql", "--runtime", "local",
               cwd=other_dir)
    assert made.code == 0, made
    try:
        other = read_env(other_dir)
        cli("claude-db", "query", "CREATE TABLE theirs (x INT)", cwd=other_dir)
        everything = tmp_path / "all.sql"
        everything.write_bytes(dump_with_client(other, "--all-databases"))
    finally:
        cli("claude-session", "delete", "fid-other", "--yes")
    assert other["MYSQL_PWD"] != local_session["MYSQL_PWD"]
    cli("claude-db", "query", "CREATE TABLE mine (x INT)")

    refused = cli("claude-db", "import", str(everything))
    assert_one_line_error(refused, ExitCode.FAILED)
    assert "import refused, nothing was applied" in refused.stderr, refused
    assert "`mysql`" in refused.stderr and "system schema" in refused.stderr, refused
    assert tables(local_session) == ["mine"]
    assert databases(local_session) == [  # (claude-db's own: the import's snapshot first)
        "appdb", "claude_db_snapshots", "information_schema", "mysql", "performance_schema",
        "sys"]

    assert cli("claude-session", "stop", LOCAL).code == 0
    attached = cli("claude-session", "attach", LOCAL, "--no-shell")
    assert attached.code == 0, attached
    assert tables(local_session) == ["mine"]


def test_the_session_account_is_made_again_at_start(
    cli: Cli, local_session: dict[str, str]
) -> None:
    """Whatever SQL did to the session's account, the next start of the local server gives
    it back its password and privileges."""
    changed = cli("claude-db", "query",
                  "DROP USER root@localhost; REVOKE ALL PRIVILEGES ON *.* FROM root@'%'; "
                  "ALTER USER root@'%' IDENTIFIED BY 'not-the-session-password'")
    assert changed.code == 0, changed
    locked_out = cli("claude-db", "status")
    assert_one_line_error(locked_out, ExitCode.FAILED)
    assert "Access denied" in locked_out.stderr, locked_out

    assert cli("claude-session", "stop", LOCAL).code == 0
    attached = cli("claude-session", "attach", LOCAL, "--no-shell")
    assert attached.code == 0, attached
    grants = fetch(local_session, "SHOW GRANTS")
    assert "GRANT ALL PRIVILEGES ON *.* TO `root`@`%`" in grants[0][0], grants
    accounts = fetch(local_session, "SELECT User, Host FROM mysql.user WHERE User <> 'mariadb.sys'")
    assert sorted(accounts) == [("root", "%"), ("root", "localhost")]


# -- 14.2: CREATE DATABASE x; USE x dumps ------------------------------------------------


def test_a_dump_of_another_database_is_refused_and_loads_with_database(
    cli: Cli, session: dict[str, str], tmp_path: Path
) -> None:
    cli("claude-db", "query", "CREATE DATABASE shop")
    cli("claude-db", "query", "CREATE TABLE shop.items (id INT); INSERT INTO shop.items VALUES (1)")
    dump = tmp_path / "shop.sql"
    dump.write_text(cli("claude-db", "export", "--database", "shop", "-").stdout)
    cli("claude-db", "query", "DROP DATABASE shop")
    # what `mysqldump --databases shop` writes before the tables
    dump.write_text("CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop`;\n\nUSE `shop`;\n"
                    + dump.read_text())

    refused = cli("claude-db", "import", str(dump))
    assert_one_line_error(refused, ExitCode.FAILED)
    assert "line 3 (USE `shop`;) switches to database 'shop'" in refused.stderr, refused
    assert "claude-db import --database=shop FILE" in refused.stderr, refused
    assert "shop" not in databases(session) and tables(session) == []

    loaded = cli("claude-db", "import", "--database", "shop", str(dump))
    assert loaded.code == 0, loaded
    assert fetch(session, "SELECT id FROM shop.items") == [(1,)]
    assert tables(session) == []
    # without its CREATE DATABASE and USE lines, the same dump goes into the session's
    plain = dump.read_text().split("USE `shop`;\n", 1)[1]
    assert cli("claude-db", "import", "-", input=plain).code == 0
    assert tables(session) == ["items"]


def test_a_switch_late_in_the_file_is_rolled_back(cli: Cli, local_session: dict[str, str]) -> None:
    """A USE after statements already applied (beyond the first chunk): all is undone."""
    head = "CREATE TABLE early (x INT);\n" + "INSERT INTO early VALUES (1);\n" * 60_000
    tail = "USE elsewhere;\nCREATE TABLE t (x INT);\n"
    refused = cli("claude-db", "import", "-", input=head + tail)
    assert_one_line_error(refused, ExitCode.FAILED)
    assert "line 60002 (USE elsewhere;) switches to database 'elsewhere'" in refused.stderr
    assert tables(local_session) == []
    # a USE of the session's own database is no switch
    same = cli("claude-db", "import", "-", input="USE appdb;\nCREATE TABLE here (x INT);\n")
    assert same.code == 0, same
    assert tables(local_session) == ["here"]


def test_the_guard_sees_lines_cut_between_chunks() -> None:
    """Core reads a file in 1 MiB chunks: a USE cut in two is still seen, at its line."""
    text = b"SELECT 1;\n" * 3 + b"USE `sh``op`;\nSELECT 2;\n"
    for cut in range(len(text) + 1):
        guard = SwitchGuard("appdb")
        with pytest.raises(ImportRefusedError, match=r"line 4 \(USE `sh``op`;\) switches to "
                           r"database 'sh`op'.*--database='sh`op'"):
            list(guard.checked([text[:cut], text[cut:]]))
    assert list(SwitchGuard("appdb").checked([b"use appdb", b"\n  USE `appdb` ;"]))
    # a line that only begins like USE, and CREATE DATABASE of a user database, pass
    for harmless in (b"use_count = 1;\n", b"CREATE DATABASE IF NOT EXISTS other;\n",
                     b"INSERT INTO t VALUES ('\\nUSE mysql;');\n"):
        assert list(SwitchGuard("appdb").checked([harmless])) == [harmless]
    for system in (b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `mysql`;\n", b"\\u sys\n",
                   b"create schema PERFORMANCE_SCHEMA;\n"):
        with pytest.raises(ImportRefusedError, match="a system schema of the server"):
            list(SwitchGuard("appdb").checked([system]))


# -- 14.4: comments in stored code ---------------------------------------------------------


def test_comments_in_stored_code_survive_import_and_snapshots(
    cli: Cli, session: dict[str, str]
) -> None:
    cli("claude-db", "query", "CREATE TABLE t (x INT)")
    imported = cli("claude-db", "import", "-", input=COMMENTED)
    assert imported.code == 0, imported
    code = routine_code(session)
    for comment in COMMENTS:
        assert comment in code, code
    assert cli("claude-db", "snapshot", "save", "commented").code == 0
    assert cli("claude-db", "reset", "--yes").code == 0
    assert cli("claude-db", "undo").code == 0
    assert routine_code(session) == code
    dump = cli("claude-db", "export", "-").stdout
    assert cli("claude-db", "import", "--replace", "--yes", "-", input=dump).code == 0
    assert routine_code(session) == code
    assert cli("claude-db", "query", "CALL tally(21)", "--csv").stdout == "doubled\n42\n"


# -- 14.3: history of system-versioned tables -----------------------------------------------


def test_history_survives_export_import_and_undo(
    cli: Cli, session: dict[str, str], tmp_path: Path
) -> None:
    assert cli("claude-db", "query", VERSIONED).code == 0
    history = fetch(session, ALL_VERSIONS)
    assert history == [(10,), (20,), (30,)]
    dump = tmp_path / "versioned.sql.gz"
    assert cli("claude-db", "export", str(dump)).code == 0
    assert cli("claude-db", "reset", "--yes").code == 0
    assert cli("claude-db", "undo").code == 0
    assert fetch(session, ALL_VERSIONS) == history
    assert cli("claude-db", "reset", "--yes").code == 0
    assert cli("claude-db", "import", str(dump)).code == 0
    assert fetch(session, ALL_VERSIONS) == history
    assert fetch(session, "SELECT amount FROM prices") == [(30,)]


def test_transaction_precise_versioning_still_dumps(
    cli: Cli, local_session: dict[str, str]
) -> None:
    """mariadb-dump cannot dump the history of tables versioned by transaction id, and
    refuses the whole dump if asked: such a database is dumped without history."""
    made = cli("claude-db", "query",
               "CREATE TABLE trx (id INT, s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START, "
               "e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END, PERIOD FOR SYSTEM_TIME(s, e)) "
               "WITH SYSTEM VERSIONING; INSERT INTO trx (id) VALUES (1); UPDATE trx SET id = 2")
    assert made.code == 0, made
    exported = cli("claude-db", "export", "-")
    assert exported.code == 0, exported
    assert cli("claude-db", "import", "--replace", "--yes", "-", input=exported.stdout).code == 0
    assert fetch(local_session, "SELECT id FROM trx") == [(2,)]


# -- 12.22: passwords and names ---------------------------------------------------------------


def test_a_non_ascii_password_authenticates(cli: Cli, workdir: Path, runtime: str) -> None:
    password = "pässwörd-✓-密码"
    name = f"fid-pw-{runtime}"
    started = cli("claude-session", "start", name, "--db", "mysql", "--runtime", runtime,
                  env={"CLAUDE_DB_PASSWORD": password, "CLAUDE_DB_IMAGE": DOCKER_IMAGE})
    try:
        assert started.code == 0, started
        env = read_env(workdir)
        assert env["MYSQL_PWD"] == password
        assert cli("claude-db", "status").code == 0
        assert cli("claude-db", "query", "CREATE TABLE t (x INT)").code == 0
        assert cli("claude-db", "import", "-", input="INSERT INTO t VALUES (1);\n").code == 0
        assert "INSERT INTO `t` VALUES" in cli("claude-db", "export", "-").stdout
        assert fetch(env, "SELECT x FROM t") == [(1,)]  # PyMySQL, given the password as UTF-8
        # and after a restart (on the local runtime the account is made again at start)
        assert cli("claude-session", "stop", name).code == 0
        assert cli("claude-session", "attach", name, "--no-shell").code == 0
        assert cli("claude-db", "status").code == 0
    finally:
        cli("claude-session", "delete", name, "--yes")


def test_a_database_named_like_an_option_is_dumped(
    cli: Cli, local_session: dict[str, str]
) -> None:
    assert cli("claude-db", "query", "CREATE DATABASE `-x`").code == 0
    assert cli("claude-db", "query", "CREATE TABLE `-x`.dashed (v INT)").code == 0
    exported = cli("claude-db", "export", "--database=-x", "-")
    assert exported.code == 0, exported
    assert "CREATE TABLE `dashed`" in exported.stdout
    # the all-or-nothing import dumps every database first, `-x` included
    failed = cli("claude-db", "import", "-", input="DROP DATABASE `-x`;\nSELEKT;\n")
    assert_one_line_error(failed, ExitCode.FAILED)
    assert "nothing was applied: line 2" in failed.stderr, failed
    assert tables(local_session, "-x") == ["dashed"]


# -- 14.5: physical snapshots (table files) on the local runtime ------------------------------

#: over tablespaces.MIN_BYTES (32 MiB): 40,000 rows of ~1 KB, a versioned table, a foreign key
PHYSICAL = """
CREATE TABLE owners (id INT PRIMARY KEY);
INSERT INTO owners VALUES (1), (2);
CREATE TABLE bulk (
  id INT AUTO_INCREMENT PRIMARY KEY, owner INT NOT NULL, payload VARCHAR(1000),
  FOREIGN KEY (owner) REFERENCES owners (id)
);
INSERT INTO bulk (owner, payload) SELECT 1 + seq % 2, REPEAT(SHA2(seq, 256), 15)
FROM seq_1_to_40000;
CREATE TABLE prices (id INT PRIMARY KEY, amount INT) WITH SYSTEM VERSIONING;
INSERT INTO prices VALUES (1, 10);
UPDATE prices SET amount = 20;
CREATE VIEW heavy AS SELECT owner, COUNT(*) AS n FROM bulk GROUP BY owner;
"""
BULK_SUM = "SELECT COUNT(*), SUM(CRC32(payload)), MAX(id) FROM bulk"


def snapshot_files(name: str) -> list[str]:
    root = Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "sessions" / LOCAL / "snapshots"
    return sorted(path.name for path in (root / name).iterdir())


def test_big_snapshots_are_table_files_and_keep_everything(
    cli: Cli, local_session: dict[str, str]
) -> None:
    assert cli("claude-db", "import", "-", input=PHYSICAL + COMMENTED.replace(
        "ON t FOR EACH ROW", "ON owners FOR EACH ROW").replace("SET NEW.x = NEW.x + 1",
        "SET NEW.id = NEW.id").replace("FROM t WHERE x < 0", "FROM owners WHERE id < 0")
    ).code == 0
    bulk = fetch(local_session, BULK_SUM)
    code = routine_code(local_session)
    counter = fetch(local_session, "SELECT AUTO_INCREMENT FROM information_schema.TABLES "
                                   "WHERE TABLE_SCHEMA = 'appdb' AND TABLE_NAME = 'bulk'")
    assert cli("claude-db", "snapshot", "save", "big").code == 0
    assert snapshot_files("big") == [
        "bulk.cfg", "bulk.ibd", "mysql.json", "owners.cfg", "owners.ibd", "prices.cfg",
        "prices.ibd", "schema.sql.gz", "snapshot.json", "tables.json", "tablespaces.json"]

    cli("claude-db", "query", "DELETE FROM bulk WHERE id < 100; UPDATE prices SET amount = 99")
    restored = cli("claude-db", "snapshot", "restore", "big")
    assert restored.code == 0, restored
    assert fetch(local_session, BULK_SUM) == bulk
    assert fetch(local_session, ALL_VERSIONS) == [(10,), (20,)]
    assert routine_code(local_session) == code
    assert fetch(local_session, "SELECT owner, n FROM heavy ORDER BY owner") == [
        (1, 20000), (2, 20000)]
    # the tables work on: the counter goes on where it was, the foreign key holds
    cli("claude-db", "query", "INSERT INTO bulk (owner, payload) VALUES (2, 'new')")
    assert fetch(local_session, "SELECT MAX(id) FROM bulk") == counter
    orphan = cli("claude-db", "query", "INSERT INTO bulk (owner) VALUES (3)")
    assert_one_line_error(orphan, ExitCode.FAILED)
    assert "foreign key constraint fails" in orphan.stderr, orphan
    assert fetch(local_session, "CHECK TABLE bulk, owners, prices")[-1][3] == "OK"

    # reset then undo: the automatic snapshot is table files too; a small one is a dump
    assert cli("claude-db", "reset", "--yes").code == 0
    assert tables(local_session) == []
    assert cli("claude-db", "undo").code == 0
    assert fetch(local_session, "SELECT COUNT(*) FROM bulk") == [(bulk[0][0] + 1,)]
    assert fetch(local_session, ALL_VERSIONS) == [(10,), (20,)]
    kinds = {snapshot["name"]: snapshot_files(snapshot["name"]) for snapshot in json.loads(
        cli("claude-db", "snapshot", "list", "--json").stdout)}
    # (the import's, taken before the tables were loaded, and the undo's: small)
    assert [name for name, files in kinds.items() if "dump.gz" in files] == [
        name for name in kinds if name.endswith(("-import", "-undo"))], kinds


def test_a_snapshot_never_waits_for_a_writer(cli: Cli, local_session: dict[str, str]) -> None:
    """A client's open write transaction would hold FLUSH TABLES ... FOR EXPORT until it
    ends: after a few seconds the snapshot is a dump instead (which does not wait)."""
    assert cli("claude-db", "import", "-", input=PHYSICAL).code == 0
    writer = connect(local_session)
    try:
        with writer.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("UPDATE owners SET id = id WHERE id = 1")
        saved = cli("claude-db", "snapshot", "save", "busy")
        assert saved.code == 0, saved
        assert snapshot_files("busy") == ["dump.gz", "mysql.json", "snapshot.json",
                                          "tables.json"]
    finally:
        writer.close()
    assert cli("claude-db", "snapshot", "save", "quiet").code == 0
    assert "tablespaces.json" in snapshot_files("quiet")

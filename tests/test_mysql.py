"""The MySQL engine (claude-db-mysql) against real MariaDB servers, through the installed CLIs.

Local cases run Debian's mariadbd; ``docker`` cases run the locally built
``claude-db-test/mariadb:10.11`` image (tests/images) on the docker runtime. What every
engine must do is in test_contract_mysql.py (the shared contract suite); this file holds
what is particular to MySQL: all-or-nothing imports although DDL commits at once, a
50,000-row round trip, the accounts of local servers, the ``mysql`` command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pytest

from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.testing import BIN, Cli, assert_one_line_error
from claude_db_mysql.dumps import SANDBOX_LINE, without_sandbox_line

DOCKER_IMAGE = "claude-db-test/mariadb:10.11"
RUNTIMES = ["local", pytest.param("docker", marks=pytest.mark.docker)]
#: the name of the local session (``local_session``, ``session`` on the local runtime)
LOCAL = "my-local"

BIG_ROWS = 50_000
MAKE_BIG = f"""
CREATE TABLE digits (d INT);
INSERT INTO digits VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9);
CREATE TABLE big (
    id INT PRIMARY KEY, name VARCHAR(100), amount DECIMAL(12, 2), created DATETIME,
    payload VARBINARY(32), note TEXT NULL
);
INSERT INTO big
SELECT n, CONCAT('name-', n, ' ünï ✓ ''q'' \\\\ "d"'), n * 1.25,
       DATE_ADD('2020-01-01', INTERVAL n MINUTE), UNHEX(SHA2(n, 256)),
       IF(n % 7 = 0, NULL, REPEAT('x', n % 50))
FROM (SELECT a.d + b.d * 10 + c.d * 100 + e.d * 1000 + f.d * 10000 AS n
      FROM digits a, digits b, digits c, digits e, digits f) numbers
WHERE n < {BIG_ROWS};
CREATE VIEW big_names AS SELECT id, name FROM big WHERE id < 10;
CREATE TRIGGER big_upper BEFORE INSERT ON big FOR EACH ROW SET NEW.name = UPPER(NEW.name);
CREATE PROCEDURE answer() SELECT 42 AS answer;
CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY DO DELETE FROM digits WHERE d > 100;
"""
BIG_CHECKSUM = (
    "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, name, amount, created, HEX(payload), "
    "IFNULL(note, '<null>')))) FROM big"
)


# -- helpers ------------------------------------------------------------------------------


def connect(env: dict[str, str], database: str | None = None) -> Any:
    """PyMySQL on the session's DATABASE_URL, as an application would."""
    url = urlsplit(env["DATABASE_URL"])
    return pymysql.connect(
        host=url.hostname, port=url.port, user=unquote(url.username or ""),
        password=unquote(url.password or "").encode(),  # UTF-8: PyMySQL's default is Latin-1
        database=database or unquote(url.path.lstrip("/")), autocommit=True, charset="utf8mb4",
    )


def fetch(env: dict[str, str], sql: str, database: str | None = None) -> list[tuple[Any, ...]]:
    with connect(env, database) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def tables(env: dict[str, str], database: str | None = None) -> list[str]:
    return sorted(row[0] for row in fetch(env, "SHOW FULL TABLES", database))


def databases(env: dict[str, str]) -> list[str]:
    return sorted(row[0] for row in fetch(env, "SHOW DATABASES"))


def stable(dump: bytes) -> list[bytes]:
    """A dump without the line that says when it was made."""
    return [line for line in dump.splitlines() if not line.startswith(b"-- Dump completed")]


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def session(cli: Cli, workdir: Path, runtime: str) -> Iterator[dict[str, str]]:
    """A mysql session in ``workdir`` on ``runtime``; its .env as a dict."""
    # Docker names are global: tests running at once on other workers need their own
    name = LOCAL if runtime == "local" else f"my-{runtime}-{uuid.uuid4().hex[:6]}"
    result = cli("claude-session", "start", name, "--db", "mysql", "--runtime", runtime,
                 env={"CLAUDE_DB_IMAGE": DOCKER_IMAGE})
    assert result.code == 0, result
    try:
        yield read_env(workdir)
    finally:
        deleted = cli("claude-session", "delete", name, "--yes")
        assert deleted.code == 0, deleted


@pytest.fixture
def local_session(cli: Cli, workdir: Path) -> Iterator[dict[str, str]]:
    result = cli("claude-session", "start", LOCAL, "--db", "mysql", "--runtime", "local")
    assert result.code == 0, result
    try:
        yield read_env(workdir)
    finally:
        cli("claude-session", "delete", LOCAL, "--yes")


# -- the commands ---------------------------------------------------------------------------


def test_environment_and_status(cli: Cli, session: dict[str, str], runtime: str) -> None:
    url = urlsplit(session["DATABASE_URL"])
    assert url.scheme == "mysql" and url.username == "root" and url.path == "/appdb"
    assert url.port == int(session["MYSQL_TCP_PORT"]) == int(session["DB_PORT"])
    assert session["MYSQL_HOST"] == session["DB_HOST"] == url.hostname
    assert session["MYSQL_PWD"] == session["DB_PASSWORD"] == unquote(url.password or "")
    assert (session["MYSQL_USER"], session["MYSQL_DATABASE"]) == ("root", "appdb")
    status = cli("claude-db", "status", "--json")
    assert status.code == 0, status
    assert json.loads(status.stdout)["version"].startswith("10.11"), status
    info = json.loads(cli("claude-db", "info", "--json").stdout)
    assert session["DB_PASSWORD"] not in json.dumps(info)
    assert info["engine"] == "mysql" and info["runtime"] == runtime
    # a mariadb:// URL alone (no session) is understood too
    elsewhere = cli("claude-db", "status", cwd=Path("/"),
                    env={"DATABASE_URL": session["DATABASE_URL"].replace("mysql://", "mariadb://")})
    assert elsewhere.code == 0 and elsewhere.stdout.startswith("ready: mysql"), elsewhere


def test_query_formats(cli: Cli, local_session: dict[str, str]) -> None:
    sql = "SELECT 1 AS n, 'a,b' AS s, NULL AS z UNION ALL SELECT 2, 'x', 'y' ORDER BY n"
    table = cli("claude-db", "query", sql)
    assert table.stdout.splitlines()[0].split("|")[0].strip() == "n", table
    assert "(2 rows)" in table.stderr
    assert json.loads(cli("claude-db", "query", sql, "--json").stdout) == [
        {"n": 1, "s": "a,b", "z": None},
        {"n": 2, "s": "x", "z": "y"},
    ]
    assert cli("claude-db", "query", sql, "--csv").stdout == 'n,s,z\n1,"a,b",\n2,x,y\n'
    made = cli("claude-db", "query", "CREATE TABLE q (x INT, d DECIMAL(5,2), t DATETIME, b BLOB)")
    assert made.stdout.strip() == "Query OK, 0 rows affected", made
    inserted = cli("claude-db", "query",
                   "INSERT INTO q VALUES (1, 2.50, '2024-05-01 12:00:00', X'00FF'), "
                   "(2, NULL, NULL, 'text')")
    assert inserted.stdout.strip() == "Query OK, 2 rows affected", inserted
    assert json.loads(cli("claude-db", "query", "SELECT * FROM q ORDER BY x", "--json").stdout) == [
        {"x": 1, "d": "2.50", "t": "2024-05-01 12:00:00", "b": "0x00ff"},
        {"x": 2, "d": None, "t": None, "b": "text"},
    ]
    # several statements: the last result with rows; a procedure's rows too; '%' is literal
    several = cli("claude-db", "query", "SET @a = 41; SELECT @a + 1 AS answer", "--csv")
    assert several.stdout == "answer\n42\n", several
    cli("claude-db", "query", "CREATE PROCEDURE p() SELECT '100%' AS pct")
    assert cli("claude-db", "query", "CALL p()", "--csv").stdout == "pct\n100%\n"
    bad = cli("claude-db", "query", "SELECT nosuch")
    assert_one_line_error(bad, ExitCode.FAILED)
    assert "ERROR 1054: Unknown column 'nosuch'" in bad.stderr, bad
    assert_one_line_error(cli("claude-db", "query", "SELECT 1", "--json", "--csv"), ExitCode.USAGE)


def test_mysql_command_and_shell(cli: Cli, local_session: dict[str, str]) -> None:
    current = cli("claude-db", "mysql", "-N", "-e", "SELECT CURRENT_USER(), DATABASE()")
    assert current.code == 0, current
    assert current.stdout.split() == ["root@%", "appdb"], current
    piped = cli("claude-db", "mysql", "-N", input="SELECT 'from stdin';\n")
    assert piped.stdout.strip() == "from stdin", piped
    shell = cli("claude-db", "shell", "-N", "-e", "SELECT 6 * 7")
    assert shell.code == 0 and shell.stdout.strip() == "42", shell
    other = cli("claude-db", "query", "CREATE DATABASE other")
    assert other.code == 0, other
    chosen = cli("claude-db", "mysql", "--database", "other", "-N", "-e", "SELECT DATABASE()")
    assert chosen.stdout.strip() == "other", chosen
    failing = cli("claude-db", "mysql", "-e", "SELECT nosuch")
    assert failing.code == 1 and "Unknown column" in failing.stderr, failing


def test_mysql_command_refuses_other_engines(cli: Cli, workdir: Path) -> None:
    started = cli("claude-session", "start", "pg-here", "--db", "postgres")
    assert started.code == 0, started
    try:
        refused = cli("claude-db", "mysql", "-e", "SELECT 1")
        assert_one_line_error(refused, ExitCode.USAGE)
        assert "uses postgres, not mysql" in refused.stderr
    finally:
        cli("claude-session", "delete", "pg-here", "--yes")


def test_native_variables_let_the_client_connect(cli: Cli, local_session: dict[str, str]) -> None:
    env = {**os.environ, **local_session}
    # the client reads MYSQL_HOST, MYSQL_TCP_PORT and MYSQL_PWD; user and database are given
    argv = ["mariadb", "-N", "-u", env["MYSQL_USER"], env["MYSQL_DATABASE"]]
    client = subprocess.run([*argv, "-e", "SELECT DATABASE()"], env=env, capture_output=True,
                            text=True)
    assert client.returncode == 0 and client.stdout.strip() == "appdb", client.stderr


def test_local_server_accepts_the_password_only(cli: Cli, local_session: dict[str, str]) -> None:
    record = json.loads(cli("claude-session", "list", "--json").stdout)
    # (the state directory is the worker's: other tests' sessions may be listed too)
    assert [s["engine"] for s in record if s["name"] == LOCAL] == ["mysql"]
    accounts = fetch(local_session, "SELECT User, Host FROM mysql.user WHERE User <> 'mariadb.sys'")
    assert sorted(accounts) == [("root", "%"), ("root", "localhost")]
    host, port = local_session["MYSQL_HOST"], int(local_session["MYSQL_TCP_PORT"])
    assert host == "127.0.0.1"
    for password in ("", "wrong"):
        with pytest.raises(pymysql.err.OperationalError) as denied:
            pymysql.connect(host=host, port=port, user="root", password=password)
        assert denied.value.args[0] == 1045
    # the socket too: its password was set with the TCP account's
    state = Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "sessions" / LOCAL / "session.json"
    socket_dir = json.loads(state.read_text())["runtime_state"]["socket_dir"]
    sock = str(Path(socket_dir) / "mysqld.sock")
    with pytest.raises(pymysql.err.OperationalError) as denied:
        pymysql.connect(unix_socket=sock, user="root", password="")
    assert denied.value.args[0] == 1045
    pymysql.connect(unix_socket=sock, user="root", password=local_session["MYSQL_PWD"]).close()
    # and only on 127.0.0.1: the server's own view of its addresses
    assert fetch(local_session, "SELECT @@bind_address, @@skip_name_resolve") == [("127.0.0.1", 1)]


def test_other_user_on_the_local_runtime(cli: Cli, workdir: Path) -> None:
    started = cli("claude-session", "start", "my-app", "--db", "mysql", "--runtime", "local",
                  env={"CLAUDE_DB_USER": "app", "CLAUDE_DB_NAME": "shop"})
    assert started.code == 0, started
    try:
        env = read_env(workdir)
        assert env["DATABASE_URL"].startswith("mysql://app:") and env["DB_NAME"] == "shop"
        assert fetch(env, "SELECT CURRENT_USER(), DATABASE()") == [("app@%", "shop")]
        # the session's user is the server's superuser: it creates databases; root is gone
        assert cli("claude-db", "query", "CREATE DATABASE shop_test").code == 0
        users = fetch(env, "SELECT DISTINCT User FROM mysql.user WHERE User <> 'mariadb.sys'")
        assert users == [("app",)]
    finally:
        cli("claude-session", "delete", "my-app", "--yes")


@pytest.mark.docker
def test_other_user_on_docker(cli: Cli, workdir: Path) -> None:
    """CLAUDE_DB_USER=app: the images' MYSQL_USER, with every privilege on its database only;
    imports and resets still work within those privileges, and root has the same password."""
    name = f"my-app-docker-{uuid.uuid4().hex[:6]}"
    started = cli("claude-session", "start", name, "--db", "mysql", "--runtime",
                  "docker", env={"CLAUDE_DB_USER": "app", "CLAUDE_DB_IMAGE": DOCKER_IMAGE})
    assert started.code == 0, started
    try:
        env = read_env(workdir)
        assert fetch(env, "SELECT CURRENT_USER()") == [("app@%",)]
        cli("claude-db", "query", "CREATE TABLE kept (x INT)")
        failed = cli("claude-db", "import", "-", input="CREATE TABLE half (x INT);\nSELEKT;\n")
        assert_one_line_error(failed, ExitCode.FAILED)
        assert tables(env) == ["kept"]
        assert cli("claude-db", "reset", "--yes").code == 0
        assert tables(env) == []
        denied = cli("claude-db", "query", "CREATE DATABASE other")
        assert_one_line_error(denied, ExitCode.FAILED)
        assert "Access denied" in denied.stderr
        url = urlsplit(env["DATABASE_URL"])
        root = pymysql.connect(host=url.hostname, port=url.port, user="root",
                               password=env["DB_PASSWORD"])
        root.close()
    finally:
        cli("claude-session", "delete", name, "--yes")


# -- dumps and imports ----------------------------------------------------------------------


def test_50k_rows_survive_export_reset_import(
    cli: Cli, session: dict[str, str], tmp_path: Path
) -> None:
    made = cli("claude-db", "import", "-", input=MAKE_BIG)
    assert made.code == 0, made
    before = fetch(session, BIG_CHECKSUM)
    assert before[0][0] == BIG_ROWS
    checksum = fetch(session, "CHECKSUM TABLE big")
    dump = tmp_path / "big.sql.gz"
    exported = cli("claude-db", "export", str(dump))
    assert exported.code == 0, exported
    first = cli("claude-db", "export", "-")

    reset = cli("claude-db", "reset", "--yes")
    assert reset.code == 0, reset
    assert tables(session) == []

    imported = cli("claude-db", "import", str(dump))
    assert imported.code == 0, imported
    assert fetch(session, BIG_CHECKSUM) == before
    assert fetch(session, "CHECKSUM TABLE big") == checksum
    assert tables(session) == ["big", "big_names", "digits"]
    assert fetch(session, "SELECT COUNT(*) FROM big_names") == [(10,)]
    assert [r[0] for r in fetch(session, "SHOW TRIGGERS")] == ["big_upper"]
    assert [r[1] for r in fetch(session, "SHOW EVENTS")] == ["nightly"]
    assert cli("claude-db", "query", "CALL answer()", "--csv").stdout == "answer\n42\n"
    # a dump of the imported database is the dump it was imported from
    again = cli("claude-db", "export", "-")
    assert stable(again.stdout.encode()) == stable(first.stdout.encode())


def test_mariadb_dumps_are_made_importable_by_mysqls_client(
    cli: Cli, local_session: dict[str, str]
) -> None:
    """mariadb-dump's first line is rejected by MySQL's client: it is blanked for that client
    (the docker runtime's default image is MySQL's; the local runtime runs MariaDB)."""
    cli("claude-db", "query", "CREATE TABLE t (x INT)")
    dump = cli("claude-db", "export", "-").stdout.encode()
    first, rest = dump.split(b"\n", 1)
    assert SANDBOX_LINE.match(first + b"\n"), first
    chunks = [dump[:7], dump[7:30], dump[30:]]
    assert b"".join(without_sandbox_line(chunks)) == b"\n" + rest  # line numbers kept
    assert b"".join(without_sandbox_line([rest])) == rest


def test_import_applies_nothing_when_a_statement_fails(
    cli: Cli, session: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("claude-db", "query", "CREATE TABLE kept (id INT PRIMARY KEY, v TEXT)")
    cli("claude-db", "query", "INSERT INTO kept VALUES (1, 'one'), (2, 'two')")
    cli("claude-db", "query", "CREATE DATABASE neighbour")
    cli("claude-db", "query", "CREATE TABLE neighbour.n (x INT)")
    cli("claude-db", "query", "INSERT INTO neighbour.n VALUES (7)")
    snapshot_dir = tmp_path / "tmp"
    snapshot_dir.mkdir()
    monkeypatch.setenv("TMPDIR", str(snapshot_dir))
    before = cli("claude-db", "export", "-").stdout

    script = tmp_path / "bad.sql"
    script.write_text(
        "CREATE TABLE half (x INT);\n"  # DDL: committed at once by the server
        "INSERT INTO half VALUES (1);\n"
        "INSERT INTO nowhere VALUES (2);\n"  # the third statement fails
        "INSERT INTO half VALUES (3);\n"
    )
    failed = cli("claude-db", "import", str(script))
    assert_one_line_error(failed, ExitCode.FAILED)
    assert "nothing was applied: line 3: ERROR 1146" in failed.stderr, failed
    assert tables(session) == ["kept"]
    assert stable(cli("claude-db", "export", "-").stdout.encode()) == stable(before.encode())

    # a file that changes other databases, creates one (a USE of it would be refused: see
    # test_mysql_fidelity.py), drops the session's table, then fails
    (tmp_path / "wide.sql").write_text(
        "DROP TABLE kept;\n"
        "INSERT INTO neighbour.n VALUES (8);\n"
        "CREATE DATABASE fresh;\nCREATE TABLE fresh.f (x INT);\nINSERT INTO fresh.f VALUES (1);\n"
        "SELEKT 1;\n"
    )
    wide = cli("claude-db", "import", str(tmp_path / "wide.sql"))
    assert_one_line_error(wide, ExitCode.FAILED)
    assert "line 6: ERROR 1064" in wide.stderr, wide
    assert "fresh" not in databases(session)
    assert fetch(session, "SELECT x FROM neighbour.n") == [(7,)]
    assert fetch(session, "SELECT id, v FROM kept ORDER BY id") == [(1, "one"), (2, "two")]
    assert list(snapshot_dir.iterdir()) == [], "the import's snapshot was left behind"

    # and a file that works is applied
    good = cli("claude-db", "import", "-", input="CREATE TABLE whole (x INT);\n")
    assert good.code == 0, good
    assert tables(session) == ["kept", "whole"]


def test_interrupted_import_is_rolled_back(cli: Cli, local_session: dict[str, str]) -> None:
    """Ctrl-C in the middle of an import: the client is stopped and the database put back."""
    proc = subprocess.Popen(
        [str(BIN / "claude-db"), "import", "--session", LOCAL, "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    # more than the 1 MiB core reads at a time, so the client gets (and runs) the start of it
    # while the import still waits for the rest
    head = b"CREATE TABLE started (x INT);\n" + b"INSERT INTO started VALUES (1);\n" * 40_000
    proc.stdin.write(head)
    proc.stdin.flush()
    hang_guard = time.monotonic() + 120  # not a speed check: only so a bug cannot hang the suite
    while "started" not in tables(local_session):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < hang_guard, "the import never applied its first statements"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert b"Traceback" not in err, err
    assert tables(local_session) == []


def test_bad_input(cli: Cli, local_session: dict[str, str], tmp_path: Path) -> None:
    assert_one_line_error(cli("claude-db", "status", "--session", "nosuch"), ExitCode.NO_SESSION)
    assert_one_line_error(cli("claude-db", "import", str(tmp_path / "missing.sql")), ExitCode.USAGE)
    broken = tmp_path / "broken.sql.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    assert_one_line_error(cli("claude-db", "import", str(broken)), ExitCode.FAILED)
    assert_one_line_error(cli("claude-db", "import", "-", input="USE nowhere;\n"), ExitCode.FAILED)
    unknown_db = cli("claude-db", "import", "--database", "nowhere", "-", input="SELECT 1;\n")
    assert_one_line_error(unknown_db, ExitCode.FAILED)
    assert "Unknown database 'nowhere'" in unknown_db.stderr
    assert tables(local_session) == []

    stopped = cli("claude-session", "stop", LOCAL)
    assert stopped.code == 0, stopped
    for argv in (("status",), ("query", "SELECT 1"), ("export", "-"), ("reset", "--yes"),
                 ("import", "-"), ("mysql", "-e", "SELECT 1"), ("shell",)):
        result = cli("claude-db", *argv, input="SELECT 1;\n")
        assert_one_line_error(result, ExitCode.NOT_RUNNING)
    # a URL whose server is gone: the same exit code, one line, from the driver or the tools
    url_only = {"DATABASE_URL": local_session["DATABASE_URL"], "CLAUDE_DB_AUTO_SNAPSHOTS": "0",
                "CLAUDE_DB_ALLOW_URL_DESTRUCTIVE": "true"}
    for argv in (("query", "SELECT 1"), ("export", "-"), ("import", "-"), ("reset", "--yes")):
        gone = cli("claude-db", *argv, cwd=Path("/"), env=url_only, input="SELECT 1;\n")
        assert_one_line_error(gone, ExitCode.NOT_RUNNING)


def test_reset_ends_connections_and_keeps_the_character_set(
    cli: Cli, local_session: dict[str, str]
) -> None:
    cli("claude-db", "query", "ALTER DATABASE appdb CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    cli("claude-db", "query", "CREATE TABLE locked (x INT)")
    holder = connect(local_session)
    with holder.cursor() as cur:  # an open transaction holds a metadata lock on the table
        cur.execute("BEGIN")
        cur.execute("SELECT * FROM locked")
    reset = cli("claude-db", "reset", "--yes")
    assert reset.code == 0, reset
    assert tables(local_session) == []
    charset = fetch(local_session, "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
                                   "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'appdb'")
    assert charset == [("latin1", "latin1_swedish_ci")]
    with pytest.raises(pymysql.err.OperationalError):
        holder.ping(reconnect=False)


def test_without_the_plugin_the_engine_is_missing(cli: Cli, state: Path) -> None:
    result = cli("claude-session", "start", "no-plugin", "--db", "mysql",
                 env={"CLAUDE_DB_DISABLE_PLUGINS": "mysql"})
    assert_one_line_error(result, ExitCode.USAGE)
    assert "engine 'mysql' is installed but not loaded" in result.stderr, result
    listed = json.loads(cli("claude-session", "list", "--json").stdout)
    assert listed == []

"""MySQL/MariaDB: reset, restore, undo and imports killed (SIGKILL) at their worst point.

MySQL has no transactional DDL: a reset is DROP then CREATE, an import's DDL commits
statement by statement. The CLI kills itself at a named step (``CLAUDE_DB_TEST_KILL_AT``,
``claude_db.faults``): after the DROP (``mysql-dropped``), or once the file was applied
and before anything is rolled back (``mysql-applied``). The next snapshot command or
``attach`` must find the database there again and say what happened, ``undo`` (or the
restore the note names) must bring the data back, and no copy of the data may be left in
the temporary directory. A real MariaDB on the local runtime.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pytest

from claude_db.envfile import read_env
from claude_db.testing import Cli
from claude_db.testing.safety import wait_for

KILLED = -signal.SIGKILL
ROWS = "SELECT COUNT(*) AS n, COALESCE(SUM(n), 0) AS total FROM t"
#: what a mysqldump of another copy of ``t`` looks like, with an error at its end: applied
#: up to there, its DROP and CREATE committed at once
IMPORTED = ("DROP TABLE IF EXISTS t;\nCREATE TABLE t (n INT);\nINSERT INTO t VALUES (7);\n"
            "INSERT INTO nowhere VALUES (1);\n")


@pytest.fixture
def session(cli: Cli) -> Iterator[str]:
    name = f"myf-{uuid.uuid4().hex[:6]}"
    started = cli("claude-session", "start", name, "--db", "mysql", "--runtime", "local")
    assert started.code == 0, started
    for statement in ("CREATE TABLE t (n INT)", "INSERT INTO t VALUES (1), (2), (3)",
                      "ALTER DATABASE appdb CHARACTER SET latin1 COLLATE latin1_swedish_ci"):
        made = cli("claude-db", "query", statement)
        assert made.code == 0, made
    yield name
    cli("claude-session", "delete", name, "--yes")


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> dict[str, str]:
    """TMPDIR of the killed commands: a directory of this test's own, to see what they
    leave there."""
    path = tmp_path / "tmp"
    path.mkdir()
    return {"TMPDIR": str(path)}


def rows(cli: Cli) -> Any:
    shown = cli("claude-db", "query", ROWS, "--json")
    assert shown.code == 0, shown
    return json.loads(shown.stdout)[0]


def charset(cli: Cli) -> str:
    shown = cli("claude-db", "query", "SELECT DEFAULT_COLLATION_NAME FROM "
                "information_schema.SCHEMATA WHERE SCHEMA_NAME = 'appdb'", "--json")
    assert shown.code == 0, shown
    found: str = json.loads(shown.stdout)[0]["DEFAULT_COLLATION_NAME"]
    return found


def killed_at(
    cli: Cli, workdir: Path, step: str, *argv: str, env: dict[str, str] | None = None
) -> None:
    """Run ``argv`` until it kills itself at ``step``; return once the server has seen its
    connections end (it tells a killed command from one under way by them)."""
    result = cli("claude-db", *argv, env={"CLAUDE_DB_TEST_KILL_AT": step, **(env or {})})
    assert result.code == KILLED, result  # it really got there, and died
    url = urlsplit(read_env(workdir)["DATABASE_URL"])
    with pymysql.connect(host=url.hostname, port=url.port or 3306,
                         user=unquote(url.username or ""),
                         password=unquote(url.password or "")) as conn, conn.cursor() as cur:

        def ended() -> bool:  # the session's own server: only claude-db connects to it
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> "
                        "CONNECTION_ID() AND USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")
            return cur.fetchone()[0] == 0

        wait_for("the killed command's connections to end", ended)


def reasons(cli: Cli) -> list[str]:
    shown = cli("claude-db", "snapshot", "list", "--json")
    assert shown.code == 0, shown
    return [snapshot["reason"] for snapshot in json.loads(shown.stdout)]


@pytest.mark.parametrize("next_command", ["snapshot", "attach"])
def test_a_reset_killed_between_drop_and_create_is_finished_then_undone(
    cli: Cli, session: str, workdir: Path, next_command: str
) -> None:
    before = rows(cli)
    killed_at(cli, workdir, "mysql-dropped", "reset", "--yes")
    if next_command == "attach":  # found missing at once (no waiting for it), made again
        finished = cli("claude-session", "attach", session, "--no-shell")
    else:
        finished = cli("claude-db", "snapshot", "list")
    assert finished.code == 0, finished
    assert "appdb was missing after an interrupted reset: made again, empty" in finished.stderr
    assert cli("claude-db", "status").code == 0
    assert charset(cli) == "latin1_swedish_ci"  # made again as it was
    undone = cli("claude-db", "undo")
    assert undone.code == 0, undone
    assert rows(cli) == before
    again = cli("claude-db", "snapshot", "list")  # said once: the command is finished
    assert again.code == 0 and "interrupted" not in again.stderr, again


@pytest.mark.parametrize("step", ["mysql-dropped", "mysql-applied"])
def test_an_undo_killed_midway_is_noted_and_its_restore_finishes_it(
    cli: Cli, session: str, workdir: Path, step: str, tmpdir_env: dict[str, str]
) -> None:
    before = rows(cli)
    assert cli("claude-db", "reset", "--yes").code == 0
    assert cli("claude-db", "query", "CREATE TABLE later (n INT)").code == 0
    listed = json.loads(cli("claude-db", "snapshot", "list", "--json").stdout)
    taken = next(s["name"] for s in listed if s["reason"] == "reset")
    killed_at(cli, workdir, step, "undo", env=tmpdir_env)
    noted = cli("claude-db", "snapshot", "list")
    assert noted.code == 0, noted
    assert (f"appdb was left part-restored by an interrupted restore of snapshot {taken}"
            in noted.stderr), noted
    assert f": claude-db snapshot restore {taken} finishes it" in noted.stderr
    finished = cli("claude-db", "snapshot", "restore", taken)
    assert finished.code == 0, finished
    assert rows(cli) == before
    assert charset(cli) == "latin1_swedish_ci"
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []  # no dump left behind


def test_an_import_killed_midway_is_noted_and_undone(
    cli: Cli, session: str, workdir: Path, tmpdir_env: dict[str, str]
) -> None:
    before = rows(cli)
    (workdir / "dump.sql").write_text(IMPORTED)
    killed_at(cli, workdir, "mysql-applied", "import", "dump.sql", env=tmpdir_env)
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []  # no dump left behind
    assert rows(cli) == {"n": 1, "total": "7"}  # what a kill leaves: the file's DDL committed
    noted = cli("claude-db", "snapshot", "list")
    assert noted.code == 0, noted
    assert ("an import into appdb was interrupted and may be part-applied (claude-db undo "
            "goes back to before it)") in noted.stderr, noted
    assert reasons(cli) == ["import"]  # taken before the import
    undone = cli("claude-db", "undo")
    assert undone.code == 0, undone
    assert rows(cli) == before


def test_an_import_that_fails_applies_nothing_and_leaves_its_snapshot_for_nothing(
    cli: Cli, session: str, workdir: Path, tmpdir_env: dict[str, str]
) -> None:
    before = rows(cli)
    (workdir / "dump.sql").write_text(IMPORTED)
    failed = cli("claude-db", "import", "dump.sql", env=tmpdir_env)
    assert failed.code == 1, failed
    assert failed.stderr.startswith("error: import failed, nothing was applied: line 4"), failed
    assert rows(cli) == before
    assert reasons(cli) == []  # the data is back: the copies add nothing
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []
    imported = cli("claude-db", "import", "-", input="INSERT INTO t VALUES (4);\n")
    assert imported.code == 0, imported
    assert "the previous data is in snapshot" in imported.stderr, imported
    assert cli("claude-db", "undo").code == 0  # a plain import is undone as --replace is
    assert rows(cli) == before


def test_an_import_replace_killed_midway_is_noted_and_undone(
    cli: Cli, session: str, workdir: Path, tmpdir_env: dict[str, str]
) -> None:
    before = rows(cli)
    (workdir / "dump.sql").write_text(IMPORTED)
    killed_at(cli, workdir, "mysql-applied", "import", "--replace", "--yes", "dump.sql",
              env=tmpdir_env)
    assert list(Path(tmpdir_env["TMPDIR"]).iterdir()) == []
    noted = cli("claude-db", "snapshot", "list")
    assert noted.code == 0, noted
    assert "an import into appdb was interrupted and may be part-applied" in noted.stderr, noted
    undone = cli("claude-db", "undo")
    assert undone.code == 0, undone
    assert rows(cli) == before

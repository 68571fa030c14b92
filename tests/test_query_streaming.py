"""``claude-db query`` streams (12.22): rows go from the server to the output as they are
read, so a million-row result takes no more memory than one row; small results print
exactly as before. Memory is the CLI's peak RSS, read by a parent of its own
(``RUSAGE_CHILDREN`` of a process whose only child is the CLI): a bound, not a timing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_db.errors import ExitCode
from claude_db.testing import BIN, Cli, assert_one_line_error, contract

pytestmark = pytest.mark.slow  # a million rows each: `./dev test --all` (CI) runs it

ROWS = 1_000_000


def peak_rss(workdir: Path, *argv: str) -> int:
    """The peak RSS (bytes) of ``claude-db ARGV`` run in ``workdir``."""
    return contract.peak_rss([str(BIN / "claude-db"), *argv], cwd=workdir)


@pytest.fixture
def postgres(cli: Cli, workdir: Path) -> Iterator[Path]:
    started = cli("claude-session", "start", "stream-pg")
    assert started.code == 0, started
    yield workdir
    cli("claude-session", "delete", "stream-pg", "--yes")


@pytest.fixture
def mariadb(cli: Cli, workdir: Path) -> Iterator[Path]:
    started = cli("claude-session", "start", "stream-my", "--db", "mysql", "--runtime", "local")
    assert started.code == 0, started
    yield workdir
    cli("claude-session", "delete", "stream-my", "--yes")


@pytest.mark.parametrize("output", ["--csv", "--json", "table"])
def test_a_million_postgres_rows_stream_in_bounded_memory(postgres: Path, output: str) -> None:
    flags = [] if output == "table" else [output]
    baseline = peak_rss(postgres, "query", "SELECT 1 AS n, repeat('x', 150) AS pad", *flags)
    big = peak_rss(postgres, "query", f"SELECT n, repeat('x', 150) AS pad "
                   f"FROM generate_series(1, {ROWS}) n", *flags)
    assert big - baseline < contract.STREAMING_BOUND, (baseline, big)


def test_a_million_mariadb_rows_stream_in_bounded_memory(mariadb: Path) -> None:
    # MariaDB's sequence engine: seq_1_to_N is a table of N rows
    baseline = peak_rss(mariadb, "query", "SELECT 1 AS n, REPEAT('x', 150) AS pad", "--csv")
    big = peak_rss(mariadb, "query", f"SELECT seq, REPEAT('x', 150) FROM seq_1_to_{ROWS}",
                   "--csv")
    assert big - baseline < contract.STREAMING_BOUND, (baseline, big)


#: a small result of every kind of value, and what each output format printed before rows
#: streamed (the same, byte for byte)
SMALL = ("SELECT n, CASE WHEN n = 2 THEN E'two\\nlines' END AS t, n::numeric / 3 AS q, "
         "n % 2 = 0 AS even, '{\"k\": [1, 2]}'::jsonb AS j, 'x' AS n, 1.5::float8 AS f, "
         "'NaN'::float8 AS nan, '{a,b}'::text[] AS arr FROM generate_series(1, 3) n")
SMALL_TABLE = """\
n | t     | q                      | even | j             | n | f   | nan | arr
--+-------+------------------------+------+---------------+---+-----+-----+-----------
1 |       | 0.33333333333333333333 | f    | {"k": [1, 2]} | x | 1.5 | NaN | ["a", "b"]
2 | two  +| 0.66666666666666666667 | t    | {"k": [1, 2]} | x | 1.5 | NaN | ["a", "b"]
  | lines |                        |      |               |   |     |     |
3 |       | 1.00000000000000000000 | f    | {"k": [1, 2]} | x | 1.5 | NaN | ["a", "b"]
"""
SMALL_CSV = """\
n,t,q,even,j,n,f,nan,arr
1,,0.33333333333333333333,f,"{""k"": [1, 2]}",x,1.5,NaN,"[""a"", ""b""]"
2,"two
lines",0.66666666666666666667,t,"{""k"": [1, 2]}",x,1.5,NaN,"[""a"", ""b""]"
3,,1.00000000000000000000,f,"{""k"": [1, 2]}",x,1.5,NaN,"[""a"", ""b""]"
"""


def test_small_results_print_as_before(cli: Cli, postgres: Path) -> None:
    table = cli("claude-db", "query", SMALL)
    assert (table.code, table.stdout) == (0, SMALL_TABLE), table
    assert table.stderr.endswith("(3 rows)\n"), table
    assert cli("claude-db", "query", SMALL, "--csv").stdout == SMALL_CSV
    as_json = cli("claude-db", "query", SMALL, "--json")
    rows = json.loads(as_json.stdout)
    assert as_json.stdout == json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    assert rows[1] == {"n": 2, "t": "two\nlines", "q": "0.66666666666666666667", "even": True,
                       "j": {"k": [1, 2]}, "n_2": "x", "f": 1.5, "nan": "NaN",
                       "arr": ["a", "b"]}
    # no rows: the header (table, CSV), [] (JSON); a command: the server's status
    empty = cli("claude-db", "query", "SELECT 1 AS a WHERE false")
    assert (empty.stdout, empty.stderr) == ("a\n-\n", "(0 rows)\n"), empty
    assert cli("claude-db", "query", "SELECT 1 AS a WHERE false", "--csv").stdout == "a\n"
    assert cli("claude-db", "query", "SELECT 1 AS a WHERE false", "--json").stdout == "[]\n"
    made = cli("claude-db", "query", "CREATE TABLE t (a int)")
    assert made.stdout == "CREATE TABLE\n", made
    # several statements: one transaction, the last one's result
    several = cli("claude-db", "query", "INSERT INTO t VALUES (1), (2); SELECT a FROM t "
                  "ORDER BY a; SELECT count(*) AS c FROM t", "--csv")
    assert several.stdout == "c\n2\n", several


def test_a_long_table_prints_in_aligned_blocks(cli: Cli, postgres: Path) -> None:
    """Aligned per 1000 rows: the header once, each block as wide as its values."""
    shown = cli("claude-db", "query", "SELECT n, repeat('x', n / 1000) AS pad "
                "FROM generate_series(1, 2500) n")
    lines = shown.stdout.splitlines()
    assert lines[:3] == ["n    | pad", "-----+----", "1    |"], lines[:3]
    assert lines[2 + 1000] == "1001 | x", lines[1000:1004]
    assert lines[2 + 2000] == "2001 | xx" and len(lines) == 2 + 2500, lines[-3:]
    assert shown.stderr == "(2500 rows)\n", shown


def test_an_error_while_rows_stream_is_one_line(cli: Cli, postgres: Path) -> None:
    """The server fails after sending rows: what came is printed, then one error line."""
    failed = cli("claude-db", "query", "SELECT n, 1 / (n - 5000) FROM generate_series(1, 9000) n",
                 "--csv")
    assert_one_line_error(failed, ExitCode.FAILED)
    assert "division by zero" in failed.stderr, failed
    copied = cli("claude-db", "query", "COPY (SELECT 1) TO STDOUT")
    assert_one_line_error(copied, ExitCode.FAILED)
    # the reader stopping early (a closed pipe) ends the query: no error, nothing left
    head = subprocess.run(f"{BIN / 'claude-db'} query 'SELECT generate_series(1, {ROWS})' "
                          "--csv | head -3", shell=True, cwd=postgres, capture_output=True,
                          text=True, timeout=300)
    assert head.stdout == "generate_series\n1\n2\n" and "Traceback" not in head.stderr, head


def test_a_statement_failing_while_it_runs_runs_once(cli: Cli, postgres: Path) -> None:
    """Review M8: only text the server refuses as several commands is sent again; a
    syntax error raised while running (dynamic SQL) after a nextval is not run twice."""
    for statement in ["CREATE SEQUENCE s",
                      "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS "
                      "$$ BEGIN EXECUTE 'SELEC 1'; RETURN 1; END $$"]:
        assert cli("claude-db", "query", statement).code == 0, statement
    failed = cli("claude-db", "query", "SELECT nextval('s'), f()")
    assert_one_line_error(failed, ExitCode.FAILED)
    assert "syntax error" in failed.stderr, failed
    last = cli("claude-db", "query", "SELECT last_value FROM s", "--csv")
    assert last.stdout == "last_value\n1\n", last


def test_mariadb_reader_stopping_early_ends_the_query(mariadb: Path) -> None:
    """Review M3: `query ... | head` hangs up instead of reading every row left (an
    unbuffered cursor's close would): a billion-row result ends with the reader."""
    head = subprocess.run(f"{BIN / 'claude-db'} query 'SELECT seq FROM seq_1_to_1000000000' "
                          "--csv | head -3", shell=True, cwd=mariadb, capture_output=True,
                          text=True, timeout=300)  # a hang guard, not a timing assertion
    assert head.stdout == "seq\n1\n2\n" and "Traceback" not in head.stderr, head

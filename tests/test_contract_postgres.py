"""The built-in PostgreSQL engine keeps the engine contract (claude_db.testing.EngineContract):
host binaries on the local runtime, the locally built test image on docker."""

from __future__ import annotations

import os
import random

import pytest

from claude_db.testing import ContractSession, EngineContract, QueryStreamingContract
from claude_db_postgres.engine import TransactionControl


class TestPostgresContract(QueryStreamingContract, EngineContract):
    engine_name = "postgres"
    runtimes = ("local", "docker")
    docker_image = os.environ.get("CLAUDE_DB_IMAGE") or "claude-db-test/postgres:15"
    big_query = "SELECT n, repeat('x', 150) AS pad FROM generate_series(1, 1000000) n"

    def test_query_prints_the_servers_text(self, contract_session: ContractSession) -> None:
        """The server's own text for values JSON has no type for, on each runtime's server."""
        sql = (
            "set datestyle to iso; set intervalstyle to postgres; "
            "select 1.50::numeric n, interval '36 hours' i, 'x'::bytea b, true t, "
            "date '2024-02-29' d, '{\"k\": [1]}'::jsonb j, 1e20::float8 f"
        )
        shown = contract_session.db("query", "--json", sql)
        assert shown.code == 0, shown
        assert shown.json() == [{"n": "1.50", "i": "36:00:00", "b": "\\x78", "t": True,
                                 "d": "2024-02-29", "j": {"k": [1]}, "f": 1e20}]
        csv = contract_session.db("query", "--csv", sql)
        assert csv.stdout.splitlines()[1] == '1.50,36:00:00,\\x78,t,2024-02-29,"{""k"": [1]}",1e+20'


def _scan(data: bytes, sizes: list[int], rng: random.Random) -> tuple[str, int] | None:
    control = TransactionControl()
    at = 0
    while at < len(data):
        size = rng.choice(sizes)
        control.scan(data[at : at + size])
        at += size
    control.finish()
    return control.found


@pytest.mark.parametrize(
    ("script", "found"),
    [
        (b"BEGIN;\nCREATE TABLE a(x int);\n  commit;\nSELECT 1/0;\n", ("COMMIT", 3)),
        (b"begin; create table a(x int); commit; select 1/0;\n", ("COMMIT", 1)),
        (b"\n\nselect 1;\\c other\n", ("\\c", 3)),
        (b"do $$ begin\n  if true then null;\n  END IF;\n  end  loop;\nend $$;\n", None),
        (b"do $$ begin\n  null;\nend;\n$$;\n", None),  # PL/pgSQL's END; as pg_dump writes it
        (b"select 1;\nEND work and chain;\n", ("END", 2)),
        (b"select 1;\n\\C title\n", None),  # psql's \C sets a title, \c reconnects
        (b"select 'end'; select ';commitment'; select 1 -- rollback\n", None),
        (b"end transaction;", ("END", 1)),
        (b"x\n" * 500 + b"\\connect other\n", ("\\connect", 501)),
        (b"x\n" * 500 + b"\\c other\n", ("\\c", 501)),
        (b"\\copy t from f\n\\conninfo\nrollback to savepoint s;\nending\nBEGIN;\ncommitted\n",
         None),
        (b"rollback  to s;\n" * 300 + b"\t ROLLBACK;\n", ("ROLLBACK", 301)),
        (b"y" * 5000 + b"\nprepare  transaction 'p';\n", ("PREPARE TRANSACTION", 2)),
        (b"a\n\n" + b" " * 40 + b"Abort", ("ABORT", 3)),
    ],
)
def test_transaction_control_lines_are_found_across_chunk_boundaries(
    script: bytes, found: tuple[str, int] | None
) -> None:
    """Wherever chunks cut the stream, the same first line is found, or none."""
    rng = random.Random(script)
    for sizes in ([1], [2, 3], [7, 64], [100, 1000], [1 << 20]):
        for _ in range(5):
            assert _scan(script, sizes, rng) == found, sizes

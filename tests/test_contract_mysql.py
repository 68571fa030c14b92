"""The MySQL engine keeps the engine contract (claude_db.testing.EngineContract), against
real MariaDB servers: Debian's mariadbd on the local runtime, and on docker the locally
built image that honours the official images' MYSQL_*/MARIADB_* environment
(tests/images/mariadb)."""

from __future__ import annotations

from claude_db.testing import EngineContract, QueryStreamingContract


class TestMySQLContract(QueryStreamingContract, EngineContract):
    engine_name = "mysql"
    runtimes = ("local", "docker")
    docker_image = "claude-db-test/mariadb:10.11"
    big_query = "SELECT seq, REPEAT('x', 150) AS pad FROM seq_1_to_1000000"  # MariaDB's

"""The MySQL engine keeps the engine contract (claude_db.testing.EngineContract), against
real MariaDB servers: Debian's mariadbd on the local runtime."""

from __future__ import annotations

from claude_db.testing import EngineContract


class TestMySQLContract(EngineContract):
    engine_name = "mysql"
    runtimes = ("local",)
    shell_input = "SELECT 40 + 2 AS answer;\n"

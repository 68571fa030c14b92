"""Running PostgreSQL as local processes: binaries, a cached cluster, the server command."""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import signal
import subprocess
from importlib.util import find_spec
from pathlib import Path

from claude_db import Credentials, LocalServer, RunAs
from claude_db.errors import ClaudeDbError, UsageError
from claude_db.processes import run_checked

# A session's database is throwaway: trade crash-durability for speed.
THROWAWAY_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "50",
    "log_min_messages": "warning",
}


#: the cluster's bootstrap superuser: claude-db's own, reached only through the server's
#: unix socket (in a 0700 directory of the server's OS user); it has no password
ADMIN_ROLE = "claude_admin"

#: who may log in how: the admin through the socket only, everyone else with a password
HBA = f"""# claude-db: {ADMIN_ROLE} through the private unix socket only; others need a password
local all {ADMIN_ROLE} trust
local all all scram-sha-256
host all {ADMIN_ROLE} 127.0.0.1/32 reject
host all all 127.0.0.1/32 scram-sha-256
"""


class PostgresLocalServer(LocalServer):
    """A session's server: the session's user owns its database and is no superuser (it
    runs no programs, reads no files and reaches no other server), unless ``superuser``."""

    admin_user = ADMIN_ROLE

    service_users = ("postgres",)
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back clients, then exit cleanly

    def bindir(self) -> Path:
        return self.pinned_bindir or find_bindir()

    def version(self) -> str:
        return server_version(self.bindir())

    def init_template(self, datadir: Path, credentials: Credentials, run_as: RunAs) -> None:
        if credentials.user == ADMIN_ROLE:
            raise UsageError(
                f"user {ADMIN_ROLE!r} is claude-db's own admin role on the local runtime; "
                "set CLAUDE_DB_USER to another name"
            )
        bindir = self.bindir()
        run_checked(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                ADMIN_ROLE,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            what="initdb",
            run_as=run_as,
            cwd=datadir.parent,
            env={"LC_ALL": "C.UTF-8"},
        )
        (datadir / "pg_hba.conf").write_text(HBA)
        with open(datadir / "postgresql.conf", "a") as conf:
            conf.write("\n# claude-db: a throwaway development server\n")
            for key, value in THROWAWAY_SETTINGS.items():
                conf.write(f"{key} = '{value}'\n")
        user, database = _quote(credentials.user), _quote(credentials.database)
        # CREATEDB (reset and snapshots drop and copy the database), never CREATEROLE: it
        # could grant itself pg_execute_server_program and the like
        powers = "SUPERUSER" if self.superuser else "NOSUPERUSER CREATEDB"
        statements = [f"CREATE ROLE {user} LOGIN {powers}"]
        if credentials.database in ("postgres", "template1"):
            statements.append(f"ALTER DATABASE {database} OWNER TO {user}")
        else:
            statements.append(f"CREATE DATABASE {database} OWNER {user}")
        # single-user mode: no server started; -j ends a statement at ";" and an empty line
        output = run_checked(
            [str(bindir / "postgres"), "--single", "-D", str(datadir), "-j", "postgres"],
            what="creating the session's user and database",
            run_as=run_as,
            cwd=datadir.parent,
            input="".join(f"{statement};\n\n" for statement in statements),
        )
        if "ERROR:" in output:
            detail = output.split("ERROR:", 1)[1].strip().splitlines()[0]
            raise ClaudeDbError(f"creating the session's user and database failed: {detail}")

    def server_argv(self, datadir: Path, port: int, socket_dir: Path) -> list[str]:
        return [
            str(self.bindir() / "postgres"),
            "-D",
            str(datadir),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={socket_dir}",
        ]

    copies_running = True

    def copy_running(
        self, source_datadir: Path, source_socket_dir: Path, source_port: int, datadir: Path
    ) -> str:
        # late, as psycopg below: it imports psycopg, which every command would pay for
        # (0.1-0.7 s); no import cycle
        from claude_db_postgres.fork import copy_running

        return copy_running(ADMIN_ROLE, source_datadir, source_socket_dir, source_port, datadir)

    def set_password(self, socket_dir: Path, port: int, credentials: Credentials) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=str(socket_dir),
            port=port,
            user=ADMIN_ROLE,
            dbname="postgres",
            connect_timeout=2,
            autocommit=True,
        ) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(credentials.user), sql.Literal(credentials.password)
                )
            )

    changes_password = True

    def change_password(
        self, socket_dir: Path, port: int, credentials: Credentials, previous: str
    ) -> None:
        self.set_password(socket_dir, port, credentials)  # as the admin: needs no password


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@functools.cache
def find_bindir() -> Path:
    """PostgreSQL's bin directory: pg_config/PATH, Debian's layout, or the pgserver wheel."""
    if override := os.environ.get("CLAUDE_DB_POSTGRES_BINDIR"):
        bindir = Path(override)
        if not ((bindir / "postgres").is_file() and (bindir / "initdb").is_file()):
            # what the user asked for, or a clear no: never quietly other binaries
            raise UsageError(f"CLAUDE_DB_POSTGRES_BINDIR={override} has no postgres and initdb")
        return bindir
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    if postgres := shutil.which("postgres"):
        candidates.append(Path(postgres).resolve().parent)
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p)],
        reverse=True,
    )
    candidates.extend(Path(p) for p in debian)
    candidates.extend(_wheel_bindirs())
    for bindir in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    raise ClaudeDbError(
        "no PostgreSQL server binaries found (looked at pg_config, PATH, /usr/lib/postgresql/*/bin "
        "and the pgserver wheel); install postgresql or `pip install pgserver`, "
        "or set CLAUDE_DB_POSTGRES_BINDIR"
    )


def _wheel_bindirs() -> list[Path]:
    spec = find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(loc) / "pginstall" / "bin" for loc in spec.submodule_search_locations]


@functools.cache
def server_version(bindir: Path) -> str:
    out = run_checked([str(bindir / "postgres"), "--version"], what="postgres --version")
    match = re.search(r"(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else out.strip()

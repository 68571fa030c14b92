"""PostgreSQL by hand: the raw baselines' clusters, queries, and what a server is."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from bench.system import (
    Workspace,
    free_port,
    parent_pid,
    postmaster_of,
    process_identity,
    run,
    service_user,
)

#: the first query of every start case: who answered, from which server
FIRST_QUERY = (
    "select current_user, current_database(), current_setting('server_version'), pg_backend_pid()"
)
USER = "postgres"
DATABASE = "appdb"


def bindir() -> Path:
    """The server binaries the product uses (the same discovery), so both sides match."""
    from claude_db_postgres.local import find_bindir

    return find_bindir()


def url(port: int, password: str, database: str = DATABASE, user: str = USER) -> str:
    return f"postgresql://{quote(user)}:{quote(password, safe='')}@127.0.0.1:{port}/{database}"


def first_query(conninfo: str, local: bool = True) -> dict[str, Any]:
    """Connect through a URL, run :data:`FIRST_QUERY`, and say who answered.

    For a local server, ``postmaster`` is the pid of the server process (the parent of
    the backend that answered, looked up while it still runs).
    """
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        row = conn.execute(FIRST_QUERY).fetchone()
        assert row is not None
        answer = {"user": row[0], "database": row[1], "version": row[2], "backend_pid": row[3]}
        if local:
            answer["postmaster"] = postmaster_pid(row[3])
    return answer


def postmaster_pid(backend_pid: int) -> int | None:
    try:
        return parent_pid(backend_pid)
    except (OSError, ValueError):
        return None


def server_of(answer: dict[str, Any]) -> dict[str, Any]:
    """The binary and OS user of the server that answered."""
    pid = answer.get("postmaster") or postmaster_pid(int(answer["backend_pid"]))
    try:
        return process_identity(int(pid)) if pid else {"exe": None, "user": None}
    except OSError:
        return {"exe": None, "user": None}


def scalar(conninfo: str, sql: str) -> Any:
    with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
        row = conn.execute(sql.encode()).fetchone()
    return row[0] if row else None


def row(conninfo: str, sql: str) -> tuple[Any, ...]:
    with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
        found = conn.execute(sql.encode()).fetchone()
    return tuple(found) if found else ()


def execute(conninfo: str, sql: str) -> None:
    with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
        conn.execute(sql.encode())


def native_env(conninfo: str) -> dict[str, str]:
    """``PG*`` variables for client tools, from a URL."""
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
             "dbname": "PGDATABASE"}
    return {env: str(info[key]) for key, env in names.items() if key in info}


def tools_env(conninfo: str) -> dict[str, str]:
    """This process's environment for a client tool, pointed at ``conninfo`` alone."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    return {**clean, **native_env(conninfo)}


@dataclass
class RawServer:
    """A server started by hand with ``pg_ctl``."""

    bindir: Path
    datadir: Path
    port: int
    url: str

    def postmaster(self) -> int:
        return postmaster_of(self.datadir)

    def stop(self, remove: bool = True) -> None:
        run([str(self.bindir / "pg_ctl"), "stop", "-m", "fast", "-D", str(self.datadir)],
            user=service_user(), cwd=self.datadir.parent, check=False)
        if remove:
            shutil.rmtree(self.datadir.parent, ignore_errors=True)


class RawCluster:
    """What a person does by hand: ``initdb`` once, then per server ``cp -a`` + ``pg_ctl start -w``.

    The template uses the same initdb options as the product's cached cluster (UTF8,
    C.UTF-8, scram-sha-256 over TCP, trust on the private socket) and PostgreSQL's own
    default settings: the product's throwaway settings are one of its own choices.
    """

    def __init__(self, ws: Workspace, bindir: Path, password: str) -> None:
        self.ws = ws
        self.bindir = bindir
        self.password = password
        home = ws.dir("raw-template", owner=service_user())
        self.template = home / "data"
        if not self.template.is_dir():
            self._init(home)

    def _init(self, home: Path) -> None:
        user = service_user()
        pwfile = home / "pwfile"
        pwfile.write_text(self.password + "\n")
        if user:
            shutil.chown(pwfile, user)
        run([str(self.bindir / "initdb"), "-D", str(self.template), "-U", USER,
             "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8",
             "--locale=C.UTF-8", f"--pwfile={pwfile}", "--no-sync"],
            user=user, cwd=home, env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"})
        pwfile.unlink()
        server = self._start(self.template, free_port())
        try:
            run([str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(server.port),
                 "-U", USER, DATABASE], env={"PGPASSWORD": self.password})
        finally:
            server.stop(remove=False)

    def start_copy(self, name: str) -> RawServer:
        """``cp -a`` the template and ``pg_ctl start -w`` it: the raw baseline's start."""
        home = self.ws.dir(name, owner=service_user())
        datadir = home / "data"
        run(["cp", "-a", str(self.template), str(datadir)])
        return self._start(datadir, free_port())

    def _start(self, datadir: Path, port: int) -> RawServer:
        sockets = datadir.parent
        options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sockets}"
        run([str(self.bindir / "pg_ctl"), "start", "-w", "-D", str(datadir),
             "-l", str(datadir.parent / "server.log"), "-o", options],
            user=service_user(), cwd=datadir.parent)
        return RawServer(self.bindir, datadir, port, url(port, self.password))

"""MariaDB as local processes: the host's mariadbd, a cached data directory, the server command.

The template (built once per version, user and database by core's local runtime) holds
the session's user twice: ``user@localhost`` for the unix socket, with no password
until :meth:`MariaDBLocalServer.set_password` sets the session's, and ``user@'%'`` for
TCP, whose template password is random and never kept. So from 127.0.0.1 the user gets
in with the session's password only; root's other accounts and anonymous users are gone.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from claude_db import Credentials, LocalServer, RunAs
from claude_db.errors import ClaudeDbError
from claude_db.processes import run_checked
from claude_db_mysql.sql import quote_ident, quote_literal

SOCKET_NAME = "mysqld.sock"
#: run by the server at every start (``--init-file``), beside the socket: the session's
#: account back as it was made, whatever SQL or an import did to the grant tables
ACCOUNTS_FILE = "claude-db-accounts.sql"
#: a session's server is throwaway: speed over crash-safety, and little memory. Given to
#: the template's bootstrap too (the redo log size and character set are set there).
THROWAWAY_OPTIONS = (
    "--skip-log-bin",
    "--innodb-flush-log-at-trx-commit=0",
    "--skip-innodb-doublewrite",
    "--innodb-buffer-pool-size=64M",
    "--innodb-log-file-size=16M",
    "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",  # not 12 MB written at every start
    "--loose-innodb-buffer-pool-load-at-startup=0",
    "--loose-innodb-buffer-pool-dump-at-shutdown=0",
    "--character-set-server=utf8mb4",
)
#: where to look for mariadbd besides PATH (Debian and RPM layouts)
SERVER_DIRS = ("/usr/sbin", "/usr/libexec", "/usr/local/sbin", "/usr/local/bin")


class MariaDBLocalServer(LocalServer):
    service_users = ("mysql",)
    stop_signal = signal.SIGTERM  # mariadbd shuts down cleanly on SIGTERM

    def bindir(self) -> Path:
        return self.server().parent

    def version(self) -> str:
        return server_version(self.server())

    def server(self) -> Path:
        """The server binary: the session's recorded one (``pinned_bindir``), else found."""
        if self.pinned_bindir is not None:
            for name in ("mariadbd", "mysqld"):
                if (self.pinned_bindir / name).is_file():
                    return self.pinned_bindir / name
            return self.pinned_bindir / "mariadbd"  # gone: the runtime says what to do
        return find_server()

    def init_template(self, datadir: Path, credentials: Credentials, run_as: RunAs) -> None:
        script = datadir.parent / "claude-db-init.sql"
        script.write_text(init_sql(credentials))
        os.chmod(script, 0o600)
        if os.geteuid() == 0:
            os.chown(script, run_as.uid, run_as.gid)
        run_checked(
            [
                str(find_install_db()), "--no-defaults", f"--datadir={datadir}",
                "--auth-root-authentication-method=normal", "--skip-test-db",
                "--skip-name-resolve", f"--extra-file={script}", *THROWAWAY_OPTIONS,
            ],
            what="mariadb-install-db",
            run_as=run_as,
            cwd=datadir.parent,
        )

    def server_argv(self, datadir: Path, port: int, socket_dir: Path) -> list[str]:
        argv = [
            str(self.server()), "--no-defaults",  # nothing from the host's my.cnf
            f"--datadir={datadir}", f"--port={port}", "--bind-address=127.0.0.1",
            f"--socket={socket_dir / SOCKET_NAME}", f"--pid-file={socket_dir / 'mariadbd.pid'}",
            "--skip-name-resolve", *THROWAWAY_OPTIONS,
            # LOAD DATA INFILE, SELECT ... INTO OUTFILE and LOAD_FILE() reach no file
            # outside the session's own private directory
            f"--secure-file-priv={socket_dir}",
            # temporary tables and sort files too: not in the shared /tmp, where other
            # local users could read them and a /tmp cleaner removes them mid-query
            f"--tmpdir={socket_dir}",
        ]
        if (accounts := socket_dir / ACCOUNTS_FILE).exists():  # not before set_password
            argv.append(f"--init-file={accounts}")
        return argv

    def set_password(self, socket_dir: Path, port: int, credentials: Credentials) -> None:
        import pymysql

        def connect(password: str) -> Any:
            return pymysql.connect(
                unix_socket=str(socket_dir / SOCKET_NAME), user=credentials.user,
                password=password.encode(), connect_timeout=2, autocommit=True,
            )

        try:
            conn = connect("")
        except pymysql.err.OperationalError as exc:
            if not (exc.args and exc.args[0] == 1045):
                raise
            connect(credentials.password).close()  # access denied: an earlier try set it
        else:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "ALTER USER %s@'localhost' IDENTIFIED BY %s, %s@'%%' IDENTIFIED BY %s",
                    (credentials.user, credentials.password) * 2,
                )
        write_private(socket_dir / ACCOUNTS_FILE, accounts_sql(credentials), owner=socket_dir)

    changes_password = True

    def change_password(
        self, socket_dir: Path, port: int, credentials: Credentials, previous: str
    ) -> None:
        import pymysql

        # the server (re)started with the accounts file, so with ``previous``; the new
        # password already if an earlier try got as far as ALTER USER
        for password in (previous, credentials.password):
            try:
                conn = pymysql.connect(
                    unix_socket=str(socket_dir / SOCKET_NAME), user=credentials.user,
                    password=password.encode(), connect_timeout=2, autocommit=True,
                )
            except pymysql.err.OperationalError as exc:
                if exc.args and exc.args[0] == 1045:  # access denied: try the other
                    continue
                raise
            with conn, conn.cursor() as cur:
                cur.execute(
                    "ALTER USER %s@'localhost' IDENTIFIED BY %s, %s@'%%' IDENTIFIED BY %s",
                    (credentials.user, credentials.password) * 2,
                )
            # the next start's accounts file: else it would bring the old password back
            write_private(socket_dir / ACCOUNTS_FILE, accounts_sql(credentials), owner=socket_dir)
            return
        raise ClaudeDbError(f"neither the old nor the new password of {credentials.user!r} "
                            "logs in through the socket")


def init_sql(credentials: Credentials) -> str:
    """What the template's bootstrap runs after the system tables are made."""
    user = quote_literal(credentials.user)
    statements = [
        "FLUSH PRIVILEGES",  # bootstrap starts without grant tables: account statements need them
        "DELETE FROM mysql.global_priv WHERE User = ''",
        "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1'",
        "EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@', QUOTE(@@hostname))",
        "FLUSH PRIVILEGES",
    ]
    if credentials.user != "root":
        statements.append("DROP USER IF EXISTS 'root'@'localhost'")  # the user is the superuser
    # a throwaway password: TCP logins fail until set_password sets the session's
    import secrets  # late: secrets loads hashlib (OpenSSL), a cost every command would pay
    unusable = quote_literal(secrets.token_urlsafe(24))
    statements += [
        f"CREATE USER IF NOT EXISTS {user}@'localhost'",
        f"CREATE USER IF NOT EXISTS {user}@'%' IDENTIFIED BY {unusable}",
        f"GRANT ALL PRIVILEGES ON *.* TO {user}@'localhost' WITH GRANT OPTION",
        f"GRANT ALL PRIVILEGES ON *.* TO {user}@'%' WITH GRANT OPTION",
        f"CREATE DATABASE IF NOT EXISTS {quote_ident(credentials.database)}",
    ]
    return "".join(f"{statement};\n" for statement in statements)


def accounts_sql(credentials: Credentials) -> str:
    """The session's two accounts with its password and every privilege (``--init-file``)."""
    user, password = quote_literal(credentials.user), quote_literal(credentials.password)
    accounts = [f"{user}@'localhost'", f"{user}@'%'"]
    statements = [f"CREATE USER IF NOT EXISTS {account}" for account in accounts]
    statements.append("ALTER USER " + ", ".join(
        f"{account} IDENTIFIED BY {password}" for account in accounts) + " ACCOUNT UNLOCK")
    statements += [f"GRANT ALL PRIVILEGES ON *.* TO {account} WITH GRANT OPTION"
                   for account in accounts]
    return "".join(f"{statement};\n" for statement in statements)


def write_private(path: Path, text: str, *, owner: Path) -> None:
    """Write ``text`` to ``path`` readable by the owner of ``owner`` only."""
    # the directory is the server user's: never through a link it may have put there
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        if os.geteuid() == 0:
            info = owner.stat()
            os.fchown(out.fileno(), info.st_uid, info.st_gid)


@functools.cache
def find_server() -> Path:
    """The MariaDB server binary: $CLAUDE_DB_MYSQL_BINDIR, PATH, then the usual directories."""
    candidates: list[Path] = []
    if override := os.environ.get("CLAUDE_DB_MYSQL_BINDIR"):
        candidates += [Path(override) / "mariadbd", Path(override) / "mysqld"]
    for name in ("mariadbd", "mysqld"):
        if found := shutil.which(name):
            candidates.append(Path(found))
        candidates += [Path(directory) / name for directory in SERVER_DIRS]
    not_mariadb: list[str] = []
    for path in candidates:
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        if "MariaDB" in _version_text(path):
            return path
        not_mariadb.append(str(path))
    if not_mariadb:
        raise ClaudeDbError(
            f"{not_mariadb[0]} is MySQL's server, and the local runtime runs MariaDB only; "
            "install mariadb-server or use --runtime docker"
        )
    raise ClaudeDbError(
        "no MariaDB server binaries found (looked for mariadbd/mysqld on PATH and in "
        f"{', '.join(SERVER_DIRS)}); install mariadb-server (Debian: apt-get install "
        "mariadb-server mariadb-client), set CLAUDE_DB_MYSQL_BINDIR, or use --runtime docker"
    )


def find_install_db() -> Path:
    server = find_server()
    prefix = server.parent.parent
    for directory in (server.parent, prefix / "bin", prefix / "scripts"):
        for name in ("mariadb-install-db", "mysql_install_db"):
            if (directory / name).is_file():
                return directory / name
    for name in ("mariadb-install-db", "mysql_install_db"):
        if found := shutil.which(name):
            return Path(found)
    raise ClaudeDbError(f"mariadb-install-db not found next to {server} or on PATH")


@functools.cache
def server_version(server: Path) -> str:
    """``10.11.19`` from ``mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu``."""
    text = _version_text(server)
    match = re.search(r"Ver\s+(\d+\.\d+\.\d+)", text)
    return match.group(1) if match else text.strip()


@functools.cache
def _version_text(server: Path) -> str:
    try:
        return run_checked([str(server), "--version"], what=f"{server.name} --version")
    except ClaudeDbError:
        return ""

"""The local runtime: database servers as local processes from host binaries.

Per session: ``<state>/sessions/<name>/server/`` holds the data directory (a copy
of a cached, initialised template), the server log and usually the unix socket.
After each start a spare copy is made in the background, so the next start only
renames it instead of waiting for the copy.
The server listens on 127.0.0.1 only, on a port chosen at creation and kept
across restarts (unless another program took it meanwhile). As root, servers run as an
unprivileged user, and the cached templates belong to root: a server cannot change them.
A server always runs the binaries its session was created with, in a minimal environment.
Linux only: it tells its servers apart by process identities (see ``claude_db.processes``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from claude_db.engine import Credentials, Endpoint, Engine, LocalServer, RunAs, Tools
from claude_db.errors import ClaudeDbError, NotRunningError, UsageError
from claude_db.faults import checkpoint
from claude_db.locks import hold, lock_for, try_hold_for_child
from claude_db.ports import claim_port, keep_port
from claude_db.processes import (
    HostTools,
    is_running,
    process_cmdline,
    process_exists,
    process_identity,
    read_log_tail,
    run_checked,
    spawn_daemon,
)
from claude_db.readiness import poll_until, wait_until
from claude_db.runtime import Orphan, Runtime, Status
from claude_db.runtimes.local.leftovers import (
    SOCKET_DIR_PREFIX,
    remove_socket_dir,
    session_leftovers,
)
from claude_db.session import Session, SessionStore
from claude_db.urls import new_password

SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for the socket's own file name
LOG_TAIL_LINES = 5
SPARE_SUFFIX = ".spare"  # a ready copy of a template, beside it, for the next session
SERVER_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT = RunAs(0, 0, "root")


class LocalRuntime(Runtime):
    name = "local"
    auto_priority = 0
    cheap_leftovers = True  # pid files in the state directory

    @property
    def store(self) -> SessionStore:
        return SessionStore(self.settings.state_dir)

    def cannot_create(self, engine: Engine, image: str) -> str | None:
        """The engine runs no local server, or its binaries are not found."""
        try:
            _local_server(engine)
        except ClaudeDbError as exc:
            return str(exc)
        return None

    # -- lifecycle ------------------------------------------------------------------------

    def create(self, session: Session, engine: Engine) -> None:
        self._create(session, engine, None)

    def create_copy(self, session: Session, engine: Engine, source: Session) -> str | None:
        server = _recorded_server(source, engine)
        if not server.copies_running:
            return None
        state = source.runtime_state
        # the copy's files need the source's binaries, and its user is what the source's is
        session.runtime_state = {"superuser": bool(state.get("superuser")),
                                 "bindir": state.get("bindir")}
        try:
            return self._create(session, engine, lambda datadir: server.copy_running(
                Path(state["datadir"]), Path(state["socket_dir"]), state["port"], datadir))
        except ClaudeDbError as exc:
            if details := self.failure_details(source):  # the source's server died meanwhile
                raise ClaudeDbError(f"{exc}; session {source.name}'s {details}") from None
            raise

    def _create(
        self, session: Session, engine: Engine, fill: Callable[[Path], str] | None
    ) -> str | None:
        """``create``; ``fill`` makes the data directory instead of a template's copy, and
        says how (returned)."""
        assert session.credentials is not None
        server = _local_server(engine)
        # asked for by start_session (--superuser), before the rest of the state exists
        server.superuser = bool(session.runtime_state.get("superuser"))
        if bindir := session.runtime_state.get("bindir"):
            server.pinned_bindir = Path(bindir)
        run_as = service_identity(server)
        server_dir = self.store.directory(session.name) / "server"
        server_dir.mkdir(mode=0o700)
        _chown(server_dir, run_as)
        datadir = server_dir / "data"
        template, method = None, None
        if fill is not None:
            method = fill(datadir)
        else:
            template = self._template(engine.name, server, session.credentials, run_as)
            if not _claim_spare(template, datadir):
                # cp -a keeps ownership and modes (the server insists on a 0700 data directory)
                run_checked(
                    ["cp", "-a", "--reflink=auto", str(template), str(datadir)],
                    what="copy cluster",
                )
        # the template and its spare are root's (a server could change a spare of its own
        # before the next session claims it): only the session's copy is the server's
        _chown_tree(datadir, run_as)
        socket_dir = _socket_dir(server_dir, run_as)
        session.runtime_state = {
            "port": claim_port(self.settings.state_dir, session.name),
            "bindir": str(server.bindir()),
            "version": server.version(),
            "datadir": str(datadir),
            "socket_dir": str(socket_dir),
            "log": str(server_dir / "server.log"),
            "run_as": run_as.name,
            "superuser": server.superuser,
        }
        self._spawn(session, server, run_as)
        port, sockets = session.runtime_state["port"], Path(session.runtime_state["socket_dir"])
        poll_until(
            lambda: server.set_password(sockets, port, session.credentials),  # type: ignore[arg-type]
            timeout=self.settings.ready_timeout,
            failure=lambda: self.failure_details(session),
            what=f"{engine.name} server",
        )
        if template is not None:
            _prepare_spare(template)  # the next session's copy, made while nobody waits for it
        return method

    def kept_record(self, session: Session) -> dict[str, Any] | None:
        kept = session.runtime_state.get("kept_data")
        return {"path": kept} if kept else None

    def remove_kept(self, record: Mapping[str, Any]) -> None:
        """Only a directory right under ``<state>/kept`` (never a link) goes."""
        path = Path(str(record["path"]))
        kept = (self.settings.state_dir / "kept").resolve()
        if path.parent.resolve() != kept or path.is_symlink():
            raise ClaudeDbError(f"{path} is not in {kept}: left alone")
        shutil.rmtree(path, ignore_errors=True)

    def start(self, session: Session, engine: Engine) -> None:
        if self.status(session) != "running":
            self._start_stopped(session, engine)
            checkpoint("local-started")
        if previous := session.runtime_state.get("previous_password"):
            self._change_password(session, engine, previous)

    def _start_stopped(self, session: Session, engine: Engine) -> None:
        state = session.runtime_state
        if not Path(state["datadir"]).is_dir():
            raise NotRunningError(f"the data directory of session {session.name!r} is gone")
        server = _recorded_server(session, engine)
        if not (port_is_free(state["port"])
                and keep_port(self.settings.state_dir, state["port"], session.name)):
            # our server is not running, so another program listens there (maybe one that
            # waited for our clients' passwords, and got one), or another start claimed it.
            # Move away with a new password (saved with the port by _spawn, set by start);
            # ensure_running rewrites .env.
            state["port"] = claim_port(self.settings.state_dir, session.name)
            # (a fixed CLAUDE_DB_PASSWORD is everyone's already, and stays as set)
            if (server.changes_password and session.credentials is not None
                    and session.credentials.password != self.settings.password):
                state.setdefault("previous_password", session.credentials.password)
                session.credentials = replace(session.credentials, password=new_password())
        if state.get("pid"):
            # a killed server stays a zombie until init reaps it, and the server refuses to
            # start while the pid in its lock file exists: give init a moment
            _wait_until_reaped(state["pid"], state["datadir"], timeout=5)
        run_as = _identity_named(state["run_as"])
        if not _private_dir(Path(state["socket_dir"]), run_as):  # e.g. /tmp was emptied
            state["socket_dir"] = str(_socket_dir(Path(state["datadir"]).parent, run_as))
        self._spawn(session, server, run_as)

    def _change_password(self, session: Session, engine: Engine, previous: str) -> None:
        state, credentials = session.runtime_state, session.credentials
        assert credentials is not None
        server = _recorded_server(session, engine)
        poll_until(
            lambda: server.change_password(Path(state["socket_dir"]), state["port"],
                                           credentials, previous),
            timeout=self.settings.ready_timeout,
            failure=lambda: self.failure_details(session),
            what=f"{engine.name} server",
        )
        del state["previous_password"]
        self.store.save(session)

    def stop(self, session: Session, engine: Engine) -> None:
        pid = session.runtime_state.get("pid")
        if not pid or not self._alive(session):
            return
        server = _local_server(engine, require_binaries=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, server.stop_signal if server else signal.SIGTERM)
        if not _wait_for_exit(pid, timeout=30):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_for_exit(pid, timeout=10)

    def delete(self, session: Session, engine: Engine, *, keep_data: bool) -> None:
        self.stop(session, engine)
        state = session.runtime_state
        remove_socket_dir(self.store.directory(session.name) / "server", state.get("socket_dir"))
        if keep_data and state.get("datadir"):
            moved = state.get("kept_data")
            if moved and Path(moved).is_dir() and not Path(state["datadir"]).exists():
                return  # a delete cut short moved it already
            kept = _unused(self.settings.state_dir / "kept" / f"{session.name}-{int(time.time())}")
            kept.parent.mkdir(parents=True, exist_ok=True)
            state["kept_data"] = str(kept)
            self.store.save(session)  # where the data goes is on record before it goes
            try:  # a rename never moves into a directory there (shutil.move would nest it)
                os.rename(state["datadir"], kept)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.move(state["datadir"], kept)  # another filesystem: copied

    def status(self, session: Session) -> Status:
        if not session.runtime_state.get("datadir"):
            return "missing"
        if not Path(session.runtime_state["datadir"]).is_dir():
            return "missing"
        return "running" if self._alive(session) else "stopped"

    def failure_details(self, session: Session) -> str | None:
        if self._alive(session):
            return None
        return f"server exited; last log lines: {log_tail(Path(session.runtime_state['log']))}"

    def leftovers(self, state_dir: Path) -> dict[str, list[Orphan]]:
        return session_leftovers(state_dir)

    # -- access ---------------------------------------------------------------------------

    def endpoint(self, session: Session, engine: Engine) -> Endpoint:
        assert session.credentials is not None
        return Endpoint("127.0.0.1", session.runtime_state["port"], session.credentials)

    def tools(self, session: Session, engine: Engine, database: str | None = None) -> Tools:
        state = session.runtime_state
        admin = None
        server = engine.local_server()
        if server is not None and server.admin_user is not None:
            assert session.credentials is not None
            # the server's superuser through its unix socket: the session's user may not
            # create roles
            admin = Endpoint(state["socket_dir"], state["port"],
                             Credentials(server.admin_user, "", session.credentials.database))
        # the server's own bin directory: client tools always match the server's version
        return HostTools(self.endpoint(session, engine).with_database(database),
                         Path(state["bindir"]), admin_endpoint=admin)

    # -- internals ------------------------------------------------------------------------

    def _spawn(self, session: Session, server: LocalServer, run_as: RunAs) -> None:
        state = session.runtime_state
        datadir = Path(state["datadir"])
        argv = server.server_argv(datadir, state["port"], Path(state["socket_dir"]))
        state["pid"] = spawn_daemon(
            argv, log=Path(state["log"]), run_as=run_as, cwd=datadir, env=server_env()
        )
        state["pid_identity"] = process_identity(state["pid"])  # the pid may be reused later
        self.store.save(session)  # the pid must survive us, whatever happens next

    def _alive(self, session: Session) -> bool:
        pid: int | None = session.runtime_state.get("pid")
        identity = session.runtime_state.get("pid_identity")  # None: recorded by an older version
        return (pid is not None and identity in (None, process_identity(pid))
                and _is_our_server(pid, session.runtime_state["datadir"]))

    def _template(
        self, engine_name: str, server: LocalServer, credentials: Credentials, run_as: RunAs
    ) -> Path:
        """An initialised data directory, built once per (binaries, user, database, whether
        the user is a superuser) and cached. As root, it belongs to root: servers cannot
        change it (the next sessions' copies), whatever their SQL may do."""
        # "owner": the user owns its database and is no superuser (before, every template
        # made it a superuser: those are never used for new sessions)
        role = "superuser" if server.superuser else "owner"
        import hashlib  # late: hashlib loads OpenSSL, a cost every command would pay
        key = hashlib.sha256(
            f"{server.bindir()}|{credentials.user}|{credentials.database}|{run_as.name}|{role}"
            .encode()
        ).hexdigest()[:12]
        root = self.settings.state_dir / "templates"
        template = root / f"{engine_name}-{server.version()}-{key}"
        if template.is_dir():
            return template
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o711)
        with hold(lock_for(root), "the server template cache"):
            if template.is_dir():  # another process built it while we waited
                return template
            building = root / f".{template.name}.{os.getpid()}"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(mode=0o700)
            _chown(building, run_as)
            try:
                server.init_template(building / "data", credentials, run_as)
                _chown_tree(building / "data", ROOT)
                os.rename(building / "data", template)
            finally:
                shutil.rmtree(building, ignore_errors=True)
        return template


def _spare(template: Path) -> Path:
    return template.with_name(template.name + SPARE_SUFFIX)


def _claim_spare(template: Path, datadir: Path) -> bool:
    """Move the ready copy of ``template`` to ``datadir``: a start without the copy's wait.

    False when there is none (the first start, or another start took it): copy then.
    """
    try:
        os.rename(_spare(template), datadir)
    except OSError:
        return False
    return True


def _prepare_spare(template: Path) -> None:
    """Copy ``template`` in the background for the next session to claim.

    Detached and niced, under the templates lock (so gc leaves the half-made copy
    alone, and two starts never make two); skipped if a spare is ready or being made.
    """
    spare = _spare(template)
    nice = shutil.which("nice")
    if spare.exists() or not nice:
        return
    building = template.parent / f".{spare.name}.{os.getpid()}"
    script = '[ -e "$3" ] || { cp -a --reflink=auto "$1" "$2" && mv -T "$2" "$3"; }; rm -rf "$2"'
    argv = [nice, "-n", "10", "sh", "-c", script, "sh", str(template), str(building), str(spare)]
    with contextlib.suppress(OSError), try_hold_for_child(lock_for(template.parent)) as lock:
        if lock is not None:  # else another start makes a spare, or gc sweeps: skip
            spawn_daemon(argv, log=None, run_as=None, cwd=template.parent, env=server_env(),
                         pass_fds=[lock])


def _local_server(engine: Engine, require_binaries: bool = True) -> LocalServer:
    server = engine.local_server()
    if server is None:
        raise UsageError(engine.local_unavailable_reason())
    if require_binaries:
        server.bindir()  # raises a clear error when no binaries are found
    return server


def _recorded_server(session: Session, engine: Engine) -> LocalServer:
    """The session's server with the binaries it was created with: its data may be
    unreadable for others (PostgreSQL's files are per major version)."""
    state = session.runtime_state
    server = _local_server(engine, require_binaries=False)
    server.superuser = bool(state.get("superuser"))
    if not state.get("bindir"):
        return server
    server.pinned_bindir = Path(state["bindir"])
    argv = server.server_argv(Path(state["datadir"]), state["port"], Path(state["socket_dir"]))
    program = Path(argv[0])
    if not program.is_file():
        version = state.get("version", "")
        raise NotRunningError(
            f"session {session.name!r} needs the {engine.name} {version} binaries it was "
            f"created with, and {program} is gone: install {engine.name} {version} there "
            "again (other versions may not read its data, so neither start nor export works "
            f"without them), or drop its data with `claude-session delete {session.name}`"
        )
    return server


def server_env() -> dict[str, str]:
    """A server's whole environment: a plain PATH, and the locale and time zone we have.
    Nothing else of ours (tokens, passwords, the user's PATH) reaches the server."""
    env = {"PATH": SERVER_PATH}
    env.update({key: os.environ[key] for key in ("LANG", "LC_ALL", "TZ") if key in os.environ})
    return env


def service_identity(server: LocalServer) -> RunAs:
    """Who runs the server: ourselves, or an unprivileged service user when we are root."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)
    for name in (*server.service_users, "nobody"):
        with contextlib.suppress(KeyError):
            return _identity_named(name)
    raise ClaudeDbError("running as root, but no unprivileged user exists to run the server")


def _identity_named(name: str) -> RunAs:
    entry = pwd.getpwnam(name)
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _chown(path: Path, run_as: RunAs) -> None:
    if os.geteuid() == 0:
        os.chown(path, run_as.uid, run_as.gid)


def _chown_tree(path: Path, run_as: RunAs) -> None:
    """``chown -R`` (as root only; otherwise all is ours anyway). Never follows links."""
    if os.geteuid() != 0:
        return
    for directory, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(os.path.join(directory, name), run_as.uid, run_as.gid, follow_symlinks=False)
    os.chown(path, run_as.uid, run_as.gid, follow_symlinks=False)


def _socket_dir(server_dir: Path, run_as: RunAs) -> Path:
    """Make the server's private socket directory: ``server/run``, or, when a socket there
    would pass the length limit of socket paths, a new directory in /tmp that ``server/run``
    links to. Its name is not predictable: another local user cannot make it first."""
    run = server_dir / "run"
    if len(str(run)) + 20 <= SOCKET_PATH_MAX:
        run.mkdir(mode=0o700, exist_ok=True)
        os.chmod(run, 0o700)  # inside our own state dir: made private again if it was not
        _chown(run, run_as)
        return run
    made = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX, dir="/tmp"))  # mode 0700
    _chown(made, run_as)
    with contextlib.suppress(FileNotFoundError):
        run.unlink()  # the link to a directory that is gone
    run.symlink_to(made)  # recorded at once: gc finds it even if no session.json says it
    return made


def _private_dir(path: Path, run_as: RunAs) -> bool:
    """Whether ``path`` is a directory (not a link) of ``run_as`` that nobody else may enter."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == run_as.uid
            and stat.S_IMODE(info.st_mode) & 0o077 == 0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # like the servers themselves: a just-closed connection (TIME_WAIT) does not block it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _is_our_server(pid: int, datadir: str) -> bool:
    """Whether ``pid`` is alive (not a zombie) and is the server of ``datadir``."""
    if not is_running(pid):
        return False
    cmdline = process_cmdline(pid)
    return cmdline is not None and datadir in cmdline


def _wait_for_exit(pid: int, timeout: float) -> bool:
    return wait_until(lambda: not is_running(pid), timeout=timeout)


def _wait_until_reaped(pid: int, datadir: str, timeout: float) -> None:
    """Wait until ``pid`` is gone (a zombie still holds it), unless another program has it."""

    def reaped() -> bool:
        if is_running(pid):
            return not _is_our_server(pid, datadir)  # the pid belongs to another program now
        return not process_exists(pid)

    wait_until(reaped, timeout=timeout, interval=0.05)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = read_log_tail(path)
    if text is None:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def state_summary(session: Session) -> dict[str, Any]:
    keys = ("port", "datadir", "socket_dir", "log", "pid", "run_as", "version")
    return {key: session.runtime_state.get(key) for key in keys}


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... where it is taken (two deletes of one name
    in one second: each its own kept data)."""
    candidate, number = path, 1
    while os.path.lexists(candidate):
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate

"""Faults: a server killed mid-import, a full disk mid-export, Ctrl-C mid-start.

Each fault is made for real (kill -9, a 1 MB tmpfs, SIGINT to the CLI's process group)
and caught at a point it certainly reaches (a frozen server, a held lock), never by timing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from claude_db.errors import ExitCode
from claude_db.locks import lock_for
from claude_db.testing import BIN, Cli, assert_one_line_error
from claude_db.testing.docker import (
    NOTHING_IN_DOCKER,
    docker_daemon,  # noqa: F401 - a fixture
    docker_leftovers,
    remove_everything,
    start_docker_with_frozen_database,
    unpause,
)
from claude_db.testing.safety import (
    NOTHING_LEFT,
    cli_env,
    database_url,
    locks_waited_for_by,
    pg_fingerprint,
    session_json,
    session_leader_servers,
    start_with_frozen_server,
    state_leftovers,
    wait_for,
)

if TYPE_CHECKING:
    from private_docker import PrivateEngine

pytest_plugins = ["private_docker"]

# -- the server killed during a big import --------------------------------------------------


def big_import(path: Path, rows: int) -> None:
    """A script whose one transaction runs long: a table, then many rows through COPY."""
    with open(path, "w") as out:
        out.write("CREATE TABLE big (id int PRIMARY KEY, payload text);\n")
        out.write("COPY big (id, payload) FROM stdin;\n")
        line = "x" * 200
        for i in range(rows):
            out.write(f"{i}\t{line}\n")
        out.write("\\.\n")
        out.write("CREATE TABLE after_big (id int);\n")


@pytest.mark.parametrize("victim", ["postmaster", "whole server"])
def test_server_killed_during_import_leaves_nothing_half_applied(
    cli: Cli, state: Path, tmp_path: Path, victim: str
) -> None:
    """kill -9 while a big import's one transaction runs, then attach.

    Killing the whole server (postmaster and backends, as the OOM killer or a lost
    machine would) must fail the import with one line and apply none of it. Killing only
    the postmaster may leave the import's backend running to its commit: then the import
    succeeds whole. Either way, never half.
    """
    assert cli("claude-session", "start", "fault-import").code == 0
    url = database_url(cli, "fault-import")
    assert cli("claude-db", "query", "CREATE TABLE kept AS SELECT generate_series(1, 1000) AS x",
               "--session", "fault-import").code == 0
    before = pg_fingerprint(url)
    rows = 1_000_000  # ~200 MB in one transaction: certainly still running when killed
    script = tmp_path / "big.sql"
    big_import(script, rows)

    importing = subprocess.Popen(
        [str(BIN / "claude-db"), "import", str(script), "--session", "fault-import"],
        env=cli_env(state), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def copying() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                               "AND query LIKE 'COPY big%'").fetchone()
            return bool(row and row[0])

    wait_for("the import's COPY to run", copying)
    postmaster = session_json(state, "fault-import")["runtime_state"]["pid"]
    server = [postmaster, *_children(postmaster)]  # PostgreSQL's children setsid(): list them
    for pid in server if victim == "whole server" else [postmaster]:
        with contextlib.suppress(ProcessLookupError):  # e.g. the backend copying() just used
            os.kill(pid, signal.SIGKILL)
    _, err = importing.communicate(timeout=300)
    stderr = err.decode()
    assert "Traceback" not in stderr
    # what is left of the dead server goes on its own (a backend noticing, or finishing);
    # the dead postmaster must be reaped too, or the new one takes it for alive
    wait_for("the old server's processes to be gone", lambda: not any(map(_exists, server)))

    assert_one_line_error(cli("claude-db", "status", "--session", "fault-import"), 4)
    attached = cli("claude-session", "attach", "fault-import", "--no-shell")
    assert attached.code == 0, attached
    after = pg_fingerprint(url)
    if importing.returncode == 0:  # it committed before its backend noticed: all of it
        assert victim == "postmaster", stderr
        assert after["public.big"][0] == rows and "public.after_big" in after
        assert {k: v for k, v in after.items() if "big" not in k} == before
        return
    assert importing.returncode == 1, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == [stderr.strip()]
    assert stderr.startswith("error: import failed, nothing was applied"), stderr
    assert after == before  # no "big", no "after_big", "kept" whole


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent:
                    found.append(int(entry.name))
    return found


def _exists(pid: int) -> bool:
    """Alive or a zombie not yet reaped (``/proc/<pid>`` is there)."""
    return Path(f"/proc/{pid}").exists()


# -- a full disk during export ----------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (needs root and mount rights: fails loudly without them)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs here: {mounted.stderr}"
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


@pytest.mark.parametrize("name", ["dump.sql", "dump.sql.gz"])
def test_full_disk_during_export_leaves_no_partial_file(
    cli: Cli, state: Path, tiny_disk: Path, name: str
) -> None:
    assert cli("claude-session", "start", "fault-disk").code == 0
    fill = ("CREATE TABLE filler AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS t "
            "FROM generate_series(1, 100000) g")
    assert cli("claude-db", "query", fill, "--session", "fault-disk").code == 0
    before = pg_fingerprint(database_url(cli, "fault-disk"))

    target = tiny_disk / name
    result = cli("claude-db", "export", str(target), "--session", "fault-disk")
    assert_one_line_error(result, 1)
    assert "No space left on device" in result.stderr
    assert list(tiny_disk.iterdir()) == []  # neither the file nor its temporary file
    # the dump tool was stopped with it, the database is unchanged and still exports
    port = session_json(state, "fault-disk")["runtime_state"]["port"]
    assert _dump_tools_of(port) == []
    assert pg_fingerprint(database_url(cli, "fault-disk")) == before
    assert cli("claude-db", "export", str(state.parent / name), "--session", "fault-disk").code == 0


def _dump_tools_of(port: int) -> list[int]:
    """pg_dump processes still working for the server on ``port``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{entry.name}/comm").read_text().strip() != "pg_dump":
                    continue
                environ = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
                if f"PGPORT={port}".encode() in environ:
                    found.append(int(entry.name))
    return found


# -- Ctrl-C during start ---------------------------------------------------------------------


def interrupt(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> tuple[int, str]:
    """Ctrl-C as a terminal sends it (SIGINT to the CLI's whole process group), or
    ``sig`` the same way (SIGTERM: a job or service being stopped)."""
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode()


def assert_interrupted(code: int, stderr: str) -> None:
    assert code == 130, stderr
    assert stderr.strip() == "error: interrupted", stderr


def test_interrupt_during_start_while_the_server_starts(state: Path, workdir: Path) -> None:
    """The server process, its data directory and its port exist: all of it goes."""
    proc, server, name = start_with_frozen_server(state, "fault-int", workdir)
    port = session_json(state, name)["runtime_state"]["port"]
    os.killpg(proc.pid, signal.SIGINT)
    os.kill(server, signal.SIGCONT)  # the cleanup stops it: it must be able to run
    _, err = proc.communicate(timeout=120)
    assert_interrupted(proc.returncode, err.decode())
    assert session_leader_servers(state, name) == []
    assert state_leftovers(state, [port]) == NOTHING_LEFT
    assert not (workdir / ".env").exists()


@pytest.mark.docker
@pytest.mark.usefixtures("docker_daemon")
def test_interrupt_during_a_docker_start_leaves_nothing(state: Path, workdir: Path) -> None:
    """Its container runs, its network and volume exist: all of them go."""
    name = f"fint{uuid.uuid4().hex[:8]}"
    try:
        proc = start_docker_with_frozen_database(state, name, workdir)
        assert docker_leftovers(name)["container"]
        os.killpg(proc.pid, signal.SIGINT)
        unpause(name)  # as a database merely slow to start would be
        _, err = proc.communicate(timeout=180)
        assert_interrupted(proc.returncode, err.decode())
        assert docker_leftovers(name) == NOTHING_IN_DOCKER
        assert state_leftovers(state, []) == NOTHING_LEFT
        assert not (workdir / ".env").exists()
    finally:
        remove_everything(name)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_during_start_while_waiting_for_the_session_lock(
    state: Path, workdir: Path, sig: int
) -> None:
    """Interrupted (Ctrl-C, or SIGTERM once its handlers are set) before anything was made:
    exit 130, nothing is made, nothing is left."""
    sessions = state / "sessions"
    sessions.mkdir()
    with open(lock_for(sessions / "fault-wait"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another command on this session would
        proc = subprocess.Popen(
            [str(BIN / "claude-session"), "start", "fault-wait"], cwd=workdir,
            env=cli_env(state), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        wait_for("start to wait for the lock", lambda: locks_waited_for_by(proc.pid))
        code, stderr = interrupt(proc, sig)
        # a machine slow enough may let the wait's notice come first ("waiting for ...")
        waited = [line for line in stderr.splitlines() if line.startswith("waiting for ")]
        assert_interrupted(code, "\n".join(line for line in stderr.splitlines()
                                            if line not in waited))
    assert not (sessions / "fault-wait").exists()
    assert not (workdir / ".env").exists()
    assert session_leader_servers(state, "fault-wait") == []


def test_a_hangup_the_caller_ignores_does_not_interrupt_start(
    cli: Cli, state: Path, workdir: Path
) -> None:
    """`nohup claude-session start`: the hangup of a closed terminal, which it was started
    ignoring, stays ignored (its handlers took SIGHUP over); the start goes on."""
    sessions = state / "sessions"
    sessions.mkdir()
    with open(lock_for(sessions / "fault-nohup"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another command on this session would
        proc = subprocess.Popen(
            ["nohup", str(BIN / "claude-session"), "start", "fault-nohup"], cwd=workdir,
            env=cli_env(state), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        wait_for("start to wait for the lock", lambda: locks_waited_for_by(proc.pid))
        os.killpg(proc.pid, signal.SIGHUP)  # while it waits: nothing else is under way
    _, stderr = proc.communicate(timeout=180)  # the lock is free: the start goes on
    assert proc.returncode == 0, stderr
    assert cli("claude-db", "status", "--session", "fault-nohup").code == 0
    assert cli("claude-session", "delete", "fault-nohup", "--yes").code == 0


def test_interrupt_leaves_the_name_usable(cli: Cli, state: Path, workdir: Path) -> None:
    proc, server, name = start_with_frozen_server(state, "fault-again", workdir)
    os.killpg(proc.pid, signal.SIGINT)
    os.kill(server, signal.SIGCONT)
    proc.communicate(timeout=120)
    started = cli("claude-session", "start", name)
    assert started.code == 0, started
    assert cli("claude-db", "status", "--session", name).code == 0
    assert cli("claude-session", "delete", name, "--yes").code == 0
    assert state_leftovers(state, []) == NOTHING_LEFT


# -- Ctrl-C inside the interactive client ---------------------------------------------------


def test_ctrl_c_in_psql_cancels_the_query_not_the_client(
    cli: Cli, state: Path, workdir: Path
) -> None:
    """Ctrl-C reaches the whole terminal group: psql cancels its query and goes on;
    claude-db, waiting for psql, must not take it as its own interruption and kill it."""
    import pty
    import select

    assert cli("claude-session", "start", "fault-psql").code == 0
    url = database_url(cli, "fault-psql")
    pid, terminal = pty.fork()
    if pid == 0:  # the child: claude-db psql on a terminal of its own
        os.chdir(workdir)
        os.environ["PAGER"] = "cat"
        os.execv(str(BIN / "claude-db"), ["claude-db", "psql", "--session", "fault-psql"])
    seen = b""

    def read_until(text: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while text not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([terminal], [], [], 0.1)[0]:
                seen += os.read(terminal, 65536)

    def sleeping() -> bool:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                               "WHERE query LIKE 'select pg_sleep(600)%'").fetchone()
            return bool(row and row[0])

    try:
        read_until(b"appdb=>")  # the prompt of a role that is no superuser
        os.write(terminal, b"select pg_sleep(600);\n")
        wait_for("the query to run", sleeping)
        os.write(terminal, b"\x03")  # Ctrl-C
        read_until(b"canceling statement due to user request")
        os.write(terminal, b"select 6 * 7 as answer;\n")
        read_until(b"42")
        os.write(terminal, b"\\q\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)


# -- the Docker daemon restarted ------------------------------------------------------------

@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.xdist_group("private-dockerd")  # one private daemon, on one worker
def test_docker_daemon_restart_then_attach_brings_sessions_back(
    cli: Cli, state: Path, workdir: Path, remote_engine: PrivateEngine
) -> None:
    """dockerd stops (its containers with it) and comes back: attach restarts the session's
    database and session container, with the data. A private daemon (its unix socket: a
    local engine), never the user's."""
    from claude_db.testing.docker import SESSION_IMAGE

    name = f"fdr{uuid.uuid4().hex[:8]}"
    env = {"CLAUDE_DB_RUNTIME": "docker", "CLAUDE_DB_IMAGE": "claude-db-test/postgres:15",
           "DOCKER_HOST": remote_engine.socket}

    def host_url() -> str:
        info = cli("claude-db", "info", "--json", "--show-password", "--session", name, env=env)
        assert info.code == 0, info
        details = json.loads(info.stdout)
        return str(details.get("HOST_DATABASE_URL") or details["DATABASE_URL"])

    try:
        assert cli("claude-session", "start", name, "--image", SESSION_IMAGE, env=env).code == 0
        assert cli("claude-db", "query", "CREATE TABLE kept AS SELECT generate_series(1, 777) AS n",
                   "--session", name, env=env).code == 0
        before = pg_fingerprint(host_url())

        daemon = remote_engine.dockerd_pid
        os.kill(daemon, signal.SIGTERM)
        wait_for("dockerd to stop", lambda: not Path(f"/proc/{daemon}").exists())
        down = cli("claude-db", "status", "--session", name, env=env)
        assert down.code in (ExitCode.NOT_RUNNING, ExitCode.DOCKER_UNAVAILABLE), down
        assert_one_line_error(down, down.code)
        remote_engine.start()

        attached = cli("claude-session", "attach", name, "--no-shell", env=env)
        assert attached.code == 0, attached
        assert pg_fingerprint(host_url()) == before
        inside = remote_engine.docker("exec", name, "claude-db", "status", check=False)
        assert inside.returncode == 0, inside  # the session container is back and connected
    finally:
        if not Path(f"/proc/{remote_engine.dockerd_pid}").exists():
            remote_engine.start()
        cli("claude-session", "delete", name, "--yes", env=env)

"""Trust in the state directory, gc and locks, tested against a real second user.

``claudedb-attacker`` (made here if missing) is an unprivileged local user who tries
what the tracker's issues describe: a process whose arguments name
``<state>/sessions/../x``, a planted "unfinished start" in a state directory it may
write, holding our lock files. The test process is root, as an administrator's
``claude-session`` would be.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from claude_db.locks import lock_for
from claude_db.processes import is_running
from claude_db.testing import BIN, Cli, assert_one_line_error
from claude_db.testing.docker import (
    NOTHING_IN_DOCKER,
    docker_cli_env,
    docker_daemon,  # noqa: F401 - a fixture
    docker_leftovers,
    remove_everything,
)
from claude_db.testing.safety import (
    NOTHING_LEFT,
    cli_env,
    listening,
    session_json,
    session_leader_servers,
    start_with_frozen_server,
    state_leftovers,
    wait_for,
)

ATTACKER = "claudedb-attacker"


@pytest.fixture(scope="module")
def attacker() -> str:
    """The unprivileged second user (needs root, as making a user does)."""
    if os.geteuid() != 0:
        pytest.skip("these tests make and impersonate a second user: run them as root")
    try:
        pwd.getpwnam(ATTACKER)
    except KeyError:
        subprocess.run(["useradd", "-m", ATTACKER])  # another run may make it meanwhile
        pwd.getpwnam(ATTACKER)
    return ATTACKER


def own_dir(tmp_path: Path, name: str) -> str:
    """A work directory of its own (a directory holds one session's .env)."""
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return str(path)


def as_attacker(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", ATTACKER, "--", *argv], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def victim_process(*argv: str) -> Iterator[int]:
    """A process of root's that the attacker would like us to kill: a session leader
    (as servers are) with ``argv`` among its arguments."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", *argv],
        start_new_session=True, stdin=subprocess.DEVNULL,
    )
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def attackers_processes(marker: str) -> list[int]:
    uid = pwd.getpwnam(ATTACKER).pw_uid
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                args = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
                if os.stat(entry.path).st_uid == uid and marker.encode() in args:
                    found.append(int(entry.name))
    return found


# -- 13.1: gc identifies servers by our records, never by arguments ---------------------------


def test_a_process_naming_dotdot_in_its_arguments_is_not_taken_for_a_server(
    cli: Cli, state: Path, attacker: str, tmp_path: Path
) -> None:
    """Once, gc took any process with an argument under ``<state>/sessions/`` for a
    server, and the directory it named for the session's: ``..`` made that the whole
    state directory, removed by root's next start or gc (and the process killed)."""
    assert cli("claude-session", "start", "sec-live").code == 0
    assert cli("claude-db", "query", "CREATE TABLE keep AS SELECT 1 AS x",
               "--session", "sec-live").code == 0
    kept_dir = own_dir(tmp_path, "kept")
    assert cli("claude-session", "start", "sec-kept", "--workdir", kept_dir).code == 0
    assert cli("claude-session", "delete", "sec-kept", "--yes", "--keep-data").code == 0
    kept = sorted((state / "kept").iterdir())
    bait = f"{state}/sessions/../x"
    proc = subprocess.Popen(
        ["runuser", "-u", attacker, "--", "setsid", "/usr/bin/python3", "-c",
         "import time; time.sleep(600)", bait],
        start_new_session=True, stdin=subprocess.DEVNULL,
    )
    try:
        wait_for("the attacker's process", lambda: attackers_processes(bait))
        [pid] = attackers_processes(bait)
        assert os.getsid(pid) == pid  # a session leader, as servers are

        planned = cli("claude-session", "gc", "--dry-run", "--json")
        assert planned.code == 0 and json.loads(planned.stdout) == [], planned
        started = cli("claude-session", "start", "sec-next",  # its cheap sweep
                      "--workdir", own_dir(tmp_path, "next"))
        assert started.code == 0 and "leftovers" not in started.stderr, started
        swept = cli("claude-session", "gc", "--json")
        assert swept.code == 0 and json.loads(swept.stdout) == [], swept

        assert is_running(pid)  # not ours: not touched
        assert session_json(state, "sec-live")["name"] == "sec-live"
        assert sorted((state / "kept").iterdir()) == kept != []
        assert (state / "templates").is_dir()
        answer = cli("claude-db", "query", "SELECT x FROM keep", "--session", "sec-live")
        assert answer.code == 0 and "1" in answer.stdout, answer
    finally:
        for pid in attackers_processes(bait):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
        for path in (state / "kept").iterdir() if (state / "kept").exists() else []:
            shutil.rmtree(path)


def test_gc_stops_a_lost_sessions_server_found_by_its_pid_file(
    cli: Cli, state: Path
) -> None:
    """A session directory whose record is gone: its server is found through the data
    directory's pid file alone (the server's own record, of the server's user)."""
    assert cli("claude-session", "start", "sec-lost").code == 0
    record = session_json(state, "sec-lost")["runtime_state"]
    (state / "sessions" / "sec-lost" / "session.json").unlink()
    planned = cli("claude-session", "gc", "--dry-run", "--json")
    assert {(o["kind"], o["what"]) for o in json.loads(planned.stdout)} == {
        ("process", str(record["pid"])),
        ("directory", str(state / "sessions" / "sec-lost")),
    }, planned
    swept = cli("claude-session", "gc")
    assert swept.code == 0, swept
    assert not is_running(record["pid"]) and not listening(record["port"], state)
    assert state_leftovers(state, [record["port"]]) == NOTHING_LEFT


# -- 13.3: a state directory another user may write is refused --------------------------------


def plant_unfinished_start(state: Path, victim: Path, pid: int) -> str:
    """A Python script (for the attacker to run) that makes ``state`` hold an unfinished
    start naming ``victim`` as its socket directory and ``pid`` as its server."""
    record = {
        "name": "evil", "workdir": "/tmp", "engine": "postgres", "runtime": "local",
        "credentials": {"user": "u", "password": "p", "database": "d"},
        "runtime_state": {"pid": pid, "datadir": str(victim), "socket_dir": str(victim),
                          "log": str(victim / "log"), "port": 1, "run_as": "postgres",
                          "bindir": "/nonexistent"},
    }
    return (
        "import json, os, pathlib, sys\n"
        f"state = pathlib.Path({str(state)!r})\n"
        "sessions = state / 'sessions'\n"
        "if sessions.exists():\n"  # ours: moved aside, as the directory's mode allows
        "    os.rename(sessions, state / 'moved-aside')\n"
        "(sessions / 'evil').mkdir(parents=True)\n"
        f"(sessions / 'evil' / 'session.json').write_text({json.dumps(record)!r})\n"
        "(sessions / 'evil' / '.starting').touch()\n"
    )


@pytest.mark.parametrize("how", ["world-writable", "owned by the attacker"])
def test_a_planted_unfinished_start_in_a_state_directory_others_may_write_is_refused(
    cli: Cli, attacker: str, how: str
) -> None:
    base = Path(tempfile.mkdtemp(prefix="claudedb-sec-", dir="/tmp"))
    os.chmod(base, 0o755)
    state = base / "state"
    victim = base / "victim"
    victim.mkdir()
    (victim / "precious").write_text("root's")
    try:
        state.mkdir()
        if how == "world-writable":
            os.chmod(state, 0o777)
        else:
            os.chown(state, pwd.getpwnam(attacker).pw_uid, -1)
        with victim_process(str(victim)) as pid:
            planted = as_attacker("/usr/bin/python3", "-c",
                                  plant_unfinished_start(state, victim, pid))
            assert planted.returncode == 0, planted.stderr
            env = {"CLAUDE_DB_STATE_DIR": str(state)}
            for argv in (("claude-session", "start", "mine"), ("claude-session", "gc"),
                         ("claude-session", "list"), ("claude-db", "status")):
                refused = cli(*argv, env=env)
                assert_one_line_error(refused, 2)
                assert f"state directory {state} " in refused.stderr, refused
                why = "may be changed by other users" if how == "world-writable" else \
                    f"belongs to {attacker}, not to you (root)"
                assert why in refused.stderr, refused
            assert is_running(pid)
            assert (victim / "precious").read_text() == "root's"
            assert not (state / "sessions" / "mine").exists()
    finally:
        shutil.rmtree(base)


def test_a_session_another_user_made_is_never_acted_on(
    cli: Cli, state: Path, tmp_path: Path, attacker: str
) -> None:
    """A trusted state directory may still hold what another user made while it was not
    (a session directory of theirs): gc and start leave it, list says why, delete refuses."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("root's")
    with victim_process(str(victim)) as pid:
        script = plant_unfinished_start(state, victim, pid)
        subprocess.run([sys.executable, "-c", script], check=True)
        shutil.rmtree(state / "moved-aside", ignore_errors=True)
        uid = pwd.getpwnam(attacker).pw_uid
        for path in (state / "sessions" / "evil", *(state / "sessions" / "evil").iterdir()):
            os.chown(path, uid, -1)

        assert cli("claude-session", "start", "sec-mine").code == 0  # its cheap sweep
        swept = cli("claude-session", "gc", "--json")
        assert is_running(pid)
        assert (victim / "precious").read_text() == "root's"
        assert swept.code == 0 and json.loads(swept.stdout) == [], swept
        listed = cli("claude-session", "list", "--json")
        assert listed.code == 0, listed
        evil = next(s for s in json.loads(listed.stdout) if s["name"] == "evil")
        assert evil["status"] == "broken"
        assert f"belongs to {attacker}, not to you (root)" in evil["error"]
        refused = cli("claude-session", "delete", "evil", "--yes")
        assert_one_line_error(refused, 2)
        assert "session directory" in refused.stderr and attacker in refused.stderr, refused
        assert is_running(pid)
    shutil.rmtree(state / "sessions" / "evil")
    assert cli("claude-session", "delete", "sec-mine", "--yes").code == 0


# -- 13.5: locks nobody else can hold; a long wait says what it waits for ---------------------


def test_no_other_user_can_hold_our_locks(cli: Cli, state: Path, attacker: str) -> None:
    """flock needs only a read descriptor: a lock file another user may open is a lock
    they may hold forever, freezing stop, reset, snapshot, delete and start."""
    assert cli("claude-session", "start", "sec-lock").code == 0
    assert cli("claude-db", "snapshot", "save", "one", "--session", "sec-lock").code == 0
    locks = [Path(root) / name for root, _, names in os.walk(state)
             for name in names if name.endswith(".lock")]
    locks.append(lock_for(state / "templates"))  # the template cache's (a link in tests)
    assert any("sec-lock" in path.name for path in locks), locks
    for path in locks:
        held = as_attacker("flock", "--nonblock", "--shared", str(path), "true")
        assert held.returncode != 0, f"{ATTACKER} could hold {path}"
        assert "Permission denied" in held.stderr, held.stderr
    assert as_attacker("ls", str(state / "sessions" / ".locks")).returncode != 0
    assert cli("claude-session", "delete", "sec-lock", "--yes").code == 0
    assert state_leftovers(state, []) == NOTHING_LEFT


def test_a_command_kept_waiting_for_a_lock_says_what_it_waits_for(
    cli: Cli, state: Path, workdir: Path
) -> None:
    assert cli("claude-session", "start", "sec-wait").code == 0
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from claude_db.locks import hold, lock_for\n"
         f"with hold(lock_for(Path({str(state / 'sessions' / 'sec-wait')!r})), 'test'):\n"
         "    print('held', flush=True)\n"
         "    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "held\n"
    waiting = subprocess.Popen(
        [str(BIN / "claude-session"), "stop", "sec-wait"], cwd=workdir, env=cli_env(state),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert waiting.stderr is not None
        line = _line_within(waiting.stderr, seconds=120)  # a safety net, not a measurement
        assert line == (f"waiting for session sec-wait: another claude-db command "
                        f"(pid {holder.pid}) holds it\n")
        assert waiting.poll() is None  # still waiting
    finally:
        holder.stdin.close()
        holder.wait(timeout=300)
    _, rest = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, rest
    assert rest == "session sec-wait stopped\n"
    assert cli("claude-session", "delete", "sec-wait", "--yes").code == 0


def _line_within(stream: IO[str], seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 1)
        if ready:
            return stream.readline()
    raise AssertionError("the waiting command said nothing")


# -- 12.20: an unreadable session.json breaks only its own session -----------------------------


def test_a_truncated_session_record_breaks_only_its_session(
    cli: Cli, state: Path, tmp_path: Path
) -> None:
    assert cli("claude-session", "start", "sec-ok").code == 0
    cut_dir = own_dir(tmp_path, "cut")
    assert cli("claude-session", "start", "sec-cut", "--workdir", cut_dir).code == 0
    record_path = state / "sessions" / "sec-cut" / "session.json"
    record = json.loads(record_path.read_text())["runtime_state"]
    record_path.write_text(record_path.read_text()[:40])

    listed = cli("claude-session", "list", "--json")
    assert listed.code == 0, listed
    statuses = {s["name"]: s["status"] for s in json.loads(listed.stdout)}
    assert statuses == {"sec-ok": "running", "sec-cut": "broken"}
    table = cli("claude-session", "list")
    assert table.code == 0 and "sec-cut" in table.stdout, table
    assert "unreadable" in table.stderr and "claude-session delete sec-cut" in table.stderr
    assert_one_line_error(cli("claude-db", "status", "--session", "sec-cut"), 1)
    assert cli("claude-db", "status", "--session", "sec-ok").code == 0

    planned = cli("claude-session", "gc", "--dry-run", "--json")
    assert {(o["kind"], o["what"]) for o in json.loads(planned.stdout)} == {
        ("process", str(record["pid"])), ("session", "sec-cut")}, planned
    deleted = cli("claude-session", "delete", "sec-cut", "--yes")
    assert deleted.code == 0, deleted
    assert not listening(record["port"], state) and not is_running(record["pid"])
    assert not (state / "sessions" / "sec-cut").exists()

    # a key a newer claude-db wrote is no reason to refuse the session
    ok = state / "sessions" / "sec-ok" / "session.json"
    ok.write_text(json.dumps({**json.loads(ok.read_text()), "from_the_future": 1}))
    assert cli("claude-db", "status", "--session", "sec-ok").code == 0
    assert cli("claude-session", "delete", "sec-ok", "--yes").code == 0
    assert state_leftovers(state, [record["port"]]) == NOTHING_LEFT


@pytest.mark.docker
@pytest.mark.usefixtures("docker_daemon")
def test_deleting_a_broken_docker_session_removes_its_docker_resources(
    cli: Cli, state: Path
) -> None:
    name = f"secb{uuid.uuid4().hex[:8]}"
    try:
        assert cli("claude-session", "start", name, env=docker_cli_env(state)).code == 0
        left = docker_leftovers(name)
        assert left["container"] and left["network"] and left["volume"], left
        (state / "sessions" / name / "session.json").write_text("{")
        deleted = cli("claude-session", "delete", name, "--yes")
        assert deleted.code == 0, deleted
        assert docker_leftovers(name) == NOTHING_IN_DOCKER
        assert state_leftovers(state, []) == NOTHING_LEFT
    finally:
        remove_everything(name)


# -- 12.22: a start killed late is shown as unfinished; --verbose keeps the exit code ---------


def test_list_shows_a_killed_start_as_unfinished(cli: Cli, state: Path, workdir: Path) -> None:
    proc, server, name = start_with_frozen_server(state, "sec-killed", workdir)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    os.kill(server, signal.SIGCONT)  # its server is up and answers: it never became ready
    port = session_json(state, name)["runtime_state"]["port"]
    listed = cli("claude-session", "list", "--json")
    assert listed.code == 0, listed
    [shown] = json.loads(listed.stdout)
    assert (shown["name"], shown["status"]) == (name, "unfinished"), shown
    assert "claude-session gc removes it" in shown["error"]
    assert cli("claude-session", "gc").code == 0
    assert session_leader_servers(state, name) == []
    assert state_leftovers(state, [port]) == NOTHING_LEFT


@pytest.mark.parametrize("how", [("--verbose",), ()])
def test_verbose_shows_the_traceback_and_keeps_the_exit_code(
    cli: Cli, how: tuple[str, ...]
) -> None:
    env = {} if how else {"CLAUDE_DB_DEBUG": "1"}
    missing = cli("claude-db", "status", "--session", "nosuch", *how, env=env)
    assert missing.code == 3, missing
    assert "Traceback" in missing.stderr, missing
    assert missing.stderr.splitlines()[-1] == "error: no session named 'nosuch' " \
        "(see claude-session list)"
    bad = cli("claude-session", "start", "Bad_Name", *how, env=env)
    assert bad.code == 2 and "Traceback" in bad.stderr, bad


@pytest.mark.parametrize("victim_in_tmp", [True, False], ids=["tmp lookalike", "elsewhere"])
def test_delete_never_follows_a_socket_link_the_server_user_changed(
    cli: Cli, workdir: Path, victim_in_tmp: bool
) -> None:
    """``server/run`` is the server user's (it owns ``server/``): pointed at a directory
    of root's, ``delete`` (run by root) must leave that directory alone."""
    assert cli("claude-session", "start", "relinked").code == 0
    server = Path(os.environ["CLAUDE_DB_STATE_DIR"], "sessions", "relinked", "server")
    assert cli("claude-session", "stop", "relinked").code == 0
    parent = Path("/tmp") if victim_in_tmp else workdir
    victim = Path(tempfile.mkdtemp(prefix="claude-db-" if victim_in_tmp else "victim-",
                                   dir=parent))
    (victim / "precious").write_text("root's")
    try:
        run = server / "run"
        shutil.rmtree(run) if run.is_dir() and not run.is_symlink() else run.unlink()
        run.symlink_to(victim)  # as the server's user could
        result = cli("claude-session", "delete", "relinked", "--yes")
        assert result.code == 0, result
        assert (victim / "precious").read_text() == "root's"
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_an_env_another_user_planted_above_the_work_directory_names_nothing(
    cli: Cli, attacker: str, tmp_path: Path
) -> None:
    """``.env`` is looked for up the tree: one another user put in a directory everybody
    may write (``/tmp``) must not choose the database of whoever works below it."""
    own = tmp_path / "own"  # the victim's session works elsewhere
    own.mkdir()
    assert cli("claude-session", "start", "planted-victim", "--workdir", str(own)).code == 0
    try:
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chmod(shared, 0o1777)  # as /tmp
        planted = shared / ".env"
        planted.write_text("CLAUDE_SESSION=planted-victim\n")
        shutil.chown(planted, attacker, attacker)
        work = shared / "project"
        work.mkdir()
        result = cli("claude-db", "reset", "--yes", cwd=work)
        assert_one_line_error(result, 3)  # no session here: the planted file names nothing
        assert "planted-victim" not in result.stderr
    finally:
        cli("claude-session", "delete", "planted-victim", "--yes")


def test_root_never_writes_the_server_log_through_a_link(cli: Cli, workdir: Path) -> None:
    """``server/`` is the server user's, who could put a link to a file of root's where
    the log goes: the next start refuses it, the file stays as it was."""
    assert cli("claude-session", "start", "loglink").code == 0
    log = Path(os.environ["CLAUDE_DB_STATE_DIR"], "sessions", "loglink", "server",
               "server.log")
    assert cli("claude-session", "stop", "loglink").code == 0
    victim = workdir.parent / "roots-file"
    victim.write_text("root's\n")
    log.unlink()
    log.symlink_to(victim)  # as the server's user could
    try:
        result = cli("claude-session", "attach", "loglink", "--no-shell")
        assert_one_line_error(result, 1)
        assert victim.read_text() == "root's\n"
    finally:
        cli("claude-session", "delete", "loglink", "--yes")

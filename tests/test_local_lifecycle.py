"""The session lifecycle on the local runtime, against real PostgreSQL servers."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

import psycopg
import pytest

from claude_db.envfile import read_env
from claude_db.errors import ExitCode
from claude_db.processes import is_running
from claude_db.session import name_from_directory
from claude_db.testing import Cli, assert_one_line_error
from claude_db.testing.leaks import port_listeners
from claude_db.testing.safety import cleanup, fresh_state, listening, session_json


def _state(cli: Cli, name: str) -> dict[str, object]:
    sessions = json.loads(cli("claude-session", "list", "--json").stdout)
    return next(s for s in sessions if s["name"] == name)


def _session_file(name: str) -> dict[str, object]:
    root = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    data: dict[str, object] = json.loads((root / "sessions" / name / "session.json").read_text())
    return data


def _listening(port: int) -> bool:
    """Whether a server of this test's state directory listens on ``port`` (another test's
    may take a port ours freed)."""
    return listening(port, Path(os.environ["CLAUDE_DB_STATE_DIR"]))


def test_start_gives_a_ready_database_and_a_gitignored_env(cli: Cli, workdir: Path) -> None:
    subprocess.run(["git", "init", "-q", str(workdir)], check=True)
    result = cli("claude-session", "start", "alpha")
    assert result.code == 0, result
    env = read_env(workdir)
    assert env["CLAUDE_SESSION"] == "alpha"
    assert env["DATABASE_URL"].startswith("postgresql://postgres:")
    assert env["DATABASE_URL"].endswith("/appdb")
    assert (workdir / ".env").stat().st_mode & 0o777 == 0o600
    # git does not see .env: excluded through .git/info/exclude, .gitignore untouched
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=workdir, capture_output=True, text=True
    )
    assert ".env" not in status.stdout
    assert not (workdir / ".gitignore").exists()
    assert "added .env to" in result.stderr
    # the plain psql client connects with the URL, as the seed promises
    psql = subprocess.run(
        ["psql", env["DATABASE_URL"], "-tAc", "select 40 + 2"], capture_output=True, text=True
    )
    assert psql.stdout.strip() == "42", psql.stderr
    assert cli("claude-session", "delete", "alpha", "--yes").code == 0


def test_stop_attach_keeps_data_and_port(cli: Cli, workdir: Path) -> None:
    assert cli("claude-session", "start", "beta").code == 0
    port = _session_file("beta")["runtime_state"]["port"]  # type: ignore[index]
    assert (
        cli("claude-db", "query", "create table kept(x int); insert into kept values (7)").code == 0
    )
    assert cli("claude-session", "stop", "beta").code == 0
    assert _state(cli, "beta")["status"] == "stopped"
    assert not _listening(port)
    assert_one_line_error(cli("claude-db", "query", "select 1"), ExitCode.NOT_RUNNING)
    assert_one_line_error(cli("claude-db", "status"), ExitCode.NOT_RUNNING)
    attach = cli("claude-session", "attach", "beta", "--no-shell")
    assert attach.code == 0, attach
    kept = _session_file("beta")["runtime_state"]["port"]  # type: ignore[index]
    # the same port, unless another test's server took it while ours was stopped
    assert kept == port or (port_listeners(port) and not _listening(port)), (kept, port)
    assert cli("claude-db", "query", "select x from kept", "--csv").stdout == "x\n7\n"
    cli("claude-session", "delete", "beta", "--yes")


def test_attach_opens_a_shell_with_the_session_environment(cli: Cli, workdir: Path) -> None:
    assert cli("claude-session", "start", "gamma").code == 0
    result = cli(
        "claude-session",
        "attach",
        "gamma",
        env={"SHELL": "/bin/sh"},
        input='psql "$DATABASE_URL" -tAc "select current_database()"; echo "$CLAUDE_SESSION"\n',
    )
    assert result.code == 0, result
    assert result.stdout.split() == ["appdb", "gamma"]
    cli("claude-session", "delete", "gamma", "--yes")


def test_delete_leaves_nothing_behind(cli: Cli, workdir: Path) -> None:
    (workdir / ".env").write_text("MY_OWN=1\n")
    assert cli("claude-session", "start", "delta").code == 0
    state = _session_file("delta")["runtime_state"]
    assert isinstance(state, dict)
    pid, port = state["pid"], state["port"]
    assert is_running(pid) and _listening(port)
    assert cli("claude-session", "delete", "delta", "--yes").code == 0
    assert not is_running(pid)
    assert not _listening(port)
    assert not Path(state["datadir"]).exists()
    assert not Path(state["socket_dir"]).exists()
    root = Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "sessions"
    assert not (root / "delta").exists()
    # only our keys were removed from .env, the user's line stays
    assert (workdir / ".env").read_text().strip() == "MY_OWN=1"
    assert_one_line_error(cli("claude-session", "delete", "delta", "--yes"), ExitCode.NO_SESSION)


def test_delete_keep_data_keeps_the_data_directory(cli: Cli) -> None:
    assert cli("claude-session", "start", "kept").code == 0
    result = cli("claude-session", "delete", "kept", "--yes", "--keep-data")
    assert result.code == 0, result
    kept = Path(result.stderr.split("kept the data of 'kept' in ", 1)[1].split()[0])
    assert (kept / "PG_VERSION").exists()
    subprocess.run(["rm", "-rf", str(kept)], check=True)


def test_two_sessions_are_isolated(cli: Cli, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert cli("claude-session", "start", "one", cwd=one).code == 0
    assert cli("claude-session", "start", "two", cwd=two).code == 0
    try:
        url_one, url_two = read_env(one)["DATABASE_URL"], read_env(two)["DATABASE_URL"]
        s1, s2 = _session_file("one")["runtime_state"], _session_file("two")["runtime_state"]
        assert isinstance(s1, dict) and isinstance(s2, dict)
        assert s1["port"] != s2["port"]
        assert s1["datadir"] != s2["datadir"]
        # one's credentials do not open the other
        password_one = read_env(one)["DB_PASSWORD"]
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(url_two.replace(read_env(two)["DB_PASSWORD"], password_one))
        # data written in one is not in the other
        cli("claude-db", "query", "create table only_here(x int)", cwd=one)
        result = cli("claude-db", "query", "select * from only_here", cwd=two)
        assert_one_line_error(result, ExitCode.FAILED)
        with psycopg.connect(url_one) as conn:
            assert conn.execute("select count(*) from only_here").fetchone() == (0,)
    finally:
        cli("claude-session", "delete", "one", "--yes")
        cli("claude-session", "delete", "two", "--yes")


def test_name_is_derived_from_the_work_directory(cli: Cli, tmp_path: Path) -> None:
    work = tmp_path / "My Project_2"
    work.mkdir()
    result = cli("claude-session", "start", "--json", cwd=work)
    assert result.code == 0, result
    data = json.loads(result.stdout)
    assert data["name"] == "my-project-2"
    assert data["env"]["DATABASE_URL"].startswith("postgresql://")
    assert cli("claude-session", "delete", "--yes", cwd=work).code == 0


@pytest.mark.parametrize(("directory", "name"), [
    ("Ünïcödé Dir", "unicode-dir"), ("café_crème", "cafe-creme"), ("日本", "session"),
    ("--x--", "x"),
])
def test_names_from_directories_keep_their_letters(directory: str, name: str) -> None:
    assert name_from_directory(Path("/tmp") / directory) == name


def test_disabled_database_gives_a_session_without_one(cli: Cli, workdir: Path) -> None:
    result = cli("claude-session", "start", "plain", env={"CLAUDE_DB_ENABLED": "false"})
    assert result.code == 0, result
    assert "no database" in result.stdout
    env = read_env(workdir)
    assert env == {"CLAUDE_SESSION": "plain"}
    assert_one_line_error(cli("claude-db", "status"), ExitCode.USAGE)
    assert cli("claude-session", "delete", "plain", "--yes").code == 0


def test_settings_choose_credentials(cli: Cli, workdir: Path) -> None:
    env = {"CLAUDE_DB_USER": "app", "CLAUDE_DB_PASSWORD": "p@ss:w/rd%", "CLAUDE_DB_NAME": "shop"}
    assert cli("claude-session", "start", "creds", env=env).code == 0
    values = read_env(workdir)
    assert values["DATABASE_URL"].startswith("postgresql://app:p%40ss%3Aw%2Frd%25@127.0.0.1:")
    assert values["DATABASE_URL"].endswith("/shop")
    with psycopg.connect(values["DATABASE_URL"]) as conn:
        row = conn.execute("select current_user, current_database()").fetchone()
    assert row == ("app", "shop")
    cli("claude-session", "delete", "creds", "--yes")


def test_env_formats(cli: Cli, workdir: Path) -> None:
    assert cli("claude-session", "start", "fmt").code == 0
    as_json = json.loads(cli("claude-session", "env", "fmt", "--format", "json").stdout)
    shell = cli("claude-session", "env", "fmt", "--format", "shell").stdout
    plain = cli("claude-session", "env").stdout  # current session from .env
    assert as_json["CLAUDE_SESSION"] == "fmt"
    evaluated = subprocess.run(
        ["bash", "-c", f'{shell}\necho "$DATABASE_URL"'], capture_output=True, text=True
    )
    assert evaluated.stdout.strip() == as_json["DATABASE_URL"]
    assert f"DATABASE_URL={as_json['DATABASE_URL']}" in plain.splitlines()
    assert_one_line_error(cli("claude-session", "env", "fmt", "-f", "yaml"), ExitCode.USAGE)
    cli("claude-session", "delete", "fmt", "--yes")


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (("claude-session", "start", "Bad Name"), ExitCode.USAGE),
        (("claude-session", "start", "-leading"), ExitCode.USAGE),
        (("claude-session", "start", "x" * 49), ExitCode.USAGE),
        (("claude-session", "start", "ok", "--db", "nosuchdb"), ExitCode.USAGE),
        (("claude-session", "start", "ok", "--runtime", "nosuch"), ExitCode.USAGE),
        (("claude-session", "start", "ok", "--workdir", "/does/not/exist"), ExitCode.USAGE),
        (("claude-session", "stop", "ghost"), ExitCode.NO_SESSION),
        (("claude-session", "attach", "ghost", "--no-shell"), ExitCode.NO_SESSION),
        (("claude-session", "start", "--bogus-flag"), ExitCode.USAGE),
        (("claude-db", "query", "select 1", "--session", "ghost"), ExitCode.NO_SESSION),
        (("claude-db", "status"), ExitCode.NO_SESSION),
    ],
)
def test_bad_input_is_one_line(cli: Cli, argv: tuple[str, ...], code: int) -> None:
    assert_one_line_error(cli(*argv), code)
    root = Path(os.environ["CLAUDE_DB_STATE_DIR"]) / "sessions"
    assert not (root / "ok").exists()


def test_a_disabled_engine_is_named_as_installed_but_not_loaded(cli: Cli) -> None:
    result = cli(
        "claude-session", "start", "x", "--db", "mysql", env={"CLAUDE_DB_DISABLE_PLUGINS": "mysql"}
    )
    assert_one_line_error(result, ExitCode.USAGE)
    assert "engine 'mysql' is installed but not loaded" in result.stderr
    assert "CLAUDE_DB_DISABLE_PLUGINS" in result.stderr


def test_a_server_that_cannot_start_reports_its_log(cli: Cli, workdir: Path) -> None:
    # a setting the server refuses, then attach: one clear line with the log's words
    assert cli("claude-session", "start", "busy").code == 0
    try:
        datadir = Path(_session_file("busy")["runtime_state"]["datadir"])  # type: ignore[index]
        cli("claude-session", "stop", "busy")
        conf = datadir / "postgresql.conf"
        good = conf.read_bytes()
        conf.write_bytes(good + b"\nmax_connections = 'many'\n")
        result = cli("claude-session", "attach", "busy", "--no-shell")
        assert_one_line_error(result, ExitCode.NOT_RUNNING)
        assert "server exited; last log lines:" in result.stderr
        assert "postgresql.conf" in result.stderr
        conf.write_bytes(good)
        assert cli("claude-session", "attach", "busy", "--no-shell").code == 0
    finally:  # other tests count the sessions: leave none behind, even on failure
        cli("claude-session", "delete", "busy", "--yes")


def test_wheel_binaries_run_a_session(cli: Cli, workdir: Path) -> None:
    """The pgserver wheel's PostgreSQL 16 works as the local runtime's binaries."""
    from claude_db_postgres.local import _wheel_bindirs

    bindirs = [d for d in _wheel_bindirs() if (d / "postgres").exists()]
    assert bindirs, "pgserver (a dev dependency) is not installed"
    env = {"CLAUDE_DB_POSTGRES_BINDIR": str(bindirs[0])}
    assert cli("claude-session", "start", "wheel", env=env).code == 0
    status = cli("claude-db", "status")
    assert status.stdout.startswith("ready: postgres 16"), status
    assert cli("claude-db", "export", "d.sql").code == 0
    assert cli("claude-session", "delete", "wheel", "--yes").code == 0


def _hostile_dir(path: Path) -> None:
    """A directory as another local user would make it, to catch our server's socket."""
    path.mkdir()
    os.chmod(path, 0o777)
    if os.geteuid() == 0:
        os.chown(path, 4242, 4242)  # a uid that is not the server's
    (path / "planted").touch()


def test_a_long_state_path_gets_a_private_socket_directory(
    cli: Cli, tmp_path: Path, state_root: Path
) -> None:
    """Socket paths are short: a long state path puts the socket in /tmp, in a directory of
    the server's user nobody else can enter, under a name nobody could make in advance."""
    state = fresh_state(tmp_path / ("long-" + "x" * 80), state_root)
    env = {"CLAUDE_DB_STATE_DIR": str(state)}
    server_dir = state / "sessions" / "longpath" / "server"
    # where the socket directory used to go, made first by another user
    digest = hashlib.sha256(str(server_dir).encode()).hexdigest()[:12]
    predictable = Path("/tmp") / f"claude-db-{digest}"
    hostile: list[Path] = []
    try:
        _hostile_dir(predictable)
        hostile.append(predictable)
        assert cli("claude-session", "start", "longpath", env=env).code == 0
        record = session_json(state, "longpath")["runtime_state"]
        server_uid = pwd.getpwnam(record["run_as"]).pw_uid
        sockets = Path(record["socket_dir"])

        def private(path: Path) -> bool:
            info = path.lstat()
            return (stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
                    and info.st_uid == server_uid)

        assert sockets.parent == Path("/tmp") and sockets != predictable
        assert private(sockets) and (server_dir / "run").resolve() == sockets
        assert list(predictable.iterdir()) == [predictable / "planted"]

        # /tmp emptied (a reboot), then another user makes the recorded name first
        assert cli("claude-session", "stop", "longpath", env=env).code == 0
        shutil.rmtree(sockets)
        _hostile_dir(sockets)
        hostile.append(sockets)
        attached = cli("claude-session", "attach", "longpath", "--no-shell", env=env)
        assert attached.code == 0, attached
        again = session_json(state, "longpath")["runtime_state"]
        fresh = Path(again["socket_dir"])
        assert fresh != sockets and private(fresh)
        assert (fresh / f".s.PGSQL.{again['port']}").exists()  # the server's socket is there
        assert list(sockets.iterdir()) == [sockets / "planted"]
        assert cli("claude-db", "status", "--session", "longpath", env=env).code == 0

        assert cli("claude-session", "delete", "longpath", "--yes", env=env).code == 0
        assert not fresh.exists()
        assert all((path / "planted").exists() for path in hostile)  # not ours to remove

        # gc finds a lost session's socket directory through server/run alone
        assert cli("claude-session", "start", "lost", env=env).code == 0
        lost = Path(session_json(state, "lost")["runtime_state"]["socket_dir"])
        assert cli("claude-session", "stop", "lost", env=env).code == 0
        (state / "sessions" / "lost" / "session.json").unlink()
        assert cli("claude-session", "gc", env=env).code == 0
        assert not lost.exists() and not (state / "sessions" / "lost").exists()
    finally:
        cleanup(state)
        for path in hostile:
            shutil.rmtree(path, ignore_errors=True)


def test_an_env_git_tracks_gets_a_warning_and_odd_lines_stay_quietly(
    cli: Cli, workdir: Path
) -> None:
    git = ["git", "-C", str(workdir), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(workdir)], check=True)
    mine = "A=1\nnot a dotenv line\n"
    (workdir / ".env").write_text(mine)
    subprocess.run([*git, "add", ".env"], check=True)
    subprocess.run([*git, "commit", "-qm", "env"], check=True)
    started = cli("claude-session", "start", "tracked")
    assert started.code == 0, started
    # an ignore rule cannot help a tracked file: say so, and no flood about the odd line
    assert "warning: git tracks .env" in started.stderr and "git rm --cached" in started.stderr
    assert "so git ignores it" not in started.stderr
    assert "could not parse" not in started.stderr
    assert (workdir / ".env").read_text().startswith(mine)
    deleted = cli("claude-session", "delete", "tracked", "--yes")
    assert deleted.code == 0 and "could not parse" not in deleted.stderr, deleted
    assert (workdir / ".env").read_text() == mine


def test_a_relative_state_dir_is_taken_from_where_the_command_runs(cli: Cli) -> None:
    # where the servers (running as an unprivileged user) may enter: in the usual state dir
    here = Path(os.environ["CLAUDE_DB_STATE_DIR"])
    relative = {"CLAUDE_DB_STATE_DIR": "relstate"}
    started = cli("claude-session", "start", "rel", cwd=here, env=relative)
    assert started.code == 0, started
    try:
        assert (here / "relstate" / "sessions" / "rel" / "session.json").is_file()
        assert cli("claude-db", "status", cwd=here, env=relative).code == 0
    finally:
        assert cli("claude-session", "delete", "rel", "--yes", cwd=here, env=relative).code == 0
    assert not (here / "relstate" / "sessions" / "rel").exists()


def test_container_options_on_the_local_runtime_are_named_as_ignored(
    cli: Cli, tmp_path: Path
) -> None:
    started = cli("claude-session", "start", "noimg", "--db-image", "postgres:16", "--publish",
                  env={"CLAUDE_SESSION_IMAGE": "node:20"})
    assert started.code == 0, started
    assert ("the local runtime runs no containers: --db-image, --publish, CLAUDE_SESSION_IMAGE "
            "ignored") in started.stderr
    plain = cli("claude-session", "start", "plain", "--workdir", str(tmp_path))
    assert plain.code == 0 and "runs no containers" not in plain.stderr, plain
    for name in ("noimg", "plain"):
        assert cli("claude-session", "delete", name, "--yes").code == 0


def test_values_env_already_had_are_never_replaced_silently(cli: Cli, workdir: Path) -> None:
    mine = "DATABASE_URL=postgresql://mine/db\nOTHER=1\n"
    (workdir / ".env").write_text(mine)
    first = cli("claude-session", "start", "first")
    assert first.code == 0, first
    assert "note: your DATABASE_URL in .env is kept as a comment" in first.stderr, first
    second = cli("claude-session", "start", "second")  # the directory is first's: refused
    assert second.code == 1 and "belongs to session 'first'" in second.stderr, second
    assert cli("claude-session", "delete", "first", "--yes").code == 0
    assert (workdir / ".env").read_text() == mine

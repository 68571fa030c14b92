"""The docker runtime acts only on what carries its session's and state directory's labels,
and a published port stays where .env says (issue items 13.8, 12.12, 12.21)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from claude_db.testing import Cli, assert_one_line_error, read_dotenv
from claude_db.testing.docker import DB_IMAGE, docker, inspect, resources

pytest_plugins = ["claude_db.testing.docker"]
pytestmark = pytest.mark.docker


def started(cli: Cli, name: str, *args: str) -> None:
    result = cli("claude-session", "start", name, *args)
    assert result.code == 0 and "docker runtime" in result.stdout, result


@pytest.fixture
def others() -> Iterator[list[str]]:
    """Containers and volumes made by hand as another owner's; removed at teardown."""
    made: list[str] = []
    yield made
    for thing in reversed(made):
        docker("rm", "-f", "-v", thing, check=False)
        docker("volume", "rm", "-f", thing, check=False)


def volumes_of(container: str) -> list[str]:
    return sorted(m["Name"] for m in inspect(container)["Mounts"] if m["Type"] == "volume")


@pytest.mark.parametrize("running", [False, True])
def test_another_owner_s_container_of_the_session_s_name_is_left_alone(
    cli: Cli, new_name: Callable[[], str], others: list[str], running: bool
) -> None:
    """Ours is gone and someone made a container of its name (with a volume of its own):
    attach refuses, status says ours is stopped, delete removes only ours."""
    name = new_name()
    started(cli, name, "--publish")
    docker("rm", "-f", f"{name}-db")
    others.append(f"{name}-db")
    # another owner's, not started (the old attach removed exactly that) or running
    docker("create" if not running else "run", *(["-d"] if running else []),
           "--name", f"{name}-db", "-v", "/data", "--label", f"claude-db.session={name}",
           DB_IMAGE, "sleep", "infinity")
    theirs = inspect(f"{name}-db")
    their_volumes = volumes_of(f"{name}-db")
    assert their_volumes

    attached = cli("claude-session", "attach", name, "--no-shell")
    assert_one_line_error(attached, 1)
    assert f"container '{name}-db' does not belong to session '{name}'" in attached.stderr, attached
    status = cli("claude-db", "status")
    assert_one_line_error(status, 4)
    assert "stopped" in status.stderr
    psql = cli("claude-db", "psql", "-XAtc", "SELECT 1")  # never run in their container
    assert_one_line_error(psql, 4)
    listed = json.loads(cli("claude-session", "list", "--json").stdout)
    assert [s["status"] for s in listed if s["name"] == name] == ["stopped"]

    assert cli("claude-session", "delete", name, "--yes").code == 0
    now = inspect(f"{name}-db")
    assert now["Id"] == theirs["Id"] and now["State"]["Status"] == theirs["State"]["Status"]
    assert volumes_of(f"{name}-db") == their_volumes
    assert resources(name)["volumes"] == []  # ours went with the session


def test_start_refuses_a_name_another_owner_s_container_has(
    cli: Cli, new_name: Callable[[], str], others: list[str]
) -> None:
    name = new_name()
    others.append(f"{name}-db")
    docker("create", "--name", f"{name}-db", "-v", "/data", DB_IMAGE, "sleep", "infinity")
    theirs, their_volumes = inspect(f"{name}-db")["Id"], volumes_of(f"{name}-db")
    refused = cli("claude-session", "start", name, "--publish")
    assert_one_line_error(refused, 1)
    assert f"container named '{name}-db'" in refused.stderr, refused
    assert inspect(f"{name}-db")["Id"] == theirs and volumes_of(f"{name}-db") == their_volumes
    assert resources(name) == {"containers": [f"{name}-db"], "networks": [], "volumes": []}
    assert name not in cli("claude-session", "list").stdout


def test_a_volume_of_the_session_s_name_that_is_not_ours_is_never_used(
    cli: Cli, new_name: Callable[[], str], others: list[str]
) -> None:
    """Ours is gone and another owner's volume has its name: attach would have mounted it."""
    name = new_name()
    started(cli, name)
    docker("rm", "-f", f"{name}-db")
    docker("volume", "rm", f"{name}-data")
    others.append(f"{name}-data")
    docker("volume", "create", "--label", f"claude-db.session={name}", f"{name}-data")
    attached = cli("claude-session", "attach", name, "--no-shell")
    assert_one_line_error(attached, 1)
    assert f"volume '{name}-data' does not belong to session '{name}'" in attached.stderr, attached
    assert docker("ps", "-aq", "--filter", f"name=^{name}-db$").stdout.strip() == ""
    assert cli("claude-session", "delete", name, "--yes").code == 0
    assert docker("volume", "inspect", f"{name}-data", check=False).returncode == 0


def test_creating_a_volume_that_appeared_meanwhile_refuses_it(
    new_name: Callable[[], str], others: list[str], workdir: Path
) -> None:
    """Docker's volume create returns an existing volume of that name: one made by another
    state directory between our check and our create must not become ours (its gc would
    delete it under us, or ours would delete theirs)."""
    from claude_db.app import get_app
    from claude_db.runtimes.docker.client import client
    from claude_db.runtimes.docker.runtime import NotOursError, names
    from claude_db.session import Session

    name = new_name()
    app = get_app()
    runtime, engine = app.runtime("docker"), app.plugins.engine("postgres")
    session = Session(name=name, workdir=str(workdir), engine="postgres", runtime="docker")
    session.runtime_state = {**names(name), "instance": "feedfacecafe"}
    others.append(f"{name}-data")
    docker("volume", "create", "--label", f"claude-db.session={name}",
           "--label", "claude-db.instance=0123456789ab",
           "--label", "claude-db.state=/elsewhere", f"{name}-data")
    with pytest.raises(NotOursError, match=f"volume '{name}-data' does not belong"):
        runtime._create_volume(client(), session, engine)  # type: ignore[attr-defined]
    labels = inspect(f"{name}-data")["Labels"]
    assert labels["claude-db.state"] == "/elsewhere"


def test_a_published_port_is_pinned_and_survives_docker_restart(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    name = new_name()
    started(cli, name, "--publish")
    port = read_dotenv(workdir)["DB_PORT"]
    bindings = inspect(f"{name}-db")["HostConfig"]["PortBindings"]["5432/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": port}]  # explicit: Docker keeps it
    assert cli("claude-db", "query", "CREATE TABLE p (v int); INSERT INTO p VALUES (7)").code == 0
    docker("restart", f"{name}-db")  # what a daemon restart or a reboot does
    assert docker("port", f"{name}-db").stdout.split()[-1] == f"127.0.0.1:{port}"
    assert cli("claude-db", "status").code == 0
    assert cli("claude-db", "query", "SELECT v FROM p", "--csv").stdout == "v\n7\n"


def test_attach_follows_a_published_port_taken_meanwhile_and_rewrites_env(
    cli: Cli, new_name: Callable[[], str], workdir: Path
) -> None:
    name = new_name()
    started(cli, name, "--publish")
    old_port = int(read_dotenv(workdir)["DB_PORT"])
    assert cli("claude-db", "query", "CREATE TABLE p (v int); INSERT INTO p VALUES (8)").code == 0
    assert cli("claude-session", "stop", name).code == 0
    with socket.socket() as squatter:  # someone else listens on our port now
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        attached = cli("claude-session", "attach", name, "--no-shell")
        assert attached.code == 0, attached
        assert "updated DATABASE_URL" in attached.stderr, attached
        new_port = int(read_dotenv(workdir)["DB_PORT"])
        assert new_port != old_port
        assert cli("claude-db", "status").code == 0
        with psycopg.connect(read_dotenv(workdir)["DATABASE_URL"], connect_timeout=10) as conn:
            assert conn.execute("SELECT v FROM p").fetchone() == (8,)


def test_a_database_not_at_its_recorded_port_is_not_running_until_attach_follows_it(
    cli: Cli, new_name: Callable[[], str], workdir: Path, state_root: Path
) -> None:
    """A container that moved its published port (made before ports were pinned): list and
    status must not say running at the stale address; attach follows it and fixes .env."""
    name = new_name()
    started(cli, name, "--publish")
    real_port = int(read_dotenv(workdir)["DB_PORT"])
    record = state_root / "sessions" / name / "session.json"
    data = json.loads(record.read_text())
    stale = real_port + 1 if real_port < 65535 else real_port - 1
    data["runtime_state"]["host_port"] = stale
    record.write_text(json.dumps(data))
    env = workdir / ".env"
    env.write_text(env.read_text().replace(f":{real_port}/", f":{stale}/")
                   .replace(f"DB_PORT='{real_port}'", f"DB_PORT='{stale}'"))

    status = cli("claude-db", "status")
    assert_one_line_error(status, 4)
    listed = json.loads(cli("claude-session", "list", "--json").stdout)
    assert [s["status"] for s in listed if s["name"] == name] == ["stopped"]
    attached = cli("claude-session", "attach", name, "--no-shell")
    assert attached.code == 0 and "updated DATABASE_URL" in attached.stderr, attached
    assert int(read_dotenv(workdir)["DB_PORT"]) == real_port
    assert cli("claude-db", "status").code == 0


def test_another_machine_with_the_same_state_path_sweeps_nothing_of_ours(
    cli: Cli, new_name: Callable[[], str], tmp_path: Path
) -> None:
    """Machines sharing one Docker engine often have the same state path (root's, a
    devcontainer's): another machine's gc, or the sweep of its next start, must not take
    our sessions for gone ones (found by review: it removed their volume)."""
    import os
    import shutil
    import uuid

    state = tmp_path / "state"  # this test's own: gc sweeps a whole state directory
    env = {"CLAUDE_DB_STATE_DIR": str(state), "CLAUDE_DB_RUNTIME": "docker",
           "CLAUDE_DB_IMAGE": DB_IMAGE}
    name, other = new_name(), new_name()
    assert cli("claude-session", "start", name, env=env).code == 0
    machine_a = tmp_path / "state-of-machine-a"
    try:
        held = resources(name)
        assert held["volumes"], held
        os.rename(state, machine_a)  # the same path, now another machine's state
        swept = cli("claude-session", "gc", "--dry-run", "--json", env=env)
        assert swept.code == 0, swept
        assert name not in swept.stdout, swept
        elsewhere = tmp_path / f"w-{uuid.uuid4().hex[:6]}"
        elsewhere.mkdir()
        assert cli("claude-session", "start", other, "--workdir", str(elsewhere),
                   env=env).code == 0
        assert resources(name) == held  # its container, network and volume all stay
        assert cli("claude-session", "delete", other, "--yes", env=env).code == 0
    finally:
        shutil.rmtree(state, ignore_errors=True)
        if machine_a.exists():
            os.rename(machine_a, state)
        cli("claude-session", "delete", name, "--yes", env=env)
    assert resources(name) == {"containers": [], "networks": [], "volumes": []}

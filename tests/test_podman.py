"""The podman runtime (plugins/podman), for real: Debian's podman, its Docker-compatible API
service, rootful (these tests run as root) and rootless (a user made here, with subuids).

The test images are copied from Docker into Podman's stores by tests/images/podman-load.sh
(no registry is reachable). Every session is named uniquely and everything a test looks
for carries its session's labels or name: other test runs share root's Podman store.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_db.session import STARTING_MARKER
from claude_db.settings import Settings
from claude_db.testing import (
    ClaudeCli,
    CliResult,
    EngineContract,
    assert_one_line_error,
    fresh_environment,
    pip,
    traversable_tmpdir,
)

ROOT = Path(__file__).resolve().parents[1]
LOAD_SCRIPT = ROOT / "tests" / "images" / "podman-load.sh"
POSTGRES_IMAGE = "claude-db-test/postgres:15"
MARIADB_IMAGE = "claude-db-test/mariadb:10.11"
ROOTLESS_USER = "claude-db-podman"
DOCKER_UNAVAILABLE = 7  # README "Exit codes"

if shutil.which("podman") is None:
    pytest.skip("PODMAN TESTS SKIPPED: podman is not installed (apt-get install podman uidmap "
                "slirp4netns fuse-overlayfs)", allow_module_level=True)

pytestmark = [pytest.mark.podman, pytest.mark.slow]  # `./dev test --all` (CI) runs it


@pytest.fixture(scope="session", autouse=True)
def rootful_images() -> None:
    """The test images in root's Podman store (a no-op once they are there)."""
    subprocess.run(["bash", str(LOAD_SCRIPT), POSTGRES_IMAGE, MARIADB_IMAGE], check=True)


def podman(*argv: str, user: str | None = None) -> str:
    prefix = as_user(user) if user else []
    return subprocess.run([*prefix, "podman", *argv], check=True, capture_output=True,
                          text=True, cwd="/").stdout


def as_user(user: str) -> list[str]:
    """``runuser`` to ``user`` with the environment rootless Podman needs."""
    entry = pwd.getpwnam(user)
    return ["runuser", "-u", user, "--", "env", f"HOME={entry.pw_dir}", f"USER={user}",
            f"XDG_RUNTIME_DIR=/run/user/{entry.pw_uid}"]


def labelled(label: str, user: str | None = None) -> list[str]:
    """Everything of Podman's carrying ``label``: containers, pods, volumes, networks."""
    found = [f"container {n}" for n in podman("ps", "-a", "--filter", f"label={label}",
                                              "--format", "{{.Names}}", user=user).split()]
    found += [f"pod {n}" for n in podman("pod", "ls", "--filter", f"label={label}",
                                         "--format", "{{.Name}}", user=user).split()]
    found += [f"volume {n}" for n in podman("volume", "ls", "--filter", f"label={label}",
                                            "--format", "{{.Name}}", user=user).split()]
    found += [f"network {n}" for n in podman("network", "ls", "--filter", f"label={label}",
                                             "--format", "{{.Name}}", user=user).split()]
    return found


def named(session: str, user: str | None = None) -> list[str]:
    """Containers, volumes and networks whose names start with the session's name."""
    found = podman("ps", "-a", "--format", "{{.Names}}", user=user).split()
    found += podman("volume", "ls", "--format", "{{.Name}}", user=user).split()
    found += podman("network", "ls", "--format", "{{.Name}}", user=user).split()
    return [name for name in found if name.startswith(session)]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def cli(tmp_path_factory: pytest.TempPathFactory) -> ClaudeCli:
    state = traversable_tmpdir(tmp_path_factory, "podman-state")
    work = tmp_path_factory.mktemp("podman-work")
    return ClaudeCli(state, work, env={"CLAUDE_DB_RUNTIME": "podman",
                                       "CLAUDE_DB_IMAGE": POSTGRES_IMAGE})


# -- the engine contract, on podman -----------------------------------------------------


class PodmanContract(EngineContract):
    """The contract suite with ``--runtime podman`` (the image: :attr:`docker_image`)."""

    runtimes = ("podman",)


class TestPostgresContractOnPodman(PodmanContract):
    engine_name = "postgres"
    docker_image = POSTGRES_IMAGE


class TestMySQLContractOnPodman(PodmanContract):
    engine_name = "mysql"
    docker_image = MARIADB_IMAGE


# -- the runtime's own promises ---------------------------------------------------------


def start(cli: ClaudeCli, name: str, *args: str, **kwargs: Any) -> dict[str, Any]:
    started = cli.session("start", name, "--json", *args, **kwargs)
    assert started.code == 0, started
    return dict(started.json())


def test_start_delete_cycles_leak_nothing(cli: ClaudeCli) -> None:
    """Containers, volumes, networks, pods: nothing of a deleted session stays, whichever way
    it ended (stopped first, or stopped by Podman itself behind claude-db's back)."""
    state_label = f"claude-db.state={cli.state_dir}"
    for cycle in range(3):
        name = unique(f"podleak{cycle}")
        start(cli, name)
        assert len(labelled(f"claude-db.session={name}")) == 3  # container, volume, network
        assert cli.db("query", "select 1").code == 0
        if cycle == 1:
            cli.ok("claude-session", "stop", name)
        if cycle == 2:
            podman("kill", f"{name}-db")
        cli.ok("claude-session", "delete", name, "--yes")
        assert labelled(f"claude-db.session={name}") == []
        assert named(name) == []
    assert labelled(state_label) == []


def test_delete_removes_only_its_own_volume(cli: ClaudeCli, tmp_path: Path) -> None:
    """Podman 4.3 ORs the label filters of volumes: delete, listing the volumes of its
    instance *and* state directory, removed every session's volume of the state directory
    (with ``force``: their containers too) until it checked the labels itself."""
    kept, deleted = unique("podmine"), unique("podother")
    start(cli, kept)
    try:
        cli.ok("claude-db", "query", "create table t(x int); insert into t values (7)")
        start(cli, deleted, "--workdir", str(tmp_path))
        cli.ok("claude-session", "delete", deleted, "--yes")
        assert named(deleted) == []
        assert sorted(named(kept)) == sorted([f"{kept}-db", f"{kept}-data", f"{kept}-net"])
        queried = cli.db("query", "select x from t", "--session", kept)
        assert queried.code == 0 and "7" in queried.stdout, queried
    finally:
        cli.ok("claude-session", "delete", kept, "--yes")


def test_delete_keep_data_keeps_a_volume_of_its_own(cli: ClaudeCli) -> None:
    name = unique("podkeep")
    start(cli, name)
    cli.ok("claude-db", "query", "create table kept(x int); insert into kept values (42)")
    deleted = cli.ok("claude-session", "delete", name, "--yes", "--keep-data")
    kept = [v for v in podman("volume", "ls", "--format", "{{.Name}}").split()
            if v.startswith(f"{name}-data-kept-")]
    try:
        assert len(kept) == 1, deleted
        assert kept[0] in deleted.stdout + deleted.stderr
        assert labelled(f"claude-db.session={name}") == []
    finally:
        for volume in kept:
            podman("volume", "rm", volume)


def test_containers_get_ulimits_within_the_hosts_hard_limits(cli: ClaudeCli) -> None:
    """Podman's default ulimits (1048576) exceed this host's hard limits: runc refused every
    container ("error setting rlimit ... operation not permitted") until the runtime set
    them; the database and the tools containers run."""
    import resource

    name = unique("podlimits")
    start(cli, name)
    try:
        attrs = json.loads(podman("inspect", f"{name}-db"))[0]
        limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in attrs["HostConfig"]["Ulimits"]}
        nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc_hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        assert limits["RLIMIT_NOFILE"][1] <= nofile_hard
        assert limits["RLIMIT_NPROC"][1] <= min(nproc_hard, 1048576)
        assert limits["RLIMIT_NPROC"][1] <= int(Path("/proc/sys/kernel/pid_max").read_text())
        # the tools container (docker run's counterpart) too: psql -f reads a file of ours
        script = cli.workdir / "q.sql"
        script.write_text("select 6 * 7 as answer;\n")
        shown = cli.db("psql", "-f", "q.sql")
        assert shown.code == 0 and "42" in shown.stdout, shown
    finally:
        cli.ok("claude-session", "delete", name, "--yes")


def test_a_killed_start_is_swept_by_gc_without_a_reaper_container(cli: ClaudeCli) -> None:
    """``kill -9`` of ``start`` once its database container exists: ``gc`` removes every
    Podman resource of it (through the runtime's own delete), and runs no container to do so."""
    name = unique("podgc")
    label = f"claude-db.session={name}"
    starting = subprocess.Popen(
        [str(cli.bin_dir / "claude-session"), "start", name],
        cwd=cli.workdir, env=cli.environment({"CLAUDE_DB_READY_TIMEOUT": "600"}),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while not any(f.startswith("container") for f in labelled(label)):
            assert starting.poll() is None, "start finished before it could be killed"
            time.sleep(0.05)
    finally:
        starting.send_signal(signal.SIGKILL)
        starting.wait()
    assert (cli.state_dir / "sessions" / name / STARTING_MARKER).exists()
    containers_before = set(podman("ps", "-a", "-q").split())
    swept = cli.ok("claude-session", "gc", "--json").json()
    assert any(name in json.dumps(orphan) for orphan in swept), swept
    assert labelled(label) == [] and named(name) == []
    # no reaper was made: no new container names this session or state directory (other
    # tests' containers may appear meanwhile)
    listing = podman("ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Labels}}")
    made = [line for line in listing.splitlines() if line.split()[0] not in containers_before]
    assert [line for line in made if name in line or str(cli.state_dir) in line] == []
    assert not (cli.state_dir / "sessions" / name).exists()


def test_gc_removes_what_a_gone_session_left_in_podman(cli: ClaudeCli) -> None:
    """The session's record is gone (a crash, a failed delete): ``gc`` asks the runtime for
    its leftovers and removes the session's container, network and volume."""
    name = unique("podgone")
    start(cli, name)
    shutil.rmtree(cli.state_dir / "sessions" / name)
    resources = ("container", "network", "volume")
    listed = cli.ok("claude-session", "gc", "--dry-run", "--json").json()
    assert sorted((o["kind"], o["what"]) for o in listed if o["kind"] in resources) == [
        ("container", f"{name}-db"), ("network", f"{name}-net"), ("volume", f"{name}-data")]
    assert len(named(name)) == 3  # a dry run removes nothing
    swept = cli.ok("claude-session", "gc", "--json").json()
    assert all(o["removed"] for o in swept), swept
    assert labelled(f"claude-db.session={name}") == [] and named(name) == []


def test_leftovers_lists_the_state_directorys_resources_by_session(
    cli: ClaudeCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``gc`` asks every runtime (``Runtime.leftovers``): only this state directory's."""
    from claude_db_podman import PodmanRuntime

    name = unique("podleft")
    start(cli, name)
    monkeypatch.setenv("CLAUDE_DB_STATE_DIR", str(cli.state_dir))
    runtime = PodmanRuntime(Settings.from_env())
    try:
        found = runtime.leftovers(cli.state_dir)
        assert set(found) == {name}
        assert sorted((o.kind, o.what) for o in found[name]) == [
            ("container", f"{name}-db"), ("network", f"{name}-net"),
            ("volume", f"{name}-data")]
        assert runtime.leftovers(cli.state_dir / "another") == {}
    finally:
        cli.ok("claude-session", "delete", name, "--yes")
    assert runtime.leftovers(cli.state_dir) == {}


def test_starts_the_api_service_when_none_answers_and_says_so(
    cli: ClaudeCli, tmp_path: Path
) -> None:
    socket = traversable_tmpdir_path(tmp_path) / "podman.sock"
    env = {"CLAUDE_DB_PODMAN_SOCKET": f"unix://{socket}"}
    name = unique("podsvc")
    started = cli.session("start", name, env=env)
    service = _started_service(started)
    try:
        assert started.code == 0, started
        assert f"unix://{socket}" in started.stderr
        # not in this command's directory: a directory removed later broke every container
        # the service started afterwards (conmon: "Failed to get working directory")
        assert service is not None and os.readlink(f"/proc/{service}/cwd") == "/"
        again = cli.db("status", env=env)  # the service stays up: no second start
        assert again.code == 0 and "started Podman's API service" not in again.stderr, again
        cli.ok("claude-session", "delete", name, "--yes", env=env)
    finally:
        if service is not None:
            os.kill(service, signal.SIGTERM)


def test_gc_starts_no_api_service(cli: ClaudeCli, tmp_path: Path) -> None:
    """gc asks every runtime for its leftovers: with no Podman API service answering, the
    podman runtime has nothing of ours to reach, and must not start a long-lived service
    to say so (review finding: gc --dry-run started one)."""
    from claude_db.statedir import state_id

    socket = traversable_tmpdir_path(tmp_path) / "podman.sock"
    env = {"CLAUDE_DB_PODMAN_SOCKET": f"unix://{socket}"}
    state_id(cli.state_dir)  # a state directory that has made container resources
    for argv in (["gc", "--dry-run"], ["gc"]):
        swept = cli.session(*argv, env=env)
        assert swept.code == 0, swept
        assert "started Podman's API service" not in swept.stderr, swept
        assert not socket.exists()


def traversable_tmpdir_path(tmp_path: Path) -> Path:
    directory = tmp_path / "run"
    directory.mkdir()
    return directory


def _started_service(result: CliResult) -> int | None:
    found = re.search(r"started Podman's API service \(pid (\d+)\)", result.stderr)
    return int(found.group(1)) if found else None


def test_without_podman_or_a_service_one_clear_error(cli: ClaudeCli, tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("env", "sh"):  # a PATH without podman
        (bare / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    name = unique("podnone")
    failed = cli.session("start", name, env={
        "PATH": f"{cli.bin_dir}:{bare}",
        "CLAUDE_DB_PODMAN_SOCKET": f"unix://{tmp_path}/nothing.sock",
    })
    assert_one_line_error(failed, DOCKER_UNAVAILABLE)
    assert "podman is not installed" in failed.stderr
    assert not (cli.state_dir / "sessions" / name).exists()


# -- installed as users install it ------------------------------------------------------


@pytest.fixture(scope="session")
def podman_wheels(project_wheels: Path) -> Path:
    return project_wheels


@pytest.fixture(scope="module")
def podman_bin(podman_wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install claude-db-podman`` into a fresh environment, from wheels alone."""
    where = traversable_tmpdir(tmp_path_factory, "podman-venv") / "venv"
    return fresh_environment(podman_wheels, where, "claude-db-podman")


@pytest.fixture(scope="module")
def everyones_bin(podman_wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same on the system's Python, which any user may run (this one may be private)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("ROOTLESS PODMAN TEST SKIPPED: no /usr/bin/python3 for another user")
    where = traversable_tmpdir(tmp_path_factory, "podman-venv-everyone") / "venv"
    subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True)
    pip("--python", str(where / "bin" / "python"), "install", "-q", "--no-index",
        "--find-links", str(podman_wheels), "claude-db-podman")
    return where / "bin"


def test_installed_distribution_registers_the_runtime(podman_bin: Path, cli: ClaudeCli) -> None:
    installed = ClaudeCli(cli.state_dir, cli.workdir, podman_bin, dict(cli.env))
    report = installed.ok("claude-db", "plugins", "--json").json()
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["podman"]["distribution"] == "claude-db-podman"
    assert plugins["podman"]["runtimes"] == ["podman"]
    assert report["runtimes"]["podman"] == "podman"
    assert report["errors"] == []
    name = unique("podinst")
    start(installed, name)
    installed.ok("claude-db", "query", "select 1")
    installed.ok("claude-session", "delete", name, "--yes")
    assert named(name) == []


# -- rootless ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rootless_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A user with subuids and subgids, its runtime directory, and the postgres test image
    in its own Podman store; the API service it started is stopped at the end."""
    if os.geteuid() != 0:
        pytest.skip("ROOTLESS PODMAN TESTS SKIPPED: they make a user, and must run as root")
    try:
        entry = pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        # no check: another run may make it meanwhile (getpwnam fails if no one did)
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", ROOTLESS_USER])
        entry = pwd.getpwnam(ROOTLESS_USER)
    for table, flag in (("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")):
        if not re.search(rf"^{ROOTLESS_USER}:", Path(table).read_text(), re.M):
            subprocess.run(["usermod", flag, "300000-365535", ROOTLESS_USER], check=True)
    runtime_dir = Path(f"/run/user/{entry.pw_uid}")
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(runtime_dir, entry.pw_uid, entry.pw_gid)
    # slirp4netns (rootless networking) opens /dev/net/tun: 0666 on a stock Debian (udev),
    # 0600 on some minimal machines, where every rootless container with a network fails
    # with 'open("/dev/net/tun"): Permission denied'
    tun = Path("/dev/net/tun")
    if tun.exists() and tun.stat().st_mode & 0o006 != 0o006:
        tun.chmod(0o666)
    # The overlay driver (native rootless overlay, kernel >= 5.13): on the vfs driver Podman
    # may pick instead, an image from `docker save` gets a 0700 root directory, and every
    # process that is not the container's root fails ("libc.so.6: Permission denied")
    config = Path(entry.pw_dir) / ".config" / "containers" / "storage.conf"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text('[storage]\ndriver = "overlay"\n')
        for path in (config, config.parent, config.parent.parent):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    archives = traversable_tmpdir(tmp_path_factory, "podman-archives")
    archive = archives / POSTGRES_IMAGE.replace("/", "_").replace(":", "_")
    with open(f"{archive}.tar", "wb") as out:
        subprocess.run(["docker", "save", POSTGRES_IMAGE], stdout=out, check=True)
    os.chmod(f"{archive}.tar", 0o644)
    subprocess.run([*as_user(ROOTLESS_USER), f"DOCKER_SAVE_DIR={archives}", "bash",
                    str(LOAD_SCRIPT), POSTGRES_IMAGE], check=True, cwd="/")
    yield ROOTLESS_USER
    socket = runtime_dir / "podman" / "podman.sock"
    for line in subprocess.run(["pgrep", "-u", ROOTLESS_USER, "-f", "-a", "podman system "
                                "service"], capture_output=True, text=True).stdout.splitlines():
        pid, _, command = line.partition(" ")
        if command.endswith(f"unix://{socket}"):
            os.kill(int(pid), signal.SIGTERM)


def test_rootless_session_as_a_user_with_subuids(rootless_user: str, everyones_bin: Path) -> None:
    """A non-root user's session: Podman's API service started as them, the container in
    their own store, published on 127.0.0.1 (rootless addresses are not the host's)."""
    entry = pwd.getpwnam(rootless_user)
    home = Path(entry.pw_dir)
    work = home / unique("work")
    state = home / unique("state")
    name = unique("podrootless")
    env = [f"PATH={everyones_bin}:/usr/bin:/bin", f"CLAUDE_DB_STATE_DIR={state}",
           "CLAUDE_DB_RUNTIME=podman", f"CLAUDE_DB_IMAGE={POSTGRES_IMAGE}"]
    subprocess.run([*as_user(rootless_user), "mkdir", str(work)], check=True, cwd="/")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*as_user(rootless_user), *env, *argv], capture_output=True,
                              text=True, cwd=work)

    try:
        started = run("claude-session", "start", name, "--json")
        assert started.returncode == 0, started
        assert json.loads(started.stdout)["runtime"] == "podman"
        dotenv = (work / ".env").read_text()
        assert "DB_HOST=127.0.0.1" in dotenv, dotenv
        queried = run("claude-db", "query", "select current_user, 6 * 7 as answer")
        assert queried.returncode == 0 and "42" in queried.stdout, queried
        shell = subprocess.run([*as_user(rootless_user), *env, "claude-db", "shell"],
                               input="select 40 + 2;\n", capture_output=True, text=True,
                               cwd=work)
        assert shell.returncode == 0 and "42" in shell.stdout, shell
        exported = run("claude-db", "export", "dump.sql")
        assert exported.returncode == 0, exported
        assert (work / "dump.sql").stat().st_uid == entry.pw_uid  # the user's, not a subuid's
        assert len(labelled(f"claude-db.session={name}", user=rootless_user)) == 3
        assert named(name) == []  # not in root's store
    finally:
        deleted = run("claude-session", "delete", name, "--yes")
    assert deleted.returncode == 0, deleted
    assert labelled(f"claude-db.session={name}", user=rootless_user) == []
    assert named(name, user=rootless_user) == []

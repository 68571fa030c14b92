"""The docker runtime's test harness: the docker CLI on the test daemon, what Docker holds
of a session, and the fixtures of the docker tests (``pytest_plugins =
["claude_db.testing.docker"]``).

The test command (``./dev test``) starts dockerd and builds the images; when either is
missing these fixtures fail loudly rather than skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from claude_db.testing.cli import BIN
from claude_db.testing.safety import cli_env

DB_IMAGE = "claude-db-test/postgres:15"
SESSION_IMAGE = "claude-db-test/session:latest"
SETUP_HINT = "run ./dev test, or bash tests/images/build.sh (starts dockerd, builds the images)"


def docker(*args: str, check: bool = True, input: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI against the test daemon (the default socket)."""
    environment = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        env={**environment, **(env or {})}, timeout=180,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def inspect(name: str) -> Any:
    """``docker inspect``'s data of one object."""
    return json.loads(docker("inspect", name).stdout)[0]


def resources(name: str) -> dict[str, list[str]]:
    """Everything Docker holds for session ``name``: by label and by the names we give."""
    label = f"label=claude-db.session={name}"
    found = {
        "containers": docker("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout,
        "networks": docker("network", "ls", "--filter", label, "--format", "{{.Name}}").stdout,
        "volumes": docker("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout,
    }
    result = {kind: sorted(text.split()) for kind, text in found.items()}
    for kind, candidates in (("containers", [name, f"{name}-db"]),
                             ("networks", [f"{name}-net"]), ("volumes", [f"{name}-data"])):
        singular = kind[:-1]
        for candidate in candidates:
            if docker(singular, "inspect", candidate, check=False).returncode == 0:
                result[kind] = sorted({*result[kind], candidate})
    return result


NOTHING: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}


def remove_everything(name: str) -> None:
    """Best-effort teardown of whatever a failed test left of session ``name``."""
    for label in (f"claude-db.session={name}", f"claude-db.kept-from={name}"):
        where = ("--filter", f"label={label}")
        if ids := docker("ps", "-aq", *where, check=False).stdout.split():
            docker("rm", "-f", "-v", *ids, check=False)
        if nets := docker("network", "ls", "-q", *where, check=False).stdout.split():
            docker("network", "rm", *nets, check=False)
        if vols := docker("volume", "ls", "-q", *where, check=False).stdout.split():
            docker("volume", "rm", "-f", *vols, check=False)


def session_workdir(tmp_path: Path, label: str) -> Path:
    path = tmp_path / label
    path.mkdir()
    return path


#: the test images the docker runtime's tests use (built by tests/images/build.sh)
DOCKER_IMAGES = {"postgres": DB_IMAGE, "mysql": "claude-db-test/mariadb:10.11"}
#: every engine of DOCKER_IMAGES on every runtime, to parametrize ``engine`` with (tests/
#: conftest.py's ``engine_session``): "<engine>" runs locally, "<engine>@docker" in containers
EVERYWHERE = [*DOCKER_IMAGES, *(pytest.param(f"{engine}@docker", marks=pytest.mark.docker)
                                for engine in DOCKER_IMAGES)]


def docker_cli_env(state: Path) -> dict[str, str]:
    return {**cli_env(state), "CLAUDE_DB_RUNTIME": "docker",
            "CLAUDE_DB_IMAGE": DOCKER_IMAGES["postgres"]}


def docker_ids(kind: str, *filters: str) -> list[str]:
    """IDs of Docker containers/networks/volumes matching ``--filter`` arguments."""
    listing = {"container": ["ps", "-aq"], "network": ["network", "ls", "-q"],
               "volume": ["volume", "ls", "-q"]}[kind]
    return docker(*listing, *[arg for item in filters for arg in ("--filter", item)]).stdout.split()


def docker_leftovers(name: str) -> dict[str, list[str]]:
    """Everything Docker still holds of session ``name`` (by label)."""
    label = f"label=claude-db.session={name}"
    return {kind: docker_ids(kind, label) for kind in ("container", "network", "volume")}


NOTHING_IN_DOCKER: dict[str, list[str]] = {"container": [], "network": [], "volume": []}


def start_docker_with_frozen_database(
    state: Path, name: str, workdir: Path
) -> subprocess.Popen[bytes]:
    """Run a docker ``start`` until its database container runs, then pause that container
    (``docker pause``): the start can no longer become ready, so it is caught half-way."""
    proc = subprocess.Popen(
        [str(BIN / "claude-session"), "start", name], cwd=workdir, env=docker_cli_env(state),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180  # a safety net against hanging, not a measurement
    running = (f"label=claude-db.session={name}", "label=claude-db.role=database",
               "status=running")
    while time.monotonic() < deadline and proc.poll() is None:
        if ids := docker_ids("container", *running):
            docker("pause", ids[0])
            return proc
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    raise AssertionError(f"start ended ({proc.returncode}) before its database container was "
                         f"seen running: {err.decode()}")


def unpause(name: str) -> None:
    for cid in docker_ids("container", f"label=claude-db.session={name}", "status=paused"):
        docker("unpause", cid, check=False)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_daemon() -> None:
    """A Docker engine and the test images: fail (never skip) without them."""
    info = docker("info", "--format", "{{.ServerVersion}}", check=False)
    if info.returncode != 0:
        pytest.fail(f"no Docker engine answers ({info.stderr.strip()}); {SETUP_HINT}")
    for image in (DB_IMAGE, SESSION_IMAGE):
        if docker("image", "inspect", image, check=False).returncode != 0:
            pytest.fail(f"test image {image} is missing; {SETUP_HINT}")


@pytest.fixture
def docker_env(docker_daemon: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """New sessions use the docker runtime and the locally built PostgreSQL image."""
    monkeypatch.setenv("CLAUDE_DB_RUNTIME", "docker")
    monkeypatch.setenv("CLAUDE_DB_IMAGE", DB_IMAGE)


@pytest.fixture
def new_name(docker_env: None) -> Iterator[Callable[[], str]]:
    """Unique session names (Docker names are global); their leftovers go at teardown."""
    made: list[str] = []

    def make() -> str:
        name = f"t{uuid.uuid4().hex[:10]}"
        made.append(name)
        return name

    yield make
    for name in made:
        # the session's record too (the state directory is shared by the whole run)...
        subprocess.run([str(BIN / "claude-session"), "delete", name,
                        "--yes"], capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        remove_everything(name)  # ...and whatever Docker still holds, whatever happened

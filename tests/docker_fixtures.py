"""Fixtures for the docker runtime's tests (``pytest_plugins = ["docker_fixtures"]``).

The test command (``./dev test``) starts dockerd and builds the images; when either is
missing these fixtures fail loudly rather than skip.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from docker_support import DB_IMAGE, SESSION_IMAGE, SETUP_HINT, docker, remove_everything


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
        subprocess.run([str(Path(sys.executable).parent / "claude-session"), "delete", name,
                        "--yes"], capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        remove_everything(name)  # ...and whatever Docker still holds, whatever happened

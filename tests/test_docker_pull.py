"""Pulling a database image that is not on the Docker engine yet, from a real local registry;
``--runtime auto`` where the image can be neither found nor pulled.

No public registry is reachable here: Debian's ``docker-registry`` serves on 127.0.0.1
(Docker trusts loopback registries without TLS), holding an image with a layer the engine
does not have, so the pull really downloads.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from claude_db.testing import BIN, Cli, assert_one_line_error, run_on_terminal
from claude_db.testing.docker import DB_IMAGE, docker

pytest_plugins = ["claude_db.testing.docker"]
pytestmark = pytest.mark.docker


@pytest.fixture
def registry(tmp_path: Path, docker_daemon: None) -> Iterator[str]:
    """A registry on 127.0.0.1 (``host:port``), stopped at the end."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("Debian's docker-registry is not installed (./dev test installs it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'blobs'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    log = open(tmp_path / "registry.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180  # a hang guard: a loaded machine is slow
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = (tmp_path / "registry.log").read_text()
                    pytest.fail(f"docker-registry did not start: {output}")
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def remote_image(registry: str) -> Iterator[str]:
    """An image only the registry has: the test PostgreSQL image plus a layer of its own."""
    tag = f"{registry}/claude-db-test/pulled:{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {DB_IMAGE}\nRUN head -c 4000000 /dev/urandom > /var/tmp/unique-layer\n"
    docker("build", "-q", "-t", tag, "-", input=dockerfile, env={"DOCKER_BUILDKIT": "0"})
    try:
        docker("push", tag)
        docker("rmi", tag)  # its own layer goes with it: pulling must download it
        yield tag
    finally:
        docker("rmi", "-f", tag, check=False)


def test_a_missing_image_is_pulled_with_progress_on_a_terminal(
    cli: Cli, new_name: Callable[[], str], workdir: Path, remote_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLAUDE_DB_IMAGE", remote_image)
    name = new_name()
    code, shown = run_on_terminal([str(BIN / "claude-session"), "start", name], cwd=workdir)
    assert code == 0, shown
    assert f"pulling {remote_image}: " in shown and " MB" in shown, shown
    assert docker("image", "inspect", remote_image, check=False).returncode == 0
    assert cli("claude-db", "status").code == 0
    assert cli("claude-session", "delete", name, "--yes").code == 0

    # without a terminal the pull is silent
    docker("rmi", remote_image)
    quiet = new_name()
    result = cli("claude-session", "start", quiet)
    assert result.code == 0, result
    assert "pulling" not in result.stderr, result
    assert cli("claude-session", "delete", quiet, "--yes").code == 0


# -- `--runtime auto` where the database image cannot be had ---------------------------------


def started_runtime(cli: Cli, name: str) -> str:
    [shown] = [s for s in json.loads(cli("claude-session", "list", "--json").stdout)
               if s["name"] == name]
    return str(shown["runtime"])


def test_auto_takes_local_when_the_image_is_neither_there_nor_pullable(
    cli: Cli, new_name: Callable[[], str], state: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Docker engine answers, no registry does (this machine): ``auto`` starts the
    session on the local runtime and says why in one line; ``--runtime docker`` fails."""
    absent = f"claude-db-test/postgres:absent-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CLAUDE_DB_IMAGE", absent)
    monkeypatch.setenv("CLAUDE_DB_RUNTIME", "auto")
    name = new_name()
    started = cli("claude-session", "start", name)
    assert started.code == 0, started
    assert started_runtime(cli, name) == "local"
    [why] = [line for line in started.stderr.splitlines() if "cannot be pulled" in line]
    assert why.startswith("the docker runtime cannot run a postgres session here: image "
                          f"'{absent}' is not on the Docker engine and cannot be pulled ("), why
    assert why.endswith("; using the local runtime"), why
    assert cli("claude-db", "query", "SELECT 1").code == 0
    assert cli("claude-session", "delete", name, "--yes").code == 0

    elsewhere = tmp_path / "explicit"
    elsewhere.mkdir()
    refused = cli("claude-session", "start", new_name(), "--runtime", "docker",
                  "--workdir", str(elsewhere))
    assert_one_line_error(refused, 1)
    assert f"image '{absent}' is not on the Docker engine and cannot be pulled" in refused.stderr
    assert json.loads(cli("claude-session", "list", "--json").stdout) == []


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """``host:port`` of a registry on 127.0.0.1 that accepts connections and never answers
    (a firewall that drops them, a hung proxy)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for connection in held:
            connection.close()


def test_auto_asks_a_silent_registry_once_a_while(
    cli: Cli, new_name: Callable[[], str], state: Path, tmp_path: Path, silent_registry: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A registry that does not answer is given a bounded time, then remembered: the next
    ``auto`` start does not wait for it again."""
    monkeypatch.setenv("CLAUDE_DB_IMAGE", f"{silent_registry}/claude-db-test/none:1")
    monkeypatch.setenv("CLAUDE_DB_RUNTIME", "auto")
    notes = []
    for label in ("first", "second"):
        workdir = tmp_path / label
        workdir.mkdir()
        name = new_name()
        started = cli("claude-session", "start", name, "--workdir", str(workdir))
        assert started.code == 0, started
        assert started_runtime(cli, name) == "local"
        notes += [line for line in started.stderr.splitlines() if "cannot be pulled" in line]
        assert cli("claude-session", "delete", name, "--yes").code == 0
    first, second = notes
    assert first.endswith("(its registry did not answer in 5 s); using the local runtime"), first
    assert re.search(r"\(its registry did not answer 5 s, \d+ s ago\); using the local runtime$",
                     second), second

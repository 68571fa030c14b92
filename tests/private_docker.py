"""A private Docker engine for the tests that must not use (or restart) the user's daemon
(``pytest_plugins = ["private_docker"]``).

``remote_engine``: "another machine": a dockerd in its own network namespace
(tests/images/private-dockerd.sh), reached over TCP with TLS and over ssh as a remote
engine, or on its unix socket as a local one (its containers' networks are routed from
here), and stopped and started again by tests that need a daemon restart. Made once per
test run, only when a test asks, with the test images loaded from the main daemon
(``docker save | docker load``), and stopped (by pid) at the end.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from claude_db.testing.docker import (
    DB_IMAGE,
    SESSION_IMAGE,
    docker_daemon,  # noqa: F401 - a fixture
)

SCRIPT = Path(__file__).parent / "images" / "private-dockerd.sh"


@dataclass
class PrivateEngine:
    directory: Path
    values: dict[str, str]  # what private-dockerd.sh wrote to DIR/env

    @property
    def socket(self) -> str:
        return f"unix://{self.values['SOCKET']}"

    @property
    def address(self) -> str:
        return self.values["ADDR"]

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The docker CLI on this engine, by its unix socket (as its own machine sees it)."""
        proc = subprocess.run(
            ["docker", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
            env={**os.environ, "DOCKER_HOST": self.socket}, timeout=180,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr}")
        return proc

    def tls_env(self) -> dict[str, str]:
        """What a user sets to reach it over TCP with TLS. REQUESTS_CA_BUNDLE, which many
        machines set, must not replace the engine's CA (it did: "certificate verify
        failed")."""
        return {"DOCKER_HOST": f"tcp://{self.address}:2376", "DOCKER_TLS_VERIFY": "1",
                "DOCKER_CERT_PATH": self.values["CERTS"],
                "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}

    def ssh_env(self) -> dict[str, str]:
        """What a user sets to reach it over ssh; their ssh config (here: an ``ssh`` on PATH
        that adds ours) names the key and the known host."""
        return {"DOCKER_HOST": f"ssh://root@{self.address}",
                "PATH": f"{self.directory / 'bin'}:{os.environ['PATH']}"}

    def load(self, *images: str) -> None:
        saved = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE,
                                 env={k: v for k, v in os.environ.items() if k != "DOCKER_HOST"})
        loaded = subprocess.run(["docker", "-H", self.socket, "load", "-q"], stdin=saved.stdout,
                                capture_output=True, text=True, timeout=600)
        assert saved.wait() == 0 and loaded.returncode == 0, loaded.stderr

    def start(self) -> None:
        """Start its dockerd again (same roots) after a test stopped it."""
        subprocess.run(["bash", str(SCRIPT), "start", str(self.directory)], check=True,
                       capture_output=True, timeout=300)

    @property
    def dockerd_pid(self) -> int:
        return int((self.directory / "dockerd.pid").read_text())


def _read_env(directory: Path) -> dict[str, str]:
    lines = (directory / "env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _up(directory: Path) -> PrivateEngine:
    made = subprocess.run(["bash", str(SCRIPT), "up", str(directory)],
                          capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        pytest.fail(f"could not start a private dockerd: {made.stderr.strip()[-2000:]}")
    return PrivateEngine(directory, _read_env(directory))


def _down(engine: PrivateEngine) -> None:
    stopped = subprocess.run(["bash", str(SCRIPT), "down", str(engine.directory)],
                             capture_output=True, text=True, timeout=300)
    if stopped.returncode != 0:
        pytest.fail(f"could not stop the private dockerd: {stopped.stderr.strip()[-2000:]}")


@pytest.fixture(scope="session")
def remote_engine(
    docker_daemon: None,  # noqa: F811  (the main daemon holds the images to load)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrivateEngine]:
    engine = _up(tmp_path_factory.mktemp("remote-engine"))
    try:
        bin_dir = engine.directory / "bin"
        bin_dir.mkdir()
        config = engine.directory / "ssh" / "config"
        config.write_text(
            f"Host {engine.address}\n  IdentityFile {engine.values['SSH_KEY']}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {engine.values['SSH_KNOWN_HOSTS']}\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n"
        )
        wrapper = bin_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F "{config}" "$@"\n')
        wrapper.chmod(0o755)
        engine.load(DB_IMAGE, SESSION_IMAGE)
        yield engine
    finally:
        _down(engine)



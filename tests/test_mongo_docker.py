"""The MongoDB engine on the docker runtime, with a stand-in for the official ``mongo`` image.

No registry is reachable, so ``mongo:8`` cannot be pulled. plugins/mongo/standin-image
(install.sh) builds ``claude-db-test/mongo-standin``: the SecantusDB wire-protocol server
behind an entrypoint with the official image's contract (``MONGO_INITDB_ROOT_USERNAME`` and
``_PASSWORD``, a temporary localhost-only server during init, data in ``/data/db``) and npm's
``mongosh``. It has no ``mongodump``/``mongorestore`` (not installable here), so dumps take
the driver-level archive, from the host, to the container's address.

The whole engine contract (claude_db.testing.EngineContract) runs on it, through the real
CLIs: start, readiness, URL and .env, query, export/reset/import, reset's confirmation,
the shell, stop/attach, delete leaving nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import pytest

from claude_db.testing import ContractSession, EngineContract

# the session-wide mongosh fixtures live with the stand-in tests
from test_mongo_standin import mongosh_dir, mongosh_package  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = ROOT / "plugins" / "mongo" / "standin-image"
BASE_IMAGE = "claude-db-test/debian:bookworm"
STANDIN_IMAGE = "claude-db-test/mongo-standin:latest"
LABEL = "org.claude-db.test.hash"
CACHE = Path(os.environ.get("CLAUDE_DB_TEST_CACHE", "/var/cache/claude-db-test"))


def docker(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=1800)
    if check and proc.returncode != 0:
        pytest.fail(f"docker {' '.join(argv[:3])} failed: {proc.stderr.strip()[-2000:]}")
    return proc


@pytest.fixture(scope="session")
def mongo_standin_image(mongosh_package: Path) -> str:  # noqa: F811
    """The stand-in image, built once and reused while its inputs stay the same."""
    if shutil.which("docker") is None or docker("info", check=False).returncode != 0:
        pytest.fail("no Docker engine answers: run the tests with ./dev test")
    base = docker("image", "inspect", "-f", "{{.Id}}", BASE_IMAGE, check=False)
    if base.returncode != 0:
        pytest.fail(f"{BASE_IMAGE} is missing: bash tests/images/build.sh builds it")
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (Node.js 20+, which runs mongosh) is not installed")
    node = os.path.realpath(node)
    secantus = metadata.version("SecantusDB")
    mongosh = json.loads(
        (mongosh_package / "node_modules" / "mongosh" / "package.json").read_text()
    )["version"]
    digest = hashlib.sha256()
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    for value in (base.stdout.strip(), secantus, mongosh, node_version, sys.version[:4]):
        digest.update(value.encode() + b"\0")
    for path in sorted(CONTEXT.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(CONTEXT).as_posix().encode() + path.read_bytes())
    key = digest.hexdigest()[:16]
    current = docker("image", "inspect", "-f", f'{{{{ index .Config.Labels "{LABEL}" }}}}',
                     STANDIN_IMAGE, check=False)
    if current.returncode == 0 and current.stdout.strip() == key:
        return STANDIN_IMAGE

    CACHE.mkdir(parents=True, exist_ok=True)
    # tests/images/build.sh's lock: its final `docker image prune` would remove this build's
    # intermediate images (they carry the base image's label) while they are in use
    with open(CACHE / "build.lock", "w") as lock, tempfile.TemporaryDirectory(
        dir=CACHE, prefix="mongo-standin-ctx."
    ) as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ctx = Path(tmp)
        shutil.copytree(CONTEXT, ctx, dirs_exist_ok=True)
        # containers may not reach PyPI: wheels of the stand-in and its dependencies, built
        # here at the versions this environment runs
        constraints = ctx / "constraints.txt"
        constraints.write_text("".join(
            f"{d.metadata['Name']}=={d.version}\n" for d in metadata.distributions()
            if d.metadata["Name"] and not d.metadata["Name"].startswith("claude-db")
        ))
        wheels = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             "--wheel-dir", str(ctx / "wheels"), "-c", str(constraints), f"SecantusDB=={secantus}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1200,
        )
        if wheels.returncode != 0:
            pytest.fail(f"pip wheel SecantusDB failed: {wheels.stderr[-2000:]}")
        shutil.copytree(mongosh_package / "node_modules", ctx / "mongosh" / "node_modules",
                        symlinks=True)
        shutil.copy2(node, ctx / "node")
        # `docker run` + `docker commit` rather than `docker build`: no dangling intermediate
        # images for a concurrent `docker image prune` to take away mid-build
        container = f"mongo-standin-build-{key}-{os.getpid()}"
        try:
            install = subprocess.run(
                ["docker", "run", "--name", container, "-v", f"{ctx}:/ctx:ro", BASE_IMAGE,
                 "bash", "/ctx/install.sh"],
                capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800,
            )
            if install.returncode != 0:
                pytest.fail(f"building {STANDIN_IMAGE} failed: {install.stderr[-3000:]}")
            docker("commit",
                   "--change", 'ENTRYPOINT ["docker-entrypoint.sh"]',
                   "--change", 'CMD ["mongod"]',
                   "--change", "EXPOSE 27017",
                   "--change", "VOLUME /data/db",
                   "--change", f"LABEL {LABEL}={key}",
                   container, STANDIN_IMAGE)
        finally:
            docker("rm", "-f", container, check=False)
    return STANDIN_IMAGE


class TestMongoContract(EngineContract):
    """The contract every engine keeps, for MongoDB on the docker runtime."""

    engine_name = "mongo"
    runtimes = ("docker",)
    docker_image = STANDIN_IMAGE

    seed_queries = (
        json.dumps({"insert": "contract_items", "documents": [
            {"_id": 1, "label": "one"}, {"_id": 2, "label": "it's ünïcode ✓"},
        ]}),
    )
    probe_query = '{"find": "contract_items", "sort": {"_id": 1}}'
    expected_rows: ClassVar[list[Any]] = [
        {"_id": 1, "label": "one"}, {"_id": 2, "label": "it's ünïcode ✓"},
    ]
    invalid_query = '{"noSuchCommand": 1}'
    shell_input = "db.runCommand({ping: 1}).ok + 41\n"
    shell_expected = "42"

    @pytest.fixture(scope="class")
    @classmethod
    def contract_bin_dir(cls, mongo_standin_image: str) -> Path:
        return Path(sys.executable).parent  # (and the stand-in image is built first)

    def test_container_follows_the_official_image_contract(
        self, contract_session: ContractSession
    ) -> None:
        container = f"{contract_session.name}-db"
        inspected = json.loads(docker("inspect", container).stdout)[0]
        env = dict(item.split("=", 1) for item in inspected["Config"]["Env"])
        session_env = contract_session.env()
        assert env["MONGO_INITDB_ROOT_USERNAME"] == session_env["DB_USER"] == "root"
        assert env["MONGO_INITDB_ROOT_PASSWORD"] == session_env["DB_PASSWORD"]
        assert env["MONGO_INITDB_DATABASE"] == session_env["DB_NAME"] == "appdb"
        mounts = {m["Destination"]: m for m in inspected["Mounts"]}
        assert mounts["/data/db"]["Type"] == "volume"
        assert session_env["DATABASE_URL"].endswith(":27017/appdb?authSource=admin")
        assert session_env["MONGODB_URI"] == session_env["DATABASE_URL"]
        # the server inside demands authentication
        anonymous = docker("exec", container, "mongosh", "--quiet", "--eval",
                           "db.getSiblingDB('appdb').runCommand({listCollections: 1}).ok",
                           check=False)
        assert anonymous.returncode != 0 and "requires authentication" in anonymous.stderr + \
            anonymous.stdout, anonymous

    def test_dump_is_the_driver_archive_without_mongodump(
        self, contract_session: ContractSession
    ) -> None:
        from claude_db_mongo.archive import MAGIC

        assert docker("exec", f"{contract_session.name}-db", "sh", "-c", "command -v mongodump",
                      check=False).returncode != 0
        self.reset(contract_session)
        self.seed(contract_session)
        dumped = contract_session.db("export", "-")
        assert dumped.code == 0, dumped
        assert dumped.raw_stdout.startswith(MAGIC)

    def test_mongosh_command_runs_in_the_container(
        self, contract_session: ContractSession
    ) -> None:
        self.reset(contract_session)
        self.seed(contract_session)
        result = contract_session.db(
            "mongosh", "--eval", "print(db.getName(), db.contract_items.countDocuments({}))",
            input="",
        )
        assert result.code == 0, result
        assert "appdb 2" in result.stdout


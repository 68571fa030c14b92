"""Start -> first query: local and docker sessions against doing it by hand, and the peers."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from bench import pg
from bench.context import Context, answer_work, missing_module, peer_python, read_dotenv, run_peer
from bench.harness import (
    Case,
    Check,
    Goal,
    Measurement,
    Sample,
    Skip,
    Stopwatch,
    Variant,
    every,
    same_values,
)
from bench.system import run, service_user

RAW_PASSWORD = "bench-raw-password"  # the by-hand clusters'; sessions get random ones
DOCKER_IMAGE = "claude-db-test/postgres:15"
POLL = 0.05  # the by-hand docker readiness loop


# -- local ---------------------------------------------------------------------------------


@contextlib.contextmanager
def local_start(ctx: Context) -> Iterator[list[Case]]:
    binaries = pg.bindir()
    raw = pg.RawCluster(ctx.ws, binaries, RAW_PASSWORD)
    # the product's cached cluster is built by the first start ever: not what is measured
    ctx.start_session("ls-warm", "--runtime", "local")
    ctx.ws.cli("claude-session", "delete", "--yes", "ls-warm")
    ctx.settle()

    def product() -> Measurement:
        name = ctx.ws.unique("ls")
        workdir = ctx.ws.dir(f"work-{name}")
        templates = ctx.ws.state / "templates"
        spare = templates.is_dir() and any(p.suffix == ".spare" for p in templates.iterdir())
        with Stopwatch() as sw:
            ctx.ws.cli("claude-session", "start", "--runtime", "local", name, cwd=workdir)
            answer = pg.first_query(read_dotenv(workdir)["DATABASE_URL"])
        work = {**answer_work(answer), "spare_copy_ready": spare}
        ctx.ws.cli("claude-session", "delete", "--yes", name)
        ctx.settle()
        return sw.measurement(work)

    def baseline() -> Measurement:
        with Stopwatch() as sw:
            server = raw.start_copy(ctx.ws.unique("raw"))
            answer = pg.first_query(server.url)
        work = answer_work(answer)
        server.stop()
        return sw.measurement(work)

    variants = [
        Variant("claude-db", "product", "claude-session start --runtime local; first query "
                "through DATABASE_URL from .env", product),
        Variant("by-hand", "baseline", "cp -a <initialised cluster>; pg_ctl start -w "
                "(as postgres); first query", baseline),
    ]
    notes = []
    user = service_user()
    unavailable = missing_module("pytest_postgresql", "pytest-postgresql")
    python = peer_python(user)
    if unavailable is None and isinstance(python, str):
        unavailable = python
    if unavailable is None:
        base = ctx.ws.dir("pytest-postgresql", owner=user)

        def peer() -> Measurement:
            return run_peer("pytest_postgresql_start.py", {
                "pg_ctl": str(binaries / "pg_ctl"), "base": str(base), "dbname": pg.DATABASE,
                "query": pg.FIRST_QUERY, "cwd": str(base),
            }, user=user)

        variants.append(Variant("pytest-postgresql", "peer", "postgresql_proc + postgresql "
                                "fixtures' work (initdb each time); first query", peer))
    else:
        notes.append(f"peer pytest-postgresql left out: {unavailable}")
    yield [Case(
        "local-start", "local start -> first query", variants,
        rounds=ctx.rounds(full=10, quick=2), warmup=ctx.options.warmup,
        goal=Goal(max_ratio=1.5, beat_peers=True), verify=_verify_local, notes=notes,
    )]


def _verify_local(samples: list[Sample]) -> list[Check]:
    return [
        same_values(samples, "answer", "same first query answered (user, database, version)"),
        same_values(samples, "server", "same server binary, run as the same OS user"),
        every(samples, "server runs unprivileged", lambda w: w["server"]["user"] != "root",
              "no server ran as root"),
    ]


# -- docker --------------------------------------------------------------------------------


def docker_prerequisite(ctx: Context) -> str | None:
    """Why the docker case cannot run here, or None."""
    if not shutil.which("docker"):
        return "no docker client installed"
    info = run(["docker", "version", "--format", "{{.Server.Version}}"], check=False, timeout=20)
    if info.returncode != 0:
        return "no Docker daemon answers (start one: tests/images/docker-up.sh)"
    image = run(["docker", "image", "inspect", DOCKER_IMAGE], check=False, timeout=20)
    if image.returncode != 0:
        return f"image {DOCKER_IMAGE} is not built (bash tests/images/build.sh)"
    plugins = ctx.ws.cli("claude-db", "plugins", "--json", check=False)
    loaded = json.loads(plugins.stdout or b"{}") if plugins.returncode == 0 else {}
    runtimes = loaded.get("runtimes", {})
    if "docker" not in runtimes:
        return "the product has no docker runtime yet"
    return None


@contextlib.contextmanager
def docker_start(ctx: Context) -> Iterator[list[Case]]:
    reason = docker_prerequisite(ctx)
    if reason:
        raise Skip(reason)
    image_id = run(["docker", "image", "inspect", "-f", "{{.Id}}", DOCKER_IMAGE]).stdout.decode()

    def product() -> Measurement:
        name = ctx.ws.unique("ds")
        workdir = ctx.ws.dir(f"work-{name}")
        with Stopwatch() as sw:
            ctx.ws.cli("claude-session", "start", "--runtime", "docker", "--db-image",
                       DOCKER_IMAGE, name, cwd=workdir)
            answer = pg.first_query(read_dotenv(workdir)["DATABASE_URL"], local=False)
        work = _docker_work(answer, f"{name}-db")
        ctx.ws.cli("claude-session", "delete", "--yes", name)
        return sw.measurement(work)

    def baseline() -> Measurement:
        name = f"claude-db-bench-{ctx.ws.root.name}-{ctx.ws.unique('raw')}".lower()
        with Stopwatch() as sw:
            run(["docker", "run", "-d", "--name", name, "-e", "POSTGRES_USER=postgres",
                 "-e", f"POSTGRES_PASSWORD={RAW_PASSWORD}", "-e", f"POSTGRES_DB={pg.DATABASE}",
                 DOCKER_IMAGE])
            ip = run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}"
                      "{{.IPAddress}}{{end}}", name]).stdout.decode().strip()
            answer = _poll(pg.url(5432, RAW_PASSWORD).replace("127.0.0.1", ip), timeout=120)
        work = _docker_work(answer, name)
        run(["docker", "rm", "-f", "-v", name])
        return sw.measurement(work)

    variants = [
        Variant("claude-db", "product", "claude-session start --runtime docker; first query "
                "through DATABASE_URL from .env", product),
        Variant("by-hand", "baseline", "docker run -d; docker inspect (address); first query "
                f"polled every {POLL * 1000:.0f} ms", baseline),
    ]
    notes = [f"image {DOCKER_IMAGE} ({image_id.strip()[:19]})"]
    unavailable = missing_module("testcontainers", "testcontainers")
    if unavailable is None:
        def peer() -> Measurement:
            return run_peer("testcontainers_start.py", {
                "image": DOCKER_IMAGE, "password": RAW_PASSWORD, "dbname": pg.DATABASE,
                "query": pg.FIRST_QUERY,
            }, describe=lambda answer: _docker_work(answer, answer["container"]))

        variants.append(Variant("testcontainers", "peer", "PostgresContainer(image).start(); "
                                "first query", peer))
    else:
        notes.append(f"peer testcontainers left out: {unavailable}")
    try:
        yield [Case(
            "docker-start", "docker start -> first query", variants,
            rounds=ctx.rounds(full=8, quick=1), warmup=ctx.options.warmup,
            goal=Goal(max_ratio=1.2, beat_peers=True), verify=_verify_docker, notes=notes,
        )]
    finally:  # by-hand containers a failed round left behind
        prefix = f"claude-db-bench-{ctx.ws.root.name}-".lower()
        left = run(["docker", "ps", "-aq", "--filter", f"name={prefix}"], check=False)
        for container in left.stdout.decode().split():
            run(["docker", "rm", "-f", "-v", container], check=False)


def _poll(conninfo: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return pg.first_query(conninfo, local=False)
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(POLL)


def _docker_work(answer: dict[str, Any], container: str) -> dict[str, Any]:
    image = subprocess.run(["docker", "inspect", "-f", "{{.Image}}", container],
                           capture_output=True, text=True).stdout.strip()
    return {"answer": [answer["user"], answer["database"], answer["version"]], "image": image}


def _verify_docker(samples: list[Sample]) -> list[Check]:
    return [
        same_values(samples, "answer", "same first query answered (user, database, version)"),
        same_values(samples, "image", "same image"),
    ]

"""The benchmark measures what it says: paired order, statistics, same work, clean exit.

Nothing here asserts how fast anything is. The harness's arithmetic is checked on known
inputs; the real cases run once at a tiny scale against real servers and their JSON is
checked for shape and for the proof that product and baseline did the same work.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is a directory of the repository, not an installed package

from bench.harness import (  # noqa: E402
    Case,
    Goal,
    Measurement,
    Sample,
    Variant,
    every,
    run_case,
    same_values,
    schedule,
    summarise,
)
from bench.system import processes_under  # noqa: E402

BIN = Path(sys.executable).parent


def fixed(name: str, role: Any, times: list[float], log: list[str]) -> Variant:
    """A variant whose runs take the given (reported) times, recording when it ran."""
    remaining = list(times)

    def run() -> Measurement:
        log.append(name)
        return Measurement(remaining.pop(0), {"answer": 1, "run": len(log)})

    return Variant(name, role, f"{name} command", run)


# -- the harness -----------------------------------------------------------------------------


def test_rounds_alternate_product_baseline_peer_with_warmup_first() -> None:
    log: list[str] = []
    case = Case("c", "title", [
        fixed("p", "product", [9.0, 1.0, 2.0, 3.0], log),
        fixed("b", "baseline", [9.0, 2.0, 2.0, 2.0], log),
        fixed("x", "peer", [9.0, 4.0, 4.0, 4.0], log),
    ], rounds=3, warmup=1)
    first = [(r, v.name) for r, v in schedule(case)][:4]
    assert first == [(-1, "p"), (-1, "b"), (-1, "x"), (0, "p")]
    result = run_case(case)
    assert log == ["p", "b", "x"] * 4
    assert result["order"] == log
    product = result["variants"][0]
    assert [s["warmup"] for s in product["samples"]] == [True, False, False, False]
    assert [s["seq"] for s in product["samples"]] == [0, 3, 6, 9]
    assert product["n"] == 3  # the warm-up's 9.0 is recorded, not counted
    assert product["median"] == 2.0 and product["max"] == 3.0


def test_ratios_goals_and_peer_comparison() -> None:
    log: list[str] = []
    case = Case("c", "t", [
        fixed("p", "product", [1.0, 1.5, 2.0], log),
        fixed("b", "baseline", [1.0, 1.0, 1.0], log),
        fixed("x", "peer", [3.0, 3.0, 3.0], log),
    ], rounds=3, warmup=0, goal=Goal(max_ratio=1.4, beat_peers=True))
    result = run_case(case)
    assert result["ratio"] == pytest.approx(1.5)
    assert result["paired_ratio"] == pytest.approx(1.5)
    assert result["peer_ratios"] == {"x": pytest.approx(0.5)}
    assert result["goal_met"] is False  # 1.5x misses 1.4x although it beats the peer
    assert "MISSED" in result["goal_detail"] and "faster" in result["goal_detail"]

    met = summarise(Case("c", "t", case.variants[:2], rounds=1, goal=Goal(max_ratio=1.6)),
                    [Sample("p", 0, 0, False, 1.5, {}), Sample("b", 0, 1, False, 1.0, {})])
    assert met["goal_met"] is True
    no_goal = summarise(Case("c", "t", case.variants[:2], rounds=1),
                        [Sample("p", 0, 0, False, 1.0, {}), Sample("b", 0, 1, False, 1.0, {})])
    assert no_goal["goal_met"] is None


def test_same_work_checks_catch_a_difference() -> None:
    alike = [Sample("p", 0, 0, False, 1, {"v": [1]}), Sample("b", 0, 1, False, 1, {"v": [1]})]
    differ = [Sample("p", 0, 0, False, 1, {"v": [1]}), Sample("b", 0, 1, False, 1, {"v": [2]})]
    missing = [Sample("p", 0, 0, False, 1, {}), Sample("b", 0, 1, False, 1, {})]
    assert same_values(alike, "v").ok
    assert not same_values(differ, "v").ok
    assert not same_values(missing, "v").ok
    assert not every(differ, "one", lambda w: w["v"] == [1], "").ok


def test_a_case_must_start_with_product_then_baseline() -> None:
    log: list[str] = []
    with pytest.raises(ValueError):
        Case("c", "t", [fixed("b", "baseline", [1], log), fixed("p", "product", [1], log)],
             rounds=1)


# -- real runs ------------------------------------------------------------------------------


def run_bench(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[
        subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", str(out)],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=900, stdin=subprocess.DEVNULL,
    )
    assert out.exists(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def workspace_of(output: str) -> Path:
    match = re.search(r"workspace (\S+)", output)
    assert match, output
    return Path(match.group(1))


def assert_shape(result: dict[str, Any]) -> None:
    assert result["schema"] == "claude-db-bench/1"
    for key in ("cpu", "cores", "memory_gib", "kernel", "date", "load_average"):
        assert key in result["machine"]
    assert result["versions"]["claude-db"]
    assert result["summary"]["cases"] == len(result["cases"])


def assert_paired(case: dict[str, Any]) -> None:
    names = [v["name"] for v in case["variants"]]
    assert [v["role"] for v in case["variants"]][:2] == ["product", "baseline"]
    rounds = case["rounds"] + case["warmup"]
    assert case["order"] == names * rounds
    for variant in case["variants"]:
        assert variant["n"] == case["rounds"]
        assert len(variant["samples"]) == rounds
        assert all(s["seconds"] > 0 for s in variant["samples"])
    product, baseline = case["variants"][:2]
    assert case["ratio"] == pytest.approx(product["median"] / baseline["median"])
    assert case["checks"], f"{case['name']} checks nothing"
    failed = [c for c in case["checks"] if not c["ok"]]
    assert not failed and case["same_work"], failed


@pytest.mark.slow  # a whole benchmark run of its own: `./dev test --all` (CI) runs it
def test_local_cases_measure_the_same_work_and_leave_nothing(tmp_path: Path) -> None:
    proc, result = run_bench(
        tmp_path, "--only", "local-start,reset,dumps,cli,density", "--rounds", "1",
        "--warmup", "0", "--reset-rows", "500", "--dump-mb", "1", "--sessions", "2",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_shape(result)
    cases = {c["name"]: c for c in result["cases"]}
    assert set(cases) == {"local-start", "reset", "reset-no-snapshot", "export", "import",
                          "query", "help", "density"}
    for case in cases.values():
        assert case["status"] == "ok", case
        assert_paired(case)

    start = cases["local-start"]
    works = [s["work"] for v in start["variants"] for s in v["samples"]]
    assert {tuple(w["answer"][:2]) for w in works} == {("postgres", "appdb")}
    assert len({w["server"]["exe"] for w in works}) == 1  # the same binaries on every side
    assert {w["server"]["user"] for w in works} == {"postgres"} or os.geteuid() != 0
    assert [v["name"] for v in start["variants"]][2:] == ["pytest-postgresql"]

    for variant in cases["reset"]["variants"] + cases["reset-no-snapshot"]["variants"]:
        (sample,) = variant["samples"]
        assert sample["work"] == {"tables_before": 50, "rows_before": 500,
                                  "tables_after": 0, "rows_after": 0}
        assert sample["cpu_seconds"] > 0
    assert cases["query"]["variants"][0]["samples"][0]["work"]["values"] == ["1"]
    assert "docker" not in cases["query"]["metrics"]["query_imports"]
    assert cases["density"]["metrics"]["claude-db"]["processes_per_server"] >= 1

    root = workspace_of(proc.stdout)
    assert not root.exists(), "the workspace was not removed"
    assert processes_under(root) == [], "a server of the benchmark outlived it"


def test_a_case_without_its_prerequisite_is_skipped_with_the_reason(tmp_path: Path) -> None:
    proc, result = run_bench(tmp_path, "--only", "docker-start",
                             env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (case,) = result["cases"]
    assert case["status"] == "skipped"
    assert "Docker" in case["reason"]
    assert "SKIPPED: " + case["reason"] in proc.stdout


def test_bad_options_are_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "nonsense"], cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert "unknown group(s): nonsense" in proc.stderr


@pytest.mark.docker
@pytest.mark.slow  # a whole benchmark run of its own: `./dev test --all` (CI) runs it
def test_docker_case_compares_the_same_image(tmp_path: Path) -> None:
    proc, result = run_bench(tmp_path, "--only", "docker-start", "--rounds", "1", "--warmup", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (case,) = result["cases"]
    assert case["status"] == "ok", case  # a skip here means the Docker setup is missing
    assert_paired(case)
    images = {s["work"]["image"] for v in case["variants"] for s in v["samples"]}
    assert len(images) == 1 and images.pop().startswith("sha256:")
    assert processes_under(workspace_of(proc.stdout)) == []


def test_the_query_path_imports_no_other_engine_docker_or_rich(tmp_path: Path) -> None:
    """The one-off query is the hot path: the lazy imports that keep it fast stay lazy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAUDE_")}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def hang_up() -> None:  # every connection (libpq retries without SSL)
            with contextlib.suppress(OSError):  # the listener closed: the test is over
                while True:
                    listener.accept()[0].close()

        # the query gets as far as connecting, then fails
        threading.Thread(target=hang_up, daemon=True).start()
        url = f"postgresql://nobody:nothing@127.0.0.1:{listener.getsockname()[1]}/none"
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", str(BIN / "claude-db"), "query", "select 1"],
            env={**env, "DATABASE_URL": url, "CLAUDE_DB_STATE_DIR": str(tmp_path)},
            capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL,
        )
    assert "error: " in proc.stderr
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    assert "psycopg" in modules  # the measurement works: it sees what was imported
    # hashlib loads OpenSSL (~2 ms): only what makes passwords or hashes paths needs it
    heavy = ("docker", "rich", "bson", "pymongo", "pymysql", "hashlib")
    assert not {m for m in modules if m.split(".")[0] in heavy}

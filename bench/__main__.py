"""``python -m bench [--quick] [--only GROUP,...]``: run the benchmark, print, write JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.cases import GROUPS
from bench.context import Context, Options
from bench.harness import SCHEMA, Skip, failed, format_seconds, run_case, skipped
from bench.system import REPO, Workspace, machine, run

RESULTS = REPO / "bench" / "results"


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="claude-db against raw baselines and peers, as alternating paired runs.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds, a 10 MB dump database, 6 density sessions "
                        "(under two minutes)")
    parser.add_argument("--only", metavar="GROUP[,GROUP]",
                        help=f"run only these groups ({', '.join(GROUPS)})")
    parser.add_argument("--rounds", type=int, help="counted rounds per case (default per case)")
    parser.add_argument("--warmup", type=int,
                        help="uncounted rounds first (1, quick 0: caches are warmed untimed)")
    parser.add_argument("--dump-mb", type=int, help="size of the export/import database "
                        "(200, quick 10)")
    parser.add_argument("--sessions", type=int,
                        help="density: sessions at once (20, quick 6)")
    parser.add_argument("--reset-rows", type=int, default=100_000,
                        help="reset: rows in all tables (100000)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="where to write the result (default bench/results/<time>.json)")
    args = parser.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(GROUPS)
        if unknown:
            parser.error(f"unknown group(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    options = Options(quick=args.quick, rounds=args.rounds, warmup=warmup,
                      dump_mb=args.dump_mb, sessions=args.sessions or (6 if args.quick else 20),
                      reset_rows=args.reset_rows)
    groups = args.only.split(",") if args.only else list(GROUPS)
    started = datetime.now(UTC)
    ws = Workspace()
    ctx = Context(ws, options)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "mode": "quick" if args.quick else "full",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "cases": [],
    }
    say(f"claude-db bench ({result['mode']}) on {result['machine']['cpu']}, "
        f"{result['machine']['cores']} cores; workspace {ws.root}")
    try:
        for name in groups:
            say(f"\n== {name}")
            began = time.monotonic()
            result["cases"] += run_group(name, ctx)
            say(f"   ({name}: {time.monotonic() - began:.0f} s)")
    finally:
        for note in ws.cleanup():
            say(f"cleanup: {note}")
    finished = datetime.now(UTC)
    result["finished_at"] = finished.isoformat(timespec="seconds")
    result["seconds"] = round((finished - started).total_seconds(), 1)
    result["load_average_at_end"] = list(os.getloadavg())  # the machine's at start: "machine"
    result["summary"] = summary(result["cases"])
    path = write(result, args.json)
    say("\n" + table(result))
    loads = [result["machine"]["load_average"][0], result["load_average_at_end"][0]]
    say(f"\n{result['seconds']:.0f} s at load average {loads[0]:.1f} -> {loads[1]:.1f}; "
        f"result written to {path}")
    bad = result["summary"]["errors"] + result["summary"]["checks_failed"]
    return 1 if bad else 0


def run_group(name: str, ctx: Context) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    try:
        with GROUPS[name](ctx) as cases:
            for case in cases:
                say(f"-- {case.name}: {case.title} ({case.rounds} rounds + {case.warmup} warm-up)")
                for note in case.notes:
                    say(f"   note: {note}")
                try:
                    outcome = run_case(case, progress=say)
                except Exception as exc:
                    outcome = failed(case.name, case.title, exc)
                results.append(outcome)
                say(describe(outcome))
    except Skip as exc:
        results.append(skipped(name, name, str(exc)))
        say(f"   SKIPPED: {exc}")
    except Exception as exc:  # the group's own setup or cleanup failed
        results.append(failed(name, name, exc))
        say(describe(results[-1]))
    return results


def describe(case: dict[str, Any]) -> str:
    if case["status"] != "ok":
        return f"   {case['status'].upper()}: {case['reason']}"
    lines = []
    for v in case["variants"]:
        cpu = f", cpu {format_seconds(v['cpu_median'])}" if v.get("cpu_median") else ""
        lines.append(f"   {v['name']:<18} {v['role']:<8} median {format_seconds(v['median']):>9}"
                     f"  (min {format_seconds(v['min'])}, max {format_seconds(v['max'])}, "
                     f"n={v['n']}{cpu})  {v['command']}")
    lines.append(f"   ratio {case['ratio']:.2f}x (paired {case['paired_ratio']:.2f}x, "
                 f"client cpu {_x(case['cpu_ratio'])}); goal: {case['goal_detail']}")
    for check in case["checks"]:
        lines.append(f"   check {'ok' if check['ok'] else 'FAILED'}: {check['name']}: "
                     f"{check['detail']}")
    if case["metrics"]:
        lines.append(f"   metrics: {json.dumps(case['metrics'])}")
    return "\n".join(lines)


def summary(cases: list[dict[str, Any]]) -> dict[str, int]:
    ok = [c for c in cases if c["status"] == "ok"]
    return {
        "cases": len(cases),
        "goals_met": sum(1 for c in ok if c["goal_met"] is True),
        "goals_missed": sum(1 for c in ok if c["goal_met"] is False),
        "skipped": sum(1 for c in cases if c["status"] == "skipped"),
        "errors": sum(1 for c in cases if c["status"] == "error"),
        "checks_failed": sum(1 for c in ok for check in c["checks"] if not check["ok"]),
    }


def table(result: dict[str, Any]) -> str:
    """The results as a Markdown table (what bench/README.md shows)."""
    rows = ["| case | claude-db | baseline | ratio | client cpu ratio | goal | "
            "peers (claude-db / peer) |", "|---|---|---|---|---|---|---|"]
    for case in result["cases"]:
        if case["status"] != "ok":
            rows.append(f"| {case['name']} | {case['status']}: {case['reason']} | | | | | |")
            continue
        product, baseline, *peers = case["variants"]
        goal = case["goal_detail"] if case["goal_met"] is not None else "-"
        peer_text = "; ".join(
            f"{p['name']} {format_seconds(p['median'])} ({case['peer_ratios'][p['name']]:.2f}x)"
            for p in peers) or "-"
        rows.append(f"| {case['name']} | {format_seconds(product['median'])} | "
                    f"{format_seconds(baseline['median'])} ({baseline['name']}) | "
                    f"{case['ratio']:.2f}x | {_x(case['cpu_ratio'])} | {goal} | {peer_text} |")
    return "\n".join(rows)


def _x(ratio: float | None) -> str:
    return "-" if ratio is None or ratio != ratio else f"{ratio:.2f}x"


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for dist in ("claude-db", "claude-db-postgres", "pytest-postgresql", "testcontainers",
                 "psycopg", "typer"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False)
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                check=False)
    found["git"] = (commit.stdout.decode().strip() + ("+dirty" if dirty.stdout.strip() else "")
                    if commit.returncode == 0 else None)
    try:
        from bench.pg import bindir

        out = run([str(bindir() / "postgres"), "--version"]).stdout.decode().strip()
        found["postgres"] = f"{out} ({bindir()})"
    except Exception:
        found["postgres"] = None
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True, check=False) if _has("docker") else None
    found["docker"] = docker.stdout.strip() if docker and docker.returncode == 0 else None
    return found


def _has(program: str) -> bool:
    return shutil.which(program) is not None


def write(result: dict[str, Any], path: Path | None) -> Path:
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{result['started_at'].replace(':', '')}-{result['mode']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_clean(result), indent=2, allow_nan=False, default=str)
    path.write_text(text + "\n")
    return path


def say(text: str) -> None:
    print(text, flush=True)


def _clean(value: Any) -> Any:
    """JSON has no NaN: replace it with null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())

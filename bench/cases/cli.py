"""CLI latency: ``claude-db query "select 1"`` against ``psql -c "select 1"``, and ``--help``."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import pg
from bench.context import Context
from bench.harness import (
    Case,
    Check,
    Goal,
    Measurement,
    Sample,
    Stopwatch,
    Variant,
    every,
    same_values,
)
from bench.system import BIN, run

SESSION = "cli"
SQL = "select 1"
#: the least a Python CLI does to answer through psycopg: start, import, connect, query, print
FLOOR = ("import sys, psycopg\n"
         "with psycopg.connect(sys.argv[1]) as conn:\n"
         "    for row in conn.execute(" + repr(SQL) + "): print(*row)")
#: modules the one-off query path has no use for (slow to import)
HEAVY = ("docker", "rich", "pydantic", "typer", "click", "pluggy", "importlib.metadata",
         "psycopg", "dotenv", "asyncio")


@contextlib.contextmanager
def cli(ctx: Context) -> Iterator[list[Case]]:
    workdir, env = ctx.start_session(SESSION, "--runtime", "local")
    psql = pg.bindir() / "psql"
    # a shell inside the session: its PG* variables, as `claude-session attach` sets them
    user_env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "CLAUDE_", "DB_"))}
    user_env.update({k: v for k, v in env.items() if k.startswith("PG")})

    def query_product() -> Measurement:
        with Stopwatch() as sw:
            out = ctx.ws.cli("claude-db", "query", SQL, cwd=workdir).stdout
        return sw.measurement({"values": _values(out.decode())})

    def query_baseline() -> Measurement:
        with Stopwatch() as sw:
            out = run([str(psql), "-c", SQL], env=user_env, cwd=workdir).stdout
        return sw.measurement({"values": _values(out.decode())})

    def query_floor() -> Measurement:
        with Stopwatch() as sw:
            out = run([sys.executable, "-c", FLOOR, env["DATABASE_URL"]], cwd=workdir).stdout
        return sw.measurement({"values": _values(out.decode())})

    def help_product() -> Measurement:
        with Stopwatch() as sw:
            out = ctx.ws.cli("claude-db", "--help", cwd=workdir).stdout
        return sw.measurement({"usage": b"Usage" in out, "commands": _commands(out)})

    def help_baseline() -> Measurement:
        with Stopwatch() as sw:
            run([sys.executable, "-c", "pass"], cwd=workdir)
        return sw.measurement({"usage": True, "commands": None})

    def verify_query(samples: list[Sample]) -> list[Check]:
        return [same_values(samples, "values", "both printed the same value")]

    def verify_help(samples: list[Sample]) -> list[Check]:
        product = [s for s in samples if s.variant == "claude-db"]
        return [every(product, "help printed usage and the commands",
                      lambda w: bool(w["usage"]) and "query" in (w["commands"] or []),
                      "usage and the command list printed")]

    imports = import_profile(ctx, workdir)
    try:
        yield [
            Case("query", f'claude-db query "{SQL}" latency', [
                Variant("claude-db", "product", f'claude-db query "{SQL}" (session from .env)',
                        query_product),
                Variant("psql", "baseline", f'psql -c "{SQL}" (PG* variables set)', query_baseline),
                Variant("python+psycopg", "reference", "python -c 'import psycopg; connect; "
                        "query; print': the floor of any CLI that queries through psycopg",
                        query_floor),
            ], rounds=ctx.rounds(full=20, quick=4), warmup=ctx.options.warmup,
                goal=Goal(max_ratio=3), verify=verify_query, metrics=lambda _: imports),
            Case("help", "claude-db --help latency", [
                Variant("claude-db", "product", "claude-db --help", help_product),
                Variant("python", "baseline", "python -c pass (the interpreter's own start)",
                        help_baseline),
            ], rounds=ctx.rounds(full=10, quick=3), warmup=ctx.options.warmup,
                verify=verify_help),
        ]
    finally:
        ctx.ws.cli("claude-session", "delete", "--yes", SESSION, check=False)


def import_profile(ctx: Context, workdir: Path) -> dict[str, Any]:
    """Which heavy modules ``claude-db query`` imports, and its total import time (untimed)."""
    proc = run([sys.executable, "-X", "importtime", str(BIN / "claude-db"), "query", SQL],
               env=ctx.ws.product_env(), cwd=workdir)
    modules: set[str] = set()
    total_us = 0
    for line in proc.stderr.decode(errors="replace").splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if match:
            total_us += int(match[1])
            modules.add(match[2])
    return {
        "query_import_ms": round(total_us / 1000, 1),
        "query_imports": [name for name in HEAVY
                          if any(m == name or m.startswith(name + ".") for m in modules)],
    }


def _values(output: str) -> list[str]:
    """The data cells of a one-row, one-column result, whatever the table style."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if lines and set(lines[1:2]) and set(lines[1]) <= {"-", "+"}:
        return [line for line in lines[2:] if not re.fullmatch(r"\(\d+ rows?\)", line)]
    return lines


def _commands(help_text: bytes) -> list[str]:
    return re.findall(r"^\W*(\w[\w-]*)\s{2,}", help_text.decode(errors="replace"), re.M)

"""Density: many local sessions at once, and the memory each idle session's server takes."""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import pg
from bench.cases.start import RAW_PASSWORD
from bench.context import Context, read_dotenv
from bench.harness import Case, Check, Measurement, Sample, Stopwatch, Variant, every
from bench.system import BIN, tree_memory

SETTLE = 3.0  # seconds of idleness before memory is read (background workers started)
SETTLE_QUICK = 1.5


@contextlib.contextmanager
def density(ctx: Context) -> Iterator[list[Case]]:
    count = ctx.options.sessions
    settle = SETTLE_QUICK if ctx.options.quick else SETTLE
    raw = pg.RawCluster(ctx.ws, pg.bindir(), RAW_PASSWORD)
    # the product's cached cluster is built by the first start ever: not what is measured here
    ctx.start_session("density-warm", "--runtime", "local")
    ctx.ws.cli("claude-session", "delete", "--yes", "density-warm")
    ctx.settle()

    def product() -> Measurement:
        names = [ctx.ws.unique("dn") for _ in range(count)]
        workdirs = [ctx.ws.dir(f"work-{name}") for name in names]
        env = ctx.ws.product_env()
        with Stopwatch() as sw:
            procs = [subprocess.Popen([str(BIN / "claude-session"), "start", "--runtime", "local",
                                       name], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for name, workdir in zip(names, workdirs, strict=True)]
            failures = [p.communicate()[1].decode().strip() for p in procs]
        try:
            failed = [f for p, f in zip(procs, failures, strict=True) if p.returncode != 0]
            if failed:
                raise RuntimeError(f"{len(failed)} of {count} starts failed: {failed[0]}")
            urls = [read_dotenv(w)["DATABASE_URL"] for w in workdirs]
            work = _idle_memory(urls, settle)
        finally:
            deletes = [subprocess.Popen([str(BIN / "claude-session"), "delete", "--yes", name],
                                        env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                       for name in names]
            for p in deletes:
                p.wait()
            ctx.settle()
        return sw.measurement(work)

    def baseline() -> Measurement:
        names = [ctx.ws.unique("rawdn") for _ in range(count)]
        with Stopwatch() as sw, ThreadPoolExecutor(count) as pool:
            servers = list(pool.map(raw.start_copy, names))
        try:
            work = _idle_memory([s.url for s in servers], settle)
        finally:
            with ThreadPoolExecutor(count) as pool:
                list(pool.map(lambda s: s.stop(), servers))
        return sw.measurement(work)

    def verify(samples: list[Sample]) -> list[Check]:
        return [
            every(samples, f"all {count} servers answered", lambda w: w["answered"] == count,
                  f"{count} distinct servers answered their first query"),
            every(samples, "memory read for every server",
                  lambda w: len(w["pss_kib"]) == count and min(w["pss_kib"]) > 0,
                  "PSS and RSS from /proc for every server"),
        ]

    def metrics(samples: list[Sample]) -> dict[str, Any]:
        figures: dict[str, Any] = {"sessions": count, "settle_seconds": settle}
        for variant in ("claude-db", "by-hand"):
            mine = [s.work for s in samples if s.variant == variant and not s.warmup]
            pss = [kib for w in mine for kib in w["pss_kib"]]
            rss = [kib for w in mine for kib in w["rss_kib"]]
            procs = [n for w in mine for n in w["processes"]]
            figures[variant] = {
                "pss_mib_per_server_median": round(statistics.median(pss) / 1024, 1),
                "pss_mib_per_server_max": round(max(pss) / 1024, 1),
                "rss_mib_per_server_median": round(statistics.median(rss) / 1024, 1),
                "processes_per_server": statistics.median(procs),
                "pss_mib_total": round(sum(pss) / 1024 / max(1, len(mine)), 1),
            }
        return figures

    yield [Case(
        "density", f"{count} local sessions at once: start all, then idle memory", [
            Variant("claude-db", "product", f"{count} x claude-session start --runtime local, "
                    "all at once", product),
            Variant("by-hand", "baseline", f"{count} x (cp -a + pg_ctl start -w), all at once",
                    baseline),
        ], rounds=ctx.rounds(full=2, quick=1), warmup=0, verify=verify, metrics=metrics,
        notes=["time = until every server answered; memory = PSS/RSS of each server and its "
               f"children from /proc after {settle:g} s idle (PostgreSQL's default settings on "
               "the by-hand side)"],
    )]


def _idle_memory(urls: list[str], settle: float) -> dict[str, Any]:
    """Query every server once (which server answered), let them idle, read their memory."""
    answers = [pg.first_query(url) for url in urls]
    postmasters = {a["postmaster"] for a in answers if a.get("postmaster")}
    time.sleep(settle)
    memory = [tree_memory(pid) for pid in sorted(postmasters)]
    return {
        "answered": len(postmasters),
        "pss_kib": [m["pss_kib"] for m in memory],
        "rss_kib": [m["rss_kib"] for m in memory],
        "processes": [m["processes"] for m in memory],
    }

"""``claude-session fork`` of a big PostgreSQL session against copying its data directory.

ext4: the fork (a base backup copied file by file, then its own server started, ready,
``.env`` written) against ``cp -a`` of the source's data directory (the copy alone).
XFS with reflink (a loop device made here, as root): the fork of the big session against
the fork of a small one, to show its time does not grow with the size, and against
``cp -a --reflink=always`` of the data directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import pg
from bench.context import Context, read_dotenv
from bench.harness import Case, Check, Goal, Measurement, Sample, Stopwatch, Variant, every
from bench.system import Workspace, run

ROW_BYTES = 1000  # a row of `rows()`'s table, as stored (no TOAST: under 2 kB)


@contextlib.contextmanager
def fork(ctx: Context) -> Iterator[list[Case]]:
    big_mb = 100 if ctx.options.quick else 1024
    rounds = ctx.rounds(full=5, quick=2)
    cases = [_ext4_case(ctx, big_mb, rounds)]
    xfs = _xfs(ctx.ws) if os.geteuid() == 0 and shutil.which("mkfs.xfs") else None
    try:
        if xfs is not None:
            cases.append(_xfs_case(ctx, xfs, big_mb, rounds))
        else:
            ctx.notes.append("fork-xfs skipped: needs root and mkfs.xfs for a loop device")
        yield cases
    finally:
        if xfs is not None:
            _unmount(ctx, xfs)


def _ext4_case(ctx: Context, size_mb: int, rounds: int) -> Case:
    source = _source(ctx, ctx.ws, "forksrc", size_mb)
    datadir = Path(source["datadir"])

    def product() -> Measurement:
        return _fork(ctx.ws, ctx.ws.product_env(), source)

    def baseline() -> Measurement:
        dest = ctx.ws.root / "cp-copy"
        with Stopwatch() as sw:
            run(["cp", "-a", str(datadir), str(dest)])
        size = _du(dest)
        shutil.rmtree(dest)
        return sw.measurement({"bytes": size})

    return Case("fork-ext4", f"fork of a {size_mb} MB PostgreSQL session on ext4", [
        Variant("claude-db", "product", "claude-session fork SRC NEW (local runtime)", product),
        Variant("cp -a", "baseline", "cp -a DATADIR COPY (the copy alone)", baseline),
    ], rounds=rounds, warmup=ctx.options.warmup, goal=Goal(max_ratio=1.2),
        verify=lambda samples: _verify(samples, source, "copy"))


def _xfs_case(ctx: Context, mount: Path, size_mb: int, rounds: int) -> Case:
    ws = Workspace(mount / "bench")  # its product_env() has its state directory
    env = ws.product_env()
    big = _source(ctx, ws, "xbig", size_mb, env)
    small = _source(ctx, ws, "xsmall", 10, env)

    def product() -> Measurement:
        return _fork(ws, env, big)

    def baseline() -> Measurement:
        return _fork(ws, env, small)

    def reflink_copy() -> Measurement:
        dest = ws.root / "cp-reflink"
        with Stopwatch() as sw:
            run(["cp", "-a", "--reflink=always", big["datadir"], str(dest)])
        shutil.rmtree(dest)
        return sw.measurement({})

    def plain_start() -> Measurement:
        name = ws.unique("empty")
        workdir = ws.dir(f"work-{name}")
        with Stopwatch() as sw:
            ws.cli("claude-session", "start", name, "--runtime", "local", cwd=workdir, env=env)
        ws.cli("claude-session", "delete", name, "--yes", env=env)
        shutil.rmtree(workdir)
        return sw.measurement({})

    def verify(samples: list[Sample]) -> list[Check]:
        own = [s for s in samples if s.variant in ("claude-db", "small")]
        return [every(own, "reflink", lambda w: w["method"] == "reflink",
                      "every fork on XFS was a reflink clone"),
                every(own, "same rows", lambda w: w["rows"] == w["expected_rows"],
                      "each fork held its source's rows")]

    return Case("fork-xfs", f"fork on XFS with reflink: {size_mb} MB against 10 MB", [
        Variant("claude-db", "product", f"claude-session fork of the {size_mb} MB session",
                product),
        Variant("small", "baseline", "claude-session fork of the 10 MB session", baseline),
        Variant("cp --reflink", "reference", "cp -a --reflink=always DATADIR COPY",
                reflink_copy),
        Variant("start", "reference", "claude-session start of an empty session (its floor)",
                plain_start),
    ], rounds=rounds, warmup=ctx.options.warmup, goal=Goal(max_ratio=1.2), verify=verify,
        notes=["goal: <= 1 s for the big fork, and its time independent of the size "
               "(ratio to the 10 MB fork <= 1.2)"])


def _source(ctx: Context, ws: Workspace, name: str, size_mb: int,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """A running session holding ``size_mb`` MB in one table (untimed)."""
    workdir = ws.dir(f"work-{name}")
    ws.cli("claude-session", "start", name, "--runtime", "local", cwd=workdir, env=env)
    url = read_dotenv(workdir)["DATABASE_URL"]
    rows = size_mb * (1 << 20) // ROW_BYTES
    pg.execute(url, f"create table big as select g, repeat(md5(g::text), 30) as pad "
                    f"from generate_series(1, {rows}) g")
    state = json.loads((ws.state / "sessions" / name / "session.json").read_text())
    return {"name": name, "rows": rows, "url": url, "datadir": state["runtime_state"]["datadir"],
            "bytes": _du(Path(state["runtime_state"]["datadir"]))}


def _fork(ws: Workspace, env: dict[str, str], source: dict[str, Any]) -> Measurement:
    name = ws.unique(f"{source['name']}-fork")
    workdir = ws.dir(f"work-{name}")
    with Stopwatch() as sw:
        done = ws.cli("claude-session", "fork", source["name"], name, "--json", cwd=workdir,
                      env=env)
    made = json.loads(done.stdout)
    rows = int(pg.scalar(made["env"]["DATABASE_URL"], "select count(*) from big"))
    ws.cli("claude-session", "delete", name, "--yes", env=env)
    shutil.rmtree(workdir)
    return sw.measurement({"method": made["method"], "rows": rows,
                           "expected_rows": source["rows"]})


def _verify(samples: list[Sample], source: dict[str, Any], method: str) -> list[Check]:
    forks = [s for s in samples if s.variant == "claude-db"]
    copies = [s for s in samples if s.variant != "claude-db"]
    return [
        every(forks, "method", lambda w: w["method"] == method, f"every fork was a {method}"),
        every(forks, "same rows", lambda w: w["rows"] == source["rows"],
              f"each fork held the source's {source['rows']:,} rows"),
        every(copies, "same data", lambda w: w["bytes"] >= source["bytes"] * 0.9,
              f"cp -a copied the whole data directory ({source['bytes'] >> 20} MB)"),
    ]


def _xfs(ws: Workspace) -> Path:
    """An XFS filesystem with reflink on a loop device inside the workspace, mounted."""
    image, mount = ws.root / "xfs.img", ws.dir("xfs")
    with open(image, "wb") as out:
        out.truncate(8 << 30)  # sparse
    run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)])
    device = run(["losetup", "--find", "--show", str(image)]).stdout.decode().strip()
    try:
        run(["mount", device, str(mount)])
    except Exception:
        run(["losetup", "-d", device])
        raise
    os.chmod(mount, 0o711)
    (mount / ".device").write_text(device)
    return mount


def _unmount(ctx: Context, mount: Path) -> None:
    device = (mount / ".device").read_text()
    ws = Workspace(mount / "bench")
    ws.cleanup()  # its sessions' servers stop before the filesystem goes
    subprocess.run(["umount", str(mount)], check=False)
    subprocess.run(["losetup", "-d", device], check=False)


def _du(path: Path) -> int:
    return int(run(["du", "-sb", str(path)]).stdout.split()[0])

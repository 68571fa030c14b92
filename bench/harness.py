"""Paired runs, statistics, goals and the JSON result.

A case has variants: the product first, then its raw baseline, then peers and
references. Each round
runs every variant once, in that order (product, baseline, peer, product, baseline,
peer...), so slow drifts of a shared machine hit every variant alike; warm-up rounds
run first and are recorded but not counted. A variant times only its own work (setup
and teardown stay outside its stopwatch) and returns what it did (``work``), so the
case can check that product and baseline did the same thing.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: a reference is measured alongside for context (e.g. a floor), with no goal attached
Role = Literal["product", "baseline", "peer", "reference"]
SCHEMA = "claude-db-bench/1"


class Skip(Exception):
    """A case cannot run here: its prerequisite is absent (the message says which)."""


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (monotonic, high resolution).

    ``sw.cpu`` is the CPU time (user + system) this process and the children it waited
    for used meanwhile: far less sensitive than wall time to other load on the machine.
    Daemons (database servers) are not waited for, so it is client-side CPU.
    """

    seconds: float = 0.0
    cpu: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._cpu = _cpu_now()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        self.cpu = _cpu_now() - self._cpu

    def measurement(self, work: dict[str, Any]) -> Measurement:
        return Measurement(self.seconds, work, self.cpu)


def _cpu_now() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Measurement:
    seconds: float
    work: dict[str, Any] = field(default_factory=dict)
    cpu: float | None = None  # client-side CPU seconds, when known


@dataclass
class Variant:
    name: str
    role: Role
    command: str  # what is timed, as a reader would type it
    run: Callable[[], Measurement]


@dataclass
class Goal:
    """What the product must achieve against its baseline (ratio of medians) and peers."""

    max_ratio: float | None = None
    beat_peers: bool = False

    def describe(self) -> str:
        parts = []
        if self.max_ratio is not None:
            parts.append(f"<= {self.max_ratio:g}x baseline")
        if self.beat_peers:
            parts.append("faster than peers")
        return ", ".join(parts) or "none"


@dataclass
class Check:
    """One verification that the case measured what it says (e.g. both did the same work)."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class Sample:
    variant: str
    round: int  # warm-up rounds are negative
    seq: int  # position in the global run order of the case
    warmup: bool
    seconds: float
    work: dict[str, Any]
    cpu: float | None = None


@dataclass
class Case:
    name: str
    title: str
    variants: list[Variant]
    rounds: int
    warmup: int = 1
    goal: Goal | None = None
    #: checks over all samples, e.g. that product and baseline produced the same result
    verify: Callable[[list[Sample]], list[Check]] | None = None
    #: extra figures derived from the samples (memory, sizes...)
    metrics: Callable[[list[Sample]], dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        roles = [v.role for v in self.variants]
        if (roles[:1] != ["product"] or roles[1:2] != ["baseline"]
                or set(roles[2:]) - {"peer", "reference"}):
            raise ValueError(f"case {self.name}: variants must be product, baseline, then "
                             "peers or references")
        if self.rounds < 1 or self.warmup < 0:
            raise ValueError(f"case {self.name}: needs rounds >= 1 and warmup >= 0")


#: a group prepares what its cases share (a session, data) and cleans it up afterwards
Group = Callable[..., AbstractContextManager[list[Case]]]


def schedule(case: Case) -> Iterator[tuple[int, Variant]]:
    """The run order: each round runs every variant once, product first."""
    for round_ in range(-case.warmup, case.rounds):
        for variant in case.variants:
            yield round_, variant


def run_case(case: Case, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run a case's paired rounds; return its result (see :func:`summarise`)."""
    samples: list[Sample] = []
    load_before = os.getloadavg()
    for seq, (round_, variant) in enumerate(schedule(case)):
        measurement = variant.run()
        samples.append(Sample(variant.name, round_, seq, round_ < 0, measurement.seconds,
                              measurement.work, measurement.cpu))
        label = "warm-up" if round_ < 0 else f"round {round_ + 1}/{case.rounds}"
        progress(f"  {label:>12}  {variant.name:<22} {format_seconds(measurement.seconds)}")
    result = summarise(case, samples)
    result["load"] = {"before": list(load_before), "after": list(os.getloadavg())}
    return result


def summarise(case: Case, samples: list[Sample]) -> dict[str, Any]:
    """Medians, the product/baseline ratio, goals and checks, as a JSON-ready dict."""
    variants = []
    medians: dict[str, float] = {}
    cpu_medians: dict[str, float | None] = {}
    for variant in case.variants:
        mine = [s for s in samples if s.variant == variant.name and not s.warmup]
        stats = _stats([s.seconds for s in mine])
        cpu = [s.cpu for s in mine if s.cpu is not None]
        stats["cpu_median"] = statistics.median(cpu) if cpu and len(cpu) == len(mine) else None
        medians[variant.name] = stats["median"]
        cpu_medians[variant.name] = stats["cpu_median"]
        variants.append({
            "name": variant.name, "role": variant.role, "command": variant.command, **stats,
            "samples": [_sample_json(s) for s in samples if s.variant == variant.name],
        })
    product, baseline = case.variants[0].name, case.variants[1].name
    ratio = _ratio(medians[product], medians[baseline])
    peers = {v.name: _ratio(medians[product], medians[v.name]) for v in case.variants[2:]}
    checks = case.verify(samples) if case.verify else []
    rivals = {v.name: peers[v.name] for v in case.variants[2:] if v.role == "peer"}
    goal_met, goal_detail = _judge(case.goal, ratio, rivals)
    return {
        "name": case.name,
        "title": case.title,
        "status": "ok",
        "rounds": case.rounds,
        "warmup": case.warmup,
        "order": [s.variant for s in samples],
        "variants": variants,
        "ratio": ratio,
        "paired_ratio": _paired_ratio(samples, product, baseline),
        "cpu_ratio": _ratio(cpu_medians[product] or 0, cpu_medians[baseline] or 0),
        "peer_ratios": peers,
        "goal": asdict(case.goal) if case.goal else None,
        "goal_met": goal_met,
        "goal_detail": goal_detail,
        "checks": [asdict(c) for c in checks],
        "same_work": all(c.ok for c in checks),
        "metrics": case.metrics(samples) if case.metrics else {},
        "notes": case.notes,
    }


def skipped(name: str, title: str, reason: str) -> dict[str, Any]:
    return {"name": name, "title": title, "status": "skipped", "reason": reason}


def failed(name: str, title: str, exc: BaseException) -> dict[str, Any]:
    lines = traceback.format_exception(exc)
    return {"name": name, "title": title, "status": "error", "reason": _one_line(exc),
            "traceback": "".join(lines[-6:])}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": float("nan"), "min": float("nan"), "max": float("nan"),
                "mean": float("nan")}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _paired_ratio(samples: list[Sample], product: str, baseline: str) -> float:
    """Median of per-round product/baseline ratios (robust to drift between rounds)."""
    by_round: dict[int, dict[str, float]] = {}
    for s in samples:
        if not s.warmup:
            by_round.setdefault(s.round, {})[s.variant] = s.seconds
    ratios = [r[product] / r[baseline] for r in by_round.values()
              if product in r and baseline in r and r[baseline] > 0]
    return statistics.median(ratios) if ratios else float("nan")


def _judge(goal: Goal | None, ratio: float, peers: dict[str, float]) -> tuple[bool | None, str]:
    if goal is None:
        return None, "no goal (reported for information)"
    parts, met = [], True
    if goal.max_ratio is not None:
        ok = ratio <= goal.max_ratio
        met &= ok
        parts.append(f"{ratio:.2f}x vs goal <= {goal.max_ratio:g}x: {'met' if ok else 'MISSED'}")
    if goal.beat_peers:
        for name, r in peers.items():
            ok = r < 1
            met &= ok
            parts.append(f"{r:.2f}x of {name}: {'faster' if ok else 'NOT faster'}")
    return met, "; ".join(parts)


def _sample_json(s: Sample) -> dict[str, Any]:
    return {"round": s.round, "seq": s.seq, "warmup": s.warmup, "seconds": s.seconds,
            "cpu_seconds": s.cpu, "work": s.work}


def format_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def same_values(samples: list[Sample], key: str, name: str | None = None) -> Check:
    """Every sample's ``work[key]`` is present and equal across all variants."""
    values = {s.variant: s.work.get(key) for s in samples}
    distinct = {repr(s.work.get(key)) for s in samples}
    ok = len(distinct) == 1 and None not in values.values()
    detail = f"{key} = {next(iter(values.values()))!r}" if ok else f"differs: {values!r}"
    return Check(name or f"same {key}", ok, detail)


def every(samples: list[Sample], name: str, predicate: Callable[[dict[str, Any]], bool],
          describe: str) -> Check:
    """``predicate(work)`` holds for every sample of every variant."""
    bad = [f"{s.variant}#{s.seq}" for s in samples if not predicate(s.work)]
    return Check(name, not bad, describe if not bad else f"failed for {', '.join(bad)}")

"""Installing as users do: wheels built from source directories and fresh virtual
environments that install from them alone."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from claude_db.locks import hold, lock_for
from claude_db.testing.fixtures import make_traversable

if TYPE_CHECKING:
    import pytest


def pip(*args: str) -> str:
    """Run this environment's pip; fail with its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
    )
    if proc.returncode != 0:
        raise AssertionError(f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def wheel_metadata(wheel: Path) -> tuple[str, list[str]]:
    """A wheel's distribution name and its ``Requires-Dist`` lines."""
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = archive.read(name).decode().split("\n\n", 1)[0].splitlines()
    dist = next(line.split(": ", 1)[1] for line in headers if line.startswith("Name: "))
    requires = [line.split(": ", 1)[1] for line in headers if line.startswith("Requires-Dist: ")]
    return dist, requires


def build_wheelhouse(dest: Path, projects: Sequence[Path]) -> Path:
    """Build wheels of ``projects`` (source directories) into ``dest``, and download the
    third-party wheels they need, pinned to the versions this environment runs with.

    Installing from ``dest`` alone (:func:`fresh_environment`) then needs no index, so a
    name that also exists on a public index can never be picked instead of yours.
    """
    import importlib.util
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    dest.mkdir(parents=True, exist_ok=True)
    # hatchling from this environment when it has one (fast, offline); else pip fetches it
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    pip("wheel", "-q", "--no-deps", *isolation, "-w", str(dest), *map(str, projects))
    ours: set[str] = set()
    requirements: set[str] = set()
    for wheel in dest.glob("*.whl"):
        dist, requires = wheel_metadata(wheel)
        ours.add(canonicalize_name(dist))
        requirements.update(r for r in requires if "extra ==" not in r)
    third_party = sorted(
        r for r in requirements if canonicalize_name(Requirement(r).name) not in ours
    )
    constraints = dest / "constraints.txt"
    constraints.write_text("".join(
        f"{d.metadata['Name']}=={d.version}\n" for d in metadata.distributions()
        if canonicalize_name(d.metadata["Name"]) not in ours
    ))
    if third_party:
        pip("download", "-q", "--only-binary=:all:", "-d", str(dest), "-c", str(constraints),
            *third_party)
    return dest


def shared_wheelhouse(
    factory: pytest.TempPathFactory, name: str, projects: Sequence[Path]
) -> Path:
    """:func:`build_wheelhouse` once per test run, in the run's temporary directory: the
    workers of a parallel run (pytest-xdist) share it (the first builds it under a lock,
    the others wait for it), so that every test installing wheels pays one build."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's: each worker's own is below it
    dest = base / name
    wanted = hashlib.sha256("\n".join(map(str, projects)).encode()).hexdigest()
    built = dest / ".built-from"
    with hold(lock_for(dest), f"the wheelhouse {dest}"):
        if not built.exists() or built.read_text() != wanted:
            shutil.rmtree(dest, ignore_errors=True)
            build_wheelhouse(dest, projects)
            make_traversable(dest)  # rootless tests install from it as another user
            built.write_text(wanted)
    return dest


def fresh_environment(wheelhouse: Path, where: Path, *requirements: str) -> Path:
    """A new virtual environment (no system site-packages) with ``requirements`` installed
    from ``wheelhouse`` alone, as ``pip install`` does for a user; returns its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    assert "include-system-site-packages = false" in (where / "pyvenv.cfg").read_text()
    if requirements:
        pip("--python", str(where / "bin" / "python"), "install", "-q", "--no-index",
            "--find-links", str(wheelhouse), *requirements)
    return where / "bin"

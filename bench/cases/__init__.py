"""The benchmark's cases, grouped by what they share (a session, a data set)."""

from __future__ import annotations

from bench.cases import checkpoint, cli, density, dumps, fork, reset, start
from bench.harness import Group

#: group name -> a context manager that prepares the group's cases and cleans up after them
GROUPS: dict[str, Group] = {
    "local-start": start.local_start,
    "docker-start": start.docker_start,
    "reset": reset.reset,
    "dumps": dumps.dumps,
    "cli": cli.cli,
    "density": density.density,
    "fork": fork.fork,
    "checkpoint": checkpoint.checkpoint,
}

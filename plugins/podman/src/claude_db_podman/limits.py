"""The ulimits every container of a session gets: within what this host allows.

Podman gives containers ``nofile`` and ``nproc`` of 1048576 unless told otherwise; where
the host's hard limits are lower (this is common in CI machines and sandboxes), runc
fails to start any container with ``error setting rlimit ... operation not permitted``.
So each container gets the lower of Podman's default and the hard limit of the process
running claude-db (``resource.getrlimit``), whose limits the API service it starts
inherits; ``nproc`` also at most the kernel's ``pid_max`` (no container can have more
processes, and on a host where the hard limit exceeded it, runc was refused above it).
"""

from __future__ import annotations

import resource
from pathlib import Path

PODMAN_DEFAULT = 1048576  # Podman's own default for both
PID_MAX = Path("/proc/sys/kernel/pid_max")


def _hard(limit: int) -> int:
    hard = resource.getrlimit(limit)[1]
    return PODMAN_DEFAULT if hard == resource.RLIM_INFINITY else min(hard, PODMAN_DEFAULT)


def _pid_max() -> int:
    try:
        return int(PID_MAX.read_text())
    except (OSError, ValueError):
        return PODMAN_DEFAULT


def container_ulimits() -> dict[str, int]:
    """``{"nofile": n, "nproc": n}``: soft and hard limit alike."""
    return {"nofile": _hard(resource.RLIMIT_NOFILE),
            "nproc": min(_hard(resource.RLIMIT_NPROC), _pid_max())}


def ulimit_options() -> list[str]:
    """The same as ``podman run`` options."""
    return [f"--ulimit={name}={value}:{value}" for name, value in container_ulimits().items()]

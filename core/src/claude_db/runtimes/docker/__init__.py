"""The docker runtime: each session's database in its own container and network.

``runtime`` is the Runtime, ``client`` the docker SDK edge (imported on first use only),
``tools`` the clients run inside the container.
"""

from claude_db.runtimes.docker.runtime import DockerRuntime

__all__ = ["DockerRuntime"]

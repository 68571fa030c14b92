"""The podman runtime: core's docker runtime, driven through Podman's Docker-compatible API.

Everything a session is made of (network, data volume, database container, labels, the
ownership checks) is the docker runtime's; this subclass changes only where the engine
is (:mod:`claude_db_podman.service`, started when nothing answers), the ulimits every
container gets (:mod:`claude_db_podman.limits`), the command-line client of the tools
(``podman``), and, rootless, that the database is always published on 127.0.0.1: a
rootless container's address lives in Podman's own network namespace, which the host
cannot reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from claude_db.engine import Engine
from claude_db.runtime import Orphan
from claude_db.runtimes.docker.client import docker_errors
from claude_db.runtimes.docker.runtime import DockerRuntime
from claude_db.runtimes.docker.tools import DockerTools
from claude_db.session import Session
from claude_db_podman.limits import container_ulimits
from claude_db_podman.service import ensure_service, ping, podman_cli, rootless, socket_path
from claude_db_podman.tools import PodmanTools

if TYPE_CHECKING:
    from docker import DockerClient

    from claude_db.settings import Settings

#: the Docker API version Podman 4 and 5 serve: named, the client asks no ``GET /version``
API_VERSION = "1.41"
#: seconds for calls that should be instant (inspect, list): Podman's service answers them
#: only between the locked steps of other containers' starts, seconds apart on a busy host
QUICK_TIMEOUT = 30.0


class PodmanRuntime(DockerRuntime):
    name = "podman"
    auto_priority = -1  # `--runtime auto` takes it only when neither docker nor local can run
    tools_class: ClassVar[type[DockerTools]] = PodmanTools

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._podman: DockerClient | None = None

    def available(self) -> bool:
        return podman_cli() is not None or ping(socket_path()) is None

    def unavailable_reason(self) -> str:
        return (f"podman is not installed here and no Podman API service answers at "
                f"unix://{socket_path()}")

    def leftovers(self, state_dir: Path) -> dict[str, list[Orphan]]:
        # gc asks every available runtime: no API service answering means nothing of ours
        # can be reached, and a sweep must not start a long-lived service (review finding)
        if self._podman is None and ping(socket_path()) is not None:
            return {}
        return super().leftovers(state_dir)

    def create(self, session: Session, engine: Engine) -> None:
        if rootless():
            session.publish = True  # see the module's docstring
        super().create(session, engine)

    # -- the docker runtime's extension points ---------------------------------------------

    def _client(self) -> DockerClient:
        if self._podman is None:
            import docker

            path = socket_path()
            ensure_service(path)
            with docker_errors(f"connecting to Podman's API service at unix://{path}"):
                self._podman = docker.DockerClient(base_url=f"unix://{path}",
                                                   timeout=QUICK_TIMEOUT, version=API_VERSION)
        return self._podman

    def _tools_host(self, attrs: dict[str, Any], state: dict[str, Any]) -> str:
        # Podman's networks resolve container names only with a DNS plugin (CNI's dnsname,
        # netavark's aardvark-dns), which many installs lack: the address always works.
        return str(attrs["NetworkSettings"]["Networks"][state["network"]]["IPAddress"])

    def _host_options(self) -> dict[str, Any]:
        from docker.types import Ulimit

        return {"ulimits": [Ulimit(name=name, soft=value, hard=value)
                            for name, value in container_ulimits().items()]}


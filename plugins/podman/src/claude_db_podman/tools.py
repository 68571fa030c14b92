"""The engine's client tools through the ``podman`` command-line client.

``podman exec`` and ``podman run`` take the docker CLI's options that core's
:class:`~claude_db.runtimes.docker.tools.DockerTools` uses, and talk to the same store as
the API service of the same user (rootful: root's, rootless: the user's own).
"""

from __future__ import annotations

from claude_db.errors import ToolMissingError
from claude_db.runtimes.docker.tools import DockerTools
from claude_db_podman.limits import ulimit_options
from claude_db_podman.service import podman_cli, rootless


class PodmanTools(DockerTools):
    @classmethod
    def cli(cls) -> list[str]:
        found = podman_cli()
        if found is None:
            raise ToolMissingError(
                "the podman command-line client is not installed here "
                "(needed to run commands inside the session's containers)"
            )
        return [str(found)]

    def run_options(self) -> list[str]:
        if rootless():
            # the container's root is the user here: what it writes is already theirs
            return ulimit_options()
        return [*ulimit_options(), *super().run_options()]

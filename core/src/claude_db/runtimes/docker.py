"""The docker runtime: a session's database in its own container on its own network.

Per session ``<name>``: network ``<name>-net``; database container ``<name>-db``
(also its DNS alias) with its data in the named volume ``<name>-data``; optionally
a session container ``<name>`` where the agent works, with the work directory
mounted at ``/workspace`` and ``DATABASE_URL`` pointing at ``<name>-db:<port>``.
Every resource carries the label ``claude-db.session=<name>`` and the session's
``claude-db.instance`` id: delete removes exactly what this session made.

The docker SDK is imported on first use only (see ``docker_client``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import TYPE_CHECKING, Any

from claude_db.engine import Endpoint, Engine, Tools
from claude_db.errors import ClaudeDbError, NotRunningError, SessionExistsError
from claude_db.processes import child_env, run_foreground
from claude_db.readiness import wait_until_ready
from claude_db.runtime import Runtime, Status
from claude_db.runtimes.docker_client import (
    client,
    describe_host,
    docker_errors,
    ensure_image,
    first_line,
    ping,
)
from claude_db.runtimes.docker_tools import DockerExecTools, exec_argv, terminal
from claude_db.session import Session

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

    from claude_db.settings import Settings

LABEL_SESSION = "claude-db.session"
LABEL_INSTANCE = "claude-db.instance"
LABEL_ENGINE = "claude-db.engine"
LABEL_ROLE = "claude-db.role"
LABEL_STATE = "claude-db.state"
LABEL_KEPT_FROM = "claude-db.kept-from"  # data kept by ``delete --keep-data``: no session owns it
WORKSPACE = "/workspace"  # where the session container sees the work directory
LOG_TAIL_LINES = 5
FAILURE_CHECK_INTERVAL = 0.5  # seconds; each look is an inspect competing with the start
STOP_TIMEOUT = 30  # seconds a database gets to shut down cleanly
# bash when the image has it, else sh; not a login shell: /etc/profile would reset PATH
SHELL = "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"


def names(session_name: str) -> dict[str, str]:
    """Docker names of a session's resources."""
    return {
        "network": f"{session_name}-net",
        "db_container": f"{session_name}-db",
        "volume": f"{session_name}-data",
        "session_container": session_name,
    }


class DockerRuntime(Runtime):
    name = "docker"
    auto_priority = 10  # the seed's way: preferred whenever a Docker engine answers
    runs_containers = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._ping_failure: str | None = None
        self._pinged = False
        self._inspected: dict[str, dict[str, Any] | None] = {}
        self._failure_checked = 0.0

    # -- availability ---------------------------------------------------------------------

    def available(self) -> bool:
        if not self._pinged:
            self._ping_failure, self._pinged = ping(), True
        return self._ping_failure is None

    def unavailable_reason(self) -> str:
        self.available()
        failure = self._ping_failure or ""
        if failure.startswith("no Docker engine answers"):  # the SDK's client said it whole
            return failure
        return f"no Docker engine answers at {describe_host()} ({failure})"

    # -- lifecycle ------------------------------------------------------------------------

    def create(self, session: Session, engine: Engine) -> None:
        assert session.credentials is not None and session.image is not None
        session.runtime_state = {
            **names(session.name),
            "instance": uuid.uuid4().hex[:12],
            "container_port": engine.default_port,
            "host_port": None,  # with --publish: chosen by Docker on first start, then kept
            "ip": None,
        }
        if not session.session_image:
            session.runtime_state["session_container"] = None
        docker = self._client()
        self._refuse_taken_names(docker, session)
        ensure_image(docker, session.image, hint="choose one it has with CLAUDE_DB_IMAGE "
                     "or --db-image, or use --runtime local")
        if session.session_image:
            ensure_image(docker, session.session_image,
                         hint="choose one it has with CLAUDE_SESSION_IMAGE or --image")
        self._create_network(docker, session, engine)
        state = session.runtime_state
        with docker_errors(f"creating volume {state['volume']!r}"):
            docker.volumes.create(state["volume"], labels=self._labels(session, engine, "data"))
        self._run_database(docker, session, engine)
        if session.session_image:
            # the agent's programs may use the database as soon as their container runs
            self._wait_ready(session, engine)
            self._run_session_container(docker, session, engine)

    def start(self, session: Session, engine: Engine) -> None:
        docker = self._client()
        state = session.runtime_state
        self._inspected.clear()
        new_network = self._ensure_network(docker, session, engine)
        database = self._container(docker, state["db_container"])
        started = False
        if database is None or (database.status != "running" and (session.publish or new_network)):
            # Re-created from its volume: Docker would publish a stopped container on a new
            # port, and a re-made network needs new endpoints. The data lives in the volume.
            self._require_volume(docker, session)
            if database is not None:
                with docker_errors(f"removing container {database.name!r}"):
                    database.remove(force=True, v=True)  # anonymous volumes too: never labelled
            self._run_database(docker, session, engine)
            started = True
        elif database.status == "paused":
            with docker_errors(f"resuming container {database.name!r}"):
                database.unpause()
        elif database.status != "running":
            with docker_errors(f"starting container {database.name!r}"):
                database.start()
            self._record_address(docker, session)
            started = True
        if not session.session_image:
            return
        container = self._container(docker, state["session_container"])
        if container is not None and container.status == "running":
            return
        if started:
            self._wait_ready(session, engine)
        if container is None or new_network:
            if container is not None:
                with docker_errors(f"removing container {container.name!r}"):
                    container.remove(force=True, v=True)
            self._run_session_container(docker, session, engine)
        elif container.status == "paused":
            with docker_errors(f"resuming container {container.name!r}"):
                container.unpause()
        else:
            with docker_errors(f"starting container {container.name!r}"):
                container.start()

    def stop(self, session: Session, engine: Engine) -> None:
        docker = self._client()
        state = session.runtime_state
        self._inspected.clear()
        for key, timeout in (("session_container", 10), ("db_container", STOP_TIMEOUT)):
            container = self._container(docker, state.get(key))
            if container is not None and container.status in ("running", "paused", "restarting"):
                with docker_errors(f"stopping container {container.name!r}"):
                    container.stop(timeout=timeout)

    def delete(self, session: Session, engine: Engine, *, keep_data: bool) -> None:
        state = session.runtime_state
        instance = state.get("instance")
        if not instance:
            return  # nothing was made
        docker = self._client()
        self._inspected.clear()
        if keep_data and self._volume_exists(docker, session):
            self.stop(session, engine)  # a clean shutdown: the kept data must be consistent
            state["kept_data"] = f"the Docker volume {self._keep_volume(docker, session, engine)}"
        mine = {"label": f"{LABEL_INSTANCE}={instance}"}
        with docker_errors(f"removing the containers of session {session.name!r}"):
            for container in docker.containers.list(all=True, sparse=True, filters=mine):
                container.remove(force=True, v=True)  # v: anonymous volumes of the images too
        with docker_errors(f"removing network {state['network']!r}"):
            for network in docker.networks.list(filters=mine):
                network.remove()
        with docker_errors(f"removing volume {state['volume']!r}"):
            for volume in docker.volumes.list(filters=mine):
                volume.remove(force=True)

    def status(self, session: Session) -> Status:
        docker = self._client()
        attrs = self._inspect(docker, session.runtime_state["db_container"])
        if attrs is None:
            # the container can be made again from its volume (attach does)
            return "stopped" if self._volume_exists(docker, session) else "missing"
        return "running" if attrs["State"]["Status"] == "running" else "stopped"

    def failure_details(self, session: Session) -> str | None:
        # Asked between readiness attempts (every ~20 ms): a look every FAILURE_CHECK_INTERVAL
        # finds a dead container soon enough without slowing the loop down.
        now = time.monotonic()
        if now - self._failure_checked < FAILURE_CHECK_INTERVAL:
            return None
        self._failure_checked = now
        docker = self._client()
        name = session.runtime_state["db_container"]
        self._inspected.pop(name, None)
        attrs = self._inspect(docker, name)
        if attrs is None:
            return f"container {name} is gone"
        state = attrs["State"]
        if state["Status"] not in ("exited", "dead"):
            return None
        how = f"exited with code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            how += " (out of memory)"
        return f"container {name} {how}; last log lines: {self._log_tail(docker, name)}"

    # -- access ---------------------------------------------------------------------------

    def endpoint(self, session: Session, engine: Engine) -> Endpoint:
        assert session.credentials is not None
        state = session.runtime_state
        if session.publish and state.get("host_port"):
            return Endpoint("127.0.0.1", state["host_port"], session.credentials)
        attrs = self._inspect(self._client(), state["db_container"])
        ip = _address(attrs, state["network"]) or state.get("ip")
        if not ip:
            raise NotRunningError(
                f"the database of session {session.name!r} has no address yet; "
                f"start it with: claude-session attach {session.name} --no-shell"
            )
        return Endpoint(ip, state["container_port"], session.credentials)

    def session_endpoint(self, session: Session, engine: Engine) -> Endpoint:
        assert session.credentials is not None
        state = session.runtime_state
        if state.get("session_container"):
            # programs in the session container reach the database by its name on the network
            return Endpoint(state["db_container"], state["container_port"], session.credentials)
        return self.endpoint(session, engine)

    def tools(self, session: Session, engine: Engine) -> Tools:
        assert session.credentials is not None
        state = session.runtime_state
        inside = Endpoint("127.0.0.1", state["container_port"], session.credentials)
        return DockerExecTools(state["db_container"], inside)

    def enter_shell(self, session: Session, env: dict[str, str]) -> int:
        container = session.runtime_state.get("session_container")
        if not container:
            return super().enter_shell(session, env)
        argv = exec_argv(container, ["sh", "-c", SHELL], env, stdin=True, tty=terminal(),
                         workdir=WORKSPACE)
        return run_foreground(argv, env=child_env(env))

    # -- internals ------------------------------------------------------------------------

    def _client(self) -> DockerClient:
        return client()

    def _labels(self, session: Session, engine: Engine, role: str) -> dict[str, str]:
        return {
            LABEL_SESSION: session.name,
            LABEL_INSTANCE: session.runtime_state["instance"],
            LABEL_ENGINE: engine.name,
            LABEL_ROLE: role,
            LABEL_STATE: str(self.settings.state_dir),  # which claude-db state owns it (gc)
        }

    def _keep_volume(self, docker: DockerClient, session: Session, engine: Engine) -> str:
        """Copy the data into a volume of its own that no session owns; return its name.

        Volume labels cannot change, and the session's volume carries the labels that
        ``delete`` and ``gc`` remove by; its name is also free again for a new session.
        """
        from docker.types import Mount

        assert session.image is not None
        state = session.runtime_state
        kept = f"{state['volume']}-kept-{time.strftime('%Y%m%d-%H%M%S')}"
        with docker_errors(f"keeping the data of session {session.name!r} in volume {kept!r}"):
            docker.volumes.create(kept, labels={LABEL_KEPT_FROM: session.name,
                                                LABEL_ENGINE: engine.name})
            try:
                copier = docker.containers.create(
                    session.image,
                    entrypoint=["cp", "-a", "/from/.", "/to/"],
                    mounts=[Mount("/from", state["volume"], type="volume", read_only=True),
                            Mount("/to", kept, type="volume")],
                    labels=self._labels(session, engine, "copy"),
                    network_mode="none",
                )
                try:
                    copier.start()
                    code = copier.wait()["StatusCode"]
                    if code != 0:
                        raise ClaudeDbError(
                            f"keeping the data of session {session.name!r} failed: cp exited "
                            f"with {code}: {self._log_tail(docker, copier.id)}"
                        )
                finally:
                    copier.remove(force=True, v=True)  # v: the image's anonymous volumes
            except BaseException:
                with contextlib.suppress(Exception):  # no half copy stays behind
                    docker.volumes.get(kept).remove(force=True)
                raise
        return kept

    def _refuse_taken_names(self, docker: DockerClient, session: Session) -> None:
        """Docker names are global: never adopt (and later delete) another's resources."""
        import docker as sdk

        state = session.runtime_state
        checks: list[tuple[str, str | None, Any]] = [
            ("container", state["db_container"], docker.containers),
            ("container", state["session_container"], docker.containers),
            ("network", state["network"], docker.networks),
            ("volume", state["volume"], docker.volumes),
        ]
        for kind, name, collection in checks:
            if name is None:
                continue
            with docker_errors(f"looking up {kind} {name!r}"):
                try:
                    collection.get(name)
                except sdk.errors.NotFound:
                    continue
            raise SessionExistsError(
                f"Docker already has a {kind} named {name!r} that is not part of a new session "
                f"{session.name!r}; remove it (docker {kind} rm {name}) or choose another name"
            )

    def _create_network(self, docker: DockerClient, session: Session, engine: Engine) -> None:
        name = session.runtime_state["network"]
        with docker_errors(f"creating network {name!r}"):
            # the low-level call: the SDK's model would look the new network up again
            docker.api.create_network(
                name, driver="bridge", check_duplicate=True,
                labels=self._labels(session, engine, "network"),
            )

    def _ensure_network(self, docker: DockerClient, session: Session, engine: Engine) -> bool:
        """Make the session's network again if it was removed; whether it was."""
        import docker as sdk

        name = session.runtime_state["network"]
        with docker_errors(f"looking up network {name!r}"):
            try:
                docker.networks.get(name)
                return False
            except sdk.errors.NotFound:
                pass
        self._create_network(docker, session, engine)
        return True

    def _run_database(self, docker: DockerClient, session: Session, engine: Engine) -> None:
        from docker.types import Mount

        assert session.credentials is not None and session.image is not None
        state = session.runtime_state
        name, network = state["db_container"], state["network"]
        ports, bindings = None, None
        if session.publish:  # 127.0.0.1 only; Docker picks the port the first time
            ports = [(str(state["container_port"]), "tcp")]
            bindings = {f"{state['container_port']}/tcp": ("127.0.0.1", state.get("host_port"))}
        api = docker.api  # low-level calls: the SDK's models would inspect after each one
        with docker_errors(f"creating container {name!r}"):
            created = api.create_container(
                session.image,
                name=name,
                hostname=name,
                environment=engine.container_env(session.credentials),
                labels=self._labels(session, engine, "database"),
                host_config=api.create_host_config(
                    mounts=[Mount(engine.container_data_dir, state["volume"], type="volume")],
                    network_mode=network,
                    port_bindings=bindings,
                ),
                # attached to its network as it is made: no connect call after
                networking_config=api.create_networking_config(
                    {network: api.create_endpoint_config(aliases=[name])}
                ),
                ports=ports,
                detach=True,
            )
        with docker_errors(f"starting container {name!r}"):
            api.start(created["Id"])
        self._record_address(docker, session)

    def _run_session_container(
        self, docker: DockerClient, session: Session, engine: Engine
    ) -> None:
        from docker.types import Mount

        from claude_db.app import get_app
        from claude_db.lifecycle import session_env

        assert session.session_image is not None
        state = session.runtime_state
        name, network = state["session_container"], state["network"]
        with docker_errors(f"creating container {name!r}"):
            container = docker.containers.create(
                session.session_image,
                command=["sleep", "infinity"],  # stays up for `docker exec` and attach
                init=True,  # a real PID 1: `sleep` stops on SIGTERM, zombies are reaped
                name=name,
                hostname=name,
                environment=session_env(get_app(), session),
                labels=self._labels(session, engine, "session"),
                mounts=[Mount(WORKSPACE, session.workdir, type="bind")],
                working_dir=WORKSPACE,
                network=network,
                detach=True,
            )
        with docker_errors(f"starting container {name!r}"):
            container.start()
            container.reload()
        if container.status in ("exited", "dead"):
            raise ClaudeDbError(
                f"session container {name} from {session.session_image!r} exited at once "
                f"(code {container.attrs['State'].get('ExitCode')}); last log lines: "
                f"{self._log_tail(docker, name)}"
            )

    def _wait_ready(self, session: Session, engine: Engine) -> None:
        wait_until_ready(
            engine,
            self.endpoint(session, engine),
            timeout=self.settings.ready_timeout,
            failure=lambda: self.failure_details(session),
            what=f"the {engine.name} database of session {session.name!r}",
        )

    def _record_address(self, docker: DockerClient, session: Session) -> None:
        """Remember where the running database is (its address, its published port)."""
        state = session.runtime_state
        self._inspected.pop(state["db_container"], None)
        attrs = self._inspect(docker, state["db_container"])
        if attrs is None or attrs["State"]["Status"] in ("exited", "dead"):
            self._failure_checked = 0.0
            details = self.failure_details(session)
            raise NotRunningError(f"the database of session {session.name!r} failed to start: "
                                  f"{details}")
        state["ip"] = _address(attrs, state["network"]) or state.get("ip")
        if session.publish and attrs is not None:
            bindings = (attrs["NetworkSettings"].get("Ports") or {}).get(
                f"{state['container_port']}/tcp"
            ) or []
            for binding in bindings:
                if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
                    state["host_port"] = int(binding["HostPort"])
                    break

    def _container(self, docker: DockerClient, name: str | None) -> Container | None:
        import docker as sdk

        if not name:
            return None
        with docker_errors(f"looking up container {name!r}"):
            try:
                return docker.containers.get(name)
            except sdk.errors.NotFound:
                return None

    def _inspect(self, docker: DockerClient, name: str) -> dict[str, Any] | None:
        """The container's inspect data, once per command (``None`` if it does not exist)."""
        import docker as sdk

        if name not in self._inspected:
            with docker_errors(f"looking up container {name!r}"):
                try:
                    self._inspected[name] = docker.api.inspect_container(name)
                except sdk.errors.NotFound:
                    self._inspected[name] = None
        return self._inspected[name]

    def _volume_exists(self, docker: DockerClient, session: Session) -> bool:
        import docker as sdk

        name = session.runtime_state["volume"]
        with docker_errors(f"looking up volume {name!r}"):
            try:
                docker.volumes.get(name)
            except sdk.errors.NotFound:
                return False
        return True

    def _require_volume(self, docker: DockerClient, session: Session) -> None:
        if not self._volume_exists(docker, session):
            raise NotRunningError(
                f"the data volume {session.runtime_state['volume']} of session "
                f"{session.name!r} is gone; delete the session and start a new one"
            )

    def _log_tail(self, docker: DockerClient, name: str) -> str:
        try:
            raw = docker.api.logs(name, stdout=True, stderr=True, tail=LOG_TAIL_LINES * 4)
        except Exception as exc:  # the logs are a courtesy: never hide the real failure
            return f"(no logs: {first_line(exc)})"
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"


def _address(attrs: dict[str, Any] | None, network: str) -> str | None:
    if attrs is None or attrs["State"]["Status"] != "running":
        return None
    networks = attrs["NetworkSettings"].get("Networks") or {}
    ip = (networks.get(network) or {}).get("IPAddress")
    return ip or None


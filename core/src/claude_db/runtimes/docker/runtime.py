"""The docker runtime: a session's database in its own container on its own network.

Per session ``<name>``: network ``<name>-net``; database container ``<name>-db``
(also its DNS alias) with its data in the named volume ``<name>-data``; optionally
a session container ``<name>`` where the agent works, with the work directory
mounted at ``/workspace`` and ``DATABASE_URL`` pointing at ``<name>-db:<port>``.
Every resource carries the label ``claude-db.session=<name>``, the session's
``claude-db.instance`` id and ``claude-db.state=<state directory>``; a resource is
the session's only with all three. Docker names are global (other users, other state
directories share the daemon), so a lookup by name that finds one without them refuses
with one line and never touches it, and everything acts by id after the check.

The docker SDK is imported on first use only (see ``client``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from claude_db.engine import Endpoint, Engine, Tools
from claude_db.errors import (
    ClaudeDbError,
    DockerUnavailableError,
    NotRunningError,
    SessionExistsError,
)
from claude_db.faults import checkpoint
from claude_db.ports import claim_port
from claude_db.processes import child_env, run_foreground
from claude_db.runtime import Orphan, Runtime, Status
from claude_db.runtimes.docker.client import (
    client,
    describe_host,
    docker_errors,
    engine_is_remote,
    ensure_image,
    first_line,
    image_unobtainable,
    ping,
    share_ssh,
    slow,
    tunnel,
    user_path,
)
from claude_db.runtimes.docker.tools import DockerTools, exec_argv, terminal
from claude_db.session import NAME_PATTERN, Session, SessionStore
from claude_db.statedir import ID_FILE, state_id

if TYPE_CHECKING:
    from docker import DockerClient

    from claude_db.settings import Settings

LABEL_SESSION = "claude-db.session"
LABEL_INSTANCE = "claude-db.instance"
LABEL_ENGINE = "claude-db.engine"
LABEL_ROLE = "claude-db.role"
LABEL_STATE = "claude-db.state"
#: the state directory's random id (statedir.state_id): what gc sweeps by; a path is the
#: same on many machines that share one engine
LABEL_STATE_ID = "claude-db.state-id"
LABEL_KEPT_FROM = "claude-db.kept-from"  # data kept by ``delete --keep-data``: no session owns it
LABEL_KEPT_BY = "claude-db.kept-by"  # the instance that kept it (tells its volume from another's)
WORKSPACE = "/workspace"  # where the session container sees the work directory
LOG_TAIL_LINES = 5
FAILURE_CHECK_INTERVAL = 0.5  # seconds; each look is an inspect competing with the start
STOP_TIMEOUT = 30  # seconds a database gets to shut down cleanly
#: seconds after which a tools container still only created was left by an interrupted
#: command (`docker run` starts it at once): gc removes it, even while its session lives
NEVER_STARTED = 30
PORT_ATTEMPTS = 5  # free loopback ports tried when the one chosen is taken meanwhile
# bash when the image has it, else sh; not a login shell: /etc/profile would reset PATH
#: how Docker says its address pools have no subnet left for a new network (before 23.0;
#: from 23.0 on)
POOLS_FULL = ("fully subnetted", "non-overlapping IPv4 address pool")
POOLS_HINT = ("each docker session takes one network from the engine's address pools: "
              "delete sessions you are done with (claude-session list), or give the engine "
              "more (default-address-pools in its daemon.json)")
SHELL = "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"


def names(session_name: str) -> dict[str, str]:
    """Docker names of a session's resources."""
    return {
        "network": f"{session_name}-net",
        "db_container": f"{session_name}-db",
        "volume": f"{session_name}-data",
        "session_container": session_name,
    }


class NotOursError(ClaudeDbError):
    """A Docker resource has the session's name but not its labels: someone else's."""


class DockerRuntime(Runtime):
    name = "docker"
    auto_priority = 10  # the seed's way: preferred whenever a Docker engine answers
    runs_containers = True
    unavailable_error_class = DockerUnavailableError
    #: runs the engine's client tools; another Docker-compatible engine names its subclass
    tools_class: ClassVar[type[DockerTools]] = DockerTools

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._ping_failure: str | None = None
        self._pinged = False
        self._inspected: dict[str, dict[str, Any] | None] = {}
        self._failure_checked = 0.0
        self._new_network = False

    # -- availability ---------------------------------------------------------------------

    def available(self) -> bool:
        if not self._pinged:
            share_ssh(self.settings.state_dir)  # before the first login: the ping's
            self._ping_failure, self._pinged = ping(), True
        return self._ping_failure is None

    def unavailable_reason(self) -> str:
        self.available()
        failure = self._ping_failure or ""
        if failure.startswith(("no Docker engine answers", "the Docker engine at")):
            return failure  # said whole already
        return f"no Docker engine answers at {describe_host()} ({failure})"

    def cannot_create(self, engine: Engine, image: str) -> str | None:
        """The database image is neither on the engine nor pullable (a machine with a
        Docker engine and no registry in reach)."""
        return image_unobtainable(self._client(), image, self.settings.state_dir)

    # -- lifecycle ------------------------------------------------------------------------

    def create(self, session: Session, engine: Engine) -> None:
        assert session.credentials is not None and session.image is not None
        session.runtime_state = {
            **names(session.name),
            "instance": uuid.uuid4().hex[:12],
            "container_port": engine.default_port,
            "host_port": None,  # with --publish: a free port chosen at creation, then kept
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
        self._create_volume(docker, session, engine)
        self._run_database(docker, session, engine)

    def start(self, session: Session, engine: Engine) -> None:
        docker = self._client()
        state = session.runtime_state
        self._inspected.clear()
        new_network = self._ensure_network(docker, session, engine)
        database = self._find(docker, session, "container", state["db_container"])
        status = database["State"]["Status"] if database else None
        if database is None or (new_network and status != "running"):
            # Re-created from its volume: a re-made network needs new endpoints.
            self._require_volume(docker, session)
            if database is not None:
                self._remove_container(docker, database)
            self._run_database(docker, session, engine)
        elif status == "paused":
            with docker_errors(f"resuming container {state['db_container']!r}"):
                docker.api.unpause(database["Id"])
        elif status != "running":
            self._start_database(docker, session, engine, database)
        else:
            self._record_address(docker, session)  # follows a port Docker moved (old sessions)
        self._new_network = new_network  # the session container must move to it

    def start_workspace(self, session: Session, engine: Engine, env: dict[str, str]) -> None:
        """The session container (with ``--image``), once the database answers: the
        agent's programs may use it as soon as their container runs."""
        if not session.session_image:
            return
        docker = self._client()
        state = session.runtime_state
        container = self._find(docker, session, "container", state["session_container"])
        status = container["State"]["Status"] if container else None
        if status == "running":
            return
        if container is None or self._new_network:
            if container is not None:
                self._remove_container(docker, container)
            self._run_session_container(docker, session, engine, env)
        elif status == "paused":
            with docker_errors(f"resuming container {state['session_container']!r}"):
                docker.api.unpause(container["Id"])
        else:
            with slow(docker), docker_errors(f"starting container {state['session_container']!r}"):
                docker.api.start(container["Id"])

    def stop(self, session: Session, engine: Engine) -> None:
        docker = self._client()
        state = session.runtime_state
        self._inspected.clear()
        for key, timeout in (("session_container", 10), ("db_container", STOP_TIMEOUT)):
            attrs = self._find(docker, session, "container", state.get(key))
            if attrs is not None and attrs["State"]["Status"] in ("running", "paused",
                                                                   "restarting"):
                with slow(docker), docker_errors(f"stopping container {state[key]!r}"):
                    docker.api.stop(attrs["Id"], timeout=timeout)

    def delete(self, session: Session, engine: Engine, *, keep_data: bool) -> None:
        state = session.runtime_state
        instance = state.get("instance")
        if not instance:
            return  # nothing was made
        docker = self._client()
        self._inspected.clear()
        # the data volume is asked for only when it is to be kept: a volume of another owner
        # that took its name never stops a delete (it is left alone below, by its labels)
        if keep_data and self._volume(docker, session) is not None:
            self.stop(session, engine)  # a clean shutdown: the kept data must be consistent
            self._keep_volume(docker, session, engine)
        elif state.get("kept_volume") and self._own_volume_left(docker, session):
            # a `delete --keep-data` cut short while it copied: its copy may be half
            self._discard_kept_copy(docker, session)
            for key in ("kept_volume", "kept_data"):
                state.pop(key, None)
        mine = {"label": [f"{LABEL_INSTANCE}={instance}",
                          f"{LABEL_STATE}={self.settings.state_dir}"]}
        def labelled(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
            # the filter's labels checked again: Podman 4.3 ORs the label filters of volumes
            return [item for item in found
                    if (item.get("Labels") or {}).get(LABEL_INSTANCE) == instance
                    and (item.get("Labels") or {}).get(LABEL_STATE) == str(self.settings.state_dir)]

        with slow(docker), docker_errors(f"removing the containers of session {session.name!r}"):
            for container in labelled(docker.api.containers(all=True, filters=mine)):
                docker.api.remove_container(container["Id"], force=True, v=True)  # v: anonymous
        with slow(docker), docker_errors(f"removing network {state['network']!r}"):
            for network in labelled(docker.api.networks(filters=mine)):
                docker.api.remove_network(network["Id"])
        with slow(docker), docker_errors(f"removing volume {state['volume']!r}"):
            for volume in labelled(docker.api.volumes(filters=mine).get("Volumes") or []):
                docker.api.remove_volume(volume["Name"], force=True)

    def status(self, session: Session) -> Status:
        docker = self._client()
        state = session.runtime_state
        try:
            attrs = self._find(docker, session, "container", state["db_container"])
        except NotOursError:  # ours is gone; attach says whose is in the way
            attrs = None
        if attrs is None:
            # the container can be made again from its volume (attach does)
            with contextlib.suppress(NotOursError):
                if self._volume(docker, session) is not None:
                    return "stopped"
            return "missing"
        if attrs["State"]["Status"] != "running":
            return "stopped"
        if (session.publish and not engine_is_remote()
                and _published_port(attrs, state) != state.get("host_port")):
            return "stopped"  # not where .env says: attach follows it and rewrites .env
        return "running"

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
        attrs = self._find(docker, session, "container", name)
        if attrs is None:
            return f"container {name} is gone"
        state = attrs["State"]
        if state["Status"] not in ("exited", "dead"):
            return None
        how = f"exited with code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            how += " (out of memory)"
        return f"container {name} {how}; last log lines: {self._log_tail(docker, attrs['Id'])}"

    # -- orphans --------------------------------------------------------------------------

    def leftovers(self, state_dir: Path) -> dict[str, list[Orphan]]:
        """Containers, networks and volumes labelled with a session of ``state_dir``
        (containers first: they hold the others). Only those of this state directory:
        other users and test runs share the daemon."""
        if not (state_dir / ID_FILE).exists():
            return {}  # this state directory never made a resource (nor its id)
        ours = state_id(state_dir)
        mine = {"label": [LABEL_SESSION, f"{LABEL_STATE_ID}={ours}"]}
        docker = self._client()
        found: dict[str, list[Orphan]] = {}
        for kind, resource in [
            *(("container", c)
              for c in docker.containers.list(all=True, sparse=True, filters=mine)),
            *(("network", n) for n in docker.networks.list(filters=mine)),
            *(("volume", v) for v in docker.volumes.list(filters=mine)),
        ]:
            attrs = resource.attrs
            labels = attrs.get("Labels") or {}
            if labels.get(LABEL_STATE_ID) != ours or labels.get(LABEL_STATE) != str(state_dir):
                continue  # checked again: Podman 4.3 ORs the label filters of volumes
            name = labels.get(LABEL_SESSION, "")
            if NAME_PATTERN.fullmatch(name):  # a name, never a path
                shown = attrs.get("Name") or (attrs.get("Names") or [resource.id])[0]
                unused = (kind == "container" and labels.get(LABEL_ROLE) == "tools"
                          and attrs.get("State") == "created"
                          and time.time() - attrs.get("Created", time.time()) > NEVER_STARTED)
                found.setdefault(name, []).append(Orphan(
                    kind, shown.lstrip("/"),
                    f"tools container of session {name}, never started" if unused else
                    f"Docker {kind} of gone session {name}",
                    remove=partial(_remove_resource, kind, resource), unused=unused))
        return found

    # -- access ---------------------------------------------------------------------------

    def endpoint(self, session: Session, engine: Engine) -> Endpoint:
        assert session.credentials is not None
        state = session.runtime_state
        if session.publish and state.get("host_port") and not engine_is_remote():
            return Endpoint("127.0.0.1", state["host_port"], session.credentials)
        attrs = self._find(self._client(), session, "container", state["db_container"])
        if engine_is_remote():
            # its address is on the remote machine's network: reach it through the engine
            if attrs is None or attrs["State"]["Status"] != "running":
                raise NotRunningError(
                    f"the database of session {session.name!r} is not running; "
                    f"start it with: claude-session attach {session.name} --no-shell"
                )
            port = tunnel(attrs["Id"], state["container_port"])
            return Endpoint("127.0.0.1", port, session.credentials)
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
        if state.get("session_container") or engine_is_remote():
            # programs in the session container reach the database by its name on the
            # network (on a remote engine that is where the session's programs run: a
            # tunnel of ours lives only as long as the claude-db command that made it)
            return Endpoint(state["db_container"], state["container_port"], session.credentials)
        return self.endpoint(session, engine)

    def tools(self, session: Session, engine: Engine, database: str | None = None) -> Tools:
        assert session.credentials is not None
        state = session.runtime_state
        attrs = self._find(self._client(), session, "container", state["db_container"])
        if attrs is None:
            raise NotRunningError(f"the database container of session {session.name!r} is gone; "
                                  f"start it with: claude-session attach {session.name} --no-shell")
        network = (attrs["NetworkSettings"].get("Networks") or {}).get(state["network"]) or {}
        if not network.get("NetworkID"):
            raise NotRunningError(f"the database container of session {session.name!r} is not "
                                  f"on its network; start it with: claude-session attach "
                                  f"{session.name} --no-shell")
        endpoint = Endpoint(self._tools_host(attrs, state), state["container_port"],
                            session.credentials).with_database(database)
        return self.tools_class(attrs["Id"], attrs["Image"], network["NetworkID"], endpoint,
                                self._labels(session, engine, "tools"), remote=engine_is_remote(),
                                client_endpoint=self.endpoint(session, engine)
                                .with_database(database))

    def enter_shell(self, session: Session, env: dict[str, str]) -> int:
        name = session.runtime_state.get("session_container")
        if not name:  # the user's shell here, with the user's PATH (not our ssh)
            path = user_path()
            return super().enter_shell(session, env if path is None else {**env, "PATH": path})
        attrs = self._find(self._client(), session, "container", name)
        if attrs is None:
            raise NotRunningError(f"the session container {name} is gone; "
                                  f"attach again to make it: claude-session attach {name}")
        argv = exec_argv(attrs["Id"], ["sh", "-c", SHELL], env, stdin=True, tty=terminal(),
                         workdir=WORKSPACE, cli=self.tools_class.cli())
        return run_foreground(argv, env=child_env(env))

    # -- internals ------------------------------------------------------------------------

    def _client(self) -> DockerClient:
        # one ping per process (~1 ms): a daemon that hangs fails every command in
        # PING_TIMEOUT, not each of its calls in QUICK_TIMEOUT
        if not self.available():
            raise DockerUnavailableError(self.unavailable_reason())
        return client()

    def _host_options(self) -> dict[str, Any]:
        """Extra ``create_host_config`` options of every container made (none for Docker;
        another Docker-compatible engine's subclass adds what it needs, e.g. ulimits)."""
        return {}

    def _tools_host(self, attrs: dict[str, Any], state: dict[str, Any]) -> str:
        """The database's host as the tools see it: by its name on the session's network,
        the same from a tools container and from inside the database container (exec)."""
        return str(state["db_container"])

    def _labels(self, session: Session, engine: Engine, role: str) -> dict[str, str]:
        return {
            LABEL_SESSION: session.name,
            LABEL_INSTANCE: session.runtime_state["instance"],
            LABEL_ENGINE: engine.name,
            LABEL_ROLE: role,
            LABEL_STATE: str(self.settings.state_dir),  # which claude-db state owns it
            LABEL_STATE_ID: state_id(self.settings.state_dir),  # ... on any machine (gc)
        }

    def _ours(self, session: Session, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return (labels.get(LABEL_SESSION) == session.name
                and labels.get(LABEL_INSTANCE) == session.runtime_state.get("instance")
                and labels.get(LABEL_STATE) == str(self.settings.state_dir))

    def _not_ours(self, session: Session, kind: str, name: str) -> NotOursError:
        return NotOursError(
            f"Docker {kind} {name!r} does not belong to session {session.name!r} (it lacks "
            f"the labels of this session and state directory) and is left alone; remove or "
            f"rename it (docker {kind} rm {name}), then try again"
        )

    def _find(
        self, docker: DockerClient, session: Session, kind: str, name: str | None
    ) -> dict[str, Any] | None:
        """Inspect data of the session's ``kind`` named ``name``, ``None`` if there is none.

        One of that name without the session's labels raises :class:`NotOursError`.
        Containers are inspected once per command (``_inspected``).
        """
        if not name:
            return None
        if kind != "container":
            attrs = _inspect(docker, kind, name)
        elif name in self._inspected:
            attrs = self._inspected[name]
        else:
            attrs = self._inspected[name] = _inspect(docker, kind, name)
        if attrs is None:
            return None
        labels = attrs["Config"]["Labels"] if kind == "container" else attrs.get("Labels")
        if not self._ours(session, labels):
            raise self._not_ours(session, kind, name)
        return attrs

    def _volume(self, docker: DockerClient, session: Session) -> dict[str, Any] | None:
        return self._find(docker, session, "volume", session.runtime_state["volume"])

    def _own_volume_left(self, docker: DockerClient, session: Session) -> bool:
        """Whether the session's own data volume is still there (a volume of another owner
        that took its name is not)."""
        try:
            return self._volume(docker, session) is not None
        except NotOursError:
            return False

    def _remove_container(self, docker: DockerClient, attrs: dict[str, Any]) -> None:
        with slow(docker), docker_errors(f"removing container {attrs['Name'].lstrip('/')!r}"):
            docker.api.remove_container(attrs["Id"], force=True, v=True)  # v: anonymous volumes

    def _keep_volume(self, docker: DockerClient, session: Session, engine: Engine) -> None:
        """Copy the data into a volume of its own that no session owns.

        Volume labels cannot change, and the session's volume carries the labels that
        ``delete`` and ``gc`` remove by; its name is also free again for a new session.
        Its name is on record (``session.json``) before the copy starts: a ``delete``
        killed meanwhile leaves the session, and the next ``delete`` finds the half copy
        (and copies again into it, or removes it).
        """
        from docker.types import Mount

        assert session.image is not None
        state = session.runtime_state
        # the instance in the name: two keeps of one name in one second are two volumes
        kept = (state.get("kept_volume")
                or f"{state['volume']}-kept-{time.strftime('%Y%m%d-%H%M%S')}-{state['instance']}")
        state["kept_volume"], state["kept_data"] = kept, f"the Docker volume {kept}"
        SessionStore(self.settings.state_dir).save(session)
        self._discard_kept_copy(docker, session)  # of a delete cut short, if any
        labels = {LABEL_KEPT_FROM: session.name, LABEL_ENGINE: engine.name,
                  LABEL_KEPT_BY: state["instance"]}
        what = f"keeping the data of session {session.name!r} in volume {kept!r}"
        with slow(docker), docker_errors(what):
            # creating a volume that exists returns it: only one with our labels is ours
            if (docker.api.create_volume(kept, labels=labels).get("Labels") or {}) != labels:
                raise NotOursError(f"{what} failed: Docker already has a volume of that name")
            try:
                copier = docker.api.create_container(
                    session.image,
                    entrypoint=["cp", "-a", "/from/.", "/to/"],
                    labels=self._labels(session, engine, "copy"),
                    host_config=docker.api.create_host_config(
                        mounts=[Mount("/from", state["volume"], type="volume", read_only=True),
                                Mount("/to", kept, type="volume")],
                        network_mode="none",
                        **self._host_options(),
                    ),
                )
                try:
                    docker.api.start(copier["Id"])
                    checkpoint("keep-copy-started")
                    code = docker.api.wait(copier["Id"])["StatusCode"]
                    if code != 0:
                        raise ClaudeDbError(
                            f"{what} failed: cp exited with {code}: "
                            f"{self._log_tail(docker, copier['Id'])}"
                        )
                finally:
                    docker.api.remove_container(copier["Id"], force=True, v=True)
            except BaseException:
                with contextlib.suppress(Exception):  # no half copy stays behind
                    docker.api.remove_volume(kept, force=True)
                raise

    def _discard_kept_copy(self, docker: DockerClient, session: Session) -> None:
        """What a ``delete --keep-data`` cut short left: its copier container (which may
        still be copying) and the copy on record, maybe half."""
        mine = {"label": [f"{LABEL_INSTANCE}={session.runtime_state['instance']}",
                          f"{LABEL_ROLE}=copy", f"{LABEL_STATE}={self.settings.state_dir}"]}
        with slow(docker), docker_errors(f"removing the copier of session {session.name!r}"):
            for container in docker.api.containers(all=True, filters=mine):
                docker.api.remove_container(container["Id"], force=True, v=True)
        if (record := self.kept_record(session)) is not None:
            self.remove_kept(record)

    def kept_record(self, session: Session) -> dict[str, Any] | None:
        state = session.runtime_state
        if not state.get("kept_volume"):
            return None
        return {"volume": state["kept_volume"], "session": session.name,
                "instance": state.get("instance")}

    def remove_kept(self, record: Mapping[str, Any]) -> None:
        """The kept volume goes only while it carries the labels ``delete --keep-data``
        gave it (a volume of that name made since is not ours)."""
        import docker as sdk

        volume, session = str(record["volume"]), str(record["session"])
        docker = self._client()
        try:
            labels = docker.api.inspect_volume(volume).get("Labels") or {}
        except sdk.errors.NotFound:
            return
        if labels.get(LABEL_KEPT_FROM) != session or labels.get(LABEL_KEPT_BY) != record.get(
                "instance"):
            raise ClaudeDbError(f"Docker volume {volume} lacks the labels of session "
                                f"{session}'s kept data: left alone")
        with slow(docker), docker_errors(f"removing volume {volume!r}"):
            docker.api.remove_volume(volume)

    def _refuse_taken_names(self, docker: DockerClient, session: Session) -> None:
        """Docker names are global: never adopt (and later delete) another's resources."""
        state = session.runtime_state
        checks = [("container", state["db_container"]), ("container", state["session_container"]),
                  ("network", state["network"]), ("volume", state["volume"])]
        for kind, name in checks:
            if name is not None and _inspect(docker, kind, name) is not None:
                raise SessionExistsError(
                    f"Docker already has a {kind} named {name!r} that is not part of a new "
                    f"session {session.name!r}; remove it (docker {kind} rm {name}) or choose "
                    "another name"
                )

    def _create_network(self, docker: DockerClient, session: Session, engine: Engine) -> None:
        name = session.runtime_state["network"]
        try:
            with slow(docker), docker_errors(f"creating network {name!r}"):
                # the low-level call: the SDK's model would look the new network up again
                created = docker.api.create_network(
                    name, driver="bridge", check_duplicate=True,
                    labels=self._labels(session, engine, "network"),
                )
        except ClaudeDbError as exc:
            if any(words in str(exc) for words in POOLS_FULL):
                raise ClaudeDbError(f"{exc} ({POOLS_HINT})") from None
            raise
        with slow(docker), docker_errors(f"creating network {name!r}"):
            # check_duplicate is best effort: two creates at once can both succeed
            same = [n for n in docker.api.networks(names=[name]) if n["Name"] == name]
            if len(same) > 1:
                docker.api.remove_network(created["Id"])
                raise self._not_ours(session, "network", name)

    def _create_volume(self, docker: DockerClient, session: Session, engine: Engine) -> None:
        name = session.runtime_state["volume"]
        with slow(docker), docker_errors(f"creating volume {name!r}"):
            created = docker.api.create_volume(name, labels=self._labels(session, engine, "data"))
        # creating a volume that exists returns it (another state directory's, made just now)
        if not self._ours(session, created.get("Labels")):
            raise self._not_ours(session, "volume", name)

    def _ensure_network(self, docker: DockerClient, session: Session, engine: Engine) -> bool:
        """Make the session's network again if it was removed; whether it was."""
        if self._find(docker, session, "network", session.runtime_state["network"]) is not None:
            return False
        self._create_network(docker, session, engine)
        return True

    def _run_database(self, docker: DockerClient, session: Session, engine: Engine) -> None:
        """Create and start the database container; with ``--publish`` on the recorded
        loopback port, else (first start, or the port was taken meanwhile) a free one."""
        for attempt in range(PORT_ATTEMPTS):
            created = self._create_database(docker, session, engine)
            try:
                with slow(docker), docker_errors(f"starting container {created!r}"):
                    docker.api.start(created)
                break
            except ClaudeDbError as exc:
                if not (session.publish and _port_taken(exc)) or attempt == PORT_ATTEMPTS - 1:
                    raise
                with slow(docker), docker_errors(f"removing container {created!r}"):
                    docker.api.remove_container(created, force=True, v=True)
                session.runtime_state["host_port"] = None
        self._record_address(docker, session)

    def _start_database(
        self, docker: DockerClient, session: Session, engine: Engine, attrs: dict[str, Any]
    ) -> None:
        """Start the stopped database container; if its published port was taken meanwhile,
        make it again on a free one (the data lives in the volume; .env follows)."""
        try:
            with slow(docker), docker_errors(f"starting container {attrs['Name'].lstrip('/')!r}"):
                docker.api.start(attrs["Id"])
        except ClaudeDbError as exc:
            if not (session.publish and _port_taken(exc)):
                raise
            self._remove_container(docker, attrs)
            session.runtime_state["host_port"] = None
            self._run_database(docker, session, engine)
            return
        self._record_address(docker, session)

    def _create_database(self, docker: DockerClient, session: Session, engine: Engine) -> str:
        from docker.types import Mount

        assert session.credentials is not None and session.image is not None
        state = session.runtime_state
        name, network = state["db_container"], state["network"]
        ports, bindings = None, None
        # a remote engine publishes nothing: its ports would be that machine's (the tunnel)
        if session.publish and not engine_is_remote():
            # 127.0.0.1 only, on an explicit port: Docker would pick a new one on every start
            # of a container made with none (a `docker restart`, the daemon's restart)
            if not state.get("host_port"):
                state["host_port"] = claim_port(self.settings.state_dir, session.name)
            ports = [(str(state["container_port"]), "tcp")]
            bindings = {f"{state['container_port']}/tcp": ("127.0.0.1", state["host_port"])}
        api = docker.api  # low-level calls: the SDK's models would inspect after each one
        with slow(docker), docker_errors(f"creating container {name!r}"):
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
                    **self._host_options(),
                ),
                # attached to its network as it is made: no connect call after
                networking_config=api.create_networking_config(
                    {network: api.create_endpoint_config(aliases=[name])}
                ),
                ports=ports,
                detach=True,
            )
        return str(created["Id"])

    def _run_session_container(
        self, docker: DockerClient, session: Session, engine: Engine, env: dict[str, str]
    ) -> None:
        from docker.types import Mount

        assert session.session_image is not None
        state = session.runtime_state
        name, network = state["session_container"], state["network"]
        api = docker.api
        with slow(docker), docker_errors(f"creating container {name!r}"):
            created = api.create_container(
                session.session_image,
                command=["sleep", "infinity"],  # stays up for `docker exec` and attach
                name=name,
                hostname=name,
                environment=env,
                labels=self._labels(session, engine, "session"),
                working_dir=WORKSPACE,
                host_config=api.create_host_config(
                    init=True,  # a real PID 1: `sleep` stops on SIGTERM, zombies are reaped
                    mounts=[Mount(WORKSPACE, session.workdir, type="bind")],
                    network_mode=network,
                    **self._host_options(),
                ),
                detach=True,
            )
        with slow(docker), docker_errors(f"starting container {name!r}"):
            api.start(created["Id"])
            attrs = api.inspect_container(created["Id"])
        if attrs["State"]["Status"] in ("exited", "dead"):
            raise ClaudeDbError(
                f"session container {name} from {session.session_image!r} exited at once "
                f"(code {attrs['State'].get('ExitCode')}); last log lines: "
                f"{self._log_tail(docker, created['Id'])}"
            )

    def _record_address(self, docker: DockerClient, session: Session) -> None:
        """Remember where the running database is (its address, its published port)."""
        state = session.runtime_state
        self._inspected.pop(state["db_container"], None)
        attrs = self._find(docker, session, "container", state["db_container"])
        if attrs is None or attrs["State"]["Status"] in ("exited", "dead"):
            self._failure_checked = 0.0
            details = self.failure_details(session)
            raise NotRunningError(f"the database of session {session.name!r} failed to start: "
                                  f"{details}")
        state["ip"] = _address(attrs, state["network"]) or state.get("ip")
        if session.publish and not engine_is_remote():
            state["host_port"] = _published_port(attrs, state) or state.get("host_port")

    def _require_volume(self, docker: DockerClient, session: Session) -> None:
        if self._volume(docker, session) is None:
            raise NotRunningError(
                f"the data volume {session.runtime_state['volume']} of session "
                f"{session.name!r} is gone; delete the session and start a new one"
            )

    def _log_tail(self, docker: DockerClient, container: str) -> str:
        try:
            raw = docker.api.logs(container, stdout=True, stderr=True, tail=LOG_TAIL_LINES * 4)
        except Exception as exc:  # the logs are a courtesy: never hide the real failure
            return f"(no logs: {first_line(exc)})"
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"


def _inspect(docker: DockerClient, kind: str, name: str) -> dict[str, Any] | None:
    """Inspect data of the ``kind`` (container, network, volume) named ``name``, or ``None``."""
    import docker as sdk

    inspect = {"container": docker.api.inspect_container, "network": docker.api.inspect_network,
               "volume": docker.api.inspect_volume}[kind]
    with docker_errors(f"looking up {kind} {name!r}"):
        try:
            attrs: dict[str, Any] = inspect(name)
        except sdk.errors.NotFound:
            return None
    if attrs.get("Name", "").lstrip("/") != name:
        return None  # Docker also matches id prefixes: nothing is named so
    return attrs


def _address(attrs: dict[str, Any] | None, network: str) -> str | None:
    if attrs is None or attrs["State"]["Status"] != "running":
        return None
    networks = attrs["NetworkSettings"].get("Networks") or {}
    ip = (networks.get(network) or {}).get("IPAddress")
    return ip or None


def _published_port(attrs: dict[str, Any], state: dict[str, Any]) -> int | None:
    """The loopback port the running container publishes its database on."""
    bindings = (attrs["NetworkSettings"].get("Ports") or {}).get(
        f"{state['container_port']}/tcp"
    ) or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def _port_taken(exc: BaseException) -> bool:
    text = str(exc)
    return "address already in use" in text or "port is already allocated" in text


def _remove_resource(kind: str, resource: Any) -> None:
    if kind == "container":
        resource.remove(force=True, v=True)
    elif kind == "volume":
        resource.remove(force=True)
    else:
        resource.remove()

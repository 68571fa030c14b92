"""Talking to the Docker engine: where it is, whether it answers, the SDK client, image pulls.

The docker SDK (and the ``requests`` stack under it) costs ~150 ms to import, so it is
imported only when a docker session is actually worked on: the availability check
speaks the one HTTP request it needs (``GET /_ping``) over a plain socket when it can.
The ping's answer also names the engine's API version, so the SDK client made later
does not ask for it again (``GET /version``, a round trip on every start).
"""

from __future__ import annotations

import contextlib
import functools
import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from claude_db.errors import ClaudeDbError, DockerUnavailableError
from claude_db.statedir import UnsafeStateError, make_private_dir

if TYPE_CHECKING:
    from docker import DockerClient

DEFAULT_SOCKET = "/var/run/docker.sock"
PING_TIMEOUT = 2.0  # seconds: a daemon that answers at all answers a ping at once
#: seconds for calls that should be instant (inspect, list, logs): a daemon that hangs
#: fails these fast instead of blocking ``list``, ``status``, ``query`` for minutes
QUICK_TIMEOUT = 5.0
API_TIMEOUT = 120  # seconds for calls that do work: create, start, stop, remove, pull
MAX_PING_ANSWER = 4096  # bytes: the status line and headers of GET /_ping fit easily

#: the API version each engine's ping answered with (``Api-Version``), by host
_api_versions: dict[str, str] = {}


def docker_host() -> str:
    """Where the Docker engine is, as the docker CLI finds it: ``DOCKER_HOST``; else the
    endpoint of the current context (``DOCKER_CONTEXT``, else ``currentContext`` in the
    CLI's ``config.json``) unless that is ``default``; else the local socket."""
    if host := os.environ.get("DOCKER_HOST"):
        return host
    if (name := context_name()) is not None:
        return _context_endpoint(name)[0]
    return f"unix://{DEFAULT_SOCKET}"


def describe_host() -> str:
    try:
        host = docker_host()
    except DockerUnavailableError:
        host = "?"
    name = None if os.environ.get("DOCKER_HOST") else context_name()
    return f"{host} (docker context {name!r})" if name else host


def context_name() -> str | None:
    """The docker CLI context in use, None for ``default`` (``DOCKER_HOST`` set counts as
    that, as for the CLI)."""
    if os.environ.get("DOCKER_HOST"):
        return None
    name = os.environ.get("DOCKER_CONTEXT") or _current_context()
    return None if name in (None, "", "default") else name


def _current_context() -> str | None:
    try:
        config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
        name = json.loads(config.read_text()).get("currentContext")
    except (OSError, ValueError, AttributeError, RuntimeError):  # RuntimeError: no home
        return None
    return name if isinstance(name, str) else None


@functools.cache
def _context_endpoint(name: str) -> tuple[str, Any]:
    """A context's engine: its host and its TLS configuration (None: no TLS), as the
    docker SDK reads the CLI's context store (the SDK only when a context is in use)."""
    from docker.context import ContextAPI
    from docker.errors import DockerException

    try:
        context = ContextAPI.get_context(name)
    except DockerException as exc:
        raise DockerUnavailableError(f"the docker context {name!r} is unreadable: "
                                     f"{first_line(exc)}") from None
    if context is None:
        raise DockerUnavailableError(
            f"the docker context {name!r} (DOCKER_CONTEXT or currentContext in "
            "config.json) does not exist; see docker context ls")
    if not context.Host:
        raise DockerUnavailableError(f"the docker context {name!r} names no Docker engine")
    return str(context.Host), context.TLSConfig


def engine_is_remote() -> bool:
    """Whether the engine runs on another machine (``ssh://``, or ``tcp://`` to an address
    that is not this machine's loopback): its containers' addresses are not routable from
    here, and a port it publishes is published on that machine."""
    url = urlsplit(docker_host())
    if url.scheme == "ssh":
        return True
    if url.scheme not in ("tcp", "http", "https"):
        return False  # unix://, npipe://
    if url.hostname in (None, "", "localhost"):
        return False
    try:
        return not ipaddress.ip_address(url.hostname).is_loopback
    except ValueError:
        return True  # a host name: another machine


def _uses_tls() -> bool:
    if (name := context_name()) is not None:
        return _context_endpoint(name)[1] is not None
    verify = os.environ.get("DOCKER_TLS_VERIFY")
    return bool(os.environ.get("DOCKER_CERT_PATH")) or (verify is not None and verify != "")


def ping() -> str | None:
    """``None`` if a Docker engine answers, else a short reason why not."""
    try:
        host, tls = docker_host(), _uses_tls()
    except DockerUnavailableError as exc:  # a context that does not exist
        return str(exc)
    if tls or not host.startswith(("unix://", "tcp://", "http://")):
        return _sdk_ping()  # TLS, ssh:// and npipe:// are the SDK's business
    try:
        with _open_socket(host) as sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = _read_head(sock)
    except FileNotFoundError:
        return "no such socket"
    except PermissionError:
        return "permission denied on its socket (is your user in the docker group?)"
    except TimeoutError:  # it accepts connections but says nothing: hung, or not Docker
        return f"the Docker engine at {host} does not answer ({PING_TIMEOUT:g} s)"
    except OSError as exc:
        return exc.strerror.lower() if exc.strerror else type(exc).__name__
    status, *headers = answer.decode(errors="replace").split("\r\n")
    if " 200 " not in f"{status} ":
        return f"unexpected answer {status!r}" if status else "the connection closed"
    for header in headers:
        key, _, value = header.partition(":")
        if key.strip().lower() == "api-version" and value.strip():
            _api_versions[host] = value.strip()
    return None


def _read_head(sock: socket.socket) -> bytes:
    """The status line and headers of an HTTP answer (HTTP/1.0: the engine then closes)."""
    answer = b""
    while b"\r\n\r\n" not in answer and len(answer) < MAX_PING_ANSWER:
        chunk = sock.recv(MAX_PING_ANSWER)
        if not chunk:
            break
        answer += chunk
    return answer.split(b"\r\n\r\n", 1)[0]


def _open_socket(host: str) -> socket.socket:
    url = urlsplit(host)
    if url.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = url.path
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in (url.hostname or "") else socket.AF_INET)
        address = (url.hostname or "127.0.0.1", url.port or 2375)
    sock.settimeout(PING_TIMEOUT)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _sdk_ping() -> str | None:
    try:
        client().ping()
    except DockerUnavailableError as exc:
        return str(exc)
    except Exception as exc:
        return first_line(exc)
    return None


@functools.cache
def _client_for(host: str, tls: bool, context: str | None) -> DockerClient:
    import docker
    import requests

    def make(version: str) -> DockerClient:
        # ssh://: the ssh CLI, as the docker CLI does (the user's ssh config, agent, known
        # hosts, ProxyJump), not paramiko, which reads little of that; every `docker exec`
        # claude-db runs goes through the docker CLI, so both reach the engine alike
        options = {"timeout": QUICK_TIMEOUT, "version": version,
                   "use_ssh_client": host.startswith("ssh://")}
        if context is not None:  # not every SDK 7 reads contexts in from_env
            made = docker.DockerClient(base_url=host, tls=_context_endpoint(context)[1] or False,
                                       **options)
        else:
            made = docker.from_env(**options)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the CA of
        # DOCKER_CERT_PATH on every request ("certificate verify failed"): the engine's
        # CA is the one the docker CLI trusts
        made.api.trust_env = not tls
        return made

    # the version the ping saw: the SDK would otherwise ask for it (GET /version) first
    version = _api_versions.get(host) if not tls else None
    try:
        if tls:  # asked here: "auto" would ask before trust_env can be set
            probe = make(docker.constants.MINIMUM_DOCKER_API_VERSION)
            version = str(probe.api.version(api_version=False)["ApiVersion"])
        return make(version or "auto")
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise DockerUnavailableError(
            f"no Docker engine answers at {describe_host()} ({_connection_reason(exc)})"
        ) from None


def client() -> DockerClient:
    """The docker SDK client for the current environment (made once per process).

    Its calls time out after :data:`QUICK_TIMEOUT`; wrap calls that do work in :func:`slow`.
    """
    return _client_for(docker_host(), _uses_tls(), context_name())


@contextlib.contextmanager
def slow(docker_client: DockerClient) -> Iterator[None]:
    """Give the calls in the block :data:`API_TIMEOUT` (the SDK reads it on every request)."""
    api = docker_client.api
    before, api.timeout = api.timeout, API_TIMEOUT
    try:
        yield
    finally:
        api.timeout = before


@contextlib.contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Turn the SDK's exceptions into claude-db's one-line errors."""
    import docker
    import requests

    try:
        yield
    except docker.errors.APIError as exc:
        raise ClaudeDbError(f"{what} failed: {api_message(exc)}") from None
    except requests.exceptions.Timeout as exc:  # before ConnectionError: ConnectTimeout is both
        raise DockerUnavailableError(
            f"{what} failed: the Docker engine at {describe_host()} does not answer "
            f"({_timeout_of(exc)})"
        ) from None
    except requests.exceptions.ConnectionError as exc:
        raise DockerUnavailableError(
            f"{what} failed: no Docker engine answers at {describe_host()} "
            f"({_connection_reason(exc)})"
        ) from None
    except docker.errors.ContainerError as exc:
        detail = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise ClaudeDbError(
            f"{what} failed: exit {exc.exit_status}: {first_line(detail or exc)}"
        ) from None
    except docker.errors.DockerException as exc:
        raise ClaudeDbError(f"{what} failed: {first_line(exc)}") from None


def api_message(exc: Any) -> str:
    explanation = getattr(exc, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return first_line(explanation or exc)


def first_line(value: object) -> str:
    lines = str(value).strip().splitlines()
    return lines[0] if lines else type(value).__name__


def _timeout_of(exc: BaseException) -> str:
    """How long we waited, from the ``read timeout=5.0`` urllib3 puts in its message."""
    found = re.search(r"timeout=([0-9.]+)", str(exc))
    return f"{float(found.group(1)):g} s" if found else "timed out"


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    for known in ("Connection refused", "No such file or directory", "Permission denied",
                  "timed out", "Name or service not known"):
        if known.lower() in text.lower():
            return known.lower()
    return first_line(text)


# -- one ssh login shared by the commands of an ssh:// engine ---------------------------------

#: seconds an idle shared ssh connection stays up for the next claude-db command
SSH_PERSIST = 60
SSH_DIR = "ssh"  # in the state directory: our ssh, and the shared connections' sockets
#: the longest directory for those sockets: ``<dir>/<%C: 40>.<16>`` (ssh binds a temporary
#: name first) must fit sun_path's 107 bytes
CONTROL_DIR_MAX = 49
_path_before_ssh: str | None = None


def share_ssh(state_dir: Path) -> None:
    """Make every ssh login of this process to an ``ssh://`` engine (the SDK's and the
    docker CLI's, one per API connection and per ``docker exec``: each connection of the
    tunnel is one) go over one shared connection: an ``ssh`` first on this process's
    ``PATH`` that runs the user's with ``ControlMaster=auto``, kept :data:`SSH_PERSIST` s
    after its last use (then ssh ends it and removes its socket)."""
    global _path_before_ssh
    try:
        host = docker_host()
    except DockerUnavailableError:  # a context that does not exist: the ping says so
        return
    directory = state_dir / SSH_DIR
    # an inherited PATH may already lead with our ssh: it must not run itself forever
    inherited = os.pathsep.join(
        entry for entry in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if os.path.realpath(entry or ".") != os.path.realpath(directory))
    real = shutil.which("ssh", path=inherited)
    if _path_before_ssh is not None or not host.startswith("ssh://") or real is None:
        return
    make_private_dir(directory)
    control = _control_dir(directory)
    if control is None:
        return
    script = ("#!/bin/sh\n# claude-db's ssh: yours, over one shared connection (see "
              "claude_db.runtimes.docker.client)\n"
              f"exec {shlex.quote(real)} -o ControlMaster=auto "
              f"-o {shlex.quote(f'ControlPath={control}/%C')} "
              f"-o ControlPersist={SSH_PERSIST} \"$@\"\n")
    wrapper = directory / "ssh"
    if not wrapper.is_file() or wrapper.read_text() != script:
        fresh = directory / f".ssh.{os.getpid()}"
        fresh.write_text(script)
        fresh.chmod(0o700)
        os.replace(fresh, wrapper)
    _path_before_ssh = inherited
    os.environ["PATH"] = f"{directory}{os.pathsep}{_path_before_ssh}"


def _control_dir(directory: Path) -> Path | None:
    """Where the shared connections' sockets go: ``directory`` (private, in the state),
    or when its path is too long for a socket, a private directory in /tmp named after
    it; None when that one is not ours (another user made it first): then nothing is shared."""
    if len(str(directory)) <= CONTROL_DIR_MAX:
        return directory
    import hashlib  # late: hashlib loads OpenSSL, a cost every command would pay
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    short = Path("/tmp") / f"cdb-ssh-{os.geteuid()}-{digest}"
    try:
        make_private_dir(short)
    except (UnsafeStateError, OSError):
        return None
    return short


def user_path() -> str | None:
    """``PATH`` as it was before :func:`share_ssh` (None: unchanged): for the user's own
    shell, which should not run our ssh."""
    return _path_before_ssh


# -- the tunnel to a remote engine's database ----------------------------------------------

#: run in the database container for each connection: a byte pipe between the exec's
#: stdin/stdout and the database's port ($1) inside it (socat if the image has it, else
#: bash's /dev/tcp; the test images are Debian's, as are the official ones). It reaps
#: what it started (`wait`): an orphan would be reparented to the container's PID 1, the
#: database server, and PostgreSQL takes an unknown child killed by a signal for a
#: crashed backend (it restarts, in recovery).
FORWARDER = (
    'if command -v socat >/dev/null 2>&1; then exec socat - "TCP:127.0.0.1:$1"; fi; '
    'exec bash -c \'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1; cat <&3 & cat >&3; '
    'kill "$!" 2>/dev/null; wait\' "$1"'
)
CHUNK = 65536

_tunnels: dict[tuple[str, int], int] = {}
_tunnels_lock = threading.Lock()


def tunnel(container: str, port: int) -> int:
    """A loopback port of this process that reaches ``port`` inside ``container``.

    Each connection accepted there is piped through a ``docker exec -i`` of
    :data:`FORWARDER` in the container: the engine's own stream, over whatever reaches
    the engine (TLS, ssh), so the database is published on none of its interfaces. The
    listener lives as long as this claude-db process (one per container and port)."""
    docker_cli = shutil.which("docker")
    if docker_cli is None:  # else each connection would hang in a thread that died
        raise DockerUnavailableError(
            "the Docker engine is on another machine (DOCKER_HOST): claude-db reaches its "
            "databases through `docker exec`, and no docker CLI is on PATH (install docker-cli)")
    with _tunnels_lock:
        if (container, port) not in _tunnels:
            listener = socket.create_server(("127.0.0.1", 0))
            threading.Thread(target=_accept, args=(listener, docker_cli, container, port),
                             daemon=True).start()
            _tunnels[container, port] = listener.getsockname()[1]
        return _tunnels[container, port]


def _accept(listener: socket.socket, docker_cli: str, container: str, port: int) -> None:
    while True:
        connection, _ = listener.accept()
        forwarder = subprocess.Popen(
            [docker_cli, "exec", "-i", container, "sh", "-c", FORWARDER, "sh", str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert forwarder.stdin is not None and forwarder.stdout is not None
        threading.Thread(target=_pump_in, args=(connection, forwarder), daemon=True).start()
        threading.Thread(target=_pump_out, args=(forwarder, connection), daemon=True).start()


def _pump_in(connection: socket.socket, forwarder: subprocess.Popen[bytes]) -> None:
    assert forwarder.stdin is not None
    with contextlib.suppress(OSError):
        while data := connection.recv(CHUNK):
            forwarder.stdin.write(data)
            forwarder.stdin.flush()
    with contextlib.suppress(OSError):
        forwarder.stdin.close()  # the client is done: the forwarder ends


def _pump_out(forwarder: subprocess.Popen[bytes], connection: socket.socket) -> None:
    output = forwarder.stdout
    assert isinstance(output, io.BufferedReader)  # read1: what is there, without waiting
    with contextlib.suppress(OSError):
        while data := output.read1(CHUNK):
            connection.sendall(data)
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()
    forwarder.wait()


# -- images -------------------------------------------------------------------------------


def ensure_image(docker_client: DockerClient, image: str, hint: str = "") -> None:
    """Make sure ``image`` is present, pulling it (with progress on a terminal) if not.

    ``hint`` ends the error when the pull fails (what to do instead).
    """
    import docker

    with docker_errors(f"inspecting image {image!r}"):
        try:
            docker_client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
    progress = _PullProgress(image) if sys.stderr.isatty() else None
    # docker_errors: only what the handlers below leave (the engine stopped answering)
    with slow(docker_client), docker_errors(f"pulling image {image!r}"):
        try:
            for event in docker_client.api.pull(image, stream=True, decode=True):
                if "error" in event:
                    raise ClaudeDbError(_pull_failed(image, event.get("error"), hint))
                if progress is not None:
                    progress.update(event)
        except docker.errors.APIError as exc:
            raise ClaudeDbError(_pull_failed(image, api_message(exc), hint)) from None
        except docker.errors.DockerException as exc:
            raise ClaudeDbError(_pull_failed(image, first_line(exc), hint)) from None
        finally:
            if progress is not None:
                progress.done()


#: seconds during which a registry that did not answer is not asked again for an image
#: (per state directory): else every ``auto`` start would wait for it first
SILENT_REGISTRY_MEMORY = 600
SILENT_REGISTRIES = "docker-silent-registries.json"  # in the state directory


def image_unobtainable(docker_client: DockerClient, image: str, state_dir: Path) -> str | None:
    """Why ``image`` is neither on the engine nor pullable, or None when it is there or
    its registry knows it. Asks the registry for the image's manifest only (not its
    layers), within :data:`QUICK_TIMEOUT`; a registry that did not answer in that time is
    remembered for :data:`SILENT_REGISTRY_MEMORY` seconds in ``state_dir``."""
    import docker
    import requests

    with docker_errors(f"inspecting image {image!r}"):
        try:
            docker_client.images.get(image)
            return None
        except docker.errors.ImageNotFound:
            pass
    unobtainable = f"image {image!r} is not on the Docker engine and cannot be pulled"
    memory = state_dir / SILENT_REGISTRIES
    key = f"{describe_host()} {image}"
    asked = _read_json(memory).get(key)
    if isinstance(asked, (int, float)) and 0 <= time.time() - asked < SILENT_REGISTRY_MEMORY:
        return f"{unobtainable} (its registry did not answer {QUICK_TIMEOUT:g} s, " \
               f"{int(time.time() - asked)} s ago)"
    try:
        docker_client.api.inspect_distribution(image)
    except requests.exceptions.Timeout:
        remembered = {k: t for k, t in _read_json(memory).items()
                      if isinstance(t, (int, float)) and time.time() - t < SILENT_REGISTRY_MEMORY}
        _write_json(memory, {**remembered, key: time.time()})
        return f"{unobtainable} (its registry did not answer in {QUICK_TIMEOUT:g} s)"
    except docker.errors.APIError as exc:
        return f"{unobtainable} ({api_message(exc)})"
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        return f"{unobtainable} ({first_line(exc)})"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` at once (a reader never sees half of it); a failure only means
    the registry is asked again next time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)


def _pull_failed(image: str, reason: object, hint: str) -> str:
    message = f"image {image!r} is not on the Docker engine and cannot be pulled: "
    return message + first_line(reason) + (f"; {hint}" if hint else "")


class _PullProgress:
    """One self-updating line on stderr: bytes downloaded over bytes known, all layers."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.layers: dict[str, tuple[int, int]] = {}
        self.shown = False

    def update(self, event: dict[str, Any]) -> None:
        detail = event.get("progressDetail") or {}
        layer = event.get("id")
        if event.get("status") == "Downloading" and layer and detail.get("total"):
            self.layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        elif event.get("status") in ("Download complete", "Already exists") and layer:
            _, total = self.layers.get(layer, (0, 0))
            self.layers[layer] = (total, total)
        current = sum(c for c, _ in self.layers.values())
        total = sum(t for _, t in self.layers.values())
        done = f": {current / 1e6:.1f}/{total / 1e6:.1f} MB" if total else " ..."
        sys.stderr.write(f"\rpulling {self.image}{done} ")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()

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
import json
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from claude_db.errors import ClaudeDbError, DockerUnavailableError

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


def docker_host() -> str | None:
    """Where the Docker engine is, as the docker CLI would find it; ``None``: a CLI context."""
    if host := os.environ.get("DOCKER_HOST"):
        return host
    if os.environ.get("DOCKER_CONTEXT") or _current_context() not in (None, "default"):
        return None  # the SDK resolves contexts
    return f"unix://{DEFAULT_SOCKET}"


def describe_host() -> str:
    context = os.environ.get("DOCKER_CONTEXT") or _current_context()
    return docker_host() or f"the docker context {context!r}"


def _current_context() -> str | None:
    try:
        config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
        name = json.loads(config.read_text()).get("currentContext")
    except (OSError, ValueError, AttributeError, RuntimeError):  # RuntimeError: no home
        return None
    return name if isinstance(name, str) else None


def _uses_tls() -> bool:
    verify = os.environ.get("DOCKER_TLS_VERIFY")
    return bool(os.environ.get("DOCKER_CERT_PATH")) or (verify is not None and verify != "")


def ping() -> str | None:
    """``None`` if a Docker engine answers, else a short reason why not."""
    host = docker_host()
    if host is None or _uses_tls() or not host.startswith(("unix://", "tcp://", "http://")):
        return _sdk_ping()  # contexts, TLS, ssh:// and npipe:// are the SDK's business
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
def _client_for(host: str | None, tls: bool) -> DockerClient:
    import docker

    # the version the ping saw: the SDK would otherwise ask for it (GET /version) first
    version = _api_versions.get(host) if host is not None and not tls else None
    try:
        return docker.from_env(timeout=QUICK_TIMEOUT, version=version or "auto")
    except docker.errors.DockerException as exc:
        raise DockerUnavailableError(
            f"no Docker engine answers at {describe_host()} ({_connection_reason(exc)})"
        ) from None


def client() -> DockerClient:
    """The docker SDK client for the current environment (made once per process).

    Its calls time out after :data:`QUICK_TIMEOUT`; wrap calls that do work in :func:`slow`.
    """
    return _client_for(docker_host(), _uses_tls())


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

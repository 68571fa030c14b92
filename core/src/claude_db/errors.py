"""Typed errors: raised anywhere, turned into one line and an exit code at the CLI edge."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes (README, "Exit codes")."""

    OK = 0
    FAILED = 1  # the operation failed: SQL error, failed import/export, server error
    USAGE = 2  # bad flag, argument, name, file or setting
    NO_SESSION = 3  # the session does not exist, or none could be resolved
    NOT_RUNNING = 4  # the database is stopped or unreachable
    NOT_READY = 5  # the database did not become ready in time
    CONFIRMATION_NEEDED = 6  # destructive command without a terminal and without --yes
    DOCKER_UNAVAILABLE = 7  # no Docker engine answers
    PLUGIN_ERROR = 8  # a plugin failed to load (strict mode)
    INTERRUPTED = 130


class ClaudeDbError(Exception):
    """Base of every error meant for the user: its message is printed as one line."""

    exit_code: ExitCode = ExitCode.FAILED


class UsageError(ClaudeDbError):
    exit_code = ExitCode.USAGE


class UnknownEngineError(UsageError):
    pass


class SessionNotFoundError(ClaudeDbError):
    exit_code = ExitCode.NO_SESSION


class SessionExistsError(ClaudeDbError):
    pass


class NotRunningError(ClaudeDbError):
    exit_code = ExitCode.NOT_RUNNING


class NotReadyError(ClaudeDbError):
    exit_code = ExitCode.NOT_READY


class ConfirmationRequiredError(ClaudeDbError):
    exit_code = ExitCode.CONFIRMATION_NEEDED


class DockerUnavailableError(ClaudeDbError):
    exit_code = ExitCode.DOCKER_UNAVAILABLE


class PluginError(ClaudeDbError):
    exit_code = ExitCode.PLUGIN_ERROR


class ToolMissingError(ClaudeDbError):
    """A client tool (psql, pg_dump, ...) is not available where it must run."""


class PartlyAppliedError(ClaudeDbError):
    """An import failed after its input had committed part of itself (its own ``COMMIT``):
    ``failure`` is the failure alone, for callers that put the previous data back."""

    def __init__(self, message: str, *, failure: str) -> None:
        super().__init__(message)
        self.failure = failure

"""What both CLIs share: the error edge, output helpers, options."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer

try:  # typer >= 0.25 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer depends on click
    from click.exceptions import ClickException  # type: ignore[no-redef,import-not-found]

from claude_db.errors import ClaudeDbError, ExitCode

SessionOption = typer.Option(
    None, "--session", "-s", help="Session name (default: CLAUDE_SESSION, .env here, DATABASE_URL)."
)
DatabaseOption = typer.Option(
    None, "--database", "-d", help="Another database on the session's server."
)
JsonOption = typer.Option(False, "--json", help="Print JSON.")


def run(build: Callable[[], typer.Typer], prog: str) -> NoReturn:
    """Run a CLI: user errors become one line on stderr and a documented exit code."""
    verbose = "--verbose" in sys.argv[1:] or os.environ.get("CLAUDE_DB_DEBUG") == "1"
    args = [a for a in sys.argv[1:] if a != "--verbose"]
    try:
        command = typer.main.get_command(build())
        code = command.main(args=args, prog_name=prog, standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except ClickException as exc:  # bad flags or arguments
        fail(f"{exc.format_message()} (see {prog} --help)", ExitCode.USAGE)
    except typer.Abort:
        fail("aborted", ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        fail("interrupted", ExitCode.INTERRUPTED)
    except ClaudeDbError as exc:
        if verbose:
            raise
        fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error worth a message
        sys.exit(ExitCode.FAILED)


def fail(message: str, code: int) -> NoReturn:
    text = " ".join(message.split("\n")).strip()
    print(f"error: {text}", file=sys.stderr)
    sys.exit(code)


def note(message: str) -> None:
    print(message, file=sys.stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))

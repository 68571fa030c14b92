"""What both CLIs share: the error edge, output helpers, options."""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import typer

try:  # typer >= 0.25 vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer depends on click
    from click.exceptions import (  # type: ignore[no-redef,import-not-found,unused-ignore]
        ClickException,
        NoArgsIsHelpError,
    )

from claude_db.app import get_app
from claude_db.database import Target, check_destructive, resolve
from claude_db.errors import ClaudeDbError, ConfirmationRequiredError, ExitCode
from claude_db.settings import TRUE

SessionOption = typer.Option(
    None, "--session", "-s",
    help="Session name (default: the .env here or above, CLAUDE_SESSION, DATABASE_URL).",
)
DatabaseOption = typer.Option(
    None, "--database", "-d", help="Another database on the session's server."
)
JsonOption = typer.Option(False, "--json", help="Print JSON.")


def run(build: Callable[[], typer.Typer], prog: str) -> NoReturn:
    """Run a CLI: user errors become one line on stderr and a documented exit code."""
    args, verbose = _take_verbose(sys.argv[1:])
    verbose = verbose or os.environ.get("CLAUDE_DB_DEBUG", "").strip().lower() in TRUE
    interrupted = _interruptible()
    try:
        _coerce_plain_values_first()
        command = typer.main.get_command(build())
        code = command.main(args=args, prog_name=prog, standalone_mode=False)
        if interrupted and code == ExitCode.INTERRUPTED:  # typer turned it into Exit(130)
            fail("interrupted", ExitCode.INTERRUPTED)
        _too_late_to_interrupt()
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as exc:
        _too_late_to_interrupt()
        sys.exit(exc.exit_code)
    except NoArgsIsHelpError as exc:  # a bare command group: its help is the answer
        exc.show()
        sys.exit(ExitCode.USAGE)
    except ClickException as exc:  # bad flags or arguments
        fail(f"{exc.format_message()} (see {prog} --help)", ExitCode.USAGE)
    except typer.Abort:
        fail("aborted", ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        fail("interrupted", ExitCode.INTERRUPTED)
    except ClaudeDbError as exc:
        _traceback_if(verbose)
        fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): not an error worth a message
        sys.exit(ExitCode.FAILED)
    except OSError as exc:  # the machine said no: a read-only directory, a full disk...
        _traceback_if(verbose)
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}", ExitCode.FAILED)
    except Exception as exc:  # a bug or a plugin's: still one line, the traceback on request
        _traceback_if(verbose)
        fail(f"unexpected {type(exc).__name__}: {exc} (run with --verbose for details)",
             ExitCode.FAILED)


def _traceback_if(verbose: bool) -> None:
    """With ``--verbose``, the traceback of the error being handled (before its one line:
    the exit code stays the documented one)."""
    if verbose:
        traceback.print_exc()


def _take_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """``--verbose`` anywhere before ``--`` is ours; after ``--`` it belongs to the tool
    (``claude-db mysql -- --verbose``)."""
    end = argv.index("--") if "--" in argv else len(argv)
    ours = [a for a in argv[:end] if a != "--verbose"]
    return ours + argv[end:], len(ours) < end


def _interruptible() -> list[int]:
    """Ctrl-C, SIGTERM and SIGHUP all interrupt a command (its cleanup runs: a start
    leaves nothing behind); the returned list records that one arrived. A signal the
    caller ignores stays ignored: `nohup claude-session start` outlives its terminal."""
    received: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, interrupt)
    return received


def _too_late_to_interrupt() -> None:
    """The command is done and has said so: a signal from now on (while Python shuts down)
    must not turn its success into "interrupted" (exit 130) with its work kept."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


#: typer releases the patch below was written for and tested with (its private modules
#: ``typer._coercion``, ``typer._param_types`` and ``typer.core.build_runtime_param``):
#: with any other, typer runs unpatched (correct, only slower to start)
PATCHED_TYPER = ("0.29.",)


def _coerce_plain_values_first() -> None:
    """Keep pydantic out of start-up: typer checks parsed values with it only when needed.

    typer (>= 0.2x) coerces every parsed option with a pydantic ``TypeAdapter``, and
    importing pydantic for that is a large share of every command's start-up. A value
    that already has the parameter's type (a command-line string for a ``str`` option, a
    flag's ``bool``) is returned as pydantic would return it; a string for a plain
    ``Path`` becomes ``Path(value)`` (what pydantic makes of it) and gets typer's own path
    checks; any other value still goes through typer's own coercion. With another typer
    (see PATCHED_TYPER) this does nothing.
    """
    if not typer.__version__.startswith(PATCHED_TYPER):
        return
    try:
        import typer.core as core
        from typer._coercion import PassThroughRuntimeParam, resolve_type_descriptor
        from typer._param_types import coerce_cli_path, routes_to_path
    except ImportError:
        return
    build: Any = getattr(core, "build_runtime_param", None)
    if build is None or getattr(build, "plain_values_first", False):
        return

    class PlainValuesFirst(PassThroughRuntimeParam):
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if self.annotation is Path and isinstance(value, str | Path):
                return coerce_cli_path(Path(value), self.parameter_info, path_type=Path,
                                       param=param, ctx=ctx)
            if type(value) is self.annotation:
                return value
            descriptor = resolve_type_descriptor(self.annotation, self.parameter_info)
            return build(descriptor)._coerce_value(value, param=param, ctx=ctx)

    def plain_values_first(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        plain_path = (descriptor.annotation is Path and getattr(info, "path_type", 0) is None
                      and routes_to_path(Path, info))
        if (
            (descriptor.annotation not in (str, bool) and not plain_path)
            or descriptor.file_annotation is not None
            or getattr(info, "parser", None) is not None
            or getattr(info, "click_type", None) is not None
        ):
            return build(descriptor)
        return PlainValuesFirst(annotation=descriptor.annotation, parameter_info=info)

    plain_values_first.plain_values_first = True  # type: ignore[attr-defined]
    core.build_runtime_param = plain_values_first  # type: ignore[attr-defined]


def program_app(prog: str, help: str) -> typer.Typer:
    """The app of the program ``prog`` (``claude-db``, ``claude-session``): its help without
    arguments and on ``-h``, and ``--version``: this program's version (core's distribution)
    and the Python it runs on."""
    app = typer.Typer(
        help=help,
        no_args_is_help=True,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    def show(value: bool) -> None:
        if value:
            from importlib.metadata import version

            print(f"{prog} {version('claude-db')} (Python {sys.version.split()[0]})")
            raise typer.Exit()

    @app.callback()
    def options(
        _: bool = typer.Option(
            False, "--version", is_eager=True, callback=show, help="Show the version and exit."
        ),
    ) -> None:
        pass

    return app


def fail(message: str, code: int) -> NoReturn:
    text = " ".join(message.split("\n")).strip()
    print(f"error: {text}", file=sys.stderr)
    sys.exit(code)


def note(message: str) -> None:
    print(message, file=sys.stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def resolve_target(session: str | None, destructive: str | None = None) -> Target:
    """The database a ``claude-db`` command works on (see resolve); a ``destructive``
    command refuses when it is in doubt (see check_destructive)."""
    app = get_app()
    target = resolve(app, session)
    if destructive:
        check_destructive(app, target, destructive)
    elif target.conflict:
        note(f"note: {target.conflict}; using {target.name}")
    return target


def confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; without one, refuse unless --yes was given."""
    if yes:
        return
    if not sys.stdin.isatty():
        asked = question.rstrip("?")
        raise ConfirmationRequiredError(  # after "error: ", in lower case as every message
            f"{asked[:1].lower()}{asked[1:]}: no terminal to confirm; pass --yes")
    if not typer.confirm(question, default=False):
        fail("cancelled", ExitCode.CONFIRMATION_NEEDED)

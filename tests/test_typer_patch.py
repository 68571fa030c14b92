"""The start-up patch of typer (cli/common.py ``_coerce_plain_values_first``): on the typer
it was written for, options parse as before without importing pydantic; on any other
typer it stays out of the way."""

from __future__ import annotations

import subprocess
import sys

import typer

from claude_db.cli.common import PATCHED_TYPER

#: a small CLI with the option types the patch handles (str, bool, Path), as claude-db's
#: commands have; prints what it parsed and whether pydantic was imported
SCRIPT = """
import sys
from pathlib import Path
import typer
import typer.core
from claude_db.cli import common

typer.__version__ = sys.argv[1]
original = typer.core.build_runtime_param
common._coerce_plain_values_first()
patched = typer.core.build_runtime_param is not original
app = typer.Typer()

@app.command()
def main(name: str = typer.Option(...), flag: bool = typer.Option(False, "--flag"),
         where: Path = typer.Option(...)) -> None:
    print(repr((name, flag, where)))

typer.main.get_command(app)(["--name", "x y", "--flag", "--where", "/tmp/a b"],
                            standalone_mode=False)
print(patched, "pydantic" in sys.modules)
"""


def run(version: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, version], capture_output=True,
                          text=True, check=True)
    return done.stdout.splitlines()


def test_the_typer_it_was_written_for_is_the_one_installed() -> None:
    assert typer.__version__.startswith(PATCHED_TYPER), (
        f"typer {typer.__version__} is not one the start-up patch was written for "
        f"({PATCHED_TYPER}): check it against this typer's private modules, then add it"
    )


def test_patched_typer_parses_the_same_without_pydantic() -> None:
    parsed = "('x y', True, PosixPath('/tmp/a b'))"
    assert run(typer.__version__) == [parsed, "True False"]
    # what the patch spares: unpatched, the same parse imports pydantic
    assert run("0.0.0-another") == [parsed, "False True"]

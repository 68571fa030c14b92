"""Meta-tests: every hook is documented in docs/writing-an-engine.md (with its exact
signature) and has a test named ``test_hook_<hook>``; the contracts' required methods are
documented too (datasette's test_plugin_hooks_have_tests / _are_documented)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from claude_db import hookspecs
from claude_db.engine import Engine, LocalServer, Tools
from claude_db.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-an-engine.md"


def hook_names() -> list[str]:
    return sorted(
        name for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, "claude_db_spec")
    )


def signature(name: str) -> str:
    """``def name(param: annotation) -> return`` as written in hookspecs.py."""
    function = getattr(hookspecs, name)
    annotations = dict(function.__annotations__)
    returns = annotations.pop("return")
    params = ", ".join(f"{param}: {annotation}" for param, annotation in annotations.items())
    return f"def {name}({params}) -> {returns}"


def test_hooks_are_found() -> None:
    # guards the two tests below against passing on an empty list
    assert {"register_engines", "register_runtimes", "session_env"} <= set(hook_names())


@pytest.mark.parametrize("hook", hook_names())
def test_plugin_hooks_are_documented(hook: str) -> None:
    doc = DOC.read_text()
    assert f"### `{hook}`" in doc, f"docs/writing-an-engine.md has no section for {hook}"
    assert signature(hook) in doc, f"the documented signature of {hook} is not {signature(hook)}"
    assert (getattr(hookspecs, hook).__doc__ or "").strip(), f"{hook} has no docstring"


def functions_in_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(node.name)
    return names


@pytest.mark.parametrize("hook", hook_names())
def test_plugin_hooks_have_tests(hook: str) -> None:
    assert f"test_hook_{hook}" in functions_in_tests(), f"no test named test_hook_{hook}"


CONTRACTS = [Engine, LocalServer, Tools, Runtime]


@pytest.mark.parametrize("contract", CONTRACTS, ids=[c.__name__ for c in CONTRACTS])
def test_contract_methods_are_documented(contract: type) -> None:
    doc = DOC.read_text()
    required = sorted(getattr(contract, "__abstractmethods__", set()))
    assert required, f"{contract.__name__} declares no abstract method"
    missing = [name for name in required if f"`{name}" not in doc]
    assert not missing, f"{contract.__name__} methods missing from the doc: {missing}"

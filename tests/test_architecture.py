"""The shape of the code: no import cycles, runtimes named only where they live.

Import graph by grimp (it reads every import statement, those inside functions too, as
an import linter does): a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import typing
from pathlib import Path

import grimp
import pytest

from claude_db.runtime import Runtime
from claude_db.session import Session
from claude_db.target import Target

PACKAGES = ("claude_db", "claude_db_postgres", "claude_db_mysql", "claude_db_mongo")
CORE = Path(importlib.import_module("claude_db").__file__ or "").parent
ROOT = CORE.parents[2]
#: where a built-in runtime may be named: its own package and the registration, and the
#: docker runtime's test harness (it drives the docker CLI)
RUNTIME_HOMES = (CORE / "runtimes", CORE / "testing" / "docker.py")
#: configuration, not a decision: the contract suite, and the CLIs the safety tests run by
#: hand, use the local runtime unless told
DEFAULTS = {("core/src/claude_db/testing/contract.py", "local"),
            ("core/src/claude_db/testing/safety.py", "local")}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # imports under ``if TYPE_CHECKING`` never run: they close no cycle
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The import cycles: strongly connected groups of more than one module (Tarjan)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in order:
            visit(module)
    return found


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert cycles(graph) == []


def test_no_import_inside_a_function_dodges_a_cycle(graph: grimp.ImportGraph) -> None:
    """An import written inside a function is there to load something late (the docker
    SDK, a plugin), never to hide a cycle: at the top of its module, it would close none."""
    dodging = []
    for module in sorted(graph.modules):
        in_functions = lines_in_functions(module)
        for imported in graph.find_modules_directly_imported_by(module):
            late = [d for d in graph.get_import_details(importer=module, imported=imported)
                    if d["line_number"] in in_functions]
            if late and graph.find_shortest_chain(importer=imported, imported=module):
                dodging += [f"{module}:{d['line_number']} {d['line_contents']}" for d in late]
    assert dodging == []


def lines_in_functions(module: str) -> set[int]:
    """Lines of ``module``'s source that are inside a function."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    return {line for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1)}


def named_strings(path: Path) -> list[tuple[int, str]]:
    """String constants in ``path``'s code (not its docstrings)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_core_names_no_runtime_outside_its_package() -> None:
    """Core asks runtimes what they can do (class attributes, methods), never which one it
    has: a runtime plugin gets everything a built-in runtime gets."""
    names = {"docker", "local"}
    found = []
    for path in sorted(CORE.rglob("*.py")):
        if any(path.is_relative_to(home) for home in RUNTIME_HOMES):
            continue
        where = str(path.relative_to(ROOT))
        found += [f"{where}:{line} {text!r}" for line, text in named_strings(path)
                  if text in names and (where, text) not in DEFAULTS]
    assert found == []


def test_a_target_always_has_a_runtime_and_a_session() -> None:
    """A bare DATABASE_URL is a runtime of its own (UrlRuntime): no command branches on a
    target without a runtime or a session."""
    hints = typing.get_type_hints(Target)
    assert (hints["runtime"], hints["session"]) == (Runtime, Session)


def test_runtimes_build_complete_tools() -> None:
    """Core uses the Tools a runtime built as they are: it never sets their endpoints
    afterwards (a runtime's ``tools`` takes the database instead)."""
    endpoints = {"endpoint", "client_endpoint", "admin_endpoint"}
    found = []
    for path in sorted(CORE.rglob("*.py")):
        if any(path.is_relative_to(home) for home in RUNTIME_HOMES):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign)
                       else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno}" for target in targets
                      if isinstance(target, ast.Attribute) and target.attr in endpoints
                      and not (isinstance(target.value, ast.Name) and target.value.id == "self")]
    assert found == []

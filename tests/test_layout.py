"""The shape of the code (import graph, record-stage table), read from the source; touches nothing.

These hold the rules a reader relies on when following one mail: modules import
each other in one direction only (no cycle, none hidden in a function body), and
the record stage is the table `mailtick show` and the log speak of.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mailtick
from mailtick.record.customer import AFTER_FILING
from mailtick.record.stage import STEPS

PACKAGE = Path(mailtick.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, name: str) -> tuple[set[str], list[str]]:
    """The mailtick modules imported at module level, and the imports inside functions."""
    top: set[str] = set()
    hidden: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mailtick"):
            targets = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            targets = {a.name for a in node.names if a.name.startswith("mailtick")}
        else:
            continue
        if node.col_offset > 0 and targets:
            hidden.append(f"{name}:{node.lineno} imports {sorted(targets)[0]}")
        top |= targets
    return top, hidden


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    hidden: list[str] = []
    for name, path in paths.items():
        imported, inside = _imports(ast.parse(path.read_text()), name)
        graph[name] = {m for m in imported if m in paths and m != name}
        hidden += inside
    return graph, hidden


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (empty: none), by depth-first search."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_no_import_cycle_in_the_package() -> None:
    graph, _ = _graph()
    assert len(graph) > 40  # the whole package was read
    assert _cycle(graph) == []


# The command-line root imports each command's modules when that command runs, so that
# `mailtick --help` or a pipe delivery does not load the daemon; nothing imports cli.
LAZY_IMPORTS_ALLOWED = ("mailtick.cli:",)


def test_no_import_hidden_inside_a_function() -> None:
    """A function-level import of a mailtick module is how a cycle hides."""
    _, hidden = _graph()
    assert [h for h in hidden if not h.startswith(LAZY_IMPORTS_ALLOWED)] == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_record_steps_run_in_the_documented_order() -> None:
    """The order is behaviour: a duplicate is never a report, a report never an agent's
    mail, and the customer step, which handles everything, comes last."""
    assert [name for name, _ in STEPS] == [
        "duplicate",
        "contact-form",
        "delivery-report",
        "agent",
        "route",
        "customer",
    ]
    assert [name for name, _ in AFTER_FILING] == ["acknowledge", "notify-agents", "tell-owner"]


def test_only_the_ledger_writes_in_the_record_stage() -> None:
    """Steps decide, the ledger writes: no step module creates, saves or deletes rows."""
    writes = (".create(", ".save(", "insert_row(", ".delete(", ".update(", "UPDATE ", "INSERT ")
    found = []
    for path in sorted((PACKAGE / "record").glob("*.py")):
        if path.name == "ledger.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(w in line for w in writes) and "ledger." not in line:
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert found == []

"""The README's "How it is built" is true of the code: its table lists the package's modules from
the bottom layer up, and every module imports only modules of its own row or of the rows before it.

Every import of an ``autoopt`` module counts: at module level, under ``TYPE_CHECKING`` (the module
still knows the other's types) and inside a function (deferred to keep a command light, still a
dependency when it runs). Modules of one row, a folder's among them, may import each other, but
never in a cycle. The imports are read from the source (``ast``), nothing is imported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autoopt"
# SQL naming Optuna's tables, or Optuna's classes of them (``models.TrialModel``, ...: the models
# that ``autoopt.study.optuna_private`` hands out).
TABLES = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+(?:studies|study_\w+|trials|trial_\w+)\b|\bmodels\.\w+Model\b")


@dataclass(frozen=True)
class Import:
    """One import of an ``autoopt`` module: who imports what, where, and how."""

    module: str  # the importing module, dotted
    target: str  # the imported module (or package), dotted
    line: int
    how: str  # "module", "type-checking" or "function"

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target} ({self.how})"


def layers() -> list[set[str]]:
    """The README's table under "How it is built", row by row: the names of each row's first
    cell (``space/`` a folder, ``spec`` a module, ``__init__`` the package itself)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return [{name.rstrip("/") for name in re.findall(r"`([^`]+)`", cell)} for cell in rows]


def modules() -> dict[str, Path]:
    """Every module of the package, dotted (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "conftest.py":
            continue  # pytest's (what the doctests' collection skips), never imported by the package
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _how(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return "function"
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return "type-checking"
    return "module"


def imports() -> Iterator[Import]:
    """Every import of an ``autoopt`` module in the package (``from autoopt.x import y`` names
    ``autoopt.x.y`` where that is a module)."""
    known = modules()
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                           for a in node.names]
            else:
                assert not isinstance(node, ast.ImportFrom), f"{module}:{node.lineno}: a relative import"
                continue
            for target in dict.fromkeys(targets):  # once per module an import names
                if target == "autoopt" or target.startswith("autoopt."):
                    yield Import(module, target, node.lineno, _how(node, parents))


def layer_of(module: str, rows: list[set[str]]) -> int:
    """The index of the README row that holds ``module`` (by its name under ``autoopt``); -1 for
    none (``test_every_module_has_one_row`` names it)."""
    name = module.split(".")[1] if "." in module else "__init__"
    return next((i for i, row in enumerate(rows) if name in row), -1)


def test_every_module_has_one_row() -> None:
    rows = layers()
    assert len(rows) > 10, "the README's table of modules was not found"
    names = [name for row in rows for name in row]
    assert len(names) == len(set(names)), "a name in two rows"
    tops = {m.split(".")[1] if "." in m else "__init__" for m in modules()}  # autoopt/x.py, autoopt/x/
    assert tops == set(names), f"in the package, not the table: {sorted(tops - set(names))}; " \
                               f"in the table, not the package: {sorted(set(names) - tops)}"


def test_imports_point_down() -> None:
    """No module imports a module of a later row of the table."""
    rows = layers()
    upward = [str(i) for i in imports() if layer_of(i.target, rows) > layer_of(i.module, rows)]
    assert not upward, f"{len(upward)} imports point up the README's table:\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    """Modules of one row may import each other, never in a cycle (every import counted)."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for i in imports():
        if i.target != i.module:
            graph[i.module].add(i.target)
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module):], module]))
        if module not in done:
            for target in sorted(graph[module]):
                visit(target, [*path, module])
            done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_only_the_modules_the_readme_names_query_optunas_tables() -> None:
    """SQL naming Optuna's tables, or Optuna's table models, only in the modules of ``study/``
    that the README's table names as querying them."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = re.search(r"only ((?:`\w+`(?:, | and )?)+) query the tables", text)
    assert named, "the README's study/ row no longer names the modules that query Optuna's tables"
    owners = {m for m, path in modules().items() if TABLES.search(path.read_text(encoding="utf-8"))}
    assert owners == {f"autoopt.study.{name}" for name in re.findall(r"`(\w+)`", named[1])}

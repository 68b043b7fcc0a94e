"""The layer rule, checked: imports point down only (README "Layout", ../shared/ARCHITECTURE.md).

    kb  <-  tools  <-  attacks, agent  <-  eval

Every ``import`` and ``from ... import`` in every module is read from the syntax tree, so
imports inside functions (lazy ones) and under ``TYPE_CHECKING`` count too. A module may
import its own package and the packages below it; ``attacks`` and ``agent`` are siblings and
never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"kb": 0, "tools": 1, "attacks": 2, "agent": 2, "eval": 3}


def imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(package: str, source: str, path: str) -> list[str]:
    own = LAYER[package]
    return [
        f"{path}:{line} imports {target} ({package} may import only {sorted(p for p, layer in LAYER.items() if layer < own)})"
        for line, target in imported_packages(ast.parse(source, path))
        if target in LAYER and target != package and LAYER[target] >= own
    ]


def test_every_module_imports_downward_only() -> None:
    problems = []
    modules = 0
    for package in LAYER:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules += 1
            problems += upward_imports(package, path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert modules > 50, "the walk found too few modules: is ROOT right?"
    assert not problems, "imports pointing up or sideways:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("kb", "def f():\n    from tools.text_encoders import MiniLMEncoder\n"),  # a lazy import
        ("tools", "import agent.graph\n"),
        ("attacks", "from eval.run import RunConfig\n"),
        ("attacks", "from agent.state import NODES\n"),  # siblings
        (
            "agent",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from attacks.presets import Preset\n",
        ),
    ],
)
def test_an_upward_import_is_caught(package: str, source: str) -> None:
    assert upward_imports(package, source, "probe.py")


def test_downward_and_stdlib_imports_pass() -> None:
    assert not upward_imports(
        "eval", "import json\nfrom agent.graph import graph\nfrom kb.records import Mention\n", "p"
    )
    assert not upward_imports("kb", "from kb.records import Mention\nimport numpy\n", "p")

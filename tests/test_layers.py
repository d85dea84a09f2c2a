"""The import graph runs one way: infra and schemas <- models <- export <- streams (ARCHITECTURE card).

Every import in every module, at the top or inside a function, is read with `ast`; a module may import
only from its own layer or the layers before it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYER = {"infra": 0, "schemas": 0, "models": 1, "export": 2, "streams": 3}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(LAYER)


MODULES = sorted(p for package in LAYER for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_its_own_layer_or_the_ones_before(path):
    layer = LAYER[path.relative_to(ROOT).parts[0]]
    upward = sorted(name for name in imported_packages(path) if LAYER[name] > layer)
    assert not upward, f"{path.relative_to(ROOT)} imports {upward} from a later layer"

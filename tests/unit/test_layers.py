"""The packages' one-way layers: a package imports only packages below it (README, "Layout").

Every import counts, at module level or inside a function; only ``if TYPE_CHECKING:`` blocks are
exempt (they never run). A failure names the file, the line and the import that goes the wrong way.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Each package and what it may import from the project (besides itself). The order, bottom up:
#: models, hardware -> edge -> cloud_sync -> enrollment -> facefare.
MAY_IMPORT: dict[str, set[str]] = {
    "models": set(),
    "hardware": set(),
    "edge": {"models", "hardware"},
    "cloud_sync": {"models", "hardware", "edge"},
    "enrollment": {"models", "hardware", "edge", "cloud_sync"},
    "facefare": {"models", "hardware", "edge", "cloud_sync", "enrollment"},
}
#: Inside edge: the face library stands alone; the fares stand alone; the door uses both.
EDGE_MAY_IMPORT: dict[str, set[str]] = {
    "edge.faces": set(),
    "edge.fares": set(),
    "edge.door": {"edge.faces", "edge.fares"},
}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _wrong_way(module_of_file: str, imported: str) -> bool:
    top, target = module_of_file.split(".")[0], imported.split(".")[0]
    if target in MAY_IMPORT and target != top and target not in MAY_IMPORT[top]:
        return True
    if top == "edge" == target:
        sub = ".".join(module_of_file.split(".")[:2])
        wanted = ".".join(imported.split(".")[:2])
        if sub in EDGE_MAY_IMPORT and wanted in EDGE_MAY_IMPORT and wanted != sub:
            return wanted not in EDGE_MAY_IMPORT[sub]
    return False


def upward_imports() -> list[str]:
    problems = []
    for package in MAY_IMPORT:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            module = ".".join(rel.with_suffix("").parts)
            for line, imported in imports_of(path):
                if _wrong_way(module, imported):
                    problems.append(f"{rel}:{line}: {module.split('.')[0]} must not import {imported}")
    return sorted(set(problems))


def test_no_package_imports_a_package_above_it() -> None:
    problems = upward_imports()
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from facefare.config import load_config\n\n"
                   "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import facefare\n")  # fmt: skip
    found = imports_of(src)
    assert (4, "facefare.config") in found and all(name != "facefare" for _, name in found)
    assert _wrong_way("edge.faces.engine", "facefare.config")
    assert _wrong_way("hardware.door", "edge.door.pipeline")
    assert _wrong_way("edge.faces.engine", "edge.door.pipeline")
    assert not _wrong_way("edge.door.node", "edge.fares.ledger")
    assert not _wrong_way("facefare.bus", "edge.door.node")


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in tests/helpers.py and tests/conftest.py, never in a test module."""
    tests = ROOT / "tests"
    problems = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in sorted(tests.rglob("test_*.py"))
        for line, name in imports_of(path)
        if name.startswith("tests.") and any(part.startswith("test_") for part in name.split(".")[1:])
    ]
    assert not problems, "\n".join(problems)

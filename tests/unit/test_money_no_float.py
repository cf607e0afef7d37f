"""No float anywhere in the money path: the modules that price, store and report fares are
scanned (AST) for float literals, ``float`` itself, true division ``/`` and the standard-library
calls that quietly return floats (``timestamp()``, ``total_seconds()``, ``time.time()``...).
Money is integer minor units; ``//`` and ``divmod`` are the only division allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Every module of the bus's money package (edge/fares) and of the cloud's (cloud_sync/cloud, but for the
#: service, which times MQTT messages and hands the fares to the ledger untouched), and the ledger's CLI.
NOT_MONEY = {"cloud_sync/cloud/service.py"}
MONEY_PATH = (
    *sorted(
        rel
        for folder in ("edge/fares", "cloud_sync/cloud")
        for path in (ROOT / folder).glob("*.py")
        if (rel := str(path.relative_to(ROOT))) not in NOT_MONEY
    ),
    "facefare/cli/ledger.py",
)
FLOAT_METHODS = {"timestamp", "total_seconds", "fromtimestamp", "utcfromtimestamp"}
FLOAT_MODULES = {"math", "statistics", "time", "random"}  # math.sqrt(), time.time(), random.random()...


def float_uses(source: str, filename: str = "<src>") -> list[str]:
    """Every place in ``source`` that can bring a float into the money path, as 'line: what'."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, float | complex):
            found.append(f"{line}: float literal {node.value!r}")
        elif isinstance(node, ast.Name) and node.id in ("float", "Decimal"):
            found.append(f"{line}: {node.id}")
        elif isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
            found.append(f"{line}: true division '/'")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = getattr(node.func.value, "id", "")
            if node.func.attr in FLOAT_METHODS or owner in FLOAT_MODULES:
                found.append(f"{line}: {node.func.attr}() returns a float")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.extend(f"{line}: import {m}" for m in modules if m in FLOAT_MODULES)
    return sorted(found, key=lambda u: int(u.split(":")[0]))


def test_scanner_catches_each_kind() -> None:
    bad = (
        "a = 2.5\n"
        "b = float(x)\n"
        "c = x / 100\n"
        "x /= 2\n"
        "d = (t1 - t0).total_seconds()\n"
        "e = dt.timestamp()\n"
        "def f(v: float) -> int: ...\n"
        "import math\n"
        "g = math.sqrt(4)\n"
    )
    assert [u.split(":")[0] for u in float_uses(bad)] == ["1", "2", "3", "4", "5", "6", "7", "8", "9"]
    assert float_uses("a = 7 // 2\nb, c = divmod(7, 2)\nd = '1.5'\n") == []


def test_the_money_path_is_found() -> None:
    assert {"edge/fares/record.py", "edge/fares/ledger.py", "cloud_sync/cloud/settlement.py"} <= set(MONEY_PATH)


@pytest.mark.parametrize("module", MONEY_PATH)
def test_money_path_has_no_float(module: str) -> None:
    path = ROOT / module
    assert float_uses(path.read_text(), str(path)) == [], f"float in the money path ({module})"

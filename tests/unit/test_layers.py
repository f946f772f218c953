"""Imports go downward only (README, "Map of the code").

Every module of the project is read (not imported) and each ``import`` of another of our
packages is checked against the layer order below. A module may import its own layer and the
ones beneath it; the composition roots (the CLI and the stack runner) may import anything.
The checker is itself checked: a made-up upward import must be reported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Lowest first. A module belongs to the longest prefix listed.
LAYERS: list[tuple[str, ...]] = [
    ("schemas",),
    ("billing",),  # settings, errors and local infrastructure (broker, database, ClickHouse)
    ("providers",),
    ("analytics", "reconciler"),
    ("streams",),
    ("api",),
    ("dashboard",),
]
COMPOSITION_ROOTS = ("billing.cli", "billing.stack", "billing.demo", "reconciler.__main__")
# Two packages of one layer must not import each other either.
SIBLINGS_APART = True
# Known upward imports still to move (a ratchet: an entry no longer found fails the test).
STILL_UPWARD: set[str] = set()


def layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def violations(module: str, source: str) -> list[str]:
    if module.startswith(COMPOSITION_ROOTS):
        return []
    own = layer_of(module)
    if own is None:
        return []
    found = []
    own_top = module.split(".")[0]
    for line, target in imports_of(source):
        rank = layer_of(target)
        if rank is None:
            continue
        upward = rank > own
        sideways = SIBLINGS_APART and rank == own and target.split(".")[0] != own_top
        if upward or sideways:
            found.append(f"{module}:{line} imports {target}")
    return found


def project_modules() -> list[Path]:
    out = []
    for names in LAYERS:
        for name in names:
            out += sorted((ROOT / name).rglob("*.py"))
    return out


def test_imports_go_downward_only() -> None:
    problems: list[str] = []
    for path in project_modules():
        problems += violations(module_name(path), path.read_text())
    assert set(problems) >= STILL_UPWARD, f"moved: delete from STILL_UPWARD {STILL_UPWARD}"
    new = [p for p in problems if p not in STILL_UPWARD]
    assert not new, "upward imports:\n" + "\n".join(new)


def test_the_checker_sees_an_upward_import() -> None:
    assert violations("schemas.money", "from streams.ledger.machine import decide\n")
    assert violations("reconciler.feed", "import streams.ledger.agent\n")
    assert violations("analytics.rebuild", "from reconciler import store\n")  # sideways
    assert not violations("billing.cli", "from api.main import create_app\n")  # a root
    assert not violations("streams.gateway.agent", "from providers.port import X\n")

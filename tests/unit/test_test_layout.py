"""No test module imports from another test module.

Shared builders live in ``tests/factories.py``, the whole-stack client in
``tests/e2e/client.py``, fixtures in each tier's ``conftest.py`` and ``tests/fixtures/``, other
helpers in modules not named ``test_*``. A ``test_*`` module is pytest's to collect: importing
one runs its module code again under another name and ties two tests' files together.

Every module under ``tests/`` is read (not imported) and each import of a ``test_*`` module
is reported, at any depth (an import inside a function counts). ``STILL_IMPORTING`` lists the
modules that have not moved yet; an entry that is no longer needed must go, so the list only
shrinks. The checker is itself checked: made-up imports must be reported.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent

# module -> the test modules it may still import. These modules were being changed by other
# work when the helpers moved; each should import from tests.factories / tests.e2e.client.
STILL_IMPORTING: dict[str, set[str]] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_test_module(module: str) -> bool:
    return module.split(".")[0] == "tests" and module.rsplit(".", 1)[-1].startswith("test_")


def imported_modules(module: str, source: str) -> list[tuple[int, str]]:
    """(line, module) for every module ``source`` imports, relative imports resolved; for
    ``from package import name`` both ``package`` and ``package.name`` (a name may be a
    submodule)."""
    package = module.rsplit(".", 1)[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return out


def imports_of_test_modules(module: str, source: str) -> set[tuple[int, str]]:
    """The ``test_*`` modules (other than itself) that ``module`` imports, with the line."""
    return {
        (line, target)
        for line, target in imported_modules(module, source)
        if is_test_module(target) and target != module
    }


def test_no_test_module_imports_another() -> None:
    problems: list[str] = []
    seen: dict[str, set[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        module = module_name(path)
        for line, target in sorted(imports_of_test_modules(module, path.read_text())):
            seen.setdefault(module, set()).add(target)
            if target not in STILL_IMPORTING.get(module, set()):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not problems, (
        "test modules importing another test module's helpers (move them to tests/factories.py,"
        " tests/e2e/client.py or a conftest.py):\n" + "\n".join(problems)
    )
    stale = {
        f"{module} -> {target}"
        for module, targets in STILL_IMPORTING.items()
        for target in targets
        if target not in seen.get(module, set())
    }
    assert not stale, "no longer imported, remove from STILL_IMPORTING:\n" + "\n".join(
        sorted(stale)
    )


def test_the_checker_sees_an_import_of_a_test_module() -> None:
    def found(module: str, source: str) -> set[str]:
        return {target for _, target in imports_of_test_modules(module, source)}

    assert found("tests.e2e.test_new", "from tests.e2e.test_pay import pay\n") == {
        "tests.e2e.test_pay"
    }
    assert found("tests.unit.test_new", "import tests.unit.test_machine\n")
    assert found("tests.e2e.test_new", "from tests.e2e import test_pay\n")
    assert found("tests.e2e.test_new", "from .test_refunds import paid_user\n") == {
        "tests.e2e.test_refunds"
    }
    inside = "def test_x() -> None:\n    from tests.unit.test_lifecycle import active\n"
    assert found("tests.unit.test_new", inside) == {"tests.unit.test_lifecycle"}
    # helpers, factories, fixtures and conftest are fine; so is a module naming itself
    assert not found("tests.e2e.test_new", "from tests.e2e.client import pay\n")
    assert not found("tests.unit.test_new", "from tests.factories import active\n")
    assert not found("tests.e2e.test_new", "from tests.e2e.harness import Stack\n")
    assert not found("tests.browser.test_x", "from tests.browser.conftest import ADMIN_USER\n")
    assert not found("tests.unit.test_x", "from tests.unit.test_x import helper\n")
    assert not found("tests.unit.test_x", "from schemas.test_vectors import V\n")

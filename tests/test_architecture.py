"""The layering of docs/architecture.md, read off the source: no lower layer imports a higher one, and the library
never prints, exits or parses argv."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the packages of ours it may import (besides itself)
MAY_IMPORT = {
    "featstore": set(),
    "pipeline": {"featstore"},
    "heads": {"featstore", "pipeline"},
    "finetune": {"featstore", "pipeline", "heads"},
    "explain": {"featstore", "pipeline", "heads"},
    "ui": {"featstore", "pipeline", "heads", "finetune", "explain", "data"},
}
OURS = set(MAY_IMPORT) | {"cli", "data", "bench"}
LIBRARY = ("featstore", "pipeline", "heads", "finetune", "explain")


def modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_no_module_imports_a_layer_above_its_own(package):
    wrong = {f"{path.relative_to(ROOT)} imports {name}"
             for path, tree in modules(package)
             for name in imported(tree) & OURS - MAY_IMPORT[package] - {package}}
    assert not wrong, sorted(wrong)


@pytest.mark.parametrize("package", LIBRARY)
def test_the_library_never_prints_exits_or_reads_argv(package):
    found = []
    for path, tree in modules(package):
        for node in ast.walk(tree):
            call = node.func if isinstance(node, ast.Call) else None
            if isinstance(call, ast.Name) and call.id in ("print", "exit", "quit"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {call.id}()")
            if isinstance(call, ast.Attribute) and call.attr == "exit" and getattr(call.value, "id", "") == "sys":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} sys.exit()")
            if isinstance(node, ast.Attribute) and node.attr == "argv" and getattr(node.value, "id", "") == "sys":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} sys.argv")
    assert not found, found

"""The package's layers are one-way: every import inside ``src/biper`` (also the ones written
inside functions) goes to the same layer or a lower one, and no two modules import each other
(no import cycle at all). The layer order is the one written in docs/architecture.md; a module
that matches no layer fails the test, so a new top-level module has to be placed explicitly.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "biper"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

# Lowest first. A module belongs to the layer of the longest prefix that names it (the bare
# package ``biper`` names only its own __init__, not everything below it).
LAYERS = [
    ("base", ["biper.errors", "biper.version", "biper.files", "biper.validate", "biper.functional",
              "biper.native", "biper.theory", "biper.checkpoint_file"]),
    ("quantizers", ["biper.quantizers"]),
    ("nn", ["biper.nn"]),
    ("transform", ["biper.transform"]),
    ("models", ["biper.models"]),
    ("data", ["biper.data"]),
    ("analysis", ["biper.analysis"]),
    ("recipes", ["biper.recipes"]),
    ("train", ["biper.train"]),
    ("deploy", ["biper.deploy"]),
    ("cli", ["biper.cli"]),
    ("api", ["biper", "biper.__main__"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            below = prefix != "biper" and module.startswith(prefix + ".")
            if (module == prefix or below) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    return best


def imports_of(module: str) -> list[tuple[int, str, str]]:
    """(line, written import, target module) for every biper import in ``module``."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "biper" or alias.name.startswith("biper."):
                    out.append((node.lineno, f"import {alias.name}", alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != "biper" and not source.startswith("biper."):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                target = sub if sub in MODULES else source
                written = f"from {'.' * node.level}{node.module or ''} import {alias.name}"
                out.append((node.lineno, written, target))
    return out


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"modules in no layer (add them to LAYERS and docs/architecture.md): {missing}"


def test_no_import_goes_up_a_layer():
    bad = []
    for module, path in MODULES.items():
        here = layer_of(module)
        for line, written, target in imports_of(module):
            there = layer_of(target)
            if there is not None and here is not None and there > here:
                bad.append(f"{path.relative_to(SRC)}:{line}: {written!r} ({LAYERS[here][0]} imports "
                           f"{LAYERS[there][0]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {m: {t for _, _, t in imports_of(m) if t in MODULES and t != m} for m in MODULES}
    where = {(m, t): (line, written) for m in MODULES for line, written, t in imports_of(m)}
    mutual = sorted(f"{MODULES[a].relative_to(SRC)}:{where[a, b][0]} {where[a, b][1]!r} <-> "
                    f"{MODULES[b].relative_to(SRC)}:{where[b, a][0]} {where[b, a][1]!r}"
                    for a in graph for b in graph[a] if a < b and a in graph[b])
    assert not mutual, "modules importing each other:\n" + "\n".join(mutual)
    # Longer cycles: depth-first search for a back edge.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            steps = [f"{MODULES[a].relative_to(SRC)}:{where[a, b][0]} {where[a, b][1]!r}"
                     for a, b in zip(cycle, cycle[1:])]
            pytest.fail("import cycle:\n" + "\n".join(steps))


def test_architecture_doc_lists_the_layers_in_order():
    text = ARCHITECTURE.read_text()
    match = re.search(r"## Layer order.*?```\n(.*?)```", text, re.S)
    assert match, "docs/architecture.md needs a 'Layer order' section with the layers in a code block"
    written = [w.strip() for w in match.group(1).replace("\n", " ").split("->")]
    assert written == [name for name, _ in LAYERS]


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    # The scanner must see imports inside functions; a module's own source proves it.
    found = {t for _, _, t in imports_of("biper.cli.train")}
    assert any(t.startswith("biper.train") for t in found)
    lazy = [n for n in ast.walk(ast.parse(MODULES["biper.cli.train"].read_text()))
            if isinstance(n, ast.FunctionDef) and any(isinstance(s, ast.ImportFrom) for s in ast.walk(n))]
    assert lazy, "biper.cli.train imports inside run(); the scanner must count those"


def test_files_stay_readable_top_to_bottom():
    long = {str(p.relative_to(SRC)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) >= 400}
    assert not long, f"src files of 400 lines or more: {long}"
    engine = len(MODULES["biper.train.engine"].read_text().splitlines())
    assert engine < 250, f"train/engine.py has {engine} lines"


def test_no_references_to_outside_documents():
    bad = [f"{p.relative_to(SRC)}:{i}: {line.strip()}" for p in MODULES.values()
           for i, line in enumerate(p.read_text().splitlines(), 1)
           if re.search(r"\bSPEC\b", line) or re.search(r"\bspec(ification)? section\b|\bissue #?\d+", line, re.I)]
    assert not bad, "references to documents outside the repository:\n" + "\n".join(bad)

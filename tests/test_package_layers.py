"""The package layers: the stages import the shared layer, never each other; flows sit
above them.

spectrograms, retrain and label each depend only on ``soundretrain`` (and third-party
packages); ``soundretrain`` depends on no stage; ``flows`` (commands that chain the stages)
may import every stage, and nothing below imports it. Checked with the standard library's
``ast`` on every import statement, including the lazy ones inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("spectrograms", "retrain", "label")
SHARED = "soundretrain"
FLOWS = "flows"


def imported_packages(package: str) -> dict[str, set[str]]:
    """``{top-level package imported: {files that import it}}`` for one package folder."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage):
    imports = imported_packages(stage)
    sideways = {other: sorted(imports[other]) for other in STAGES if other != stage and other in imports}
    assert not sideways, f"{stage} imports other stages: {sideways}"


def test_the_shared_layer_imports_no_stage():
    imports = imported_packages(SHARED)
    upward = {stage: sorted(imports[stage]) for stage in STAGES if stage in imports}
    assert not upward, f"{SHARED} imports stages: {upward}"


@pytest.mark.parametrize("below", (*STAGES, SHARED))
def test_nothing_below_imports_the_flows(below):
    imports = imported_packages(below)
    assert FLOWS not in imports, f"{below} imports {FLOWS}: {sorted(imports[FLOWS])}"


def test_the_flows_use_the_stages_through_their_packages():
    imports = imported_packages(FLOWS)
    assert {"spectrograms", "retrain", SHARED} <= set(imports)  # the flow chains the stages


def test_the_package_graph_has_no_cycle():
    layers = (*STAGES, SHARED, FLOWS)
    graph = {p: set(imported_packages(p)) & set(layers) - {p} for p in layers}
    state: dict[str, str] = {}

    def visit(node: str, trail: tuple[str, ...]) -> None:
        if state.get(node) == "open":
            raise AssertionError(f"import cycle: {' -> '.join(trail + (node,))}")
        if state.get(node) == "done":
            return
        state[node] = "open"
        for nxt in sorted(graph[node]):
            visit(nxt, trail + (node,))
        state[node] = "done"

    for package in graph:
        visit(package, ())

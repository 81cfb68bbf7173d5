"""The layout's promises (docs/architecture.md), checked on the source: layers, Ray's private modules,
a cheap ``import medray``, independent workloads, small modules."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PLATFORM = REPO / "platform"
MEDRAY = PLATFORM / "medray"
MAX_LINES = 600
# Layers that must stay pure: importing them must not import Ray.
PURE = ("medray.scheduling.placement", "medray.broker.policy", "medray.cluster.node_types")
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py", "logs.py", "metrics.py"}


def _module(path: Path) -> str:
    parts = path.relative_to(PLATFORM if path.is_relative_to(PLATFORM) else REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if ".venv" not in p.parts)


def _imports(path: Path, *, module_level: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> list[str] | None:
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        for d in sorted(graph.get(m, ())):
            if cycle := visit(d, path + [m]):
                return cycle
        done.add(m)
        return None

    return next((c for m in sorted(graph) if (c := visit(m, []))), None)


def test_no_import_cycle_inside_medray():
    modules = {_module(p): p for p in _sources(MEDRAY)}
    graph = {m: {d for d in _imports(p, module_level=True) if d in modules and d != m}
             for m, p in modules.items()}
    assert graph["medray.broker.actor"] >= {"medray.broker.policy", "medray.scheduling.options"}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_cycles_and_skips_function_level_imports(tmp_path):
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    (tmp_path / "lazy.py").write_text("def f():\n    from medray.b import x\n")
    assert not _imports(tmp_path / "lazy.py", module_level=True)


def test_rays_private_modules_are_reached_only_through_the_adapter():
    private = re.compile(r"\bray(\.autoscaler)?\._private\b")
    adapter = MEDRAY / "cluster" / "ray_internals.py"
    offenders = [str(p.relative_to(REPO)) for p in _sources(PLATFORM, REPO / "workloads", REPO / "tests",
                                                          REPO / "benchmarks")
                 if p != adapter and p != Path(__file__) and any(private.search(m) for m in
                                                                 _imports(p, module_level=False))]
    assert not offenders, f"import ray's private modules through medray.cluster.ray_internals: {offenders}"


def test_import_medray_imports_neither_ray_nor_torch_nor_pydicom():
    code = ("import medray, medray.cli.main, sys; heavy = [m for m in ('ray', 'torch', 'pydicom') "
            "if m in sys.modules]; assert not heavy, heavy; medray.WorkloadProfile; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("module", PURE)
def test_pure_layers_import_no_ray(module):
    code = f"import sys, {module}; assert 'ray' not in sys.modules, 'ray imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_medray_never_imports_workloads_and_no_workload_imports_another():
    for p in _sources(MEDRAY):
        used = {m for m in _imports(p, module_level=False) if m.split(".")[0] == "workloads"}
        assert not used, f"{p.relative_to(REPO)} imports {sorted(used)}"
    for p in _sources(REPO / "workloads"):
        parts = p.relative_to(REPO).parts
        if len(parts) < 3:
            continue
        own = parts[1]
        others = {m for m in _imports(p, module_level=False)
                  if m.startswith("workloads.") and m.split(".")[1] != own}
        assert not others, f"{p.relative_to(REPO)} (workload {own}) imports {sorted(others)}"


def test_only_errors_logs_and_metrics_live_at_the_top_and_no_module_is_too_long():
    top = {p.name for p in MEDRAY.glob("*.py")}
    assert top <= TOP_LEVEL, f"put these in a subpackage: {sorted(top - TOP_LEVEL)}"
    assert not (PLATFORM / "__init__.py").exists(), "platform/ is a source root, not a package"
    long = {str(p.relative_to(REPO)): n for p in _sources(MEDRAY, REPO / "workloads")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (over {MAX_LINES} lines): {long}"

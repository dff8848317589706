"""The library's shape, checked from its source: no import cycles, no private names across modules,
only Ray's public APIs, and `import pipeline.<stage>` stays light.

The import graph counts every `import` / `from ... import` inside pipeline/, at module level
or inside functions (a function-local import still couples two modules).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pipeline"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mods: dict[str, Path]):
    """Yield (importer, imported module, names taken from it) for every import inside pipeline/."""
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    yield mod, a.name, []
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                names = [a.name for a in node.names]
                submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
                yield mod, target, [n for n in names if f"{target}.{n}" not in mods]
                for sub in submodules:
                    yield mod, sub, []


def test_no_private_names_are_imported_across_modules():
    mods = _modules()
    bad = [f"{src} imports {name} from {dst}" for src, dst, names in _imports(mods)
           for name in names if name.startswith("_") and dst.startswith("pipeline") and dst != src]
    assert not bad, "\n".join(bad)


def test_only_public_ray_apis():
    bad = [f"{src} imports {dst}" for src, dst, _ in _imports(_modules()) if "._internal" in dst or ".v2._" in dst]
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_modules():
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for src, dst, _ in _imports(mods):
        if dst in mods and dst != src and not src.startswith(dst + "."):  # a package re-exporting its own modules
            if not dst.startswith(src + "."):
                graph[src].add(dst)
    # Tarjan's strongly connected components: any component of 2+ modules is a cycle
    index, low, on, stack, comps, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not comps, f"import cycles: {comps}"


def test_stage_modules_import_without_heavy_libraries():
    """`tart <stage> --help` and the grid's driver stay fast: torch, ray and mlflow load on use."""
    code = ("import sys, pipeline.grid, pipeline.embed, pipeline.generate, pipeline.compare, pipeline.cli; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout

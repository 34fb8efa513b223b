"""The project files a stage's command runs, found statically: its import closure.

``python -m stages.X <family> …`` runs ``stages.X`` and, through the family registry, the
family's module behind stage X. Everything those import, transitively and including
function-local imports, is code the stage's result depends on: dvc.yaml's code deps are made
from this (``dvcgen``), and tests/test_structure.py checks imports against it (cycles, layers).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("retainrl", "stages", "flows")


def module_file(mod: str, root: Path = ROOT) -> Path | None:
    parts = mod.split(".")
    for cand in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if cand.exists():
            return cand
    return None


def module_name(f: Path, root: Path = ROOT) -> str:
    parts = f.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@lru_cache(maxsize=None)
def _imports(f: Path, root: Path) -> frozenset[str]:
    pkg = module_name(f, root) if f.name == "__init__.py" else module_name(f, root).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(f.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] not in PACKAGES:
                continue
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]), root))
    return frozenset(found)


def imported_modules(f: Path, root: Path = ROOT) -> set[str]:
    """Every project module that ``f`` imports anywhere (lazy, function-local imports included);
    importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``."""
    return set(_imports(f.resolve(), root.resolve()))


def project_files(root: Path = ROOT) -> list[Path]:
    return sorted(f for p in PACKAGES for f in (root / p).rglob("*.py"))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    return {module_name(f, root): imported_modules(f, root) - {module_name(f, root)} for f in project_files(root)}


def closure(roots: list[str], root: Path = ROOT) -> set[Path]:
    """The files of ``roots`` and of everything they import, transitively (running ``a.b.c``
    also runs the ``__init__`` of ``a`` and ``a.b``, so those count too)."""
    seen: set[str] = set()
    todo = [".".join(r.split(".")[:i]) for r in roots for i in range(1, r.count(".") + 2)]
    while todo:
        mod = todo.pop()
        if mod in seen or module_file(mod, root) is None:
            continue
        seen.add(mod)
        todo.extend(imported_modules(module_file(mod, root), root))
    return {module_file(m, root) for m in seen}


def is_marker(f: Path) -> bool:
    """A package ``__init__`` holding nothing but a docstring cannot change any result."""
    body = ast.parse(f.read_text()).body
    return f.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def stage_roots(cmd: str) -> list[str]:
    """The modules a stage's command runs: ``python -m stages.X <family> …`` runs ``stages.X`` and,
    through the family registry, the family module behind stage X."""
    from retainrl.core.family import family_names, module_name as family_module

    words = cmd.split()
    mod = words[words.index("-m") + 1]
    args = words[words.index("-m") + 2:]
    stage = mod.removeprefix("stages.")
    return [mod] + [m for a in args[:1] if a in family_names() for m in (family_module(a), family_module(a, stage))]

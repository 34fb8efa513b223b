"""The layout's promises, checked statically from the code: no import cycles, imports only point
down the layers (core ← retention ← learners ← families), and every DVC stage depends on all the
project code its command imports, so a code change can never leave a stale cached result."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("retainrl", "stages", "flows")


def module_file(mod: str) -> Path | None:
    parts = mod.split(".")
    for cand in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if cand.exists():
            return cand
    return None


def module_name(f: Path) -> str:
    parts = f.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(f: Path) -> set[str]:
    """Every project module that ``f`` imports anywhere (lazy, function-local imports included);
    importing ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``."""
    pkg = module_name(f) if f.name == "__init__.py" else module_name(f).rpartition(".")[0]
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
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i])))
    return found


def project_files() -> list[Path]:
    return sorted(f for p in PACKAGES for f in (ROOT / p).rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    return {module_name(f): imported_modules(f) - {module_name(f)} for f in project_files()}


def closure(roots: list[str]) -> set[Path]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        mod = todo.pop()
        if mod in seen or module_file(mod) is None:
            continue
        seen.add(mod)
        todo.extend(imported_modules(module_file(mod)))
    return {module_file(m) for m in seen}


def is_marker(f: Path) -> bool:
    """A package ``__init__`` holding nothing but a docstring cannot change any result."""
    body = ast.parse(f.read_text()).body
    return f.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def test_no_import_cycles():
    graph = import_graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10_000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            # a package's __init__ importing its own sub-modules is how a package re-exports, not a cycle
            if w not in graph or v == w.rpartition(".")[0] and module_file(v).name == "__init__.py":
                continue
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


#: What each layer may import from the project (besides itself). Families may use everything
#: below them; nothing below a family knows one, and a learner never names a family.
LAYERS = {
    "retainrl.core": {"retainrl"},
    "retainrl.retention": {"retainrl", "retainrl.core"},
    "retainrl.learners": {"retainrl", "retainrl.core", "retainrl.retention"},
    "retainrl.pipeline": {"retainrl", "retainrl.core", "retainrl.retention"},
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_only_downwards(layer):
    allowed = LAYERS[layer] | {layer}
    bad = {}
    for mod, deps in import_graph().items():
        if mod == layer or mod.startswith(layer + "."):
            wrong = sorted(d for d in deps if not any(d == a or d.startswith(a + ".") for a in allowed - {"retainrl"}) and d != "retainrl")
            if wrong:
                bad[mod] = wrong
    assert not bad, f"{layer} imports from a layer above it: {bad}"


def test_families_import_no_other_family():
    bad = {}
    for mod, deps in import_graph().items():
        if mod.startswith("retainrl.families.") and mod.count(".") >= 2:
            own = ".".join(mod.split(".")[:3])
            wrong = sorted(d for d in deps if d.startswith("retainrl.families.") and d.count(".") >= 2 and not d.startswith(own))
            if wrong:
                bad[mod] = wrong
    assert not bad, bad


def dvc_stages() -> dict[str, dict]:
    """Every stage as DVC resolves dvc.yaml's templating: {name: {cmd, deps}}."""
    code = (
        "import json\nfrom dvc.repo import Repo\n"
        "print(json.dumps({s.addressing: {'cmd': s.cmd, 'deps': [str(d.def_path) for d in s.deps]} "
        "for s in Repo('.').index.stages if getattr(s, 'cmd', None)}))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    import json

    return json.loads(res.stdout)


def stage_roots(cmd: str) -> list[str]:
    """The modules a stage's command runs: ``python -m stages.X <family> …`` runs ``stages.X`` and,
    through the family registry, the family module behind stage X (and the schema in ``stages``)."""
    from retainrl.core.family import family_names, module_name as family_module

    words = cmd.split()
    mod = words[words.index("-m") + 1]
    args = words[words.index("-m") + 2:]
    stage = mod.removeprefix("stages.")
    return [mod] + [m for a in args[:1] if a in family_names() for m in (family_module(a), family_module(a, stage))]


def test_the_check_sees_lazy_imports_and_the_registry():
    """The closure follows function-local imports and the family named on the command line."""
    files = {str(f.relative_to(ROOT)) for f in closure(stage_roots("python -m stages.finetune nethack ks"))}
    assert {"stages/finetune.py", "retainrl/core/stage.py", "retainrl/families/nethack/stages.py",
            "retainrl/families/nethack/sf.py", "retainrl/learners/appo.py"} <= files


@pytest.mark.parametrize("family", ["apple", "robot", "montezuma", "nethack"])
def test_training_never_depends_on_the_shared_results_code(family):
    """Fine-tuning's code excludes evaluation, statistics and reports: editing them reruns only
    the result stages (the point of the stages/results split)."""
    files = {str(f.relative_to(ROOT)) for f in closure(stage_roots(f"python -m stages.finetune {family} ks"))}
    assert not [f for f in files if f.startswith(("retainrl/pipeline/", f"retainrl/families/{family}/results"))], files
    results = {str(f.relative_to(ROOT)) for f in closure(stage_roots(f"python -m stages.evaluate {family}"))}
    assert f"retainrl/families/{family}/results.py" in results


def test_dvc_deps_cover_every_imported_project_file():
    stages = dvc_stages()
    assert len(stages) > 20
    bad = {}
    for name, st in stages.items():
        if "-m" not in st["cmd"].split():
            continue
        deps = [ROOT / d for d in st["deps"]]
        missing = sorted(
            str(f.relative_to(ROOT)) for f in closure(stage_roots(st["cmd"]))
            if not is_marker(f) and not any(f == d or d in f.parents for d in deps)
        )
        if missing:
            bad[name] = missing
    assert not bad, "stages whose code can change without DVC noticing:\n" + "\n".join(f"{k}: {v}" for k, v in sorted(bad.items()))


def test_no_code_outside_retention_branches_on_a_method_name():
    """What a method does lives in its class (``retains``, ``starts_from_pretrained``, ``needs``,
    ``uses_online_states``…): a comparison with a method's name elsewhere is a second copy of it."""
    from retainrl.retention.methods import REGISTRY

    def strings(node) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(strings(e) for e in node.elts))
        return set()

    hits = []
    for f in project_files() + sorted((ROOT / "benchmarks").rglob("*.py")) + sorted((ROOT / "experiments").rglob("*.py")):
        if f.is_relative_to(ROOT / "retainrl" / "retention"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Compare) and strings(node.left).union(*map(strings, node.comparators)) & set(REGISTRY):
                hits.append(f"{f.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.match_case) and strings(getattr(node.pattern, "value", None)) & set(REGISTRY):
                hits.append(f"{f.relative_to(ROOT)}:{node.pattern.lineno}: case {ast.unparse(node.pattern)}")
            # a lookup by a method's name (curves["scratch"], d.get("ks")) is the same branch in disguise;
            # "finetune" is also the name of every family's params section, so it is left to the comparisons
            lookups = set(REGISTRY) - {"finetune"}
            if isinstance(node, ast.Subscript) and strings(node.slice) & lookups:
                hits.append(f"{f.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop", "setdefault")
                    and node.args and strings(node.args[0]) & lookups):
                hits.append(f"{f.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not hits, "\n".join(hits)

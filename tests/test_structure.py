"""The layout's promises, checked statically from the code: no import cycles, imports only point
down the layers (core ← retention ← learners ← families), dvc.yaml is what its generator writes,
every DVC stage depends on all the project code its command imports (so a code change can never
leave a stale cached result), and a new family is its folder plus its params section."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from retainrl.orchestration.imports import (
    ROOT,
    closure,
    import_graph,
    is_marker,
    module_file,
    project_files,
    stage_roots,
)
from conftest import copy_repo, smoke_copy  # tests/ is on sys.path (pytest rootdir import mode)
from retainrl.core.family import family_names


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


def test_reports_are_rendered_by_the_one_generator_only():
    """Families describe their reports (``pipeline.report.Report``); only ``pipeline/report.py``
    draws figures or writes Markdown, so every family's report looks and reads the same."""
    drawing = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "retainrl").rglob("*.py")
                     if "matplotlib" in f.read_text() and f.relative_to(ROOT).as_posix() != "retainrl/pipeline/report.py")
    assert not drawing, f"plotting outside the report generator: {drawing}"
    for fam in sorted((ROOT / "retainrl" / "families").glob("*/results.py")):
        assert "write(Report(" in fam.read_text(), f"{fam} does not hand its report to pipeline.report.write"


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


def test_the_check_sees_lazy_imports_and_the_registry():
    """The closure follows function-local imports and the family named on the command line."""
    files = {str(f.relative_to(ROOT)) for f in closure(stage_roots("python -m stages.finetune nethack ks"))}
    assert {"stages/finetune.py", "retainrl/core/stage.py", "retainrl/families/nethack/stages.py",
            "retainrl/families/nethack/sf.py", "retainrl/learners/appo.py"} <= files


#: The shared result code: evaluation, statistics, reports. ``pipeline/`` also holds the generic
#: training stages (far_buffer, fisher, the finetune driver), which training may import.
RESULT_MODULES = ("evaluation", "stats", "study", "report", "summary", "docblocks")


@pytest.mark.parametrize("family", family_names())
def test_training_never_depends_on_the_shared_results_code(family):
    """Fine-tuning's code excludes evaluation, statistics and reports: editing them reruns only
    the result stages (the point of the stages/results split)."""
    files = {str(f.relative_to(ROOT)) for f in closure(stage_roots(f"python -m stages.finetune {family} ks"))}
    results = tuple(f"retainrl/pipeline/{m}.py" for m in RESULT_MODULES) + (f"retainrl/families/{family}/results",)
    assert not [f for f in files if f.startswith(results)], files
    assert "retainrl/pipeline/finetune.py" in files  # the generic driver (families may replace it)
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


def test_dvc_yaml_is_what_the_generator_writes():
    from retainrl.orchestration.dvcgen import render

    assert (ROOT / "dvc.yaml").read_text() == render(), "dvc.yaml is stale: run `python -m retainrl.orchestration.dvcgen`"


def test_the_generator_refuses_a_fragment_it_cannot_use(tmp_path):
    from retainrl.orchestration.dvcgen import FragmentError, load_fragment

    fam = tmp_path / "retainrl" / "families" / "pear"
    fam.mkdir(parents=True)
    with pytest.raises(FragmentError, match="has no retainrl/families/pear/pipeline.yaml"):
        load_fragment("pear", tmp_path)
    (fam / "pipeline.yaml").write_text("collect_demos: {params: [pear.env], outz: [x]}\n")
    with pytest.raises(FragmentError, match="collect_demos: keys must be among"):
        load_fragment("pear", tmp_path)
    (fam / "pipeline.yaml").write_text("collect_demos: {deps: [x]}\n")
    with pytest.raises(FragmentError, match="collect_demos.params"):
        load_fragment("pear", tmp_path)
    (fam / "pipeline.yaml").write_text("collect_demos: {params: [pear.env]}\n")
    with pytest.raises(FragmentError, match="no entry for the stage"):
        load_fragment("pear", tmp_path)


@pytest.mark.slow
def test_a_new_family_is_its_folder_and_its_params_section(tmp_path):
    """A throw-away family ``pear`` (AppleRetrieval's code under another name): its folder and its
    params.yaml section are all it takes; the regenerated dvc.yaml has its stages with their code
    deps, and DVC runs them on the smoke profile."""
    repo = copy_repo(ROOT, tmp_path / "repo")
    shutil.copytree(ROOT / "retainrl/families/apple", repo / "retainrl/families/pear",
                    ignore=shutil.ignore_patterns("__pycache__"))
    frag = repo / "retainrl/families/pear/pipeline.yaml"
    frag.write_text(frag.read_text().replace("apple", "pear").replace("AppleRetrieval", "PearRetrieval"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pear"] = params["apple"]
    for prof in params["profiles"].values():
        prof["pear"] = prof["apple"]
    params["profile"] = "smoke"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(repo), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "retainrl.orchestration.dvcgen"], cwd=repo, env=env, check=True, capture_output=True)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert {f"pear_{k}" for k in ("collect_demos", "pretrain", "far_buffer", "fisher", "finetune", "evaluate", "sweep", "report")} <= set(stages)
    assert "retainrl/families/pear/stages.py" in stages["pear_finetune"]["deps"]
    assert "retainrl/families/pear/results.py" in stages["pear_evaluate"]["deps"]
    assert not any("apple" in d for d in stages["pear_finetune"]["deps"])
    assert {k: v for k, v in stages.items() if k.startswith("apple_")} == \
        {k: v for k, v in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items() if k.startswith("apple_")}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    res = subprocess.run([sys.executable, "-m", "dvc", "repro", "pear_fisher"], cwd=repo, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert (repo / "data/pear/fisher").is_dir() and not (repo / "data/apple/demos").exists()


@pytest.mark.slow
def test_a_new_method_is_one_class_and_its_params(tmp_path):
    """A throw-away method ``l1`` (an L1 pull towards θ*): one class in retention/methods.py and its
    params in params.yaml are all it takes. dvc.yaml does not change (DVC's matrix expands the
    methods), the new stage reads its own params section only, and it runs on the smoke profile
    through the shared finetune driver of a family that knows nothing of it."""
    repo = tmp_path / "repo"
    registry = "cls.name: cls for cls in (Scratch, Finetune, L2, EWC, BC, KS, EM)"

    def add_l1(params):
        methods = repo / "retainrl/retention/methods.py"
        text = methods.read_text()
        assert registry in text
        methods.write_text(text.replace(registry, registry[:-1] + ", L1)").replace("\nclass EM(RetentionMethod):", '''
class L1(_ParameterAnchor):
    name = "l1"
    Params = L2Params

    def coef(self, step):
        return self.params.l1.coef

    def aux_loss(self, policy, online_obs, step):
        pull = sum((q - self.anchor[n].to(q.device)).abs().sum() for n, q in policy.retained_parameters(self.include_critic))
        return self.coef(step) * pull


class EM(RetentionMethod):'''))
        params["apple"]["finetune"]["methods"].append("l1")
        params["apple"]["retention"]["l1"] = {"coef": 0.01}

    repo, env = smoke_copy(ROOT, repo, add_l1)
    res = subprocess.run([sys.executable, "-m", "retainrl.orchestration.dvcgen"], cwd=repo, env=env, capture_output=True, text=True)
    assert res.returncode == 0 and (repo / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text(), res.stderr
    show = "from dvc.repo import Repo\nprint([k for s in Repo('.').index.stages if s.addressing == 'apple_finetune@l1' for p in s.params for k in p.params])"
    res = subprocess.run([sys.executable, "-c", show], cwd=repo, env=env, capture_output=True, text=True, check=True)
    assert "apple.retention.l1" in res.stdout and "apple.retention.ewc" not in res.stdout, res.stdout
    res = subprocess.run([sys.executable, "-m", "dvc", "repro", "apple_finetune@l1"], cwd=repo, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    smoke = yaml.safe_load((repo / "params.yaml").read_text())["profiles"]["smoke"]["apple"]["finetune"]["seeds"]
    assert np.load(repo / "models/apple/finetune/l1/curves.npz")["far"].shape[0] == smoke

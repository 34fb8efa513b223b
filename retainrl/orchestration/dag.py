"""The pipeline DAG as DVC declares it in dvc.yaml: the one source of stages and edges.

The Prefect flow (flows/pipeline.py) never keeps its own list of commands or edges: it asks
DVC for the stage graph (``Repo.index.graph``, whose edges point from a stage to the stages it
depends on) and for each stage's resolved command, outputs and wdir. Matrix/foreach stages
come back already expanded (``apple_finetune@ewc``), exactly as ``dvc repro`` would run them.

Selection mirrors ``dvc repro TARGET...``: a target is a stage name, or a matrix group name
(``apple_finetune``) that stands for all of its items; the selection is the targets plus
everything upstream. Environment families are recognised by the ``<env>_`` prefix that every
stage name in dvc.yaml carries (the project's naming convention), so a new family added to
dvc.yaml is picked up without any change here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("retainrl.orchestration.dag")

#: The last measured minutes of every family's stages (written by benchmarks/dag_minutes.py):
#: the schedulers' cost hints (:meth:`Dag.critical_order`). Only an ordering hint: a missing or
#: stale file changes which ready stage starts first, never what runs.
COST_HINTS = Path("benchmarks") / "results" / "dag_default.json"


class DagError(ValueError):
    """Bad selection (unknown stage or environment) or an unreadable dvc.yaml."""


@dataclass(frozen=True)
class StageInfo:
    """What the orchestrator needs to know about one (expanded) DVC stage."""

    name: str  # DVC addressing, e.g. ``apple_finetune@ewc``
    cmd: str
    wdir: str  # absolute working directory of the command
    outs: tuple[str, ...]  # output paths relative to the repo root
    persist: tuple[str, ...]  # outputs DVC must not delete before running
    upstream: tuple[str, ...]  # stages this one depends on (direct)
    frozen: bool = False

    @property
    def group(self) -> str:
        """``apple_finetune`` for ``apple_finetune@ewc``; the name itself otherwise."""
        return self.name.split("@", 1)[0]


@dataclass
class Dag:
    root: Path
    stages: dict[str, StageInfo] = field(default_factory=dict)  # in a topological order

    def topological(self) -> list[str]:
        return list(self.stages)

    def envs(self) -> list[str]:
        return sorted({n.split("_", 1)[0] for n in self.stages if "_" in n})

    def downstream(self, name: str) -> list[str]:
        return [s.name for s in self.stages.values() if name in s.upstream]

    def stage_costs(self, hints: Path | None = None) -> dict[str, float]:
        """Each stage's expected minutes: its family's measured minutes for that kind of stage
        (``minutes_per_stage`` in ``hints``, default ``root/COST_HINTS``), split evenly over a
        matrix's items; 1 minute where nothing was measured."""
        import json
        import math

        def table(obj, key) -> dict:  # obj[key] if both are JSON objects, else {}: a bad file orders nothing
            return obj.get(key) if isinstance(obj, dict) and isinstance(obj.get(key), dict) else {}

        path = hints if hints is not None else self.root / COST_HINTS
        try:
            families = table(json.loads(path.read_text()), "families")
        except (OSError, ValueError):
            families = {}
        items: dict[str, int] = {}
        for s in self.stages.values():
            items[s.group] = items.get(s.group, 0) + 1
        costs = {}
        for name, s in self.stages.items():
            env, _, kind = s.group.partition("_")
            minutes = table(table(families, env), "minutes_per_stage").get(kind)
            ok = isinstance(minutes, (int, float)) and not isinstance(minutes, bool) and math.isfinite(minutes) and minutes >= 0
            costs[name] = float(minutes) / items[s.group] if ok else 1.0
        return costs

    def critical_order(self, costs: dict[str, float] | None = None) -> list[str]:
        """The stages, the one with the longest expected path to the end of the DAG first
        (critical-path list scheduling): a scheduler that starts the first ready stage of this
        list keeps the longest chain (NetHack's pretrain → finetune → evaluate) going while the
        short families fill the other core, instead of finishing in the longest chain's tail.
        Ties keep the topological order; a stage never precedes its upstream."""
        costs = self.stage_costs() if costs is None else costs
        down: dict[str, list[str]] = {n: [] for n in self.stages}
        for s in self.stages.values():
            for u in s.upstream:
                down[u].append(s.name)
        tail: dict[str, float] = {}
        for n in reversed(self.topological()):  # downstream stages first
            tail[n] = costs.get(n, 1.0) + max((tail[d] for d in down[n]), default=0.0)
        pos = {n: i for i, n in enumerate(self.topological())}
        return sorted(self.stages, key=lambda n: (-tail[n], pos[n]))

    def select(self, targets: list[str] | None = None, envs: list[str] | None = None) -> "Dag":
        """The sub-DAG ``dvc repro TARGETS`` would consider, restricted to environment families.

        Raises DagError naming the unknown stage/env and listing the known ones.
        """
        names = set(self.stages)
        if envs:
            known = self.envs()
            bad = [e for e in envs if e not in known]
            if bad:
                raise DagError(f"unknown environment {', '.join(map(repr, bad))}: dvc.yaml has stages for {known}")
            names = {n for n in names if n.split("_", 1)[0] in envs}
        if targets:
            chosen: set[str] = set()
            for t in targets:
                hits = [n for n in names if n == t or self.stages[n].group == t]
                if not hits:
                    known = sorted({self.stages[n].group for n in names} | names)
                    raise DagError(f"unknown stage {t!r}{' for envs ' + str(envs) if envs else ''}: known stages are {known}")
                chosen.update(hits)
            todo = list(chosen)
            while todo:  # close over upstream
                for up in self.stages[todo.pop()].upstream:
                    if up not in chosen:
                        chosen.add(up)
                        todo.append(up)
            names = chosen
        sub = Dag(self.root)
        for n, s in self.stages.items():
            if n in names:
                sub.stages[n] = StageInfo(s.name, s.cmd, s.wdir, s.outs, s.persist,
                                          tuple(u for u in s.upstream if u in names), s.frozen)
        return sub


def load_dag(root: str | Path) -> Dag:
    """Read the stage graph from DVC (``dvc.repo.Repo(root).index.graph``)."""
    import networkx as nx
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    root = Path(root).resolve()
    if not (root / "dvc.yaml").is_file():
        raise DagError(f"{root} has no dvc.yaml: not a retainrl pipeline checkout")
    try:
        with Repo(str(root)) as repo:
            graph = repo.index.graph
            dag = Dag(root)
            # Edges go from a stage to its dependencies, so the reversed order runs dependencies first.
            def address(stage) -> str:  # what `dvc repro` accepts when run from the root
                rel = Path(stage.dvcfile.path).resolve().relative_to(root)
                return stage.name if str(rel) == "dvc.yaml" else f"{rel}:{stage.name}"

            for stage in reversed(list(nx.topological_sort(graph))):
                if not isinstance(stage, PipelineStage):
                    continue  # plain .dvc files are data sources, not something to run
                ups = tuple(sorted(address(s) for s in graph.successors(stage) if isinstance(s, PipelineStage)))
                outs = tuple(str(Path(o.fs_path).relative_to(root)) for o in stage.outs)
                persist = tuple(str(Path(o.fs_path).relative_to(root)) for o in stage.outs if o.persist)
                dag.stages[address(stage)] = StageInfo(address(stage), stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd),
                                                         stage.wdir, outs, persist, ups, bool(stage.frozen))
    except DvcException as err:
        raise DagError(f"DVC could not read the pipeline in {root}: {err}") from err
    log.debug("dag: %d stages from %s", len(dag.stages), root / "dvc.yaml")
    return dag

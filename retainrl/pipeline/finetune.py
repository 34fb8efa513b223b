"""Stage ``finetune``, the driver shared by every family: one retention method, every seed.

What is the same everywhere lives here, once:

* the method is checked against the family's learner before any compute (``em`` needs a replay);
* the retention method of run ``k`` is built from what its class ``needs`` and nothing else
  (π*, the FAR buffer with π*'s outputs, the Fisher, the pre-training transitions: loaded
  lazily, so BC never loads a Fisher and ``scratch`` never loads π*), with **one seeding rule**:
  run ``k`` of method ``m`` draws from ``SeedSequence([k, crc32(m)])`` (:func:`run_seed`), so a
  method's stream does not depend on which other methods exist;
* checkpoints live outside the out (``.checkpoints/<family>_finetune@<method>/``) and go when the
  out is in place; the out is written atomically.

The family's ``train(p, paths, device, run)`` owns the loop: which learner, how many runs side by
side, how it evaluates on its schedule. It gets a :class:`FinetuneRun` and writes into ``run.out``.
"""

from __future__ import annotations

import functools
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from retainrl.core.artifacts import atomic_path
from retainrl.core.checkpoint import Checkpoint
from retainrl.pipeline import far_buffer as buffer
from retainrl.pipeline import fisher as fisher_stage
from retainrl.retention.methods import RetentionMethod, check_method, context_for

log = logging.getLogger(__name__)


def run_seed(method: str, k: int) -> int:
    """The seed of run ``k`` of ``method``: the one rule every family's fine-tuning follows."""
    return int(np.random.SeedSequence([k, zlib.crc32(method.encode())]).generate_state(1)[0])


def retention_from(method: str, params, generator: torch.Generator, **values) -> RetentionMethod:
    """``method`` built from objects in memory (a sweep that remakes π* per value, a test): only
    the fields the method ``needs`` are taken from ``values``, as the stage's loaders would be."""
    from retainrl.retention.methods import REGISTRY

    ctx = context_for(method, generator, **{k: (lambda v=v: v) for k, v in values.items()})
    return REGISTRY[method](ctx, params)


def retention_loaders(family, p, paths, device) -> dict[str, Callable[[], Any]]:
    """Zero-argument loaders of every retention-context field the generic artifacts hold, plus the
    family's own (``family.retention_loaders``, e.g. EM's pre-training transitions)."""
    far = functools.cache(lambda: buffer.load(paths))
    loaders = {
        "pretrained": functools.cache(lambda: family.load_pretrained(p, paths, device)),
        "far_obs": lambda: buffer.as_tensor(far()["obs"]),
        "far_targets": lambda: torch.as_tensor(far()["targets"]),
        "far_critic": lambda: torch.as_tensor(far()["critic"]) if "critic" in far() else None,
        "fisher": lambda: fisher_stage.load(paths, device),
    }
    own = getattr(family, "retention_loaders", None)
    if own is not None:
        loaders.update(own(p, paths, device))
    return loaders


def retention_for(method: str, k: int, params, loaders: dict[str, Callable[[], Any]],
                  generator: torch.Generator | None = None) -> RetentionMethod:
    """Run ``k``'s retention method: its context holds what the method ``needs`` (from ``loaders``,
    called only for those fields), and it draws (BC's minibatches) from ``generator``, by default
    a fresh one seeded by :func:`run_seed`. The one way every family builds a method; a family
    that runs seeds in other processes calls it there (the loaders do not pickle)."""
    from retainrl.retention.methods import REGISTRY

    cls = REGISTRY[method]
    gen = generator if generator is not None else torch.Generator().manual_seed(run_seed(method, k))
    return cls(context_for(method, gen, **{n: loaders[n] for n in cls.needs}), params.retention)


@dataclass
class FinetuneRun:
    """What a family's ``train`` gets: the method, where to write, and the shared rules."""

    family: str
    method: str
    out: Path
    params: Any
    loaders: dict[str, Callable[[], Any]]
    inputs: tuple[Path, ...]

    @property
    def stage(self) -> str:
        return f"{self.family}_finetune@{self.method}"

    @property
    def cls(self) -> type[RetentionMethod]:
        from retainrl.retention.methods import REGISTRY

        return REGISTRY[self.method]

    def seed(self, k: int = 0) -> int:
        return run_seed(self.method, k)

    def generator(self, k: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed(k))

    def retention(self, k: int = 0, generator: torch.Generator | None = None) -> RetentionMethod:
        """Run ``k``'s retention method (:func:`retention_for`)."""
        return retention_for(self.method, k, self.params, self.loaders, generator)

    def pretrained(self):
        return self.loaders["pretrained"]()

    def checkpoint(self, part: str = "state") -> Checkpoint:
        """The checkpoint of this stage (``part``: one of several, e.g. one per seed run in turn)."""
        return Checkpoint.for_stage(self.stage, self.params.checkpoint.every_s, family=self.family, method=self.method,
                                    params=self.params, inputs=self.inputs, part=part)

    def seeds_in_turn(self, seeds: list[int], train_one, *, keep=None, restore=None) -> list[dict]:
        """Train one run per seed, one after another (the PPO families), each with its own checkpoint.

        ``train_one(k, seed, checkpoint) -> (record, weights)``: the run's curves (a JSON-able dict)
        and its final state dict. A seed that finished before the stage was killed is taken from its
        checkpoint (``restore(saved)`` first hands back what ``keep()`` saved beside it, e.g. an
        evaluator's RNGs as the later seeds found them). Writes ``policy_seed<seed>.safetensors``
        per seed and ``curves.json`` ({method, runs}) into the out; returns the records.
        """
        from safetensors.torch import save_file

        from retainrl.core.artifacts import save_json

        runs = []
        for k, seed in enumerate(seeds):
            ckpt = self.checkpoint(part=f"seed{seed}")
            done = ckpt.load()
            if done is not None and "result" in done:
                if restore is not None:
                    restore(done)
                record, weights = done["result"]["run"], done["result"]["weights"]
                log.info("%s seed %d: finished before the interruption, taken from its checkpoint", self.method, seed)
            else:
                record, weights = train_one(k, seed, ckpt)
                record = {"seed": seed, **record}
                weights = {name: v.detach().cpu().contiguous() for name, v in weights.items()}
                ckpt.save({"progress": "finished", "result": {"run": record, "weights": weights}, **(keep() if keep else {})})
            runs.append(record)
            save_file(weights, str(self.out / f"policy_seed{seed}.safetensors"))
        save_json(self.out / "curves.json", {"method": self.method, "runs": runs})
        return runs


def finetune(family, p, paths, device, method: str) -> None:
    """The stage: check ``method`` against the family's learner, then ``family.train`` into the out."""
    name = paths.env
    check_method(method, learner=family.learner.LEARNER, off_policy=family.learner.OFF_POLICY,
                 key=f"{name}.finetune.methods")
    inputs = tuple(x for x in (paths.demos, paths.pretrained, paths.far_buffer, paths.fisher) if Path(x).exists())
    with atomic_path(paths.finetune(method), directory=True) as out:
        run = FinetuneRun(name, method, out, p, retention_loaders(family, p, paths, device), inputs)
        family.train(p, paths, device, run)
    Checkpoint.clear_stage(run.stage)  # the outputs are in place: nothing left to resume

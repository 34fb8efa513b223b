"""REINFORCE for a categorical policy, vectorised over episodes and over seeds; knows no family.

The loop, top to bottom: roll out a batch of episodes per model, form returns-to-go with an
optional per-time-step baseline, add the retention method's auxiliary loss, take one optimiser
step; evaluate CLOSE/FAR/full success on a schedule (and once before the first update, which is
π*'s own score). The family hands in how to play (``play``: a batch of episodes per model as
a :class:`Rollout`) and how to score (``score``: success rates per model); the learner only
knows the loss. Models (seeds) are stacked on the leading axis and their losses summed, so
each gets exactly the gradient it would get alone and the optimisers (element-wise SGD/Adam)
keep them independent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from retainrl.core.checkpoint import Checkpoint
from retainrl.retention.methods import RetentionMethod
from retainrl.retention.policy import RetainablePolicy

OFF_POLICY = False
LEARNER = "reinforce"


class Config(Protocol):
    """The fields REINFORCE reads (a family's ``finetune`` params section provides them)."""

    optimizer: str  # "sgd" | "adam"
    lr: float
    iterations: int  # optimiser steps; also KS's decay steps (one per actor gradient update)
    episodes_per_iteration: int
    baseline: bool  # subtract a per-time-step batch-mean baseline from the returns-to-go
    ks_states: int  # online states per model handed to a method that uses them (KS)
    eval_every: int


@dataclass
class Rollout:
    obs: torch.Tensor  # (models, T, B, obs_dim)
    actions: torch.Tensor  # (models, T, B)
    rewards: torch.Tensor  # (models, T, B)
    alive: torch.Tensor  # (models, T, B) step taken by a live episode
    success: torch.Tensor  # (models, B)


def policy_gradient_loss(policy: RetainablePolicy, ro: Rollout, baseline: bool) -> torch.Tensor:
    """−E_t[(G_t − b_t) log π(a_t|s_t)] over live steps, per model, summed over models.

    Returns-to-go (γ = 1) minus a per-time-step batch-mean baseline, scaled by their standard
    deviation per model, so the policy-gradient term is O(1) whatever M and T are and the
    retention coefficients mean the same across the sweeps.
    """
    n_models, horizon, episodes = ro.actions.shape
    alive = ro.alive.float()
    adv = ro.rewards.flip(1).cumsum(1).flip(1)  # return-to-go, γ = 1
    if baseline:
        b = (adv * alive).sum(-1, keepdim=True) / alive.sum(-1, keepdim=True).clamp_min(1)
        adv = adv - b
    n_live = alive.sum(dim=(1, 2)).clamp_min(1)
    mean = (adv * alive).sum(dim=(1, 2)) / n_live
    std = (((adv - mean[:, None, None]) * alive).pow(2).sum(dim=(1, 2)) / n_live).sqrt()
    adv = adv / (std[:, None, None] + 1e-8)
    logits = policy.dist_params(ro.obs.reshape(n_models, -1, ro.obs.shape[-1])).reshape(n_models, horizon, episodes, -1)
    logp = torch.log_softmax(logits, -1).gather(-1, ro.actions.unsqueeze(-1)).squeeze(-1)
    return -((alive * adv * logp).sum(dim=(1, 2)) / n_live).sum()


def visited_states(ro: Rollout, k: int, generator: torch.Generator) -> torch.Tensor:
    """k states per model drawn uniformly from the live steps of the rollout: (models, k, obs_dim)."""
    n_models, dim = ro.obs.shape[0], ro.obs.shape[-1]
    weights = ro.alive.reshape(n_models, -1).float()
    idx = torch.multinomial(weights, k, replacement=True, generator=generator)
    flat = ro.obs.reshape(n_models, -1, dim)
    return flat.gather(1, idx.unsqueeze(-1).expand(-1, -1, dim))


def train(
    policy: RetainablePolicy,
    play: Callable[[RetainablePolicy, int, np.random.Generator], Rollout],
    score: Callable[[RetainablePolicy, np.random.Generator], dict[str, torch.Tensor]],
    cfg: Config,
    retention: RetentionMethod,
    rng: np.random.Generator,
    generator: torch.Generator,
    on_eval: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    progress: bool = True,
    desc: str = "reinforce",
    checkpoint: Checkpoint | None = None,
) -> dict[str, torch.Tensor]:
    """Fine-tune ``policy`` in place; return curves {"iteration": (K,), "close"/"far"/"full": (models, K)}.

    With ``checkpoint``, the whole state (weights, optimiser, both RNG streams, the iteration and
    the curves so far) is saved after an iteration when it is due, and a run that finds one
    resumes from it: the same result, bit for bit, as without the interruption. ``generator``
    must be the only torch stream the retention method draws from (the families build its
    context with it), so saving it covers the method too; ``on_eval`` is called again for the
    evaluations before the checkpoint, so a logger sees the whole run.
    """
    opt_cls = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam
    opt = opt_cls(policy.parameters(), lr=cfg.lr)
    curves: dict[str, list] = {"iteration": [], "close": [], "far": [], "full": []}

    def evaluate(it: int) -> None:
        scores = score(policy, rng)
        curves["iteration"].append(it)
        for k, v in scores.items():
            curves[k].append(v)
        if on_eval:
            on_eval(it, scores)

    def state(it: int) -> dict:
        return {"progress": f"iteration {it}/{cfg.iterations}", "iteration": it, "policy": policy.state_dict(),
                "optimizer": opt.state_dict(), "rng": rng.bit_generator.state, "generator": generator.get_state(),
                "curves": curves}

    start = 1
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is None:
        evaluate(0)
    else:
        policy.load_state_dict(saved["policy"])
        opt.load_state_dict(saved["optimizer"])
        rng.bit_generator.state = saved["rng"]
        generator.set_state(saved["generator"])
        curves = saved["curves"]
        start = saved["iteration"] + 1
        if on_eval:
            for i, it in enumerate(curves["iteration"]):
                on_eval(it, {k: curves[k][i] for k in ("close", "far", "full")})
    for it in tqdm(range(start, cfg.iterations + 1), desc=desc, disable=not progress, mininterval=1.0,
                   initial=start - 1, total=cfg.iterations):
        ro = play(policy, cfg.episodes_per_iteration, rng)
        loss = policy_gradient_loss(policy, ro, cfg.baseline)
        online = visited_states(ro, cfg.ks_states, generator) if retention.uses_online_states else None
        aux = retention.aux_loss(policy, online, it - 1)
        if aux is not None:
            loss = loss + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % cfg.eval_every == 0 or it == cfg.iterations:
            evaluate(it)
        if checkpoint is not None and it < cfg.iterations:
            checkpoint.maybe_save(lambda: state(it))
    return {
        "iteration": torch.tensor(curves["iteration"]),
        **{k: torch.stack(curves[k], 1) for k in ("close", "far", "full")},
    }

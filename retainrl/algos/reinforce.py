"""REINFORCE for AppleRetrieval's logistic policy, vectorised over episodes and over seeds.

The loop, top to bottom: roll out a batch of episodes per model, form returns-to-go with an
optional per-time-step baseline, add the retention method's auxiliary loss, take one optimiser
step; evaluate CLOSE/FAR/full success on a schedule (and once before the first update, which is
π*'s own score). Models (seeds) are stacked on the leading axis and their losses summed, so
each gets exactly the gradient it would get alone and the optimisers (element-wise SGD/Adam)
keep them independent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from retainrl.envs.apple import AppleRetrieval, EnvParams, FinetuneParams, LogisticPolicy, evaluate_policy, sample_actions
from retainrl.retention.methods import RetentionMethod

OFF_POLICY = False


@dataclass
class Rollout:
    obs: torch.Tensor  # (models, T, B, 2)
    actions: torch.Tensor  # (models, T, B)
    rewards: torch.Tensor  # (models, T, B)
    alive: torch.Tensor  # (models, T, B) step taken by a live episode
    success: torch.Tensor  # (models, B)


def rollout(policy: LogisticPolicy, env: EnvParams, episodes: int, rng: np.random.Generator) -> Rollout:
    """Play ``episodes`` episodes per model (NumPy simulator); arrays come back as tensors."""
    weight = policy.weight.detach().cpu().numpy()
    sim = AppleRetrieval(env.c, env.M, env.T, (weight.shape[0], episodes))
    obs = sim.reset(1)
    rec_obs, rec_act, rec_rew, rec_alive = [], [], [], []
    while not sim.done.all():
        action = sample_actions(weight, obs, rng)
        rec_obs.append(obs)
        rec_act.append(action)
        obs, reward, alive = sim.step(action)
        rec_rew.append(reward)
        rec_alive.append(alive)
    dev = policy.weight.device
    return Rollout(
        obs=torch.from_numpy(np.stack(rec_obs, 1)).to(dev),
        actions=torch.from_numpy(np.stack(rec_act, 1)).to(dev),
        rewards=torch.from_numpy(np.stack(rec_rew, 1)).to(dev),
        alive=torch.from_numpy(np.stack(rec_alive, 1)).to(dev),
        success=torch.from_numpy(sim.success).to(dev),
    )


def policy_gradient_loss(policy: LogisticPolicy, ro: Rollout, baseline: bool) -> torch.Tensor:
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
    logits = policy.dist_params(ro.obs.reshape(n_models, -1, 2)).reshape(n_models, horizon, episodes, 2)
    logp = torch.log_softmax(logits, -1).gather(-1, ro.actions.unsqueeze(-1)).squeeze(-1)
    return -((alive * adv * logp).sum(dim=(1, 2)) / n_live).sum()


def visited_states(ro: Rollout, k: int, generator: torch.Generator) -> torch.Tensor:
    """k states per model drawn uniformly from the live steps of the rollout: (models, k, 2)."""
    n_models = ro.obs.shape[0]
    weights = ro.alive.reshape(n_models, -1).float()
    idx = torch.multinomial(weights, k, replacement=True, generator=generator)
    flat = ro.obs.reshape(n_models, -1, 2)
    return flat.gather(1, idx.unsqueeze(-1).expand(-1, -1, 2))


def train(
    policy: LogisticPolicy,
    env: EnvParams,
    cfg: FinetuneParams,
    retention: RetentionMethod,
    rng: np.random.Generator,
    generator: torch.Generator,
    on_eval: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    progress: bool = True,
    desc: str = "reinforce",
) -> dict[str, torch.Tensor]:
    """Fine-tune ``policy`` in place; return curves {"iteration": (K,), "close"/"far"/"full": (models, K)}."""
    opt_cls = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam
    opt = opt_cls(policy.parameters(), lr=cfg.lr)
    curves: dict[str, list] = {"iteration": [], "close": [], "far": [], "full": []}

    def evaluate(it: int) -> None:
        scores = evaluate_policy(policy, env, cfg.eval_episodes, rng)
        curves["iteration"].append(it)
        for k, v in scores.items():
            curves[k].append(v)
        if on_eval:
            on_eval(it, scores)

    evaluate(0)
    for it in tqdm(range(1, cfg.iterations + 1), desc=desc, disable=not progress, mininterval=1.0):
        ro = rollout(policy, env, cfg.episodes_per_iteration, rng)
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
    return {
        "iteration": torch.tensor(curves["iteration"]),
        **{k: torch.stack(curves[k], 1) for k in ("close", "far", "full")},
    }

"""PPO + RND (Burda et al. 2018), CleanRL-style: one file, the loop top to bottom.

The study fine-tunes Montezuma's π* with it (lr 1e-4, γ_ext 0.999, γ_int 0.99, GAE λ 0.95,
ext/int advantage coefficients 2/1, 4 epochs × 4 minibatches, clip 0.1, entropy 0.001). A
retention method adds its auxiliary loss to every minibatch (KS gets the minibatch's states).

Environments are stepped one after another in this process (CPU, 2 cores): the point here is a
correct, readable learner for the smoke/default profiles; the paper scale needs vectorised envs.
Intrinsic rewards are non-episodic and normalised by a running std of the intrinsic return;
extrinsic rewards are clipped to their sign, as in RND.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from retainrl.core.checkpoint import Checkpoint

log = logging.getLogger(__name__)

OFF_POLICY = False
LEARNER = "ppo_rnd"


class RunningStd:
    """Running variance of a scalar stream (Welford over batches)."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x: np.ndarray) -> None:
        b_mean, b_var, b = float(x.mean()), float(x.var()), x.size
        delta, tot = b_mean - self.mean, self.count + b
        self.mean += delta * b / tot
        self.var = (self.var * self.count + b_var * b + delta**2 * self.count * b / tot) / tot
        self.count = tot


def gae(rewards, values, last_value, dones, gamma, lam):
    """Generalised advantage estimates over a (T, N) rollout; ``dones[t]`` ends the episode after step t."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        nxt = last_value if t == T - 1 else values[t + 1]
        nonterminal = 1.0 - dones[t]
        delta = rewards[t] + gamma * nxt * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


def train(
    model,
    rnd,
    envs: list,
    cfg,
    retention,
    gen: torch.Generator,
    *,
    device: torch.device,
    on_eval: Callable[[int, nn.Module], dict] | None = None,
    progress: bool = True,
    desc: str = "ppo+rnd",
    checkpoint: Checkpoint | None = None,
) -> dict[str, list]:
    """Train ``model`` (ActorCritic) with PPO+RND on ``envs`` for ``cfg.updates`` updates.

    With ``checkpoint``, the whole state is saved after an update when it is due: both networks,
    the optimiser, RND's observation and intrinsic-return statistics, the current observations
    and episode returns, the envs (each must offer ``get_state``/``set_state``: the emulator with
    its RNG), the torch streams, the counters and the curves so far; a run that finds one resumes
    from it, bit for bit the same as without the interruption (on CPU).
    """
    from tqdm import tqdm

    N, T = len(envs), cfg.steps
    model.to(device).train()
    rnd.to(device)
    opt = torch.optim.Adam(list(model.parameters()) + list(rnd.predictor.parameters()), lr=cfg.lr)
    int_std = RunningStd()
    int_running = np.zeros(N)
    obs = np.stack([e.reset() for e in envs])
    ep_return = np.zeros(N)
    curves: dict[str, list] = {"update": [], "frames": [], "episode_return": [], "rooms_visited": [], "intrinsic": [], "eval": []}
    finished: list[float] = []
    rooms_seen: set[int] = set()
    frames = 0
    t0 = time.perf_counter()  # for the log line only: curves hold what the run did, not how fast this machine is
    actor_updates = 0  # optimiser steps so far: the retention methods' step (KS's decay)
    start = 0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        rnd.load_state_dict(saved["rnd"])
        opt.load_state_dict(saved["optimizer"])
        int_std.mean, int_std.var, int_std.count = saved["int_std"]
        int_running, obs, ep_return = saved["int_running"], saved["obs"], saved["ep_return"]
        for env, st in zip(envs, saved["envs"]):
            env.set_state(st)
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        curves, finished, rooms_seen = saved["curves"], saved["finished"], set(saved["rooms_seen"])
        frames, actor_updates = saved["frames"], saved["actor_updates"]
        start = saved["update"] + 1

    def state(update: int) -> dict:
        return {"progress": f"update {update + 1}/{cfg.updates}", "update": update, "model": model.state_dict(),
                "rnd": rnd.state_dict(), "optimizer": opt.state_dict(), "int_std": (int_std.mean, int_std.var, int_std.count),
                "int_running": int_running.copy(), "obs": obs.copy(), "ep_return": ep_return.copy(),
                "envs": [env.get_state() for env in envs], "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "curves": curves, "finished": finished, "rooms_seen": sorted(rooms_seen), "frames": frames,
                "actor_updates": actor_updates}

    for update in tqdm(range(start, cfg.updates), desc=desc, disable=not progress, mininterval=5.0,
                       initial=start, total=cfg.updates):
        if on_eval is not None and update % cfg.eval_every == 0:
            curves["eval"].append({"update": update, "frames": frames, **on_eval(update, model)})
        b_obs = np.zeros((T, N, *obs.shape[1:]), dtype=np.uint8)
        b_act = torch.zeros(T, N, dtype=torch.long)
        b_logp, b_vext, b_vint = torch.zeros(T, N), torch.zeros(T, N), torch.zeros(T, N)
        b_rext, b_rint, b_done = torch.zeros(T, N), torch.zeros(T, N), torch.zeros(T, N)
        next_obs_all = np.zeros_like(b_obs)
        for t in range(T):
            b_obs[t] = obs
            with torch.no_grad():
                logits, values = model.logits_and_values(torch.as_tensor(obs).to(device))
                probs = logits.softmax(-1).cpu()
                action = torch.multinomial(probs, 1, generator=gen).squeeze(1)
            b_act[t] = action
            b_logp[t] = torch.log(probs.gather(1, action[:, None]).squeeze(1) + 1e-12)
            b_vext[t], b_vint[t] = values[:, 0].cpu(), values[:, 1].cpu()
            for i, env in enumerate(envs):
                o, r, terminated, truncated, info = env.step(int(action[i]))
                rooms_seen.add(info["room"])
                ep_return[i] += r
                b_rext[t, i] = float(np.sign(r))
                next_obs_all[t, i] = o
                done = terminated or truncated
                b_done[t, i] = float(done)
                if done:
                    finished.append(ep_return[i])
                    ep_return[i] = 0.0
                    o = env.reset()
                obs[i] = o
            frames += N * envs[0].p.frame_skip
        with torch.no_grad():
            nxt = torch.as_tensor(next_obs_all.reshape(T * N, *obs.shape[1:])).to(device)
            r_int = torch.cat([rnd.error(nxt[j : j + 256]) for j in range(0, len(nxt), 256)]).cpu().reshape(T, N).numpy()
            rnd.update_stats(nxt)
            last_values = model.logits_and_values(torch.as_tensor(obs).to(device))[1].cpu()
        rets = []
        for t in range(T):
            int_running = int_running * cfg.gamma_int + r_int[t]
            rets.append(int_running.copy())
        int_std.update(np.stack(rets))
        b_rint = torch.as_tensor(r_int / np.sqrt(int_std.var + 1e-8), dtype=torch.float32)
        adv_ext, ret_ext = gae(b_rext, b_vext, last_values[:, 0], b_done, cfg.gamma_ext, cfg.gae_lambda)
        adv_int, ret_int = gae(b_rint, b_vint, last_values[:, 1], torch.zeros_like(b_done), cfg.gamma_int, cfg.gae_lambda)
        adv = cfg.ext_coef * adv_ext + cfg.int_coef * adv_int

        flat = lambda x: x.reshape(T * N, *x.shape[2:])  # noqa: E731
        f_obs = torch.as_tensor(b_obs.reshape(T * N, *obs.shape[1:]))
        f_next = torch.as_tensor(next_obs_all.reshape(T * N, *obs.shape[1:]))
        f_act, f_logp, f_adv = flat(b_act), flat(b_logp), flat(adv)
        f_ret = torch.stack([flat(ret_ext), flat(ret_int)], dim=-1)
        mb_size = max(1, (T * N) // cfg.minibatches)
        for _ in range(cfg.epochs):
            perm = torch.randperm(T * N, generator=gen)
            for j in range(0, T * N, mb_size):
                idx = perm[j : j + mb_size]
                o = f_obs[idx].to(device)
                logits, values = model.logits_and_values(o)
                logp_all = logits.log_softmax(-1)
                logp = logp_all.gather(1, f_act[idx, None].to(device)).squeeze(1)
                ratio = (logp - f_logp[idx].to(device)).exp()
                a = f_adv[idx].to(device)
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                v_loss = 0.5 * (values - f_ret[idx].to(device)).pow(2).sum(-1).mean()
                entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                keep = torch.rand(len(idx), generator=gen) < cfg.rnd_update_proportion
                rnd_loss = rnd.error(f_next[idx][keep].to(device)).mean() if keep.any() else torch.zeros((), device=device)
                loss = pg + v_loss - cfg.entropy * entropy + rnd_loss
                # KS decays once per actor gradient update (every minibatch), as in every learner
                aux = retention.aux_loss(model, o if retention.uses_online_states else None, actor_updates)
                if aux is not None:
                    loss = loss + aux
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(list(model.parameters()) + list(rnd.predictor.parameters()), cfg.max_grad_norm)
                opt.step()
                actor_updates += 1
        curves["update"].append(update)
        curves["frames"].append(frames)
        curves["episode_return"].append(float(np.mean(finished[-20:])) if finished else 0.0)
        curves["rooms_visited"].append(len(rooms_seen))
        curves["intrinsic"].append(float(r_int.mean()))
        if checkpoint is not None and update < cfg.updates - 1:
            checkpoint.maybe_save(lambda: state(update))
    if on_eval is not None:
        curves["eval"].append({"update": cfg.updates, "frames": frames, **on_eval(cfg.updates, model)})
    curves["rooms_seen"] = sorted(rooms_seen)
    curves["actor_updates"] = actor_updates
    # no wall-clock in the curves: they are a DVC artifact and must be byte-identical run to run
    log.info("%s: %d frames (%.0fs in this process), rooms seen %s", desc, frames, time.perf_counter() - t0, sorted(rooms_seen))
    return curves

"""Montezuma's Revenge throughput: the search and the preprocessed env against raw ALE, one run.

Why ratios: the machine is shared and its speed varies, so absolute frames/s mean little; each
figure is measured in this run next to raw ALE on the same machine (random actions, frame skip
done by the emulator, no observation processing), which is the ceiling for any emulator-bound
loop here.

    PYTHONPATH=. python benchmarks/bench_montezuma.py [--frames 200000] [--search-frames 400000]

Rows:
* ``raw_ale``: ALEInterface.act with random actions, 1 frame per call (frame_skip=1);
* ``raw_ale_skip4``: the same with ALE's internal frame_skip=4 (what the search uses);
* ``env_preprocessed``: MontezumaEnv.step (sticky 0.25, frame skip 4 with max-pool, 84×84 gray,
  4-frame stack) with random actions – the per-env cost PPO will pay before any network;
* ``go_explore``: GoExplore.run (selection, restore, exploration, archive updates) from reset;
* ``ppo_rnd_rollout``: PPO's acting loop alone – 8 envs in lockstep, one batched forward of the
  Nature-CNN actor-critic per step, sampled actions (what the learner pays per env frame before
  any gradient step);
* ``ppo_rnd_train``: retainrl.learners.ppo_rnd.train with the default profile's shape (8 envs × 64
  steps per update, RND, 4 epochs × 4 minibatches, 1 torch thread) – env frames per second of
  training, gradient steps included (no evaluation).

Writes ``benchmarks/results/montezuma.json``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from retainrl.core.log import setup_logging

log = logging.getLogger("bench_montezuma")
RESULTS = Path(__file__).parent / "results" / "montezuma.json"


def bench_raw(frames: int, frame_skip: int) -> dict:
    from retainrl.families.montezuma.ale import make_ale, minimal_actions

    ale = make_ale(frame_skip=frame_skip)
    acts = minimal_actions(ale)
    rng = np.random.default_rng(0)
    choice = rng.integers(len(acts), size=frames // frame_skip + 1)
    ale.reset_game()
    t0 = time.perf_counter()
    for i in range(frames // frame_skip):
        ale.act(acts[choice[i]])
        if ale.game_over():
            ale.reset_game()
    dt = time.perf_counter() - t0
    return {"frames": frames // frame_skip * frame_skip, "seconds": dt}


def bench_env(frames: int) -> dict:
    from retainrl.families.montezuma.stages import MontezumaEnv

    env = MontezumaEnv()
    rng = np.random.default_rng(0)
    steps = frames // env.p.frame_skip
    choice = rng.integers(env.n_actions, size=steps)
    env.reset()
    t0 = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(choice[i])
        if terminated or truncated:
            env.reset()
    dt = time.perf_counter() - t0
    return {"frames": steps * env.p.frame_skip, "seconds": dt}


def _ppo_setup(envs: int, steps: int, updates: int):
    import os

    import torch

    from retainrl.families.montezuma.stages import FinetuneParams, MontezumaEnv

    torch.set_num_threads(int(os.environ.get("RETAINRL_THREADS", "1")))
    torch.manual_seed(0)
    cfg = FinetuneParams(updates=updates, envs=envs, steps=steps)
    return cfg, [MontezumaEnv(seed=i) for i in range(cfg.envs)]


def bench_ppo_rollout(frames: int, envs: int) -> dict:
    """The acting half of PPO+RND alone: ``envs`` envs stepped in lockstep, one batched forward of
    the Nature-CNN actor-critic per step, actions sampled, uint8 frames (no learning)."""
    import torch

    from retainrl.families.montezuma.nets import ActorCritic

    cfg, vec = _ppo_setup(envs, 1, 1)
    model = ActorCritic().eval()
    gen = torch.Generator().manual_seed(0)
    obs = np.stack([e.reset() for e in vec])
    steps = max(1, frames // (vec[0].p.frame_skip * envs))
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model.logits_and_values(torch.as_tensor(obs))
            action = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(1).numpy()
            for i, env in enumerate(vec):
                o, _, terminated, truncated, _ = env.step(int(action[i]))
                obs[i] = env.reset() if terminated or truncated else o
    dt = time.perf_counter() - t0
    return {"frames": steps * envs * vec[0].p.frame_skip, "seconds": dt, "envs": envs, "torch_threads": torch.get_num_threads()}


def bench_ppo(updates: int, envs: int, steps: int) -> dict:
    """PPO+RND training frames/s with the default profile's shape (``envs`` × ``steps`` per update,
    4 epochs × 4 minibatches, the study's network sizes), a fresh policy, no retention, no evaluation."""
    import torch

    from retainrl.learners import ppo_rnd
    from retainrl.retention.methods import RetentionParams
    from retainrl.families.montezuma.nets import ActorCritic
    from retainrl.learners.rnd import RND
    from retainrl.retention.methods import Finetune, RetentionContext

    cfg, vec = _ppo_setup(envs, steps, updates)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    curves = ppo_rnd.train(
        ActorCritic(), RND(), vec, cfg, Finetune(RetentionContext(), RetentionParams()), gen,
        device=torch.device("cpu"), progress=False,
    )
    return {"frames": curves["frames"][-1], "seconds": time.perf_counter() - t0, "envs": envs, "steps": steps,
            "torch_threads": torch.get_num_threads()}


def bench_search(frames: int, seed: int) -> dict:
    from retainrl.families.montezuma.search import GoExplore, rooms_per_budget

    search = GoExplore(seed=seed)
    result = search.run(frames, progress_bar=False)
    return {
        "frames": result.frames,
        "seconds": result.seconds,
        "rooms": result.rooms,
        "score": result.score,
        "cells": result.cells,
        "progress": rooms_per_budget(result.progress),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200_000, help="frames for the raw and env rows")
    ap.add_argument("--search-frames", type=int, default=400_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ppo-updates", type=int, default=3, help="PPO+RND updates of --ppo-envs × --ppo-steps")
    ap.add_argument("--ppo-envs", type=int, default=8)
    ap.add_argument("--ppo-steps", type=int, default=64)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    setup_logging()

    rows = {}
    for name, fn in [
        ("raw_ale", lambda: bench_raw(args.frames, 1)),
        ("raw_ale_skip4", lambda: bench_raw(args.frames, 4)),
        ("env_preprocessed", lambda: bench_env(args.frames)),
        ("go_explore", lambda: bench_search(args.search_frames, args.seed)),
        ("ppo_rnd_rollout", lambda: bench_ppo_rollout(args.frames // 4, args.ppo_envs)),
        ("ppo_rnd_train", lambda: bench_ppo(args.ppo_updates, args.ppo_envs, args.ppo_steps)),
    ]:
        log.info("running %s", name)
        row = fn()
        row["frames_per_s"] = row["frames"] / row["seconds"]
        rows[name] = row
    ref = rows["raw_ale"]["frames_per_s"]
    for row in rows.values():
        row["ratio_to_raw_ale"] = row["frames_per_s"] / ref

    print(f"\n{'loop':<18}{'frames':>10}{'seconds':>10}{'frames/s':>12}{'× raw ALE':>11}")
    for name, row in rows.items():
        print(f"{name:<18}{row['frames']:>10}{row['seconds']:>10.1f}{row['frames_per_s']:>12.0f}{row['ratio_to_raw_ale']:>11.2f}")
    s = rows["go_explore"]
    print(f"\ngo_explore reached {len(s['rooms'])} rooms {s['rooms']} (score {s['score']:g}, {s['cells']} cells)")

    out = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "loadavg_at_end": list(__import__("os").getloadavg()),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

"""AppleRetrieval episodes/s: the vectorised learner's rollout against a plain one-episode loop.

Both run the same policy on the same machine in the same process, so the ratio is what the
vectorisation buys; nothing here is a timed assertion. Run:

    python -m benchmarks.bench_apple [--episodes 20000] [--out benchmarks/results/apple.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from retainrl.learners import reinforce
from retainrl.families.apple import stages as A


def plain_episode(w: list[float], c: float, M: int, T: int, rng: random.Random) -> tuple[float, bool]:
    """The reference: one episode, Python scalars, one step at a time (same dynamics as AppleRetrieval)."""
    x, phase, total = 0, 1, 0.0
    for _ in range(T):
        s2 = -c if phase == 1 else c
        p_right = 1.0 / (1.0 + math.exp(-(w[0] + w[1] * s2)))
        right = rng.random() < p_right
        total += 1.0 if right == (phase == 1) else -1.0
        x = max(0, x + (1 if right else -1))
        if phase == 1 and x >= M:
            phase = 2
        elif phase == 2 and x == 0:
            return total, True
    return total, False


def measure(episodes: int, batch: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    env = A.EnvParams()
    w = [0.8, -1.0]  # a mid-training policy: episodes neither trivial nor always time out
    rng = random.Random(0)
    n_plain = max(200, episodes // 20)
    t0 = time.perf_counter()
    for _ in range(n_plain):
        plain_episode(w, env.c, env.M, env.T, rng)
    plain_s = time.perf_counter() - t0

    pol = A.LogisticPolicy(1, torch.tensor([w]))
    gen = np.random.default_rng(0)
    A.rollout(pol, env, batch, gen)  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < episodes:
        A.rollout(pol, env, batch, gen)
        done += batch
    vec_s = time.perf_counter() - t0
    plain_eps = n_plain / plain_s
    vec_eps = done / vec_s
    return {
        "plain_loop_episodes_per_s": plain_eps,
        "vectorised_episodes_per_s": vec_eps,
        "speedup": vec_eps / plain_eps,
        "batch": batch,
        "threads": threads,
        "env": env.model_dump(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/apple.json")
    args = parser.parse_args()
    res = measure(args.episodes, args.batch, args.threads)
    print(f"plain loop : {res['plain_loop_episodes_per_s']:>10.0f} episodes/s")
    print(f"vectorised : {res['vectorised_episodes_per_s']:>10.0f} episodes/s  (batch {res['batch']}, {res['threads']} thread)")
    print(f"speed-up   : {res['speedup']:>10.1f}×")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

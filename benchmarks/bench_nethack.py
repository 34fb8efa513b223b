"""NetHack speed, measured in one run on one machine (ratios, not absolute claims).

* raw NLE steps/s with uniformly random actions (the reference; same env as everywhere else:
  full keyboard, nothing auto-answered, seeded);
* the scripted expert's steps/s (its own decision time plus the env's);
* replaying recorded actions (how fast demos re-render for BC) and the cost of restoring each
  FAR start state (seeds + action prefix up to the expert's first arrival on Dlvl 4);
* APPO env steps/s through sample-factory (serial mode, 1 worker × 2 envs, fresh policy; the
  wall time includes sample-factory's start-up, so it is a lower bound on steady-state speed).

    PYTHONPATH=. python benchmarks/bench_nethack.py [--games 10] [--random-steps 20000]

Prints a table and writes benchmarks/results/nethack.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from retainrl.envs.nethack import game_seeds, make_env, play_expert, replay, reset_seeded
from retainrl.envs.nethack_expert import Expert
from retainrl.log import setup_logging

log = logging.getLogger("bench_nethack")
OUT = Path(__file__).parent / "results" / "nethack.json"


def random_steps_per_s(env, steps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    seeds = game_seeds(seed, 1000)
    game = 0
    reset_seeded(env, seeds[game])
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), desc="raw NLE, random actions", unit="step", mininterval=2):
        _, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            game += 1
            reset_seeded(env, seeds[game])
    return steps / (time.perf_counter() - t0)


def appo_steps_per_s(steps: int) -> tuple[float, float]:
    """(env steps/s over the whole run_rl call, sample-factory's own reported FPS is in its log)."""
    import tempfile

    import torch

    from retainrl.envs import nethack_sf as sf
    from sample_factory.train import run_rl

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sf.sf_config(Path(tmp), "bench", [
            "--num_workers=1", "--num_envs_per_worker=2", "--worker_num_splits=1", "--serial_mode=True",
            "--async_rl=False", "--batch_size=256", "--rollout=32", "--num_batches_per_epoch=1", "--num_epochs=1",
            f"--train_for_env_steps={steps}", "--save_every_sec=100000", "--experiment_summaries_interval=100000",
            "--with_wandb=False", "--decorrelate_envs_on_one_worker=False",
        ])
        t0 = time.perf_counter()
        run_rl(cfg)
        return steps / (time.perf_counter() - t0), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", type=int, default=10)
    ap.add_argument("--random-steps", type=int, default=20_000)
    ap.add_argument("--max-steps", type=int, default=30_000)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--appo-steps", type=int, default=4000, help="0 skips the sample-factory APPO measurement")
    args = ap.parse_args()
    setup_logging()
    env = make_env(max_steps=args.max_steps)
    raw = random_steps_per_s(env, args.random_steps, args.seed)

    expert = Expert()
    records = [play_expert(env, s, args.max_steps, 4, expert) for s in tqdm(game_seeds(args.seed, args.games), desc="expert games", unit="game")]
    expert_steps = sum(len(r.actions) for r in records)
    expert_sps = expert_steps / sum(r.seconds for r in records)

    t0 = time.perf_counter()
    for r in records:
        replay(env, r.seeds, r.actions)
    replay_sps = expert_steps / (time.perf_counter() - t0)

    costs, prefixes = [], []
    for r in records:
        if r.far_step < 0:
            continue
        t0 = time.perf_counter()
        obs, _, done = replay(env, r.seeds, r.actions[: r.far_step])
        costs.append(time.perf_counter() - t0)
        prefixes.append(r.far_step)
        assert not done and int(obs["blstats"][12]) >= 4
    env.close()
    appo, appo_wall = appo_steps_per_s(args.appo_steps) if args.appo_steps else (None, None)

    res = {
        "machine": platform.processor() or platform.machine(),
        "games": args.games,
        "raw_random_steps_per_s": raw,
        "expert_steps_per_s": expert_sps,
        "expert_vs_raw": expert_sps / raw,
        "replay_steps_per_s": replay_sps,
        "replay_vs_raw": replay_sps / raw,
        "far_start_states": len(costs),
        "far_restore_s_mean": float(np.mean(costs)) if costs else None,
        "far_restore_s_max": float(np.max(costs)) if costs else None,
        "far_prefix_steps_mean": float(np.mean(prefixes)) if prefixes else None,
        "far_prefix_steps_max": int(np.max(prefixes)) if prefixes else None,
        "far_restore_per_state": [{"prefix_steps": int(n), "restore_s": float(c)} for n, c in zip(prefixes, costs)],
        "far_restore_steps_per_s": float(np.sum(prefixes) / np.sum(costs)) if costs else None,
        "appo_env_steps_per_s": appo,
        "appo_vs_raw": appo / raw if appo else None,
        "appo_wall_s": appo_wall,
        "command": vars(args),
    }
    rows = [
        ("raw NLE, random actions", f"{raw:,.0f} steps/s", "1.00x"),
        ("scripted expert (bot + env)", f"{expert_sps:,.0f} steps/s", f"{expert_sps / raw:.3f}x"),
        ("replay of expert actions", f"{replay_sps:,.0f} steps/s", f"{replay_sps / raw:.3f}x"),
    ]
    if appo:
        rows.append(("APPO (sample-factory, serial, 2 envs)", f"{appo:,.0f} env steps/s", f"{appo / raw:.4f}x"))
    if costs:
        rows.append((f"FAR start restore ({len(costs)} states)", f"{np.mean(costs) * 1e3:,.1f} ms mean, {np.max(costs) * 1e3:,.1f} ms max",
                     f"{np.mean(prefixes):,.0f} steps mean"))
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'speed / cost':<32} vs raw")
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:<32} {c}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

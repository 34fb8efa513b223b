"""NetHack speed, measured in one run on one machine (ratios, not absolute claims).

* raw NLE steps/s with uniformly random actions (the reference; same env as everywhere else:
  full keyboard, nothing auto-answered, seeded);
* the scripted expert's steps/s (its own decision time plus the env's);
* replaying recorded actions (how fast demos re-render for BC) and the cost of restoring each
  FAR start state (seeds + action prefix up to the expert's first arrival on Dlvl 4);
* APPO env steps/s through the pipeline's own ``families.nethack.sf.run_appo`` (fresh policy, 4 envs per
  worker, batch 128, no retention term) in each sample-factory mode: serial with the per-env
  (non-batched) sampler, serial with the batched sampler (one SGD epoch per batch, the study's;
  and 16, the default profile's fine-tuning: a fresh policy trains its encoder too, so this is
  the `scratch` method's cost, the slowest), and parallel
  (``--workers`` rollout-worker processes + a learner process, asynchronous APPO: the paper
  profile's mode). The wall time includes sample-factory's start-up, so each is a lower bound on
  steady-state speed;
* evaluation env steps/s of ``nethack_eval.run_episodes`` (the evaluate stage's code path: the
  policy and π* as KL teacher, sampled actions) with ``--eval-episodes`` episodes one at a time
  (the reference) and all in lockstep with one batched forward pass per step.

    PYTHONPATH=. python benchmarks/bench_nethack.py [--games 10] [--random-steps 20000] [--appo-steps 8000] [--workers 2]
        [--eval-episodes 30 --eval-steps 200]

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

from retainrl.families.nethack.stages import game_seeds, make_env, play_expert, replay, reset_seeded
from retainrl.families.nethack.expert import Expert
from retainrl.core.log import setup_logging

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


APPO_MODES = {  # name → (workers, batched sampling, SGD epochs per batch)
    "serial, per-env sampler": (1, False, 1),
    "serial, batched sampler": (1, True, 1),
    "serial, batched sampler, 16 epochs": (1, True, 16),  # the default profile's fine-tuning
    "parallel, batched sampler": (None, True, 1),
}


def appo_steps_per_s(steps: int, workers: int) -> dict[str, dict]:
    """env steps/s of ``run_appo`` (the fine-tuning stage's code path) in each sample-factory mode."""
    import tempfile

    from retainrl.families.nethack import sf
    from retainrl.retention.methods import RetentionContext, build_retention
    from retainrl.retention.methods import RetentionParams

    out = {}
    for name, (w, batched, epochs) in APPO_MODES.items():
        w = w or workers
        with tempfile.TemporaryDirectory() as tmp:
            res = sf.run_appo(None, Path(tmp) / "run", build_retention("scratch", RetentionContext(), RetentionParams(), learner="appo", off_policy=False), env_steps=steps, num_envs=4,
                              rollout=32, batch_size=128, lr=1e-3, epochs=epochs, entropy=0.001, max_episode_steps=1000,
                              workers=w, batched_sampling=batched)
        out[name] = {"workers": w, "batched_sampling": batched, "epochs": epochs, "env_steps": res["env_steps"], "wall_s": res["wall_s"],
                     "env_steps_per_s": res["env_steps_per_s"]}
        log.info("APPO %s: %.0f env steps/s", name, res["env_steps_per_s"])
    return out


def eval_steps_per_s(episodes: int, steps: int, seed: int) -> dict[str, float]:
    """env steps/s of the evaluation: one episode at a time vs all ``episodes`` in lockstep.

    A fresh policy (sample-factory's NetHack ActorCritic, random init) plays, with a second fresh
    one as the KL teacher, exactly as ``evaluate`` plays a snapshot against π*.
    """
    import tempfile

    import gymnasium as gym
    import torch
    from sample_factory.model.actor_critic import create_actor_critic

    from retainrl.families.nethack import results as nethack_eval
    from retainrl.families.nethack import sf

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sf.sf_config(Path(tmp), "bench")
    policy, teacher = (create_actor_critic(cfg, sf.obs_space(), gym.spaces.Discrete(sf.N_ACTIONS)) for _ in range(2))
    policy.eval()
    teacher.eval()
    envs = [make_env(max_steps=10**6) for _ in range(episodes)]
    seeds = game_seeds(seed, episodes)
    out = {}
    try:
        for name, groups in (("one episode at a time", [[i] for i in range(episodes)]), (f"{episodes} episodes in lockstep", [list(range(episodes))])):
            streams = nethack_eval.episode_streams(seed, "close", episodes)
            total, t0 = 0, time.perf_counter()
            for g in tqdm(groups, desc=f"evaluation, {name}", unit="batch", mininterval=2):
                starts = [reset_seeded(envs[i], seeds[i]) for i in g]
                eps = nethack_eval.run_episodes(policy, cfg, [envs[i] for i in g], starts, steps, False, [streams[i] for i in g], teacher)
                total += sum(e["steps"] for e in eps)
            out[name] = total / (time.perf_counter() - t0)
            log.info("evaluation, %s: %.0f env steps/s", name, out[name])
    finally:
        for e in envs:
            e.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", type=int, default=10)
    ap.add_argument("--random-steps", type=int, default=20_000)
    ap.add_argument("--max-steps", type=int, default=30_000)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--appo-steps", type=int, default=8000, help="0 skips the sample-factory APPO measurement")
    ap.add_argument("--workers", type=int, default=2, help="rollout workers of the parallel-mode measurement")
    ap.add_argument("--eval-episodes", type=int, default=30, help="0 skips the evaluation measurement")
    ap.add_argument("--eval-steps", type=int, default=200, help="env steps per evaluation episode")
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
    appo_modes = appo_steps_per_s(args.appo_steps, args.workers) if args.appo_steps else {}
    appo = appo_modes.get("serial, batched sampler", {}).get("env_steps_per_s")
    evals = eval_steps_per_s(args.eval_episodes, args.eval_steps, args.seed) if args.eval_episodes else {}

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
        "appo_env_steps_per_s": appo,  # serial + batched sampler, one epoch (the study's training per batch)
        "appo_vs_raw": appo / raw if appo else None,
        "appo_modes": {k: {**v, "vs_raw": v["env_steps_per_s"] / raw} for k, v in appo_modes.items()},
        "eval_env_steps_per_s": evals,
        "eval_lockstep_vs_one_at_a_time": (evals[f"{args.eval_episodes} episodes in lockstep"] / evals["one episode at a time"]) if evals else None,
        "command": vars(args),
    }
    rows = [
        ("raw NLE, random actions", f"{raw:,.0f} steps/s", "1.00x"),
        ("scripted expert (bot + env)", f"{expert_sps:,.0f} steps/s", f"{expert_sps / raw:.3f}x"),
        ("replay of expert actions", f"{replay_sps:,.0f} steps/s", f"{replay_sps / raw:.3f}x"),
    ]
    for name, m in appo_modes.items():
        rows.append((f"APPO ({name}, {m['workers']} worker(s) x 4 envs)", f"{m['env_steps_per_s']:,.0f} env steps/s", f"{m['env_steps_per_s'] / raw:.4f}x"))
    for name, v in evals.items():
        rows.append((f"evaluation ({name}, π* as KL teacher)", f"{v:,.0f} env steps/s", f"{v / raw:.4f}x"))
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

"""RoboticSequence throughput: stacked-seed SAC in one process vs one seed per process, same run.

Why: the study trains ≥20 seeds per method; whether they should share one process with stacked
weights or run as separate processes is a speed question that only a measurement on the target
machine answers. Three numbers, all measured here, in this run:

* raw Meta-World steps/s (one push-wall env, random actions): the ceiling for env stepping;
* the batched learner: ``--models`` seeds stacked in ONE process (``--batched-threads`` torch
  threads, default 1: on a shared, loaded CPU more OpenMP threads than free cores make every
  op spin-wait; we measured 2 threads ~10x slower than 1 at load 5 on 2 cores);
* the reference: ``--models`` processes with one seed each (1 torch thread each), started
  together and kept in step with a barrier so their phases overlap exactly.

Every update rate is also given in GFLOP/s: the matmul FLOPs of one SAC update are counted
(``torch.utils.flop_counter``), which says how close the cores already are to their limit — the
ceiling on what stacking seeds can gain once separate processes are compute-bound.

Each learner does an env phase (act with the actor + step its sequence, ``--env-steps`` per
seed) and an update phase (``--updates`` SAC updates per seed, batch 128). Aggregate rates
count every seed: env steps/s = seeds·env_steps / phase wall time, updates/s likewise.

    python benchmarks/bench_robot.py                 # prints a table, appends a run to benchmarks/results/robot.json
    python benchmarks/bench_robot.py --hidden 256 64 --models 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _learner(n_models: int, hidden: int, threads: int, env_steps: int, updates: int, barrier=None) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from retainrl.learners import sac
    from retainrl.retention.methods import RetentionParams
    from retainrl.families.robot import stages as robot
    from retainrl.retention import ProtectedReplay, RetentionContext, build_retention

    p = robot.Params.model_validate({"net": {"hidden": hidden, "layers": 4}})
    gen = torch.Generator().manual_seed(0)
    agent = sac.SACAgent(robot.agent_spec(p), n_models, generator=gen)
    method = build_retention("finetune", RetentionContext(), RetentionParams(), learner="sac", off_policy=True)
    learner = sac.SACLearner(agent, sac.SACConfig(), method, gen)
    replay = ProtectedReplay(10_000, sac.replay_specs(agent.spec, n_models))
    venv = sac.VecEnv([robot.RoboticSequence(p.env, 100 + i) for i in range(n_models)])

    def wait():
        if barrier is not None:
            barrier.wait()

    wait()
    t0 = time.perf_counter()
    for _ in range(env_steps):
        with torch.no_grad():
            a = agent.sample(torch.as_tensor(venv.obs).unsqueeze(1), generator=gen)[0].squeeze(1)
        obs, nxt, rew, term, _, _ = venv.step(a.numpy())
        replay.add({"obs": torch.as_tensor(obs)[None], "act": a[None], "rew": torch.as_tensor(rew)[None],
                    "next_obs": torch.as_tensor(nxt)[None], "terminal": torch.as_tensor(term)[None]})
    env_time = time.perf_counter() - t0
    wait()
    t0 = time.perf_counter()
    for _ in range(updates):
        learner.update(sac.to_models_first(replay.sample(128, gen)))
    update_time = time.perf_counter() - t0
    wait()
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops:  # matmul FLOPs of one more update (all stacked seeds)
        learner.update(sac.to_models_first(replay.sample(128, gen)))
    return {"env_time": env_time, "update_time": update_time, "models": n_models, "np": np.__version__,
            "gflop_per_update": flops.get_total_flops() / 1e9 / n_models}


def _child(args, barrier, queue):
    queue.put(_learner(*args, barrier=barrier))


def separate_processes(n: int, hidden: int, env_steps: int, updates: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_child, args=((1, hidden, 1, env_steps, updates), barrier, queue)) for _ in range(n)]
    for pr in procs:
        pr.start()
    results = [queue.get() for _ in procs]
    for pr in procs:
        pr.join()
    ups = n * updates / max(r["update_time"] for r in results)
    return {
        "env_steps_per_s": n * env_steps / max(r["env_time"] for r in results),
        "updates_per_s": ups,
        "gflop_per_s": ups * results[0]["gflop_per_update"],
    }


def raw_metaworld(steps: int) -> float:
    import numpy as np

    from retainrl.families.robot.stages import make_task_env

    env = make_task_env("push-wall", 0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(steps):
        env.step(rng.uniform(-1, 1, 4))
        if i % 200 == 199:
            env.reset(seed=i)
    return steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=4, help="seeds per learner")
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 64])
    ap.add_argument("--env-steps", type=int, default=200)
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("--raw-steps", type=int, default=2000)
    ap.add_argument("--batched-threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "robot.json"))
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1

    rows = []
    raw = raw_metaworld(args.raw_steps)
    for hidden in args.hidden:
        r = _learner(args.models, hidden, args.batched_threads, args.env_steps, args.updates)
        batched = {"env_steps_per_s": args.models * args.env_steps / r["env_time"], "updates_per_s": args.models * args.updates / r["update_time"]}
        batched["gflop_per_s"] = batched["updates_per_s"] * r["gflop_per_update"]
        sep = separate_processes(args.models, hidden, args.env_steps, args.updates)
        rows.append({
            "hidden": hidden,
            "gflop_per_update": r["gflop_per_update"],  # one seed's SAC update, batch 128: what the cores must compute
            "batched": batched,
            "separate": sep,
            "ratio_updates": batched["updates_per_s"] / sep["updates_per_s"],
            "ratio_env_steps": batched["env_steps_per_s"] / sep["env_steps_per_s"],
        })

    print(f"\nRoboticSequence throughput — {args.models} seeds, {cores} cores, torch threads: batched {args.batched_threads}, separate 1 each; load average {os.getloadavg()[0]:.1f}")
    print(f"raw Meta-World (push-wall, random actions, 1 env): {raw:,.0f} steps/s\n")
    print(f"{'net':>8} | {'updates/s batched':>17} | {'separate':>8} | {'ratio':>5} | {'GFLOP/s batched':>15} | {'separate':>8} | "
          f"{'env steps/s batched':>19} | {'separate':>8} | {'ratio':>5}")
    for row in rows:
        b, s = row["batched"], row["separate"]
        print(f"{'4x' + str(row['hidden']):>8} | {b['updates_per_s']:17.1f} | {s['updates_per_s']:8.1f} | {row['ratio_updates']:5.2f} | "
              f"{b['gflop_per_s']:15.1f} | {s['gflop_per_s']:8.1f} | "
              f"{b['env_steps_per_s']:19.1f} | {s['env_steps_per_s']:8.1f} | {row['ratio_env_steps']:5.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = {
        "machine": {"cores": cores, "load_average_1min": os.getloadavg()[0], "platform": platform.platform(), "python": platform.python_version()},
        "settings": vars(args) | {"out": None},
        "raw_metaworld_steps_per_s": raw,
        "rows": rows,
    }
    previous = json.loads(out.read_text()) if out.exists() else {}
    runs = previous.get("runs", []) if isinstance(previous, dict) else []
    out.write_text(json.dumps({**{k: v for k, v in previous.items() if k != "runs"}, "runs": runs + [run]}, indent=2) + "\n")
    print(f"\nwrote {out} (run {len(runs) + 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

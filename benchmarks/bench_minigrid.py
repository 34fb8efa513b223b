"""MiniGrid RoomChain env steps/s: the family's numpy view against MiniGrid's own rendering.

``RoomChain.gen_obs`` renders the egocentric view from a cached numpy encoding of the grid;
MiniGrid's ``MiniGridEnv.gen_obs`` builds it with per-cell Python grids (slice, four rotations,
occlusion). Both step the same env with the same random actions in the same process, so the
ratio is what the numpy view buys (a test checks the two views are equal); nothing here is a
timed assertion. Run:

    python -m benchmarks.bench_minigrid [--steps 20000] [--out benchmarks/results/minigrid.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
from minigrid.minigrid_env import MiniGridEnv

from retainrl.families.minigrid import stages


def steps_per_second(steps: int, mine: bool, seed: int = 0) -> float:
    env = stages.make_env(stages.Params(), 0, seed)
    if not mine:  # MiniGrid's own view, for the same env class and dynamics
        env.env.gen_obs = lambda: MiniGridEnv.gen_obs(env.env)
    actions = np.random.default_rng(seed).integers(0, 4, steps)
    env.reset()
    t0 = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(int(a))
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/minigrid.json"))
    args = ap.parse_args(argv)
    theirs, mine = steps_per_second(args.steps, mine=False), steps_per_second(args.steps, mine=True)
    rec = {"what": "RoomChain env steps/s with the numpy view vs MiniGrid's gen_obs (same actions, same process)",
           "steps": args.steps, "minigrid_view_steps_per_s": round(theirs, 1), "numpy_view_steps_per_s": round(mine, 1),
           "speedup": round(mine / theirs, 2), "measured": date.today().isoformat(),
           "machine": {"platform": platform.platform(), "python": platform.python_version()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rec, indent=2) + "\n")
    print(json.dumps(rec, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What caching the frozen encoder's output saves in NetHack's APPO fine-tuning (a ratio, one run).

sample-factory recomputes ``forward_head`` (the encoder) on every minibatch of every SGD epoch.
With π*'s encoder frozen (every method but ``scratch``) the retention learner computes it once
per batch instead (``retainrl.learners.appo``). This runs the fine-tuning stage's code path
(``families.nethack.sf.run_appo``, ``finetune`` method, the default profile's APPO settings from
params.yaml: envs, rollout, batch, epochs, episode cap) from a π* with random weights, with the
cache off (the reference) and on, alternating, ``--repeats`` times each, one torch thread as
each of the stage's side-by-side seeds has. It also checks that both end on the same weights.

    python benchmarks/bench_appo_head_cache.py [--env-steps 4096] [--repeats 2]

Writes benchmarks/results/appo_head_cache.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from retainrl.core.config import load_params
from retainrl.core.log import setup_logging

log = logging.getLogger("bench_appo_head_cache")
OUT = Path(__file__).parent / "results" / "appo_head_cache.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env-steps", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    setup_logging()
    torch.set_num_threads(1)

    import gymnasium as gym
    from sample_factory.model.actor_critic import create_actor_critic

    from retainrl.families.nethack import sf
    from retainrl.families.nethack.stages import appo_settings
    from retainrl.learners.appo import RetentionLearner
    from retainrl.retention.methods import RetentionContext, RetentionParams, build_retention

    ft = load_params(only="nethack").section("nethack").finetune
    runs: dict[str, list[dict]] = {"uncached": [], "cached": []}
    final: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pistar = Path(tmp) / "pistar"
        cfg = sf.sf_config(Path(tmp), "pistar")
        torch.manual_seed(0)
        sf.save_sf_checkpoint(create_actor_critic(cfg, sf.obs_space(), gym.spaces.Discrete(sf.N_ACTIONS)), cfg, pistar, ft.lr)
        for rep in range(args.repeats):
            for name, cache in (("uncached", False), ("cached", True)):
                RetentionLearner.cache_head = cache
                run_dir = Path(tmp) / f"{name}_{rep}"
                retention = build_retention("finetune", RetentionContext(), RetentionParams(), learner="appo", off_policy=False)
                res = sf.run_appo(pistar, run_dir, retention, env_steps=args.env_steps, lr=ft.lr, epochs=ft.epochs,
                                  entropy=ft.entropy, freeze_encoder=True, seed=ft.seed, **appo_settings(ft))
                runs[name].append({"env_steps": res["env_steps"], "wall_s": res["wall_s"], "env_steps_per_s": res["env_steps_per_s"]})
                log.info("%s, repeat %d: %.1f env steps/s", name, rep, res["env_steps_per_s"])
                last = sorted((run_dir / "snapshots").glob("step_*.pth"))[-1]
                final.setdefault(name, torch.load(last, map_location="cpu")["model"])
        RetentionLearner.cache_head = True
    speed = {k: statistics.median(r["env_steps_per_s"] for r in v) for k, v in runs.items()}
    same = all(torch.equal(final["cached"][k], final["uncached"][k]) for k in final["cached"])
    res = {
        "what": "NetHack APPO fine-tuning (run_appo, finetune method, frozen π* encoder), frozen-encoder output "
                "cached per batch vs recomputed per SGD epoch; env steps/s include sample-factory start-up",
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "settings": {"epochs": ft.epochs, "num_envs": ft.num_envs, "rollout": ft.rollout, "batch_size": ft.batch_size,
                     "max_episode_steps": ft.max_episode_steps, "torch_threads": 1, "env_steps": args.env_steps},
        "runs": runs,
        "env_steps_per_s_median": speed,
        "cached_vs_uncached": speed["cached"] / speed["uncached"],
        "same_final_weights": same,
        "command": f"python benchmarks/bench_appo_head_cache.py --env-steps {args.env_steps} --repeats {args.repeats}",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    log.info("cached / uncached env steps/s: %.2fx (same final weights: %s) -> %s", res["cached_vs_uncached"], same, OUT)


if __name__ == "__main__":
    main()

"""BC scaling probe (issue #19): how strong a π* do more demo games and more BC updates buy?

π* is behavioural cloning of the scripted expert. This probe clones it from ``--games`` demo games
(the same seeded games as the pipeline's: ``game_seeds(demos.seed, n)`` is prefix-stable, so 25
games are the first 25 of 50) with ``--steps`` BC updates each (the default's batch, unroll and
lr), and scores every π* on exactly the default evaluation protocol: the same CLOSE games and
held-out FAR starts (``nethack_eval_starts``), ``finetune.seeds`` sampling seeds, with π*/expert
paired by episode (``results.expert_on_protocol``). The critic warm-up is skipped: it does not
change the actor that is scored. Writes ``experiments/results/nethack_bc_scaling.json``.

    dvc repro nethack_eval_starts
    python experiments/nethack_bc_scaling.py --games 25 50 100 --steps 600 1200   # ≈ 20 min of BC on 2 cores
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("nethack_bc_scaling")


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from retainrl.core.config import load_params
    from retainrl.core.artifacts import save_json
    from retainrl.core.log import setup_logging
    from retainrl.core.paths import Paths
    from retainrl.families.nethack import sf
    from retainrl.families.nethack.heldout import load_expert, starts_dir
    from retainrl.families.nethack.results import PARTS, expert_on_protocol, play_all
    from retainrl.families.nethack.stages import collect_demos, load_demos

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--games", type=int, nargs="+", default=[25, 50, 100])
    ap.add_argument("--steps", type=int, nargs="+", default=[600, 1200])
    ap.add_argument("--episodes", type=int, default=None, help="evaluation episodes per part (default: evaluate.episodes)")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments/results/nethack_bc_scaling.json")
    args = ap.parse_args(argv)
    setup_logging()
    base = load_params(str(ROOT / "params.yaml"), only="nethack").section("nethack")
    if args.episodes:
        base = base.model_copy(update={"evaluate": base.evaluate.model_copy(update={"episodes": args.episodes})})
    repo = Paths("nethack", root=ROOT)
    expert = load_expert(starts_dir(repo))
    rows_out = []
    with tempfile.TemporaryDirectory(prefix="nh_bc_scaling_") as tmp:
        tmp = Path(tmp)
        for games in args.games:
            p = base.model_copy(update={"demos": base.demos.model_copy(update={"games": games})})
            paths = Paths("nethack", root=tmp / f"games{games}")
            paths.demos.parent.mkdir(parents=True, exist_ok=True)
            (paths.demos.parent / "eval_starts").symlink_to(starts_dir(repo).resolve())  # the pipeline's held-out starts
            t0 = time.perf_counter()
            demo_summary = collect_demos(p, paths)
            collect_s = time.perf_counter() - t0
            demos = load_demos(paths.demos)
            for steps in args.steps:
                pp = p.pretrain
                cfg = sf.sf_config(paths.pretrained.parent, paths.pretrained.name)
                t0 = time.perf_counter()
                ac, metrics = sf.behavioural_cloning(demos, cfg, steps=steps, batch=pp.batch, unroll_len=pp.unroll, lr=pp.lr,
                                                     seed=pp.seed, character=p.env.character)
                bc_s = time.perf_counter() - t0
                if paths.pretrained.exists():
                    shutil.rmtree(paths.pretrained)
                paths.pretrained.mkdir(parents=True)
                sf.save_sf_checkpoint(ac, cfg, paths.pretrained, cfg.learning_rate)
                t0 = time.perf_counter()
                jobs = [(None, k) for k in range(p.finetune.seeds)]
                rows = []
                for (_, k), res in zip(jobs, play_all(p, paths, jobs)):
                    for part in PARTS:
                        rows += [{"policy": "pretrained", "seed": k, "step": 0, "part": part, "episode": e, **r}
                                 for e, r in enumerate(res[part])]
                eval_s = time.perf_counter() - t0
                ex = expert_on_protocol(expert, rows)
                row = {"games": games, "bc_steps": steps, "demo_steps": int(len(demos["actions"])),
                       "bc_acc_last20": float(np.mean(metrics["bc_acc"][-20:])), "bc_loss_last20": float(np.mean(metrics["bc_loss"][-20:])),
                       "close_score": ex["close"]["pi_star_score_gain"], "far_score_gain": ex["far"]["pi_star_score_gain"],
                       "close_over_expert": ex["close"]["pi_star_over_expert"], "far_over_expert": ex["far"]["pi_star_over_expert"],
                       "seconds": {"collect": collect_s, "bc": bc_s, "evaluate": eval_s}, "expert_demos": demo_summary}
                rows_out.append(row)
                log.info("games %d, BC %d: accuracy %.3f, CLOSE %.1f, FAR %.1f (%.0f s of BC)", games, steps, row["bc_acc_last20"],
                         row["close_score"], row["far_score_gain"], bc_s)
    out = {"protocol": {"episodes": base.evaluate.episodes, "max_steps": base.evaluate.max_steps, "sampling_seeds": base.finetune.seeds,
                        "far_starts": expert["summary"]["starts"]},
           "expert": {part: float(np.mean([e["score_gain"] for e in expert[part]])) for part in PARTS},
           "runs": rows_out}
    save_json(args.out, out)  # atomic
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

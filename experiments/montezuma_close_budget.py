"""Montezuma CLOSE-budget probe (issue #18): does PPO+RND learn the default's CLOSE room with more updates?

The default DAG fine-tunes for ``finetune.updates: 16`` (8192 agent steps per seed) from the entry
of the one CLOSE room (``route.close_rooms: 1``, room 14), and no method learns it: CLOSE success
stays 0 and no training episode earns a reward. This probe reruns the DAG's own ``finetune`` stage
code for one method with ``--updates`` updates each, from the DAG's π*, FAR buffer and Fisher
(``dvc repro montezuma_fisher`` first), and records per run the CLOSE and boundary-room success at
each evaluation, the final training return and the rooms seen. Writes
``experiments/results/montezuma_close_budget.json``.

    dvc repro montezuma_fisher
    python experiments/montezuma_close_budget.py --method finetune --updates 64 --seeds 2
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("montezuma_close_budget")


def main(argv: list[str] | None = None) -> int:
    from retainrl.core.artifacts import load_json, save_json
    from retainrl.core.config import load_params
    from retainrl.core.log import setup_logging
    from retainrl.core.paths import Paths
    from retainrl.families.montezuma import stages
    from retainrl.pipeline import generic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="finetune")
    ap.add_argument("--updates", type=int, nargs="+", default=[64])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "experiments/results/montezuma_close_budget.json")
    args = ap.parse_args(argv)
    setup_logging()
    base = load_params(str(ROOT / "params.yaml"), only="montezuma").section("montezuma")
    repo = Paths("montezuma", root=ROOT)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mz_close_budget_") as tmp:
        for updates in args.updates:
            ft = base.finetune.model_copy(update={"updates": updates, "seeds": args.seeds, "eval_every": args.eval_every})
            p = base.model_copy(update={"finetune": ft})
            paths = Paths("montezuma", root=Path(tmp) / f"updates{updates}")
            for name in ("demos", "pretrained", "far_buffer", "fisher"):  # the DAG's own inputs
                link = getattr(paths, name)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(getattr(repo, name).resolve())
            t0 = time.perf_counter()
            generic.stage(stages, "finetune")(p, paths, None, args.method)
            out = paths.finetune(args.method)
            seconds = time.perf_counter() - t0
            for run in load_json(out / "curves.json", "probe curves")["runs"]:
                rows.append({
                    "method": args.method, "updates": updates, "agent_steps": updates * ft.envs * ft.steps, "seed": run["seed"],
                    "eval_update": [e["update"] for e in run["eval"]],
                    "close_success": [e["close_success"] for e in run["eval"]],
                    "boundary_success": [e["boundary_success"] for e in run["eval"]],
                    "episode_return_final": run["episode_return"][-1], "rooms_seen": run["rooms_seen"],
                    "seconds_per_seed": seconds / args.seeds,
                })
                log.info("updates %d seed %d: CLOSE %s, room %s %s, return %.1f, rooms %s", updates, run["seed"],
                         rows[-1]["close_success"], "boundary", rows[-1]["boundary_success"], rows[-1]["episode_return_final"],
                         run["rooms_seen"])
    save_json(args.out, {"close_rooms": base.route.close_rooms, "eval_episodes": base.finetune.eval_episodes,
                         "eval_close_episodes": base.finetune.eval_close_episodes, "runs": rows})
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

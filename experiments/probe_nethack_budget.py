"""Probe: does a larger fine-tuning budget separate NetHack's methods (KS vs finetune vs π*)?

With one SGD epoch per batch, 30k APPO env steps per run did not separate any method from π*;
the default profile now trains each batch 16 times (see the README). This probe reruns chosen
methods with ``--env-steps`` per run (``--epochs``, ``--lr``) from the pipeline's own π*, FAR
buffer and Fisher (``dvc repro nethack_fisher nethack_eval_starts`` first), evaluates the final policies on
exactly the default profile's CLOSE games and held-out FAR start states (same sampling seed, so every
comparison is paired), and writes the paired bootstrap comparisons (``retainrl.pipeline.stats``) to
``experiments/results/nethack_budget_probe.json``. Methods run in parallel processes
(``--jobs``), each single-threaded, in a temporary directory. ``--set KEY=VALUE`` changes any
other ``nethack.*`` knob for the probe alone (dotted key, YAML value, re-validated), e.g. KS's
decay or ``finetune.processes`` (seeds of one method side by side).

    python experiments/probe_nethack_budget.py --env-steps 150000 --seeds 2 --methods finetune ks --jobs 2
    python experiments/probe_nethack_budget.py --env-steps 60000 --seeds 3 --lr 5e-3 --out experiments/results/nethack_lr_probe.json
    python experiments/probe_nethack_budget.py --env-steps 30000 --seeds 6 --methods finetune ks --epochs 16 --out experiments/results/nethack_seeds6_probe.json
    python experiments/probe_nethack_budget.py --env-steps 30000 --seeds 3 --methods ks --jobs 1 --set retention.ks.decay=0.99936 --set finetune.processes=2
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("probe_nethack_budget")


def _params(args):
    from retainrl.core.config import load_params

    p = load_params(str(ROOT / "params.yaml"), only="nethack").section("nethack")
    ft = p.finetune.model_copy(update={"env_steps": args.env_steps, "seeds": args.seeds, "snapshots": 1, "methods": args.methods,
                                       "lr": args.lr or p.finetune.lr, "epochs": args.epochs or p.finetune.epochs,
                                       "processes": 1})  # the probe already runs its methods side by side
    ev = p.evaluate.model_copy(update={"episodes": args.eval_episodes or p.evaluate.episodes})
    p = p.model_copy(update={"finetune": ft, "evaluate": ev})
    return _override(p, args.set) if args.set else p  # last, so --set finetune.processes=2 wins


def _override(p, assignments: list[str]):
    """``p`` (the nethack section) with ``KEY=VALUE`` assignments (dotted keys, YAML values) applied;
    re-validated by the config's own validator, so a typo or a bad value names ``nethack.<key>``."""
    import yaml

    from retainrl.core.config import ConfigError, _validate

    raw = p.model_dump()
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. retention.ks.decay=0.9995")
        node, parts = raw, key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: nethack.{'.'.join(parts[:i + 1])} is not a section")
        node[parts[-1]] = yaml.safe_load(value)
    return _validate(type(p), raw, "nethack")


def _paths(tmp: Path):
    from retainrl.core.paths import Paths

    for rel in ("data/nethack/demos", "data/nethack/eval_starts", "data/nethack/far_buffer", "data/nethack/fisher",
                "models/nethack/pretrained"):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).symlink_to(ROOT / rel)
    return Paths("nethack", root=tmp)


def _finetune(args, tmp: str, method: str) -> dict:
    import torch

    from retainrl.core.paths import Paths
    from retainrl.families.nethack import stages as nhf
    from retainrl.pipeline import generic

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    paths = Paths("nethack", root=Path(tmp))
    generic.stage(nhf, "finetune")(_params(args), paths, None, method)
    runs = [json.loads((d / "retention.json").read_text()) for d in sorted(Path(paths.finetune(method)).glob("seed_*"))]
    return {"method": method, "seconds": time.perf_counter() - t0,
            "env_steps_per_s": [r["env_steps_per_s"] for r in runs],
            "train_score_by_fifth": [train_curve(d / "train_episodes.json") for d in sorted(Path(paths.finetune(method)).glob("seed_*"))]}


def train_curve(path: Path, parts: int = 5) -> list[float]:
    """Mean score of the training episodes in each of ``parts`` consecutive slices of the run:
    whether APPO improved the policy on the games it trained on (episodes end at
    ``finetune.max_episode_steps``)."""
    import numpy as np

    scores = np.array([e["score"] for e in json.loads(path.read_text())], float)
    return [round(float(c.mean()), 2) if len(c) else float("nan") for c in np.array_split(scores, parts)]


def main() -> None:
    import torch

    from retainrl.families.nethack import results as nethack_eval
    from retainrl.core.log import setup_logging
    from retainrl.pipeline.stats import verdict

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env-steps", type=int, default=150_000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["finetune", "ks"])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--eval-episodes", type=int, default=None, help="default: the profile's (a smaller number is for a quick check)")
    ap.add_argument("--lr", type=float, default=None, help="APPO learning rate; default: the profile's finetune.lr")
    ap.add_argument("--epochs", type=int, default=None, help="SGD passes over each APPO batch; default: the profile's finetune.epochs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a nethack.* knob for this probe (dotted key, YAML value; repeatable), e.g. retention.ks.decay=0.9995")
    ap.add_argument("--out", default="experiments/results/nethack_budget_probe.json", help="result file (relative to the repository)")
    args = ap.parse_args()
    setup_logging()
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nethack-budget-") as d:
        tmp = Path(d)
        paths = _paths(tmp)
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(_finetune, [args] * len(args.methods), [d] * len(args.methods), args.methods))
        summary = nethack_eval.evaluate(_params(args), paths)
    result = {
        "env_steps": args.env_steps, "seeds": args.seeds, "methods": args.methods, "lr": _params(args).finetune.lr,
        "epochs": _params(args).finetune.epochs, "set": args.set, "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
        "final": {m: {k: summary["methods"][m][k]["mean"] for k in ("close_score_gain", "far_score_gain", "close_kl_pi_star", "far_kl_pi_star")}
                  for m in args.methods},
        "pretrained": {k: summary["pretrained"][k]["mean"] for k in ("close_score_gain", "far_score_gain")},
        "comparisons": [{**c, "verdict": verdict(c)} for c in summary["comparisons"]],
    }
    for c in result["comparisons"]:
        log.info("%s %s %s vs %s: %+.3f [%+.3f, %+.3f] %s", c["part"], c["metric"], c["a"], c["b"], c["diff"], c["ci_low"], c["ci_high"], c["verdict"])
    from retainrl.core.artifacts import save_json

    dest = ROOT / args.out
    save_json(dest, result)  # atomic
    log.info("wrote %s (%.0f s)", dest, result["seconds"])


if __name__ == "__main__":
    main()

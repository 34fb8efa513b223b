"""Is a killed-and-resumed NetHack fine-tuning run the run it would have been? (issue #21)

Compares two outputs of one ``nethack_finetune@<method>`` stage, typically the uninterrupted run
and a run that was SIGKILLed mid-way and resumed from its ``.checkpoints/`` state:

* byte for byte: the md5 of every file of each seed's final policy snapshot;
* on the evaluation protocol: the final snapshot of every seed of both runs plays exactly the
  ``nethack_evaluate`` episodes (the same CLOSE games, the same held-out FAR starts, the same
  sampling streams for seed k), so the difference is paired episode by episode. Reported per
  seed and pooled over seeds with the paired bootstrap of ``retainrl.pipeline.stats``; the
  seed-to-seed spread of the uninterrupted run is printed beside it as the scale a difference
  would have to reach to matter.

Needs the pipeline's π* and held-out starts (``dvc repro nethack_eval_starts``). Writes
``experiments/results/nethack_resume_check.json``.

    python experiments/nethack_resume_check.py --method ks --a /tmp/ks_uninterrupted --b models/nethack/finetune/ks
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("nethack_resume_check")


def final_snapshots(run: Path) -> list[tuple[str, str]]:
    """(experiment dir, final snapshot file) per seed of one finetune output, in seed order."""
    seeds = sorted(run.glob("seed_*"), key=lambda d: int(d.name.split("_")[1]))
    if not seeds:
        raise SystemExit(f"{run}: no seed_<k> runs (a nethack_finetune output?)")
    return [(str(d), str(max((d / "snapshots").glob("step_*.pth"), key=lambda f: int(f.stem.split("_")[1])))) for d in seeds]


def md5(path: str) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    from retainrl.core.config import load_params
    from retainrl.core.artifacts import save_json
    from retainrl.core.log import setup_logging
    from retainrl.core.paths import Paths
    from retainrl.families.nethack.results import PARTS, play_all
    from retainrl.pipeline.stats import paired_difference

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--a", type=Path, required=True, help="the reference run (uninterrupted)")
    ap.add_argument("--b", type=Path, required=True, help="the run to check (killed and resumed)")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments/results/nethack_resume_check.json")
    ap.add_argument("--note", default="", help="how run b was interrupted (kept in the result file)")
    args = ap.parse_args(argv)
    setup_logging()
    p = load_params(str(ROOT / "params.yaml"), only="nethack").section("nethack")
    paths = Paths("nethack", root=ROOT)
    a, b = final_snapshots(args.a), final_snapshots(args.b)
    if len(a) != len(b):
        raise SystemExit(f"{len(a)} seeds in {args.a}, {len(b)} in {args.b}")
    jobs = [(snap, k) for k, snap in enumerate(a)] + [(snap, k) for k, snap in enumerate(b)]
    played = list(play_all(p, paths, jobs))
    ra, rb = played[: len(a)], played[len(a):]
    out = {"method": args.method, "a": str(args.a), "b": str(args.b), "note": args.note, "episodes": p.evaluate.episodes,
           "seeds": [], "pooled": {}}
    for k, ((_, fa), (_, fb)) in enumerate(zip(a, b)):
        row = {"seed": k, "snapshot": Path(fa).name, "identical_weights": md5(fa) == md5(fb)}
        for part in PARTS:
            x = np.array([[e["score_gain"] for e in ra[k][part]]])
            y = np.array([[e["score_gain"] for e in rb[k][part]]])
            row[part] = {"a": float(x.mean()), "b": float(y.mean()), "b_minus_a": paired_difference(y, x, seed=k)}
        out["seeds"].append(row)
        log.info("seed %d: identical weights %s; CLOSE %.1f vs %.1f, FAR %.1f vs %.1f", k, row["identical_weights"],
                 row["close"]["a"], row["close"]["b"], row["far"]["a"], row["far"]["b"])
    for part in PARTS:
        x = np.array([[e["score_gain"] for e in r[part]] for r in ra])
        y = np.array([[e["score_gain"] for e in r[part]] for r in rb])
        out["pooled"][part] = {"a_seed_means": x.mean(axis=1).tolist(), "b_seed_means": y.mean(axis=1).tolist(),
                               "a_seed_std": float(x.mean(axis=1).std()), "b_minus_a": paired_difference(y, x)}
    save_json(args.out, out)  # atomic
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sweep: retention coefficients that let NetHack's policy move on CLOSE and still keep FAR (issue #19.3),
and the control for the 16-epoch setting: vanilla fine-tuning with FAR in its training distribution (#19.4).

Why: the study's coefficients (L2 1.0, EWC 2e6) on a ~1.6M-parameter APPO net freeze π*: their
final KL(π*‖π) on CLOSE is ~0.006 and ~0 against KS's ~0.04, so "L2 beats FT" reads "π* beats FT".
And every single-epoch probe had vanilla FT at or above π*, so the default's drop on CLOSE may be
damage from 16 SGD epochs per batch rather than forgetting. This sweep answers both on exactly the
``nethack_evaluate`` protocol (the same CLOSE games, the same held-out FAR starts, the same sampling
stream per episode and seed k), so every comparison is paired episode by episode.

Each ``--variant`` is ``METHOD`` or ``METHOD:KEY=VALUE[,KEY=VALUE...]`` (``nethack.*`` knobs, dotted,
YAML values, re-validated), e.g. ``l2:retention.l2.coef=0.1`` or ``finetune:finetune.far_share=0.25``.
Every variant trains ``--seeds`` APPO runs from the pipeline's own π*, FAR buffer and Fisher (seeds
``finetune.seed + k``, as the DAG's), side by side in ``--jobs`` single-threaded processes, in a
temporary directory. ``--reference`` adds the DAG's own runs of those methods (its
``models/nethack/finetune/<m>/seed_<k>`` final snapshots, k < seeds) at no training cost: the
current defaults, on the same episodes.

Reported per policy: CLOSE score, FAR score gained and KL(π*‖π) on both (mean over seeds, and per
seed); paired differences (``retainrl.pipeline.stats``) of every policy against π* (score) and
against the reference ``finetune`` (score and KL), FAR clustered by start state, all Holm-corrected
together. Needs ``dvc repro nethack_fisher nethack_eval_starts nethack_finetune@finetune`` (and
@ks for ``--reference ks``). Writes ``experiments/results/nethack_retention_sweep.json``.

    python experiments/nethack_retention_sweep.py --seeds 2 --reference finetune ks \\
        --variant l2:retention.l2.coef=0.3 --variant l2:retention.l2.coef=0.1 \\
        --variant ewc:retention.ewc.coef=1e4 --variant finetune:finetune.far_share=0.25
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python experiments/<this>.py` from the root, as the docs run it, finds its sibling
from experiments.probe_nethack_budget import _override, train_curve  # noqa: E402
log = logging.getLogger("nethack_retention_sweep")
PI_STAR, BASE = "pretrained", "finetune"  # π*'s label in the rows; the reference every variant is compared with


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``METHOD[:K=V,K=V]`` → (method, ["K=V", ...])."""
    method, _, sets = spec.partition(":")
    return method, [s for s in sets.split(",") if s]


def variant_params(spec: str, seeds: int):
    """The nethack section for one variant: the default profile's, its overrides, ``seeds`` runs,
    one snapshot (the final policy), one process per run (the sweep runs its runs side by side)."""
    from retainrl.core.config import load_params

    method, sets = parse_variant(spec)
    p = load_params(str(ROOT / "params.yaml"), only="nethack").section("nethack")
    p = _override(p, sets) if sets else p
    ft = p.finetune.model_copy(update={"seeds": seeds, "snapshots": 1, "methods": [method], "processes": 1})
    return method, p.model_copy(update={"finetune": ft})


def train(job: tuple[str, int, int, int, str]) -> dict:
    """One APPO run (variant ``spec``, seed k) into ``tmp/<index>/seed_<k>``, one thread."""
    from retainrl.core.paths import Paths
    from retainrl.families.nethack.stages import finetune_seed

    spec, index, k, seeds, tmp = job
    method, p = variant_params(spec, seeds)
    run_dir = Path(tmp) / str(index) / f"seed_{k}"
    t0 = time.perf_counter()
    res = finetune_seed(p, Paths("nethack", root=ROOT), None, method, k, run_dir, threads=1)
    return {"variant": spec, "seed": k, "run_dir": str(run_dir), "seconds": round(time.perf_counter() - t0, 1),
            "env_steps_per_s": res.get("env_steps_per_s"), "coef": res.get("coef"),
            "train_score_by_fifth": train_curve(run_dir / "train_episodes.json")}


def final_snapshot(run_dir: Path) -> tuple[str, str]:
    snaps = sorted((run_dir / "snapshots").glob("step_*.pth"), key=lambda f: int(f.stem.split("_")[1]))
    if not snaps:
        raise SystemExit(f"{run_dir}: no policy snapshots")
    return str(run_dir), str(snaps[-1])


def episodes(rows: list[dict], policy: str, part: str, key: str) -> np.ndarray:
    """(seeds, episodes) of ``key`` for one policy on one part, seeds in order."""
    seeds = sorted({r["seed"] for r in rows if r["policy"] == policy})
    return np.asarray([[r[key] for r in sorted((r for r in rows if r["policy"] == policy and r["seed"] == k and r["part"] == part),
                                                key=lambda r: r["episode"])] for k in seeds], float)


def comparisons(rows: list[dict], policies: list[str], bases: tuple[str, ...] = (BASE,)) -> list[dict]:
    """Every policy against π* (score) and against each of ``bases`` (score, KL; default the
    reference finetune), CLOSE and FAR (each FAR episode is its own held-out start: one start = one
    cluster).

    Holm-corrected per question: the control's comparisons (variants that set
    ``finetune.far_share``) form one family; those against π* and the first base (the coefficient
    sweep and the references) another; those against each further base (``vs <base>``) their own.
    Each comparison carries ``question``."""
    from retainrl.pipeline.stats import holm, paired_difference

    plan = [("score_gain", a, PI_STAR) for a in policies]
    plan += [(key, a, b) for b in bases if b in policies for a in policies if a != b for key in ("score_gain", "kl_pi_star")]

    def question(a: str, b: str) -> str:
        return "control" if "finetune.far_share" in a else "sweep" if b in (PI_STAR, bases[0]) else f"vs {b}"

    out = [{"part": part, "metric": key, "a": a, "b": b, "question": question(a, b),
            **paired_difference(episodes(rows, a, part, key), episodes(rows, b, part, key))}
           for part in ("close", "far") for key, a, b in plan]
    order = ["sweep", *(f"vs {b}" for b in bases[1:]), "control"]
    return [c for q in order for c in holm([c for c in out if c["question"] == q])]


def main() -> None:
    import torch

    from retainrl.core.artifacts import save_json
    from retainrl.core.log import setup_logging
    from retainrl.core.paths import Paths
    from retainrl.families.nethack.results import play_all
    from retainrl.pipeline.evaluation import spread
    from retainrl.pipeline.stats import verdict

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", action="append", default=[], metavar="METHOD[:KEY=VALUE,...]")
    ap.add_argument("--reference", nargs="*", default=[BASE], help="the DAG's own runs of these methods, on the same episodes")
    ap.add_argument("--base", nargs="+", default=[BASE], help="the policies every other is compared with besides π* "
                    "(references or variants, e.g. 'finetune:finetune.env_steps=20000' to compare variants at a smaller budget)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--eval-episodes", type=int, default=None, help="default: the profile's (fewer is for a quick check of the script)")
    ap.add_argument("--eval-max-steps", type=int, default=None,
                    help="default: the profile's evaluate.max_steps (fewer: what a shorter evaluation would show)")
    ap.add_argument("--out", default="experiments/results/nethack_retention_sweep.json")
    args = ap.parse_args()
    setup_logging()
    torch.set_num_threads(1)
    started = time.perf_counter()
    _, base = variant_params(BASE, args.seeds)  # the evaluation protocol: the default profile's
    ev = {k: v for k, v in (("episodes", args.eval_episodes), ("max_steps", args.eval_max_steps)) if v}
    if ev:
        base = base.model_copy(update={"evaluate": base.evaluate.model_copy(update=ev)})
    paths = Paths("nethack", root=ROOT)
    if len(set(args.variant) | set(args.reference)) < len(args.variant) + len(args.reference):
        raise SystemExit("a --variant repeats another or a --reference (a reference is the DAG's run: give a variant its overrides)")
    if missing := [b for b in args.base if b not in set(args.variant) | set(args.reference)]:
        raise SystemExit(f"--base {missing} is neither a --variant nor a --reference")
    with tempfile.TemporaryDirectory(prefix="nethack-sweep-") as tmp:
        jobs = [(spec, i, k, args.seeds, tmp) for i, spec in enumerate(args.variant) for k in range(args.seeds)]
        with ProcessPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(train, jobs))
        policies = {PI_STAR: [None] * args.seeds}
        for m in args.reference:
            policies[m] = [final_snapshot(paths.finetune(m) / f"seed_{k}") for k in range(args.seeds)]
        for i, spec in enumerate(args.variant):
            policies[spec] = [final_snapshot(Path(tmp) / str(i) / f"seed_{k}") for k in range(args.seeds)]
        play = [(name, k, snap) for name, snaps in policies.items() for k, snap in enumerate(snaps)]
        trained = time.perf_counter()
        rows = []
        for (name, k, _), res in zip(play, play_all(base, paths, [(snap, k) for _, k, snap in play])):
            for part, eps in res.items():
                rows += [{"policy": name, "seed": k, "part": part, "episode": e, **r} for e, r in enumerate(eps)]
            log.info("%s seed %d: CLOSE %.1f, FAR gain %.1f", name, k, *(np.mean([r["score_gain"] for r in res[p]]) for p in ("close", "far")))
        played = time.perf_counter()
    names = list(policies)
    summary = {name: {f"{part}_{key}": spread(episodes(rows, name, part, key).mean(axis=1).tolist())
                      for part in ("close", "far") for key in ("score_gain", "kl_pi_star")} for name in names}
    cmps = [{**c, "verdict": verdict(c)} for c in comparisons(rows, [n for n in names if n != PI_STAR], tuple(args.base))]
    from retainrl.families.nethack.probes import pi_star_md5 as fingerprint

    pi_star_md5 = fingerprint(paths.pretrained)  # which π* every run started from and was scored against
    result = {"seeds": args.seeds, "variants": args.variant, "reference": args.reference, "base": args.base, "pi_star_md5": pi_star_md5,
              "protocol": {"episodes": base.evaluate.episodes, "max_steps": base.evaluate.max_steps, "seed": base.evaluate.seed,
                           "env_steps": base.finetune.env_steps, "epochs": base.finetune.epochs},
              "seconds": round(time.perf_counter() - started, 1), "train_seconds": round(trained - started, 1),
              "eval_seconds": round(played - trained, 1), "eval_jobs": len(play), "jobs": args.jobs, "runs": runs, "policies": summary, "comparisons": cmps}
    for c in cmps:
        log.info("%s %s %s vs %s: %+.3f [%+.3f, %+.3f] %s", c["part"], c["metric"], c["a"], c["b"], c["diff"], c["ci_low"], c["ci_high"], c["verdict"])
    save_json(ROOT / args.out, result)
    log.info("wrote %s (%.0f s)", args.out, result["seconds"])


if __name__ == "__main__":
    main()

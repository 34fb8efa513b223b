"""MiniGrid RoomChain result stages: ``evaluate`` and ``report``.

``evaluate`` reduces the fine-tuning curves to the shared study metrics and adds what tells
retention from freezing and forgetting from noise:

* a ``frozen`` row: π* itself scored on every checkpoint's evaluation episodes (same layouts,
  same sampling stream as every method at that checkpoint), so its "forgetting" is the
  estimator's noise floor on this schedule;
* KL(π* ‖ π) of each final policy on held-out CLOSE states (the expert's CLOSE segments, which
  π* was never cloned on) and on FAR states (the FAR buffer): retention that lets the policy
  move on CLOSE and keeps FAR shows a large CLOSE KL and a small FAR KL;
* paired comparisons of the final policies on one common set of held-out episodes (every seed
  of every method plays the same layouts): each method minus ``finetune`` and minus ``scratch``
  on full-task success, with a bootstrap over episodes and seeds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from retainrl.families.minigrid.stages import Params, eval_tag, load_pretrained, new_policy, score
from retainrl.pipeline import far_buffer

log = logging.getLogger(__name__)

#: the evaluation stream of the final policies' paired comparison (no checkpoint uses this tag)
FINAL_TAG = eval_tag(10**6 + 1, 0)


def _curves(p: Params, paths) -> dict[str, dict]:
    from retainrl.core.artifacts import load_json

    out = {}
    for method in p.finetune.methods:
        runs = load_json(Path(paths.finetune(method)) / "curves.json", f"MiniGrid curves of {method} (finetune stage)")["runs"]
        ev = lambda key: np.asarray([[e[key] for e in r["eval"]] for r in runs], dtype=float)  # noqa: E731
        out[method] = {"update": np.asarray([e["update"] for e in runs[0]["eval"]]),
                       "step": np.asarray([e["frames"] for e in runs[0]["eval"]], dtype=float),
                       "far": ev("far"), "close": ev("close"), "full": ev("full"), "seeds": [r["seed"] for r in runs],
                       "episode_return": np.asarray([r["episode_return"] for r in runs], dtype=float),
                       "train_step": np.asarray(runs[0]["frames"], dtype=float)}
    return out


def _frozen(p: Params, paths, seeds: list[int], updates: np.ndarray, device) -> dict[str, np.ndarray]:
    """π* on each checkpoint's evaluation episodes: (seeds, checkpoints) per score."""
    model = load_pretrained(p, paths, device)
    rows = {k: np.zeros((len(seeds), len(updates))) for k in ("far", "close", "full")}
    for i, seed in enumerate(seeds):
        for j, u in enumerate(updates):
            s = score(model, p, eval_tag(seed, int(u)), p.finetune.eval_episodes, device)
            for k in rows:
                rows[k][i, j] = s[k].mean()
    return rows


def _final_policies(p: Params, paths, method: str, seeds: list[int]) -> list:
    from safetensors.torch import load_file

    out = []
    for seed in seeds:
        m = new_policy(p)
        m.load_state_dict(load_file(str(Path(paths.finetune(method)) / f"policy_seed{seed}.safetensors")))
        out.append(m.eval())
    return out


def _kl(pretrained, policies: list, obs: torch.Tensor) -> np.ndarray:
    from retainrl.retention.dists import kl

    with torch.no_grad():
        ref = pretrained.dist_params(obs)
        return np.asarray([float(kl("categorical", ref, m.dist_params(obs)).mean()) for m in policies])


def evaluate(p: Params, paths, device=None) -> Path:
    """Stage ``evaluate``: the study metrics with the frozen row, CLOSE/FAR KL to π* and the paired
    final comparisons; writes summary.json, metrics.json, the plot files and curves.npz."""
    from retainrl.core.artifacts import load_json, load_npz, save_json, save_npz
    from retainrl.pipeline.evaluation import scalar_metrics, spread
    from retainrl.pipeline.stats import holm, paired_difference, verdict
    from retainrl.pipeline.study import Curves, curve_rows, forgetting, frozen_row, study_metrics
    from retainrl.retention.methods import REGISTRY

    cfg = p.finetune
    pi_star = load_json(Path(paths.pretrained) / "scores.json", "MiniGrid π* scores (pretrain stage)")
    curves = _curves(p, paths)
    first = next(iter(curves.values()))
    seeds, updates = first["seeds"], first["update"]
    frozen = _frozen(p, paths, seeds, updates, device)

    study_curves = {m: Curves(step=c["step"], close=c["close"], far=c["far"], full=c["full"]) for m, c in curves.items()}
    frozen_curves = Curves(step=first["step"], close=frozen["close"], far=frozen["far"], full=frozen["full"])
    study = study_metrics(study_curves, bounded=True, floor=frozen_curves)
    floor = forgetting(frozen["far"])
    study_frozen = frozen_row(frozen_curves)

    demos = load_npz(Path(paths.demos) / "demos.npz", "MiniGrid demos (collect_demos stage)", required=("obs", "rooms"))
    close_obs = torch.as_tensor(demos["obs"][demos["rooms"] < p.env.close_rooms])
    far_obs = torch.as_tensor(far_buffer.load(paths)["obs"])
    pretrained = load_pretrained(p, paths, "cpu")

    outcomes, methods = {}, {}
    for m in cfg.methods:
        policies = _final_policies(p, paths, m, seeds)
        outcomes[m] = np.stack([score(pol, p, FINAL_TAG, cfg.eval_episodes, device)["full"] for pol in policies])
        methods[m] = {"kl_close": spread(_kl(pretrained, policies, close_obs)), "kl_far": spread(_kl(pretrained, policies, far_obs)),
                      "far": {"start": spread(curves[m]["far"][:, 0]), "min": spread(curves[m]["far"].min(1)),
                              "final": spread(curves[m]["far"][:, -1])},
                      "forgetting_minus_floor": spread(curves[m]["far"][:, 0] - curves[m]["far"].min(1) - floor)}
    # every retaining method against each non-retaining reference (vanilla fine-tuning, scratch), and
    # fine-tuning against scratch: the study's "fine-tuning uses π*" question
    comparisons = {}
    references = [m for m in cfg.methods if not REGISTRY[m].retains]
    for ref in references:
        for m in cfg.methods:
            if REGISTRY[m].retains or (REGISTRY[m].starts_from_pretrained and not REGISTRY[ref].starts_from_pretrained):
                comparisons[f"{m} - {ref}"] = paired_difference(outcomes[m], outcomes[ref], seed=0)
    # one family of comparisons per report: Holm-corrected, so its verdicts keep a 5% family-wise error rate
    comparisons = {k: {**c, "verdict": verdict(c)} for k, c in zip(comparisons, holm(list(comparisons.values())))}
    summary = {"pretrained": pi_star, "frozen": study_frozen, "methods": methods, "study": study,
               "final_comparisons": comparisons, "final_episodes": cfg.eval_episodes}
    out = Path(paths.evaluation)
    save_json(out / "summary.json", summary)
    save_json(out / "metrics.json", scalar_metrics({"pretrained": pi_star, "frozen": study_frozen, "methods": methods,
                                                    "study": study, "final_comparisons": comparisons}))
    with_frozen = {**study_curves, "frozen": frozen_curves}
    for part in ("far", "close", "full"):
        save_json(out / f"{part}_success.json", curve_rows(with_frozen, part))
    save_npz(out / "curves.npz", **{f"{m}__{k}": getattr(c, k) for m, c in with_frozen.items() for k in ("step", "far", "close", "full")})
    log.info("FAR forgetting: %s; frozen floor %.2f", {m: round(s["forgetting"]["mean"], 2) for m, s in study.items()},
             study_frozen["forgetting"]["mean"])
    return out


def report(p: Params, paths) -> Path:
    """Stage ``report``: π*, the frozen floor beside each method's forgetting, KL to π* on CLOSE and
    FAR, the paired final comparisons, the study table and the FAR/CLOSE/full-task curves."""
    from retainrl.core.artifacts import load_json
    from retainrl.pipeline.report import Figure, Line, Panel, Report, Section, Table, fmt, study_section, write

    s = load_json(Path(paths.evaluation) / "summary.json", "MiniGrid evaluation summary (evaluate stage)")
    with np.load(Path(paths.evaluation) / "curves.npz") as z:
        arrays = {k: z[k] for k in z.files}
    cfg, env = p.finetune, p.env
    pi, frozen, study = s["pretrained"], s["frozen"], s["study"]

    def ci(x):
        return f"{x['mean']:.2f} [{x['ci_low']:.2f}, {x['ci_high']:.2f}]"

    rows = [["frozen π*", ci(frozen["forgetting"]), "–", ci(frozen["far_final"]), ci(frozen["close_final"]), "0", "0"]]
    for m in cfg.methods:
        r = s["methods"][m]
        rows.append([m, ci(study[m]["forgetting"]), fmt(r["forgetting_minus_floor"]), ci(study[m]["far_final"]),
                     ci(study[m]["close_final"]), fmt(r["kl_close"], ".3f"), fmt(r["kl_far"], ".3f")])
    table = Table(["method", "FAR forgetting", "minus the frozen floor (per seed)", "FAR final", "CLOSE final",
                   "KL(π*‖π) on CLOSE", "KL(π*‖π) on FAR"], rows)
    comp = Table(["comparison (full-task success, final policies)", "difference [95% CI]", "p (Holm)", "verdict"],
                 [[k, f"{v['diff']:+.2f} [{v['ci_low']:+.2f}, {v['ci_high']:+.2f}]", f"{v['p_holm']:.3f}", v["verdict"]]
                  for k, v in s["final_comparisons"].items()])
    frames = cfg.updates * cfg.envs * cfg.steps

    def figure(part, title):
        methods = [*cfg.methods, "frozen"]
        lines = [Line(m, arrays[f"{m}__step"], arrays[f"{m}__{part}"].mean(0), arrays[f"{m}__{part}"].min(0),
                      arrays[f"{m}__{part}"].max(0)) for m in methods]
        return Figure(f"{part}_success.png", title, [Panel(title, "agent steps per seed", "success", lines, None, (-0.05, 1.05))])

    write(Report("MiniGrid RoomChain: forgetting of the FAR rooms during PPO fine-tuning", [
        Section(None, [
            f"A chain of {env.rooms} rooms ({env.room_size}×{env.room_size}); the first {env.close_rooms} end in shut doors "
            f"(CLOSE), the rest have open doors and the goal (FAR); ≤ {env.max_steps} steps per episode. π* is cloned on the "
            f"expert's FAR segments only ({pi['far_states']} states). {cfg.seeds} seeds per method, {cfg.updates} PPO updates × "
            f"{cfg.envs} envs × {cfg.steps} steps = {frames} agent steps per seed; every {cfg.eval_every} updates each score is "
            f"measured on {cfg.eval_episodes} held-out episodes, the same for every method and for frozen π*.",
            f"π* on held-out episodes: FAR {pi['far_success']:.2f}, CLOSE {pi['close_success']:.2f}, full task "
            f"{pi['full_success']:.2f}.",
            table,
            "The frozen row is π* itself on every checkpoint's episodes: its forgetting is what start − minimum gives with no "
            "change at all (the noise floor). KL(π*‖π) on CLOSE is measured on the expert's CLOSE states (never cloned), on "
            "FAR on the FAR buffer.",
            f"Final policies, paired on {s['final_episodes']} common held-out episodes (bootstrap over episodes and seeds; "
            f"*higher*/*lower* when the Holm-corrected p-value over these {len(s['final_comparisons'])} comparisons is below "
            "0.05, i.e. at a 5% family-wise error rate; the intervals are the uncorrected 95% ones):",
            comp]),
        study_section(study, "success", "FAR: from the first FAR room to the goal; CLOSE: from room 0 to the first FAR room; "
                      "full task: from room 0 to the goal."),
        Section(None, [figure("far", "FAR success (first FAR room → goal)"), figure("close", "CLOSE success (room 0 → FAR)"),
                       figure("full", "full-task success (room 0 → goal)")]),
    ]), paths.report)
    return Path(paths.report)

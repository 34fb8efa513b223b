"""RoboticSequence's result stages: ``evaluate`` (per-stage success curves, forgetting, AUC,
forward transfer) and ``report``.

They live apart from the training stages so that a change to the shared statistics or reports
reruns these cheap stages only, never fine-tuning (DVC deps follow each stage's imports).
"""

from __future__ import annotations

import logging

import numpy as np

from retainrl.families.robot.stages import ACT_DIM, Params
from retainrl.pipeline.evaluation import auc, spread as _spread

log = logging.getLogger(__name__)


def summarize(p: Params, pi_star: dict, curves: dict[str, dict[str, np.ndarray]]) -> dict:
    """Per method: final success per stage, forgetting per FAR stage (π*'s success − min during
    fine-tuning), forward transfer per stage against scratch, stages completed."""
    out = {}
    from retainrl.retention.methods import REGISTRY

    scratch = next((c for m, c in curves.items() if not REGISTRY[m].starts_from_pretrained), None)
    for method, c in curves.items():
        steps, succ = c["step"], c["success"]
        row = {"stages_completed_final": _spread(c["completed"][:, -1]), "stages_completed_auc": _spread(auc(c["completed"], steps))}
        for k, task in enumerate(p.env.tasks):
            s = succ[:, k]
            row[task] = {"start": _spread(s[:, 0]), "final": _spread(s[:, -1]), "min": _spread(s.min(1)), "auc": _spread(auc(s, steps))}
            if k in p.env.far_stages:
                row[task]["forgetting"] = _spread(pi_star["success"][task] - s.min(1))
            if scratch is not None and np.array_equal(scratch["step"], steps):
                a_s = float(auc(scratch["success"][:, k], steps).mean())
                row[task]["forward_transfer"] = _spread((auc(s, steps) - a_s) / max(1e-8, 1 - a_s))
        out[method] = row
    return out


def _wide_rows(curves: dict[str, dict[str, np.ndarray]], pick) -> list[dict]:
    """Rows {step, <method>: mean, <method>_std: std over seeds} for `dvc plots` (one line per method)."""
    steps = next(iter(curves.values()))["step"].tolist()
    rows = [{"step": int(s)} for s in steps]
    for m, c in curves.items():
        if c["step"].tolist() != steps:
            raise ValueError(f"{m}: evaluated at different steps from the other methods")
        arr = pick(c)  # (seeds, checkpoints)
        for j, row in enumerate(rows):
            row[m] = float(arr[:, j].mean())
            row[f"{m}_std"] = float(arr[:, j].std())
    return rows


def study_curves(p: Params, curves: dict[str, dict[str, np.ndarray]]):
    """The shared curves: CLOSE and FAR = mean success of their stages run alone; the full task =
    the share of the sequence completed in a full episode (stages completed / stages)."""
    from retainrl.pipeline.study import Curves

    close = [k for k in range(p.env.n_stages) if k not in p.env.far_stages]
    return {
        m: Curves(step=c["step"], close=c["success"][:, close].mean(1), far=c["success"][:, p.env.far_stages].mean(1),
                  full=c["completed"] / p.env.n_stages)
        for m, c in curves.items()
    }


#: The report's drift columns: (key in ``kl_pi_star``, number format).
DRIFT_COLUMNS = (("close", ".3g"), ("close_action_shift", ".2f"), ("far", ".3g"), ("far_action_shift", ".2f"))
#: The name the KL states' sequences are seeded from (as a method's evaluation sequences are from
#: its name): no training or evaluation episode starts where they do.
KL_STATES = "kl_states"


def drift(pi_star, agent, states) -> tuple[np.ndarray, np.ndarray]:
    """Per stacked model of ``agent``, over ``states`` (B, D): the mean KL(π*‖π) of its actor
    (between the pre-tanh Gaussians; the squashing is a bijection: the same KL), and the mean
    Euclidean distance between its deterministic action tanh(μ) and π*'s. Why both: the KL is the
    study's measure, but SAC shrinks σ as its temperature falls, and with a small σ any shift of
    the mean makes the KL huge; the action distance (bounded, in the action's own units: at most
    2√(action dims)) says how far the behaviour moved."""
    import torch

    from retainrl.retention.dists import kl

    with torch.no_grad():
        ref = pi_star.dist_params(states).expand(agent.n_models, -1, -1)
        mine = agent.dist_params(states)
        a_ref, a_mine = (torch.tanh(x.chunk(2, dim=-1)[0]) for x in (ref, mine))
        return (kl("gaussian", ref, mine).mean(-1).cpu().numpy(),
                (a_mine - a_ref).norm(dim=-1).mean(-1).cpu().numpy())


def kl_to_pi_star(p: Params, paths, device, methods) -> tuple[dict, dict]:
    """Each method's final actors against π*: KL(π*‖π) and the action shift (:func:`drift`) per seed
    on CLOSE and on FAR.

    Why: a retention method that keeps FAR by not moving at all is freezing, not retention; its
    CLOSE KL beside its CLOSE success tells the two apart. The states are π*'s own (deterministic)
    visits to each stage run alone, ``finetune.eval_episodes`` episodes per stage, from sequences
    seeded for this alone (held out), the same states for every method. Returns (per method and
    part: the spread over seeds, the number of states per part)."""
    import torch

    from retainrl.families.robot.stages import _load_agent, eval_sequences, load_pretrained, rollout_stage_alone

    pi_star = load_pretrained(p, paths, device)
    seqs = eval_sequences(p, KL_STATES, 1)
    parts = {"close": [k for k in range(p.env.n_stages) if k not in p.env.far_stages], "far": p.env.far_stages}
    states = {}
    with torch.no_grad():
        for part, stages in parts.items():
            visited = [o for k in stages for o in rollout_stage_alone(pi_star, seqs, k, p.finetune.eval_episodes, record=True)[1][0]]
            states[part] = torch.as_tensor(np.stack(visited), device=device)
    for seq in seqs:
        seq.close()
    out = {}
    for m in methods:
        agent = _load_agent(paths.finetune(m) / "agent.safetensors", f"{m} agent (finetune stage)", device)
        out[m] = {}
        for part, x in states.items():
            kl, shift = drift(pi_star, agent, x)
            out[m][part], out[m][f"{part}_action_shift"] = _spread(kl), _spread(shift)
    return out, {part: int(len(x)) for part, x in states.items()}


def evaluate(p: Params, paths, device) -> None:
    """Aggregate every method's curves: summary.json (with per-seed values), metrics.json (scalars
    for `dvc metrics`), one plot file per stage and the stacked curves for the report.

    π*'s success (for forgetting) is its pretrain-stage score on each stage alone."""
    from retainrl.core.artifacts import load_json, load_npz, save_json, save_npz
    from retainrl.families.robot.stages import frozen_curves
    from retainrl.pipeline.evaluation import scalar_metrics
    from retainrl.pipeline.study import frozen_row, study_metrics

    pi_star = load_json(paths.pretrained / "scores.json", "π* scores (pretrain stage)")
    curves = {
        m: load_npz(paths.finetune(m) / "curves.npz", f"{m} curves (finetune stage)", ("step", "success", "completed"))
        for m in p.finetune.methods
    }
    floor = study_curves(p, {"frozen": frozen_curves(p, paths, device, next(iter(curves.values()))["step"])})["frozen"]
    kl, kl_states = kl_to_pi_star(p, paths, device, p.finetune.methods)
    summary = {"pretrained": pi_star, "frozen": frozen_row(floor), "methods": summarize(p, pi_star, curves),
               "kl_pi_star": kl, "kl_states": kl_states,
               "study": study_metrics(study_curves(p, curves), bounded=True, floor=floor)}
    out = paths.evaluation
    save_json(out / "summary.json", summary)
    save_json(out / "metrics.json", scalar_metrics(summary))
    # One plot file per part (whatever the stage count): columns "<method>/<task>".
    for part, stages in (("close", [k for k in range(p.env.n_stages) if k not in p.env.far_stages]), ("far", p.env.far_stages)):
        rows = None
        for k in stages:
            task = p.env.tasks[k]
            per = _wide_rows(curves, lambda c, k=k: c["success"][:, k])
            per = [{("step" if key == "step" else f"{key.removesuffix('_std')}/{task}" + ("_std" if key.endswith("_std") else "")): v for key, v in r.items()} for r in per]
            rows = per if rows is None else [a | b for a, b in zip(rows, per)]
        save_json(out / f"{part}_success.json", rows)
    save_json(out / "completed.json", _wide_rows(curves, lambda c: c["completed"]))
    save_npz(out / "curves.npz", **{f"{m}__{k}": v for m, c in curves.items() for k, v in c.items()})
    log.info(
        "forgetting on FAR: %s",
        {m: {p.env.tasks[k]: round(v[p.env.tasks[k]]["forgetting"]["mean"], 2) for k in p.env.far_stages} for m, v in summary["methods"].items()},
    )


def report(p: Params, paths) -> None:
    """Per-stage success curves per method and the final table (rendered by ``pipeline.report``)."""
    from retainrl.core.artifacts import load_json
    from retainrl.pipeline.report import Figure, Line, Panel, Report, Section, Table, floor_sentence, fmt, study_section, write

    metrics = load_json(paths.evaluation / "summary.json", "RoboticSequence summary (evaluate stage)")
    with np.load(paths.evaluation / "curves.npz") as z:
        arrays = {k: z[k] for k in z.files}
    methods, tasks, cfg = p.finetune.methods, p.env.tasks, p.finetune

    def lines(pick) -> list:
        out = []
        for m in methods:
            a = pick(m)
            out.append(Line(m, arrays[f"{m}__step"], a.mean(0), a.min(0), a.max(0)))
        return out

    panels = [Panel(f"{task} ({'FAR' if k in p.env.far_stages else 'CLOSE'}) alone", "env steps per seed", "success rate",
                    lines(lambda m, k=k: arrays[f"{m}__success"][:, k]), metrics["pretrained"]["success"][task], (-0.05, 1.05))
              for k, task in enumerate(tasks)]
    panels.append(Panel("stages completed (full episode)", "env steps per seed", "stages", lines(lambda m: arrays[f"{m}__completed"]),
                        ylim=(-0.05, len(tasks) + 0.05)))
    far = [tasks[k] for k in p.env.far_stages]
    rows = []
    for m in methods:
        r = metrics["methods"][m]
        rows.append([m, *(fmt(r[t]["final"]) for t in tasks), *(fmt(r[t]["forgetting"]) for t in far),
                     *(fmt(r[t]["forward_transfer"]) if "forward_transfer" in r[t] else "–" for t in tasks),
                     fmt(r["stages_completed_final"]), *(fmt(metrics["kl_pi_star"][m][k], spec) for k, spec in DRIFT_COLUMNS)])
    table = Table(["method", *(f"{t} final" for t in tasks), *(f"{t} forgetting" for t in far),
                   *(f"{t} fwd transfer" for t in tasks), "stages completed", "KL(π*‖π) CLOSE", "action shift CLOSE",
                   "KL(π*‖π) FAR", "action shift FAR"], rows)
    n_kl = metrics["kl_states"]
    write(Report("RoboticSequence: forgetting of pre-trained capabilities", [
        Section(None, [
            f"Profile sequence {' → '.join(tasks)}; FAR = {', '.join(far)}; {cfg.seeds} seeds, {cfg.steps} env steps per seed, "
            f"{cfg.eval_episodes} evaluation episodes per stage per checkpoint.",
            "π* success on each stage alone: " + ", ".join(f"{t} {v:.2f}" for t, v in metrics["pretrained"]["success"].items()),
            table,
            f"KL(π*‖π) and action shift: the final actors' mean KL to π*, and the mean distance of their deterministic actions "
            f"from π*'s (at most {2 * np.sqrt(ACT_DIM):.0f}), on {n_kl['close']} CLOSE and {n_kl['far']} FAR states that π* itself visits on each stage "
            "alone, from held-out sequences. SAC shrinks σ as it trains, and with a small σ any move of the mean makes the KL "
            "large: the action shift is the measure of how far the behaviour moved. Retention that keeps FAR without moving on CLOSE is freezing; one that moves "
            "on CLOSE while keeping FAR is what the study means."]),
        study_section(metrics["study"], "share completed",
                      "CLOSE / FAR: mean success of their stages run alone; full task: share of the sequence completed. "
                      + floor_sentence(metrics["frozen"])),
        Section(None, [Figure("success_curves.png", "success curves", panels)]),
    ]), paths.report)

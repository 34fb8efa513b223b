"""AppleRetrieval's result stages: ``evaluate`` (forgetting, success curves, AUC over seeds),
``sweep`` (forgetting against M and c: the whole study per value) and ``report``.

They live apart from the training stages so that a change to the shared statistics or reports
reruns these cheap stages only, never fine-tuning (DVC deps follow each stage's imports).
"""

from __future__ import annotations

import logging

from retainrl.families.apple.stages import Params, clone, far_buffer_in_memory, finetune_seeds, make_demos

log = logging.getLogger(__name__)


def evaluate(p: Params, paths, device) -> None:
    """Aggregate every method's curves into metrics (forgetting, final success) with spread over seeds,
    beside the frozen-π* row (``stages.frozen_curves``: the noise floor of start − min)."""
    from retainrl.core.artifacts import load_json, load_npz, save_json
    from retainrl.pipeline.evaluation import curve_rows, scalar_metrics, summarize_method
    from retainrl.families.apple.stages import frozen_curves, load_pretrained
    from retainrl.pipeline.study import Curves, frozen_row, study_metrics

    pretrained_scores = load_json(paths.pretrained / "scores.json", "π* scores (pretrain stage)")
    methods = {}
    for method in p.finetune.methods:
        curves = load_npz(paths.finetune(method) / "curves.npz", f"{method} curves (finetune stage)", ("iteration", "close", "far", "full"))
        methods[method] = curves
    steps = next(iter(methods.values()))["iteration"]
    floor = frozen_curves(p, load_pretrained(p, paths), steps)
    frozen = Curves(step=steps, **floor)
    summary = {
        "pretrained": pretrained_scores,
        "frozen": frozen_row(frozen),
        "methods": {m: summarize_method(c) for m, c in methods.items()},
        "study": study_metrics(
            {m: Curves(step=c["iteration"], close=c["close"], far=c["far"], full=c["full"]) for m, c in methods.items()},
            bounded=True, floor=frozen,
        ),
    }
    out = paths.evaluation
    save_json(out / "summary.json", summary)
    save_json(out / "metrics.json", scalar_metrics(summary))
    for key in ("far", "close", "full"):
        save_json(out / f"{key}_success.json", curve_rows({**methods, "frozen": {"iteration": steps, **floor}}, key))
    log.info("forgetting: %s; frozen floor %.3f", {m: round(v["forgetting"]["mean"], 3) for m, v in summary["methods"].items()},
             summary["frozen"]["forgetting"]["mean"])


def sweep(p: Params, paths, device, axis: str) -> None:
    """Forgetting against M (at the base c) or against c (at the base M): the whole study per value, in process.

    Each value gets its own demos, π*, FAR buffer and Fisher (π* depends on c), then every
    ``sweep.methods`` entry is fine-tuned over ``finetune.seeds`` seeds with the same learner
    and settings as the main stages.
    """
    from retainrl.core.artifacts import atomic_path, save_json
    from retainrl.pipeline.evaluation import summarize_method
    from retainrl.pipeline.fisher import estimate as fisher_estimate

    if axis not in ("M", "c"):
        raise ValueError(f"sweep axis must be 'M' or 'c' (got {axis!r})")
    rows = []
    for value in getattr(p.sweep, axis):
        env = p.env.model_copy(update={axis: value})
        pretrained = clone(make_demos(env, p.demos), p.pretrain)
        far = far_buffer_in_memory(pretrained, env, p.far_buffer)
        f, _ = fisher_estimate(pretrained, far, p.fisher)
        for method in p.sweep.methods:
            curves, _ = finetune_seeds(method, p, pretrained, far, f, env=env, progress=False)
            summary = summarize_method({k: v.numpy() for k, v in curves.items()})
            rows.append({"axis": axis, "value": value, "c": env.c, "M": env.M, "method": method, **summary})
            log.info("sweep %s=%s %s: forgetting %.3f", axis, value, method, summary["forgetting"]["mean"])
    with atomic_path(paths.sweep(axis), directory=True) as out:
        save_json(out / "sweep.json", rows)


def _curve_lines(rows: list[dict]) -> list:
    """Wide {step, <method>, <method>_std} rows → one line per method with a ±1 std band."""
    from retainrl.pipeline.report import Line

    methods = [k for k in rows[0] if k != "step" and not k.endswith("_std")]
    x = [r["step"] for r in rows]
    return [Line(m, x, [r[m] for r in rows], [r[m] - r[f"{m}_std"] for r in rows], [r[m] + r[f"{m}_std"] for r in rows])
            for m in methods]


def report(p: Params, paths) -> None:
    """AppleRetrieval: FAR success over training, forgetting against M and c, and the final table."""
    from retainrl.core.artifacts import load_json
    from retainrl.pipeline.report import Figure, Line, Panel, Report, Section, Table, floor_sentence, fmt, study_section, write

    metrics = load_json(paths.evaluation / "summary.json", "evaluation summary (evaluate stage)")
    far_rows = load_json(paths.evaluation / "far_success.json", "FAR curves (evaluate stage)")
    full_rows = load_json(paths.evaluation / "full_success.json", "full-task curves (evaluate stage)")
    sweeps = {axis: load_json(paths.sweep(axis) / "sweep.json", f"sweep over {axis} (sweep stage)") for axis in ("M", "c")}
    env, pre = p.env, metrics["pretrained"]
    table = Table(["method", "forgetting", "FAR min", "FAR final", "CLOSE final", "full final", "full-task AUC"],
                  [[method, fmt(m["forgetting"]), fmt(m["far_min"]), fmt(m["far_final"]), fmt(m["close_final"]),
                    fmt(m["full_final"]), fmt(m["auc_full"])] for method, m in metrics["methods"].items()])
    sections = [
        Section(None, [
            f"π* (cloned from phase-2 demonstrations): CLOSE success {pre['close']:.2f}, FAR success {pre['far']:.2f}, "
            f"full task {pre['full']:.2f}.",
            "CLOSE = reach the apple from home within T steps; FAR = reach home from the apple within T steps; "
            "forgetting = FAR success before fine-tuning minus its minimum during fine-tuning (per seed; mean ± std over seeds).",
            table]),
        study_section(metrics["study"], "success", floor_sentence(metrics["frozen"])),
        Section(None, [
            Figure("far_success.png", "FAR success", [Panel(f"FAR success (phase 2 from the apple), c={env.c}, M={env.M}",
                                                           "fine-tuning iteration", "success", _curve_lines(far_rows), pre["far"], (-0.02, 1.02))]),
            Figure("full_success.png", "Full-task success", [Panel("Full-task success", "fine-tuning iteration", "success",
                                                                  _curve_lines(full_rows), pre["full"], (-0.02, 1.02))])]),
    ]
    for axis, fixed in (("M", f"c = {env.c}"), ("c", f"M = {env.M}")):
        rows = sweeps[axis]
        methods = sorted({r["method"] for r in rows})
        values = sorted({r["value"] for r in rows})
        by = {(r["method"], r["value"]): r["forgetting"] for r in rows}
        lines = [Line(m, [v for v in values if (m, v) in by], [by[m, v]["mean"] for v in values if (m, v) in by],
                      yerr=[by[m, v]["std"] for v in values if (m, v) in by]) for m in methods]
        sections.append(Section(f"Forgetting against {axis} ({fixed})", [
            Figure(f"forgetting_vs_{axis}.png", f"forgetting against {axis}",
                   [Panel(f"Forgetting against {axis} ({fixed})", axis, "FAR forgetting", lines, ylim=(-0.05, 1.05))]),
            Table([axis, *methods], [[str(v), *(fmt(by[m, v]) if (m, v) in by else "–" for m in methods)] for v in values])]))
    write(Report(f"AppleRetrieval(c={env.c}, M={env.M}, T={env.T}), {p.finetune.seeds} seeds per method", sections), paths.report)

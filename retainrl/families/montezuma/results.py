"""Montezuma's Revenge result stages: ``evaluate`` (room success curves, forgetting, returns)
and ``report``.

They live apart from the training stages so that a change to the shared statistics or reports
reruns these cheap stages only, never fine-tuning (DVC deps follow each stage's imports).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from retainrl.families.montezuma.stages import Params, load_demos
from retainrl.pipeline.evaluation import spread as _spread

log = logging.getLogger(__name__)


def _load_curves(p: Params, paths) -> dict[str, dict[str, np.ndarray]]:
    """Per method: arrays (seeds, checkpoints) of room success and (seeds, updates) of training curves."""
    from retainrl.core.artifacts import load_json

    out = {}
    for method in p.finetune.methods:
        runs = load_json(Path(paths.finetune(method)) / "curves.json", f"fine-tuning curves of {method} (finetune stage)")["runs"]
        ev = lambda key: np.asarray([[e[key] for e in r["eval"]] for r in runs], dtype=float)  # noqa: E731
        out[method] = {
            "eval_step": np.asarray([e["frames"] for e in runs[0]["eval"]]),
            "eval_update": np.asarray([e["update"] for e in runs[0]["eval"]]),
            "boundary": ev("boundary_success"),
            "far": ev("far_success"),
            "close": ev("close_success"),
            "train_step": np.asarray(runs[0]["frames"]),
            "episode_return": np.asarray([r["episode_return"] for r in runs], dtype=float),
            "rooms_visited": np.asarray([r["rooms_visited"] for r in runs], dtype=float),
            "far_rooms": [[e["far_rooms"] for e in r["eval"]] for r in runs],
            "rooms_seen": [r["rooms_seen"] for r in runs],
        }
    return out


def _wide_rows(curves: dict, key: str, step_key: str) -> list[dict]:
    """Rows {step, <method>: mean over seeds, <method>_std} for `dvc plots` (one line per method)."""
    steps = next(iter(curves.values()))[step_key].tolist()
    rows = [{"step": int(s)} for s in steps]
    for m, c in curves.items():
        if c[step_key].tolist() != steps:
            raise ValueError(f"{m}: evaluated at different steps from the other methods")
        for j, row in enumerate(rows):
            row[m] = float(c[key][:, j].mean())
            row[f"{m}_std"] = float(c[key][:, j].std())
    return rows


def evaluate(p: Params, paths, device=None) -> Path:
    """Stage ``evaluate``: per method and seed, room success in the FAR boundary room (the 7th),
    over all FAR rooms and CLOSE rooms at the start (π* for all but scratch), minimum and end of
    fine-tuning; forgetting = start − minimum; return from the fine-tuning start and rooms visited.
    Writes summary.json (per seed), metrics.json (scalars for `dvc metrics`), one plot file per
    curve and curves.npz for the report."""
    from retainrl.core.artifacts import load_json, save_json, save_npz
    from retainrl.pipeline.evaluation import scalar_metrics

    pi_star = load_json(Path(paths.pretrained) / "scores.json", "π* room scores (pretrain stage)")
    _, route = load_demos(paths)
    curves = _load_curves(p, paths)
    methods = {}
    for m, c in curves.items():
        row = {}
        for key in ("boundary", "far", "close"):
            arr = c[key]
            row[key] = {"start": _spread(arr[:, 0]), "min": _spread(arr.min(1)), "final": _spread(arr[:, -1])}
            if key != "close":
                row[key]["forgetting"] = _spread(arr[:, 0] - arr.min(1))
                row[key]["drop_below_pi_star"] = _spread(pi_star[f"{key}_success"] - arr.min(1))
        row["episode_return_final"] = _spread(c["episode_return"][:, -1])
        row["rooms_visited_final"] = _spread(c["rooms_visited"][:, -1])
        row["rooms_seen"] = sorted({r for seen in c["rooms_seen"] for r in seen})
        methods[m] = row
    from retainrl.families.montezuma.stages import frozen_curves
    from retainrl.pipeline.study import Curves, frozen_row, study_metrics

    # The shared metrics: FAR is the boundary room (the study's "7th room"), CLOSE the rooms before
    # it that fine-tuning trains on, the full task the return of training episodes from the first
    # CLOSE room (route.close_rooms; the game's start when it is null) (unbounded; frozen π*
    # plays no training episodes, so its row has no full task: its CLOSE success stands in).
    first = next(iter(curves.values()))
    fz = frozen_curves(p, paths, device, first["eval_update"])
    floor = Curves(step=first["eval_step"], close=fz["close"], far=fz["boundary"], full=fz["close"])
    study = study_metrics({
        m: Curves(step=c["eval_step"], close=c["close"], far=c["boundary"], full=c["episode_return"], full_step=c["train_step"])
        for m, c in curves.items()
    }, bounded=False, floor=floor)
    frozen = {k: v for k, v in frozen_row(floor).items() if k != "full_final"}
    from retainrl.families.montezuma.stages import room_start_states

    task_close = [s["room"] for s in room_start_states(paths, p, "close")]
    summary = {
        "route": {**{k: route[k] for k in ("rooms", "close", "far", "far_boundary", "score")},
                  "task_close": task_close, "start": "the game's start" if p.route.close_rooms is None else f"the entry of room {task_close[0]}"},
        "pretrained": pi_star,
        "frozen": frozen,
        "methods": methods,
        "study": study,
    }
    out = Path(paths.evaluation)
    save_json(out / "summary.json", summary)
    metrics = scalar_metrics({"pretrained": {k: v for k, v in pi_star.items() if not isinstance(v, dict)}, "frozen": frozen,
                              "methods": methods, "study": study})
    for row in metrics["methods"].values():
        row.pop("rooms_seen", None)
    save_json(out / "metrics.json", metrics)
    save_json(out / "boundary_success.json", _wide_rows(curves, "boundary", "eval_step"))
    save_json(out / "far_success.json", _wide_rows(curves, "far", "eval_step"))
    save_json(out / "close_success.json", _wide_rows(curves, "close", "eval_step"))
    save_json(out / "episode_return.json", _wide_rows(curves, "episode_return", "train_step"))
    save_json(out / "rooms_visited.json", _wide_rows(curves, "rooms_visited", "train_step"))
    keys = ("eval_step", "boundary", "far", "close", "train_step", "episode_return", "rooms_visited")
    save_npz(out / "curves.npz", **{f"{m}__{k}": c[k] for m, c in curves.items() for k in keys})
    log.info("boundary-room success start → min → final: %s", {
        m: [round(r["boundary"][k]["mean"], 2) for k in ("start", "min", "final")] for m, r in methods.items()
    })
    return out


def report(p: Params, paths) -> Path:
    """Stage ``report``: the table per method and figures: success in the FAR boundary room over
    fine-tuning (the study's Figure 6), FAR/CLOSE success, return and rooms visited (rendered by
    ``pipeline.report``)."""
    from retainrl.core.artifacts import load_json
    from retainrl.pipeline.report import Figure, Line, Panel, Report, Section, Table, floor_sentence, fmt, study_section, write

    summary = load_json(Path(paths.evaluation) / "summary.json", "Montezuma evaluation summary (evaluate stage)")
    with np.load(Path(paths.evaluation) / "curves.npz") as z:
        arrays = {k: z[k] for k in z.files}
    route, pi, methods = summary["route"], summary["pretrained"], summary["methods"]
    cfg = p.finetune
    boundary_room = route["far"][0]
    rows = []
    for m in cfg.methods:
        r = methods[m]
        b, f = r["boundary"], r["far"]
        rows.append([m, fmt(b["start"]), fmt(b["min"]), fmt(b["final"]), fmt(f["start"]), fmt(f["min"]), fmt(f["final"]),
                     fmt(r["close"]["final"]), fmt(r["episode_return_final"]), fmt(r["rooms_visited_final"])])
    table = Table(["method", f"room {boundary_room} success: start", "min", "end", "FAR success: start", "min", "end", "CLOSE end",
                   "return (end)", "rooms visited"], rows)

    def figure(file, key, step_key, title, ylabel, ref=None, ylim=None):
        lines = [Line(m, arrays[f"{m}__{step_key}"], arrays[f"{m}__{key}"].mean(0), arrays[f"{m}__{key}"].min(0),
                      arrays[f"{m}__{key}"].max(0)) for m in cfg.methods]
        return Figure(file, title, [Panel(title, "emulator frames per seed", ylabel, lines, ref, ylim)])

    unit = (-0.05, 1.05)
    write(Report("Montezuma's Revenge: forgetting of FAR rooms during PPO+RND fine-tuning", [
        Section(None, [
            f"Route {route['rooms']} (score {route['score']:g}); FAR {route['far']} "
            f"(boundary: route room #{route['far_boundary']} = room {boundary_room}); CLOSE, the part fine-tuning trains on, "
            f"{route['task_close']}: training episodes start at {route['start']}. "
            f"{cfg.seeds} seeds per method; {cfg.updates} PPO updates × {cfg.envs} envs × {cfg.steps} steps "
            f"= {cfg.updates * cfg.envs * cfg.steps * p.env.frame_skip} emulator frames per seed; "
            f"room success from {cfg.eval_episodes} sticky-action episodes per room (≤ {cfg.eval_max_steps} steps).",
            f"π* (BC on the FAR segments): boundary room {pi['boundary_success']:.2f}, FAR rooms {pi['far_success']:.2f} "
            f"({', '.join(f'{r}: {v:.2f}' for r, v in pi['far_rooms'].items())}), CLOSE rooms {pi['close_success']:.2f}.",
            table,
            "Per seed, boundary-room minimum: " + "; ".join(
                f"{m} {[round(x, 2) for x in methods[m]['boundary']['min']['per_seed']]}" for m in cfg.methods)]),
        study_section(summary["study"], "return",
                      f"FAR: the boundary room {boundary_room}; CLOSE: rooms {route['task_close']}; full task: the return of training "
                      f"episodes from {route['start']} (forward transfer is then AUC − AUC_scratch, unnormalised). "
                      + floor_sentence(summary["frozen"])),
        Section(None, [
            figure("boundary_success.png", "boundary", "eval_step",
                   f"success in room {boundary_room} (route room #{route['far_boundary']}, FAR boundary)", "success", pi["boundary_success"], unit),
            figure("far_success.png", "far", "eval_step", f"success in FAR rooms {route['far']}", "success", pi["far_success"], unit),
            figure("close_success.png", "close", "eval_step", f"success in CLOSE rooms {route['task_close']}", "success", pi["close_success"], unit),
            figure("episode_return.png", "episode_return", "train_step", f"return from {route['start']} (training episodes)", "return"),
            figure("rooms_visited.png", "rooms_visited", "train_step", "distinct rooms visited in training", "rooms"),
        ]),
    ]), paths.report)
    return Path(paths.report)

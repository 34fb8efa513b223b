"""Study metrics computed from success curves: forgetting, forward transfer, spread over seeds.

A curve is an array of shape (seeds, checkpoints); checkpoint 0 is evaluated before the first
update, so for every method that starts from π* it is π*'s own score.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def spread(values: np.ndarray) -> dict[str, float | list[float]]:
    values = np.asarray(values, dtype=float)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
        "per_seed": [float(v) for v in values],
    }


def forgetting(curve: np.ndarray) -> np.ndarray:
    """Per seed: success before fine-tuning minus the minimum reached during fine-tuning."""
    curve = np.asarray(curve, dtype=float)
    return curve[:, 0] - curve.min(axis=1)


def auc(curve: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Normalised area under a success curve (in [0, 1]) per seed, trapezoidal over the checkpoint steps."""
    steps = np.asarray(steps, dtype=float)
    span = steps[-1] - steps[0]
    if span <= 0:
        return np.asarray(curve, dtype=float)[:, -1]
    return np.trapezoid(np.asarray(curve, dtype=float), steps, axis=1) / span


def forward_transfer(curve: np.ndarray, scratch_curve: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """(AUC − AUC_scratch) / (1 − AUC_scratch), per seed against the mean scratch AUC."""
    a_scratch = float(auc(scratch_curve, steps).mean())
    return (auc(curve, steps) - a_scratch) / max(1e-8, 1.0 - a_scratch)


def first_reach(curve: np.ndarray, steps: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per seed: the first checkpoint step where success ≥ threshold (NaN if never)."""
    curve = np.asarray(curve, dtype=float)
    out = np.full(curve.shape[0], np.nan)
    for i, row in enumerate(curve):
        hit = np.nonzero(row >= threshold)[0]
        if hit.size:
            out[i] = steps[hit[0]]
    return out


def summarize_method(curves: Mapping[str, np.ndarray]) -> dict:
    """Metrics of one method from its {"iteration", "close", "far", "full"} curves."""
    steps = np.asarray(curves["iteration"])
    out = {
        "forgetting": spread(forgetting(curves["far"])),
        "far_min": spread(np.asarray(curves["far"]).min(axis=1)),
        "auc_full": spread(auc(curves["full"], steps)),
    }
    for key in ("close", "far", "full"):
        out[f"{key}_start"] = spread(np.asarray(curves[key])[:, 0])
        out[f"{key}_final"] = spread(np.asarray(curves[key])[:, -1])
    return out


def scalar_metrics(summary: dict) -> dict:
    """The summary without per-seed lists: what `dvc metrics show` / `dvc exp show` display."""
    if isinstance(summary, dict):
        return {k: scalar_metrics(v) for k, v in summary.items() if k not in ("per_seed", "min", "max")}
    return summary


def curve_rows(methods: Mapping[str, Mapping[str, np.ndarray]], key: str) -> list[dict]:
    """Wide rows {step, <method>: mean success, <method>_std: std} for `dvc plots` (one line per method).

    Every method is evaluated on the same checkpoint schedule, so rows share their steps.
    """
    steps = None
    rows: list[dict] = []
    for method, curves in methods.items():
        arr = np.asarray(curves[key], dtype=float)
        its = np.asarray(curves["iteration"]).tolist()
        if steps is None:
            steps = its
            rows = [{"step": int(s)} for s in steps]
        elif its != steps:
            raise ValueError(f"{method}: evaluated at different steps from the other methods")
        for j, row in enumerate(rows):
            row[method] = float(arr[:, j].mean())
            row[f"{method}_std"] = float(arr[:, j].std())
    return rows

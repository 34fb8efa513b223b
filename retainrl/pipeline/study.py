"""The study's metrics, computed the same way for every family, with rliable's intervals.

Every family's ``results.evaluate`` reduces its own scoring to the same per-seed curves
(:class:`Curves`: CLOSE, FAR and the full task over fine-tuning) and hands them here. What comes
back carries the same names in every family's ``metrics.json`` (``study.<method>.<metric>``), so
``dvc metrics show`` compares families and methods side by side:

* ``forgetting``: FAR at the start of fine-tuning minus its minimum during it (the study's
  measure; biased upward by evaluation noise, which is why a frozen-π* row on the same schedule
  is its floor);
* ``close_final``, ``far_final``, ``full_final``: the last checkpoint;
* ``auc``: the full-task curve's area over the run, normalised by its length;
* ``forward_transfer``: (AUC − AUC_scratch) / (1 − AUC_scratch) for success rates in [0, 1] (the
  study's definition); for unbounded scores (NetHack, Montezuma's return) AUC − AUC_scratch;
* ``p_improvement``: P(a seed of the method beats a seed of ``finetune``) on the final full-task
  value (rliable's probability of improvement).

Each value is the mean over seeds with a stratified-bootstrap 95% interval (rliable,
``get_interval_estimates``: runs resampled with replacement) and the IQM. Every method carries
every name; ``forward_transfer`` is null where it is undefined (no scratch run, or a scratch run
that already solves the task when scores are success rates).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from retainrl.pipeline.evaluation import auc
from retainrl.retention.methods import BASELINE, REGISTRY

METRICS = ("forgetting", "close_final", "far_final", "full_final", "auc", "forward_transfer")
LEVEL = 0.95


@dataclass
class Curves:
    """One method's per-seed curves; checkpoint 0 is before the first update."""

    step: np.ndarray  # (K,) checkpoints of close/far
    close: np.ndarray  # (seeds, K) CLOSE success or score
    far: np.ndarray  # (seeds, K) FAR success or score
    full: np.ndarray  # (seeds, K') full-task success or return
    full_step: np.ndarray | None = None  # (K',) when the full task is scored on its own schedule

    def __post_init__(self):
        self.step = np.asarray(self.step, dtype=float)
        self.close, self.far, self.full = (np.atleast_2d(np.asarray(a, dtype=float)) for a in (self.close, self.far, self.full))
        self.full_step = self.step if self.full_step is None else np.asarray(self.full_step, dtype=float)
        if self.close.shape != self.far.shape or self.close.shape[1] != len(self.step) or self.full.shape[1] != len(self.full_step):
            raise ValueError(f"curves: shapes do not match their steps (close {self.close.shape}, far {self.far.shape}, "
                             f"full {self.full.shape}, {len(self.step)} / {len(self.full_step)} steps)")


def per_seed(curves: dict[str, Curves], *, bounded: bool) -> dict[str, dict[str, np.ndarray]]:
    """{method: {metric: (seeds,) values}}; forward transfer needs a method that starts from scratch."""
    scratch = [m for m in curves if not REGISTRY[m].starts_from_pretrained]
    out: dict[str, dict[str, np.ndarray]] = {}
    for method, c in curves.items():
        values = {
            "forgetting": c.far[:, 0] - c.far.min(axis=1),
            "close_final": c.close[:, -1],
            "far_final": c.far[:, -1],
            "full_final": c.full[:, -1],
            "auc": auc(c.full, c.full_step),
        }
        values["forward_transfer"] = None  # without a scratch run on the same schedule it is undefined
        if scratch:
            ref = curves[scratch[0]]
            if not np.array_equal(ref.full_step, c.full_step):
                raise ValueError(f"{method}: full task scored at other steps than {scratch[0]}; forward transfer needs one schedule")
            a_s = float(auc(ref.full, ref.full_step).mean())
            gain = values["auc"] - a_s
            if not bounded:
                values["forward_transfer"] = gain
            elif 1.0 - a_s > 1e-6:  # scratch already solves the task: the study's ratio is undefined
                values["forward_transfer"] = gain / (1.0 - a_s)
        out[method] = values
    return out


@contextmanager
def _seeded_numpy(seed: int):
    """rliable 1.2's stratified bootstraps draw their resamples from numpy's *global* generator
    (``np.random.choice`` in ``update_indices``) and ignore the ``random_state`` they are given, so
    without this every run of a stage gave other intervals. Seed it for the call, then put the
    caller's global state back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _interval(x: np.ndarray, reps: int, seed: int) -> dict:
    from rliable import library as rly
    from rliable import metrics as rmetrics

    x = np.asarray(x, dtype=float).reshape(-1, 1)  # (runs, tasks = 1)
    funcs = [rmetrics.aggregate_mean, rmetrics.aggregate_iqm]  # IQM = the mean for < 4 runs (nothing to trim)
    with _seeded_numpy(seed):
        point, ci = rly.get_interval_estimates(
            {"m": x}, lambda s: np.array([f(s) for f in funcs]), reps=reps, confidence_interval_size=LEVEL,
            random_state=np.random.RandomState(seed),
        )
    return {"mean": float(point["m"][0]), "ci_low": float(ci["m"][0, 0]), "ci_high": float(ci["m"][1, 0]),
            "iqm": float(point["m"][1]), "seeds": int(len(x))}


def probability_of_improvement(a: np.ndarray, b: np.ndarray, reps: int, seed: int) -> dict:
    """P(X > Y) for a seed X of ``a`` and a seed Y of ``b`` (ties count half), with its interval."""
    from rliable import library as rly
    from rliable import metrics as rmetrics

    pair = {"a,b": (np.asarray(a, float).reshape(-1, 1), np.asarray(b, float).reshape(-1, 1))}
    with _seeded_numpy(seed):
        point, ci = rly.get_interval_estimates(pair, rmetrics.probability_of_improvement, reps=reps,
                                               confidence_interval_size=LEVEL, random_state=np.random.RandomState(seed))
    point, ci = np.ravel(point["a,b"]), np.ravel(ci["a,b"])
    return {"mean": float(point[0]), "ci_low": float(ci[0]), "ci_high": float(ci[-1])}


def study_metrics(curves: dict[str, Curves], *, bounded: bool, reps: int = 2000, seed: int = 0) -> dict:
    """{method: {metric: {mean, ci_low, ci_high, seeds[, iqm]}}} plus ``p_improvement`` over ``finetune``."""
    values = per_seed(curves, bounded=bounded)
    out: dict[str, dict] = {}
    for method, vals in values.items():
        out[method] = {k: None if v is None else _interval(v, reps, seed) for k, v in vals.items()}
        if method != BASELINE and BASELINE in values:
            out[method]["p_improvement"] = probability_of_improvement(vals["full_final"], values[BASELINE]["full_final"], reps, seed)
    return out


def verdict(stat: dict, direction: int = 1) -> str:
    """*shown* when the interval excludes 0 in the study's direction (+1: above, −1: below),
    *leaning* when the point estimate is on that side but the interval covers 0, else *not shown*."""
    lo, hi, mid = stat["ci_low"], stat["ci_high"], stat.get("mean", stat.get("diff"))
    if (direction > 0 and lo > 0) or (direction < 0 and hi < 0):
        return "shown"
    if mid * direction > 0:
        return "leaning"
    return "not shown"


def curve_rows(curves: dict[str, Curves], part: str) -> list[dict]:
    """Wide rows {step, <method>: mean over seeds, <method>_std} for ``dvc plots`` (same steps for all)."""
    first = next(iter(curves.values()))
    steps = first.full_step if part == "full" else first.step
    rows = [{"step": float(s) if not float(s).is_integer() else int(s)} for s in steps]
    for method, c in curves.items():
        arr = getattr(c, part)
        if arr.shape[1] != len(rows):
            raise ValueError(f"{method}: {part} evaluated at different steps from the other methods")
        for j, row in enumerate(rows):
            row[method] = float(arr[:, j].mean())
            row[f"{method}_std"] = float(arr[:, j].std())
    return rows


def table(study: dict, unit: str) -> list[str]:
    """Markdown rows of the study metrics (mean [95% interval]) for a report."""
    head = ["method", "forgetting (FAR)", "CLOSE final", "FAR final", f"full task final ({unit})", "AUC", "forward transfer",
            "P(> finetune)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]

    def cell(s: dict | None) -> str:
        return "–" if s is None else f"{s['mean']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"

    for method, m in study.items():
        cells = [cell(m.get(k)) for k in METRICS] + [cell(m.get("p_improvement"))]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines

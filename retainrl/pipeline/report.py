"""Readable reports: PNG figures and a Markdown page per environment family.

Figures are drawn with matplotlib's Agg backend (no display needed); the Markdown links them
by relative path so the report directory can be opened or served as it is.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


log = logging.getLogger(__name__)


def colour(method: str) -> str:
    """The one colour of a method in every figure of every family (tab10, in the registry's order)."""
    from retainrl.retention.methods import REGISTRY

    names = list(REGISTRY)
    return plt.get_cmap("tab10")(names.index(method) % 10 if method in names else 9)


def fmt(stat: dict) -> str:
    """mean ± std of a spread (``evaluation.spread``)."""
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def plot_curves(rows: list[dict], title: str, ylabel: str, path: Path) -> None:
    """One line per method with a ±1 std band, from wide {step, <method>, <method>_std} rows."""
    methods = [k for k in rows[0] if k != "step" and not k.endswith("_std")]
    x = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method in methods:
        y = [r[method] for r in rows]
        s = [r[f"{method}_std"] for r in rows]
        (line,) = ax.plot(x, y, label=method, color=colour(method))
        ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)], color=line.get_color(), alpha=0.15)
    ax.set(title=title, xlabel="fine-tuning iteration", ylabel=ylabel, ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(rows: list[dict], axis: str, fixed: str, path: Path) -> None:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for method, rs in by_method.items():
        rs.sort(key=lambda r: r["value"])
        ax.errorbar(
            [r["value"] for r in rs],
            [r["forgetting"]["mean"] for r in rs],
            yerr=[r["forgetting"]["std"] for r in rs],
            marker="o",
            capsize=3,
            label=method,
            color=colour(method),
        )
    ax.set(title=f"Forgetting against {axis} ({fixed})", xlabel=axis, ylabel="FAR forgetting", ylim=(-0.05, 1.05))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

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

from retainrl.core.artifacts import atomic_path, load_json  # noqa: E402

log = logging.getLogger(__name__)


def _fmt(stat: dict) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def plot_curves(rows: list[dict], title: str, ylabel: str, path: Path) -> None:
    """One line per method with a ±1 std band, from wide {step, <method>, <method>_std} rows."""
    methods = [k for k in rows[0] if k != "step" and not k.endswith("_std")]
    x = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method in methods:
        y = [r[method] for r in rows]
        s = [r[f"{method}_std"] for r in rows]
        (line,) = ax.plot(x, y, label=method)
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
        )
    ax.set(title=f"Forgetting against {axis} ({fixed})", xlabel=axis, ylabel="FAR forgetting", ylim=(-0.05, 1.05))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_apple_report(p, paths) -> None:
    """AppleRetrieval: FAR success over training, forgetting against M and c, and the final table."""
    metrics = load_json(paths.evaluation / "summary.json", "evaluation summary (evaluate stage)")
    far_rows = load_json(paths.evaluation / "far_success.json", "FAR curves (evaluate stage)")
    full_rows = load_json(paths.evaluation / "full_success.json", "full-task curves (evaluate stage)")
    sweeps = {axis: load_json(paths.sweep(axis) / "sweep.json", f"sweep over {axis} (sweep stage)") for axis in ("M", "c")}
    env = p.env
    with atomic_path(paths.report, directory=True) as out:
        plot_curves(far_rows, f"FAR success (phase 2 from the apple), c={env.c}, M={env.M}", "success", out / "far_success.png")
        plot_curves(full_rows, "Full-task success", "success", out / "full_success.png")
        plot_sweep(sweeps["M"], "M", f"c={env.c}", out / "forgetting_vs_M.png")
        plot_sweep(sweeps["c"], "c", f"M={env.M}", out / "forgetting_vs_c.png")

        pre = metrics["pretrained"]
        lines = [
            f"# AppleRetrieval(c={env.c}, M={env.M}, T={env.T}), {p.finetune.seeds} seeds per method",
            "",
            f"π* (cloned from phase-2 demonstrations): CLOSE success {pre['close']:.2f}, FAR success {pre['far']:.2f}, "
            f"full task {pre['full']:.2f}.",
            "",
            "CLOSE = reach the apple from home within T steps; FAR = reach home from the apple within T steps; "
            "forgetting = FAR success before fine-tuning minus its minimum during fine-tuning (per seed; mean ± std over seeds).",
            "",
            "| method | forgetting | FAR min | FAR final | CLOSE final | full final | full-task AUC |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, m in metrics["methods"].items():
            lines.append(
                f"| {method} | {_fmt(m['forgetting'])} | {_fmt(m['far_min'])} | {_fmt(m['far_final'])} | "
                f"{_fmt(m['close_final'])} | {_fmt(m['full_final'])} | {_fmt(m['auc_full'])} |"
            )
        lines += ["", "![FAR success](far_success.png)", "", "![Full-task success](full_success.png)", ""]
        for axis, fixed in (("M", f"c = {env.c}"), ("c", f"M = {env.M}")):
            lines += [f"## Forgetting against {axis} ({fixed})", "", f"![forgetting against {axis}](forgetting_vs_{axis}.png)", ""]
            lines += [f"| {axis} | " + " | ".join(sorted({r['method'] for r in sweeps[axis]})) + " |"]
            methods = sorted({r["method"] for r in sweeps[axis]})
            lines += ["|---" * (len(methods) + 1) + "|"]
            for value in sorted({r["value"] for r in sweeps[axis]}):
                cells = {r["method"]: _fmt(r["forgetting"]) for r in sweeps[axis] if r["value"] == value}
                lines.append(f"| {value} | " + " | ".join(cells.get(m, "–") for m in methods) + " |")
            lines.append("")
        (out / "report.md").write_text("\n".join(lines))
    log.info("report written to %s", paths.report / "report.md")

"""The one report generator: every family's report.md and figures are rendered here.

A family's ``results.report`` says *what* its report holds (a :class:`Report`: sections of
paragraphs, tables and figures, as data) and hands it to :func:`write`, which decides *how* it
looks: Markdown layout, the study-metrics table, matplotlib figures (Agg backend, no display),
one colour per method in every figure of every family (:func:`colour`), π*'s level as a dotted
line, bands for the spread over seeds. So a change of presentation is made once, for all
families, and a family's results module holds no plotting or Markdown code. Figures are linked
by relative path, so a report directory can be opened or served as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

STUDY_HEADING = "The study's metrics (mean over seeds [95% stratified-bootstrap interval, rliable])"


def colour(method: str):
    """The one colour of a method in every figure of every family (tab10, in the registry's order)."""
    from retainrl.retention.methods import REGISTRY

    names = list(REGISTRY)
    return plt.get_cmap("tab10")(names.index(method) % 10 if method in names else 9)


def fmt(stat: dict, spec: str = ".2f") -> str:
    """mean ± std of a spread (``evaluation.spread``); just the mean when there is no spread."""
    return f"{stat['mean']:{spec}} ± {stat['std']:{spec}}" if stat.get("std") is not None else f"{stat['mean']:{spec}}"


# --------------------------------------------------------------------------- what a report holds


@dataclass
class Line:
    """One method's curve: mean ``y`` over ``x``, with a band (``low``/``high``) or error bars (``yerr``)."""

    method: str
    x: Sequence[float]
    y: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None
    yerr: Sequence[float] | None = None


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    lines: list[Line]
    ref: float | None = None  # π*'s level, drawn dotted
    ylim: tuple[float, float] | None = None


@dataclass
class Figure:
    """A PNG of one or more panels side by side, shown under ``caption``."""

    file: str
    caption: str
    panels: list[Panel]


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Study:
    """The shared study metrics (``pipeline.study``), rendered as the same table in every family."""

    metrics: dict
    unit: str
    note: str = ""


@dataclass
class Section:
    heading: str | None
    blocks: list = field(default_factory=list)  # str (a Markdown paragraph) | Table | Figure | Study


@dataclass
class Report:
    title: str
    sections: list[Section]


# --------------------------------------------------------------------------- rendering


def _draw(panel: Panel, ax) -> None:
    for ln in panel.lines:
        c = colour(ln.method)
        if ln.yerr is not None:
            ax.errorbar(ln.x, ln.y, yerr=ln.yerr, marker="o", capsize=3, label=ln.method, color=c)
        else:
            ax.plot(ln.x, ln.y, label=ln.method, color=c, marker="o" if len(ln.x) <= 12 else None, ms=3)
        if ln.low is not None and ln.high is not None:
            ax.fill_between(ln.x, ln.low, ln.high, color=c, alpha=0.15)
    if panel.ref is not None:
        ax.axhline(panel.ref, color="k", ls=":", lw=1, label="π*")
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    ax.set_title(panel.title, fontsize=9)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)


def _figure(fig_spec: Figure, out: Path) -> None:
    n = len(fig_spec.panels)
    fig, axes = plt.subplots(1, n, figsize=(5.6 * n if n > 1 else 6.4, 3.8), squeeze=False)
    for panel, ax in zip(fig_spec.panels, axes[0]):
        _draw(panel, ax)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / fig_spec.file, dpi=100)
    plt.close(fig)


def _table(t: Table) -> list[str]:
    return ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns), *("| " + " | ".join(r) + " |" for r in t.rows)]


def render(report: Report, out: Path) -> str:
    """The Markdown of ``report``; its figures are drawn into ``out``."""
    from retainrl.pipeline.study import CLAIMS_NOTE, claims_table, table

    lines = [f"# {report.title}", ""]
    for section in report.sections:
        if section.heading:
            lines += [f"## {section.heading}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, Table):
                lines += [*_table(block), ""]
            elif isinstance(block, Study):
                lines += ([block.note, ""] if block.note else []) + [*table(block.metrics, block.unit), ""]
                claims = claims_table(block.metrics)
                if len(claims) > 2:
                    lines += [f"**The study vs ours.** {CLAIMS_NOTE}", "", *claims, ""]
            elif isinstance(block, Figure):
                _figure(block, out)
                lines += [f"![{block.caption}]({block.file})", ""]
            else:
                raise TypeError(f"a report block must be text, a Table, a Study or a Figure, not {type(block).__name__}")
    return "\n".join(lines)


def write(report: Report, directory: Path) -> Path:
    """Render ``report`` into ``directory`` (report.md + figures), atomically."""
    from retainrl.core.artifacts import atomic_path

    with atomic_path(directory, directory=True) as out:
        (out / "report.md").write_text(render(report, out))
    log.info("report written to %s", Path(directory) / "report.md")
    return Path(directory)


def study_section(metrics: dict, unit: str, note: str = "") -> Section:
    """The study-metrics section every family's report carries, under the same heading."""
    return Section(STUDY_HEADING, [Study(metrics, unit, note)])


def floor_sentence(frozen: dict, digits: int = 2) -> str:
    """The frozen-π* row in words, for the note above a family's study table."""
    f = frozen["forgetting"]
    return (f"Frozen π* on the same checkpoints and evaluation episodes (the noise floor): forgetting "
            f"{f['mean']:.{digits}f} [{f['ci_low']:.{digits}f}, {f['ci_high']:.{digits}f}], FAR final "
            f"{frozen['far_final']['mean']:.{digits}f}; a method's forgetting is evidence only above it.")

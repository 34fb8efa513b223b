"""The one report generator (``retainrl.pipeline.report``): families describe, it renders."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from retainrl.pipeline import report as R


def _report() -> R.Report:
    lines = [R.Line("finetune", [0, 1, 2], [0.9, 0.5, 0.4], [0.8, 0.4, 0.3], [1.0, 0.6, 0.5]),
             R.Line("ewc", [0, 1, 2], [0.9, 0.85, 0.8], yerr=[0.05, 0.05, 0.05])]
    study = {"finetune": {"forgetting": {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}}}
    return R.Report("Toy", [
        R.Section(None, ["π* solves FAR.", R.Table(["method", "FAR final"], [["finetune", "0.40"], ["ewc", "0.80"]])]),
        R.study_section(study, "success", "a note"),
        R.Section("Curves", [R.Figure("far.png", "FAR success", [R.Panel("FAR", "step", "success", lines, ref=0.9, ylim=(0, 1)),
                                                                 R.Panel("CLOSE", "step", "success", lines[:1])])]),
    ])


def test_render_lays_out_every_block_in_order_and_draws_the_figures(tmp_path, monkeypatch):
    drawn = []
    real = plt.Axes.plot

    def spy(self, *a, **kw):
        drawn.append((kw.get("label"), kw.get("color")))
        return real(self, *a, **kw)

    monkeypatch.setattr(plt.Axes, "plot", spy)
    md = R.render(_report(), tmp_path)
    order = [md.index(s) for s in ("# Toy", "π* solves FAR.", "| method | FAR final |", f"## {R.STUDY_HEADING}", "a note",
                                   "| finetune | 0.50 [0.40, 0.60]", "## Curves", "![FAR success](far.png)")]
    assert order == sorted(order)
    assert (tmp_path / "far.png").stat().st_size > 0
    # one colour per method, the same in every panel and every family (the registry's order)
    assert ("finetune", R.colour("finetune")) in drawn and R.colour("finetune") != R.colour("ewc")
    assert len({c for label, c in drawn if label == "finetune"}) == 1


def test_write_is_atomic_and_refuses_an_unknown_block(tmp_path):
    out = R.write(_report(), tmp_path / "report")
    assert (out / "report.md").read_text().startswith("# Toy") and (out / "far.png").exists()
    with pytest.raises(TypeError, match="a report block must be"):
        R.write(R.Report("bad", [R.Section(None, [42])]), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing half-written

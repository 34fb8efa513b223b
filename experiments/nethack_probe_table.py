"""Print every NetHack budget probe's result (``experiments/results/nethack_*probe.json``) as one Markdown table.

The probes (``probe_nethack_budget.py``) each answer one question about the fine-tuning budget;
read side by side they show which knob moves which comparison. The table is generated rather than
typed so that docs/nethack.md cannot drift from the result files:

    python experiments/nethack_probe_table.py > /tmp/table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# The comparisons the study's claims rest on, as (part, policy, vs).
CLAIMS = [("close", "finetune", "pretrained"), ("close", "ks", "pretrained"), ("close", "ks", "finetune"),
          ("far", "finetune", "pretrained"), ("far", "ks", "pretrained"), ("far", "ks", "finetune")]
NAMES = {"pretrained": "π*", "finetune": "FT", "ks": "KS"}


def cell(cmp: dict | None) -> str:
    """``+1.8 [−2.7, +7.0]``, bold when ``retainrl.pipeline.stats.verdict`` calls it shown (the interval excludes 0); ``–`` when the probe did not run that pair."""
    if cmp is None:
        return "–"
    from retainrl.pipeline.stats import verdict

    text = f"{cmp['diff']:+.1f} [{cmp['ci_low']:+.1f}, {cmp['ci_high']:+.1f}]"
    return f"**{text}**" if verdict(cmp) in ("higher", "lower") else text


def row(path: Path) -> str:
    d = json.loads(path.read_text())
    cmps = {(c["part"], c["a"], c["b"]): c for c in d["comparisons"] if c["metric"] == "score_gain"}
    episodes = next(iter(cmps.values()))["episodes"] if cmps else "?"  # per seed and part
    knobs = ", ".join(d.get("set") or []) or "–"
    cells = [path.stem.removeprefix("nethack_").removesuffix("_probe"), f"{d['env_steps']:,}", str(d["seeds"]),
             str(d.get("epochs", "–")), str(d.get("lr", "–")), knobs, str(episodes), f"{d['seconds'] / 60:.0f}"]
    return "| " + " | ".join(cells + [cell(cmps.get(c)) for c in CLAIMS]) + " |"


def main() -> None:
    files = sorted(RESULTS.glob("nethack_*probe.json"))
    if not files:
        sys.exit(f"no probe results in {RESULTS}")
    head = ["probe", "env steps / run", "seeds", "epochs", "lr", "--set", "eval episodes", "min"]
    head += [f"{part.upper()} {NAMES[a]} − {NAMES[b]}" for part, a, b in CLAIMS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for f in files:
        print(row(f))


if __name__ == "__main__":
    main()

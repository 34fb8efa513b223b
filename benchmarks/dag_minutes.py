"""Minutes of each family's default DAG, from the logs of a `dvc repro` (or `make run`) run.

Every stage logs ``<stage>[<family>…] done in <s>s`` (``retainrl.core.stage``); summing those per
family gives the compute each family's DAG took, whatever ran in parallel. Run on the logs of a
`dvc repro` from an empty cache:

    dvc repro 2>&1 | tee /tmp/repro.log
    python benchmarks/dag_minutes.py /tmp/repro.log --note "idle 2-core box"   # → benchmarks/results/dag_default.json

``--merge`` keeps the families the logs do not cover from the existing file (each family carries
the note and date of its own measurement), so families rerun in different sessions add up; of a
family the logs cover only in part (its stages that DVC found up to date did not run), the stages
they miss keep their earlier minutes, listed under ``carried`` with the date they were measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from collections import defaultdict
from datetime import date
from pathlib import Path

DONE = re.compile(r"retainrl\.core\.stage: (\w+)\[(\w+)[^\]]*\] done in ([0-9.]+)s")


def minutes(logs: list[Path]) -> dict:
    per_stage: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    runs: dict[str, int] = defaultdict(int)
    for log in logs:
        for stage, family, seconds in DONE.findall(log.read_text(errors="replace")):
            per_stage[family][stage] += float(seconds)
            runs[family] += 1
    return {
        family: {"minutes": round(sum(st.values()) / 60, 1), "stage_runs": runs[family],
                 "minutes_per_stage": {k: round(v / 60, 2) for k, v in sorted(st.items())}}
        for family, st in sorted(per_stage.items())
    }


def merge_family(old: dict | None, new: dict) -> dict:
    """``new`` plus the stages only ``old`` has (a partial rerun), each carried with its date."""
    if not old:
        return new
    carried = {k: v for k, v in old["minutes_per_stage"].items() if k not in new["minutes_per_stage"]}
    if not carried:
        return new
    per_stage = dict(sorted({**new["minutes_per_stage"], **carried}.items()))
    dates = {k: old.get("carried", {}).get(k, old["measured"]) for k in carried}
    return {**new, "minutes": round(sum(per_stage.values()), 1), "minutes_per_stage": per_stage, "carried": dates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--note", default="", help="the conditions of the run (load, parallel jobs)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dag_default.json"))
    ap.add_argument("--merge", action="store_true", help="keep the other families of the existing --out file")
    args = ap.parse_args()
    fams = minutes(args.logs)
    for f in fams.values():
        f["note"] = args.note
        f["measured"] = date.today().isoformat()
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())["families"]
        fams = {**old, **{name: merge_family(old.get(name), f) for name, f in fams.items()}}
    out = {"what": "compute minutes per family's default-profile DAG, summed from each stage's own timing",
           "machine": {"platform": platform.platform(), "python": platform.python_version()},
           "families": dict(sorted(fams.items())), "total_minutes": round(sum(f["minutes"] for f in fams.values()), 1)}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()

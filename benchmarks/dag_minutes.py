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

Compute minutes are not the wait: `make run` runs one stage per core. ``--wall`` reads the wall
clock from a `make run` log with a time stamp on every line (the ``date +%H:%M:%S`` loop of
``benchmarks/suite_minutes.py``'s docstring) and records it under ``wall``: the minutes `make run`
reports, its jobs, per family the span from its first stage's first line to its last line
(stages prefixed ``<stage> | ``, as `make run` prints them side by side), and the same span per
stage (a matrix stage's items together: how long the DAG spent in, say, NetHack's fine-tuning):

    make run 2>&1 | while IFS= read -r l; do printf '%s %s\\n' "$(date +%H:%M:%S)" "$l"; done | tee /tmp/run.log
    python benchmarks/dag_minutes.py /tmp/run.log --wall --note "idle, fresh clone"
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
MAKE_RUN_DONE = re.compile(r"retainrl: done, (\d+) stage\(s\) ran in ([0-9.]+) min")
JOBS = re.compile(r"retainrl: \d+ stage\(s\) out of date.*; up to (\d+) at a time")
STAGE_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d) (([a-z0-9]+)_[a-z0-9_]+)(?:@\S+)? \| ")


def wall(text: str) -> dict:
    """The wall clock of one `make run` (see the module docstring); raises if it did not finish."""
    done, jobs = MAKE_RUN_DONE.search(text), JOBS.search(text)
    if not done or not jobs:
        raise SystemExit("--wall: no finished `make run` in the log (its 'out of date' and 'done, N stage(s) ran' lines)")
    if len(MAKE_RUN_DONE.findall(text)) != 1:
        raise SystemExit("--wall: the log must hold exactly one finished `make run`")
    spans: dict[str, list[int]] = {}
    stage_spans: dict[str, list[int]] = {}  # a matrix stage's items together (`nethack_finetune@ks` → nethack_finetune)
    last, day = None, 0
    for line in text.splitlines():
        m = STAGE_LINE.match(line)
        if not m:
            continue
        t = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3]) + day
        if last is not None and t < last - 12 * 3600:
            day += 24 * 3600  # past midnight (once per day crossed)
            t += 24 * 3600
        last = t
        for key, table in ((m[5], spans), (m[4], stage_spans)):
            first_last = table.setdefault(key, [t, t])
            first_last[1] = max(first_last[1], t)
    return {"minutes": float(done[2]), "jobs": int(jobs[1]), "stages": int(done[1]),
            "span_minutes": {f: round((b - a) / 60, 1) for f, (a, b) in sorted(spans.items())},
            "stage_span_minutes": {f: round((b - a) / 60, 1) for f, (a, b) in sorted(stage_spans.items())}}


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
    ap.add_argument("--wall", action="store_true", help="also record the wall clock of the `make run` in the logs")
    args = ap.parse_args()
    fams = minutes(args.logs)
    old_file = json.loads(args.out.read_text()) if args.merge and args.out.exists() else {}
    whole = old_file.get("wall")
    if args.wall:
        whole = {**wall("\n".join(log.read_text(errors="replace") for log in args.logs)), "note": args.note,
                 "measured": date.today().isoformat()}
    for f in fams.values():
        f["note"] = args.note
        f["measured"] = date.today().isoformat()
    if args.merge and old_file:
        old = old_file["families"]
        fams = {**old, **{name: merge_family(old.get(name), f) for name, f in fams.items()}}
    out = {"what": "compute minutes per family's default-profile DAG, summed from each stage's own timing",
           "machine": {"platform": platform.platform(), "python": platform.python_version()},
           "families": dict(sorted(fams.items())), "total_minutes": round(sum(f["minutes"] for f in fams.values()), 1)}
    if whole:
        out["wall"] = whole
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()

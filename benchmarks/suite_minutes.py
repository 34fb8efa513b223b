"""How long `make test` takes on a fresh clone, from the log of a `CI=true bash .ci/run` run.

The log must carry a wall-clock stamp on every line (``HH:MM:SS <line>``) and end with the
wrapper's ``rc=<status> total=<seconds>s`` line, as written by

    git clone -q . /tmp/ci-check && cd /tmp/ci-check && \\
      (start=$(date +%s); CI=true bash .ci/run 2>&1 | while IFS= read -r l; do printf "%(%H:%M:%S)T %s\\n" -1 "$l"; done; \\
       echo "rc=${PIPESTATUS[0]} total=$(( $(date +%s) - start ))s") > /tmp/ci.log
    python benchmarks/suite_minutes.py /tmp/ci.log --label idle --note "…"   # → benchmarks/results/test_suite.json

It records the set-up (venv and pinned install) and the test minutes, the pytest summary and the
slowest tests (pytest's ``--durations``), under ``label``; other labels in the file are kept.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import date
from pathlib import Path

STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d) ")
SUMMARY = re.compile(r"\b\d+ (?:passed|failed)\b.* in ([0-9.]+)s")  # pytest's last line, e.g. "2 failed, 370 passed, … in 1459.69s"
DURATION = re.compile(r"^\d\d:\d\d:\d\d ([0-9.]+)s (setup|call|teardown) +(\S+)")
TOTAL = re.compile(r"^rc=(\d+) total=(\d+)s")


def _seconds(line: str) -> int | None:
    m = STAMP.match(line)
    return None if m is None else int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])


def parse(text: str) -> dict:
    lines = text.splitlines()
    start = next(t for t in map(_seconds, lines) if t is not None)
    pytest_at = next(_seconds(ln) for ln in lines if "-m pytest" in ln and _seconds(ln) is not None)
    summary = next((m for m in map(SUMMARY.search, reversed(lines)) if m), None)
    total = next((m for m in map(TOTAL.match, lines) if m), None)
    if summary is None or total is None:
        raise SystemExit("the log has no pytest summary line or no final 'rc=… total=…s' line: did the run finish?")
    slow = [{"seconds": float(m[1]), "phase": m[2], "test": m[3]} for m in map(DURATION.match, lines) if m]
    def count(word: str) -> int:
        m = re.search(rf"(\d+) {word}\b", summary[0])
        return int(m[1]) if m else 0

    return {
        "status": int(total[1]), "passed": count("passed"), "failed": count("failed"),
        "setup_minutes": round((pytest_at - start) % 86400 / 60, 1),
        "pytest_minutes": round(float(summary[1]) / 60, 1),
        "total_minutes": round(int(total[2]) / 60, 1),
        "slowest": slow[:12],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--label", required=True, help="e.g. idle, loaded")
    ap.add_argument("--note", default="", help="what else ran on the machine, which commit")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "test_suite.json")
    args = ap.parse_args(argv)
    result = {**parse(args.log.read_text(errors="replace")), "note": args.note, "measured": date.today().isoformat()}
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data[args.label] = result
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(args.out)
    print(json.dumps({args.label: {k: v for k, v in result.items() if k != "slowest"}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

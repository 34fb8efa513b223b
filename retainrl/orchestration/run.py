"""`make run`: `dvc repro` that says where it is (stage i of n) and where the results are.

DVC prints each stage's own output, which for a 2-hour default DAG scrolls past without saying how
much is left. This wrapper asks DVC which stages are out of date first (`dvc status`), then runs
`dvc repro` unchanged, passing its output through and printing ``[i/n] stage`` as each starts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

RUNNING = re.compile(r"Running stage '([^']+)'")


def stale_stages(dvc: list[str], targets: list[str] | None = None) -> list[str]:
    """The stages `dvc repro [targets]` will run: those `dvc status` reports (a changed upstream
    counts; with targets, their upstream stages are checked too, as `repro` would run them)."""
    out = subprocess.run([*dvc, "status", "--json", *(["--with-deps", *targets] if targets else [])], capture_output=True, text=True)
    try:
        return [name for name in json.loads(out.stdout or "{}") if not name.endswith(".dvc")]
    except json.JSONDecodeError:
        return []


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    dvc = [sys.executable, "-m", "dvc"]
    todo = stale_stages(dvc, [a for a in args if not a.startswith("-")])  # targets given: only their DAG counts
    n = len(todo)
    print(f"retainrl: {n} stage(s) out of date" + (f": {', '.join(todo[:6])}{' …' if n > 6 else ''}" if n else ""), flush=True)
    started, i = time.monotonic(), 0
    proc = subprocess.Popen([*dvc, "repro", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    for line in proc.stdout:
        hit = RUNNING.search(line)
        if hit:
            i += 1
            total = max(n, i)
            print(f"[{i}/{total}] {hit.group(1)}  ({(time.monotonic() - started) / 60:.1f} min so far)", flush=True)
        sys.stdout.write(line)
    rc = proc.wait()
    minutes = (time.monotonic() - started) / 60
    if rc == 0:
        print(f"retainrl: done, {i} stage(s) ran in {minutes:.1f} min. Results: reports/index.md (every family), "
              "reports/<family>/report/report.md, `dvc metrics show`, `dvc plots show`.", flush=True)
    else:
        print(f"retainrl: dvc repro failed after {i} stage(s) ({minutes:.1f} min), exit status {rc}", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

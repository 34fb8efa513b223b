"""`make run`: `dvc repro` on every core, saying where it is (stage i of n) and where the results are.

Plain `dvc repro` runs one stage at a time, and almost every stage uses one core, so on the
2-core machine it left one core idle for the whole default DAG. This runner keeps DVC in charge of
what is stale and of dvc.lock, but starts up to ``--jobs`` stages side by side, each as
``dvc --wait-for-lock repro --single-item STAGE`` (DVC releases its repo lock while a stage's
command runs: flows/dvcops.py), a stage once all its upstream stages are done, the one with the
longest expected chain after it first (:meth:`Dag.critical_order`). A stage runs when `dvc status`
listed it before the run or when one of its upstream stages re-ran (DVC then skips it by itself if
its inputs came out identical). The Prefect flow (flows/pipeline.py) schedules the same way; this
is the same DAG without a Prefect server.

Each stage's output passes through, prefixed with its name when stages run side by side, and
``[i/n] stage`` is printed as each starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from retainrl.orchestration.dag import load_dag

RUNNING = re.compile(r"Running stage '([^']+)'")


def stale_stages(dvc: list[str], targets: list[str] | None = None) -> list[str]:
    """The stages `dvc status` reports as changed (with targets: those and their upstream)."""
    out = subprocess.run([*dvc, "status", "--json", *(["--with-deps", *targets] if targets else [])], capture_output=True, text=True)
    try:
        return [name for name in json.loads(out.stdout or "{}") if not name.endswith(".dvc")]
    except json.JSONDecodeError:
        return []


class Progress:
    """Prints ``[i/n] stage`` as stages start (n grows when more run than `dvc status` listed)."""

    def __init__(self, n: int):
        self.n, self.i, self.started, self.lock = n, 0, time.monotonic(), threading.Lock()

    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60

    def line(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text)
            sys.stdout.flush()

    def stage_started(self, name: str) -> None:
        with self.lock:
            self.i += 1
            print(f"[{self.i}/{max(self.n, self.i)}] {name}  ({self.minutes():.1f} min so far)", flush=True)


def repro_one(dvc: list[str], name: str, progress: Progress, prefix: bool) -> tuple[int, bool]:
    """``dvc repro --single-item name``, its output passed through; (exit status, whether it ran)."""
    proc = subprocess.Popen([*dvc, "--wait-for-lock", "repro", "--single-item", name], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    ran = False
    for line in proc.stdout:
        if RUNNING.search(line):
            ran = True
            progress.stage_started(name)
        progress.line(f"{name} | {line}" if prefix else line)
    return proc.wait(), ran


def run_dag(dvc: list[str], targets: list[str], jobs: int, progress: Progress, stale: set[str]) -> int:
    """Run the selected DAG, ``jobs`` stages at a time; the first failing stage's exit status (0: all ran)."""
    dag = load_dag(".").select(targets or None)
    pending = dag.critical_order()
    done: set[str] = set()
    ran: set[str] = set()
    rc = 0
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        inflight: dict = {}
        while pending or inflight:
            started = True
            while started and rc == 0:  # after a failure, let running stages finish but start nothing new
                started = False
                for name in list(pending):
                    if len(inflight) >= jobs:
                        break
                    ups = dag.stages[name].upstream
                    if not all(u in done for u in ups):
                        continue
                    pending.remove(name)
                    started = True
                    if name in stale or any(u in ran for u in ups):
                        inflight[pool.submit(repro_one, dvc, name, progress, jobs > 1)] = name
                    else:  # up to date, and nothing it reads was remade
                        done.add(name)
            if rc != 0:
                pending.clear()
            if not inflight:
                break
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for fut in finished:
                name = inflight.pop(fut)
                code, did = fut.result()
                if code != 0:
                    progress.line(f"retainrl: stage {name} failed (exit status {code})\n")
                    rc = rc or code
                    continue
                done.add(name)
                if did:
                    ran.add(name)
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m retainrl.orchestration.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help="stages or matrix groups (with their upstream); default: the whole DAG")
    ap.add_argument("--jobs", "-j", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    help="stages run side by side (default: this process's CPU cores)")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if a.jobs < 1:
        ap.error(f"--jobs must be ≥ 1, got {a.jobs}")
    dvc = [sys.executable, "-m", "dvc"]
    todo = stale_stages(dvc, a.targets)
    n = len(todo)
    print(f"retainrl: {n} stage(s) out of date" + (f": {', '.join(todo[:6])}{' …' if n > 6 else ''}" if n else "")
          + f"; up to {a.jobs} at a time", flush=True)
    progress = Progress(n)
    rc = run_dag(dvc, a.targets, a.jobs, progress, set(todo))
    if rc == 0:
        print(f"retainrl: done, {progress.i} stage(s) ran in {progress.minutes():.1f} min. Results: reports/index.md (every family), "
              "reports/<family>/report/report.md, `dvc metrics show`, `dvc plots show`.", flush=True)
    else:
        print(f"retainrl: dvc repro failed after {progress.i} stage(s) ({progress.minutes():.1f} min), exit status {rc}", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

"""`make run`: `dvc repro` on every core, saying where it is (stage i of n) and where the results are.

Plain `dvc repro` runs one stage at a time, and almost every stage uses one core, so on the
2-core machine it left one core idle for the whole default DAG. This runner keeps DVC in charge of
what is stale and of dvc.lock, but starts up to ``--jobs`` stages side by side, each as
``dvc --wait-for-lock repro --single-item STAGE`` (DVC releases its repo lock while a stage's
command runs: flows/dvcops.py), a stage once all its upstream stages are done, the one with the
longest expected chain after it first (:meth:`Dag.critical_order`). A stage runs when `dvc status`
listed it before the run or when an upstream stage may have changed its outputs (anything but DVC's
"didn't change"; DVC then skips it by itself if its inputs came out identical). The Prefect flow
(flows/pipeline.py) orders stages the same way; this is the DAG without a Prefect server.

Each stage's output passes through, prefixed with its name when stages run side by side, and
``[i/n] stage`` is printed as each starts.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from retainrl.orchestration.dag import Dag, DagError, load_dag
from retainrl.orchestration.dvcstatus import parse_status

RUNNING = re.compile(r"Running stage '([^']+)'")
#: What `dvc repro --single-item` prints when a stage's inputs match dvc.lock: nothing was remade.
UNCHANGED = re.compile(r"Stage '[^']+' didn't change, skipping")


class RunError(RuntimeError):
    """`dvc status` failed, or the DAG could not be scheduled: nothing may be taken as up to date."""


def stale_stages(dvc: list[str], targets: list[str] | None = None) -> list[str]:
    """The stages `dvc status` reports as changed (with targets: those and their upstream).

    It decides what runs, so a failed or unreadable `dvc status` is an error, never "nothing to do".
    """
    res = subprocess.run([*dvc, "--wait-for-lock", "status", "--json", *(["--with-deps", *targets] if targets else [])],
                         capture_output=True, text=True, errors="replace")
    out = res.stdout.strip()
    try:
        if res.returncode != 0:
            raise ValueError(f"exit status {res.returncode}")
        data = parse_status(out)
    except ValueError as err:
        raise RunError(f"`dvc status` failed ({err}): {(res.stderr or out).strip()[-500:]}") from err
    return [name for name in data if not name.endswith(".dvc")]


class Progress:
    """Prints ``[i/n] stage`` as stages start (n grows when more run than `dvc status` listed)."""

    def __init__(self, n: int):
        self.n, self.i, self.started, self.lock = n, 0, time.monotonic(), threading.Lock()

    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60

    def line(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()

    def stage_started(self, name: str) -> None:
        with self.lock:
            self.i += 1
            print(f"[{self.i}/{max(self.n, self.i)}] {name}  ({self.minutes():.1f} min so far)", flush=True)


def repro_one(dvc: list[str], name: str, progress: Progress, prefix: bool) -> tuple[int, bool]:
    """``dvc repro --single-item name``, its output passed through; (exit status, whether its outputs
    may have changed). Only DVC's "didn't change, skipping" means they did not: a stage restored
    from DVC's run cache ("is cached - skipping run") may change the files downstream stages read."""
    proc = subprocess.Popen([*dvc, "--wait-for-lock", "repro", "--single-item", name], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    unchanged = False
    for line in proc.stdout:
        if RUNNING.search(line):
            progress.stage_started(name)
        unchanged = unchanged or bool(UNCHANGED.search(line))
        progress.line(f"{name} | {line}" if prefix else line)
    return proc.wait(), not unchanged


def run_dag(dvc: list[str], dag: Dag, jobs: int, progress: Progress, stale: set[str]) -> int:
    """Run ``dag``, ``jobs`` stages at a time; the first failing stage's exit status (0: all done).

    A stage runs once all its upstream stages succeeded, if `dvc status` listed it (``stale``) or an
    upstream stage's outputs may have changed; otherwise it is up to date and skipped. After a
    failure, running stages finish and nothing new starts.
    """
    pending = dag.critical_order()
    done: set[str] = set()
    remade: set[str] = set()
    rc = 0
    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        inflight: dict = {}
        while pending or inflight:
            started = True
            while started and rc == 0:  # skipping a stage can make others ready: look again
                started = False
                for name in list(pending):
                    if len(inflight) >= jobs:
                        break
                    ups = dag.stages[name].upstream
                    if not all(u in done for u in ups):
                        continue
                    pending.remove(name)
                    started = True
                    if name in stale or any(u in remade for u in ups):
                        inflight[pool.submit(repro_one, dvc, name, progress, jobs > 1)] = name
                    else:  # up to date, and nothing it reads was remade
                        done.add(name)
            if rc != 0:
                pending.clear()
            if not inflight:
                if pending:  # cannot happen for a DAG from Dag.select; never report it as done
                    raise RunError(f"stages whose upstream never finished: {', '.join(pending)}")
                break
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for fut in finished:
                name = inflight.pop(fut)
                try:
                    code, changed = fut.result()
                except Exception as err:  # noqa: BLE001 — reading the stage's output failed: a failed stage
                    code, changed = 1, True
                    progress.line(f"retainrl: stage {name}: {err!r}")
                if code != 0:
                    progress.line(f"retainrl: stage {name} failed (exit status {code})")
                    rc = rc or code
                    continue
                done.add(name)
                if changed:
                    remade.add(name)
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
    try:
        dag = load_dag(".").select(a.targets or None)
        todo = stale_stages(dvc, a.targets)
    except (DagError, RunError) as err:
        print(f"retainrl: {err}", file=sys.stderr)
        return 2
    n = len(todo)
    print(f"retainrl: {n} stage(s) out of date" + (f": {', '.join(todo[:6])}{' …' if n > 6 else ''}" if n else "")
          + f"; up to {a.jobs} at a time", flush=True)
    progress = Progress(n)
    rc = run_dag(dvc, dag, a.jobs, progress, set(todo))
    if rc == 0:
        print(f"retainrl: done, {progress.i} stage(s) ran in {progress.minutes():.1f} min. Results: reports/index.md (every family), "
              "reports/<family>/report/report.md, `dvc metrics show`, `dvc plots show`.", flush=True)
    else:
        print(f"retainrl: dvc repro failed after {progress.i} stage(s) ({progress.minutes():.1f} min), exit status {rc}", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())

"""How deep the Go-Explore search gets per frame budget: rooms on the best route vs frames and time.

Runs the ``collect_demos`` stage (default params, one seed at a time, from an empty archive) into
a scratch directory and collects each run's ``route.json``. The search is deterministic, so the
frames at which each new room appears are exact and repeatable; the seconds depend on the machine
and its load (recorded next to them).

    PYTHONPATH=. nice -n 10 python experiments/search_depth_montezuma.py --seeds 0 1 --frames 4000000

Writes ``experiments/results/montezuma_search.json`` (merging with runs already there).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from retainrl.core.log import setup_logging

log = logging.getLogger("search_depth_montezuma")
RESULTS = Path(__file__).parent / "results" / "montezuma_search.json"


def first_frames_for(progress: list[dict], rooms: int) -> dict | None:
    return next((row for row in progress if row["rooms"] >= rooms), None)


def main() -> None:
    from retainrl.families.montezuma import stages as mz
    from retainrl.core.paths import Paths

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--frames", type=int, default=4_000_000)
    ap.add_argument("--far-boundary", type=int, default=7)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    setup_logging()
    runs = json.loads(args.out.read_text())["runs"] if args.out.exists() else {}
    for seed in args.seeds:
        p = mz.parse_params({"search": {"frame_budget": args.frames, "seed": seed}, "route": {"far_boundary": 2}})
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            paths = Paths("montezuma", root=Path(tmp))
            mz.collect_demos(p, paths)
            wall = time.perf_counter() - t0
            _, route = mz.load_demos(paths)
            timing = json.loads((mz.search_report_dir(paths) / mz.TIMING_JSON).read_text())
        progress = timing["progress"]  # rows of frames, rooms, seconds
        far = first_frames_for(progress, args.far_boundary)
        runs[f"seed{seed}_frames{args.frames}"] = {
            "seed": seed,
            "frame_budget": args.frames,
            "rooms": route["rooms"],
            "score": route["score"],
            "route_steps": route["steps"],
            "cells": route["search"]["cells"],
            "search_seconds": timing["seconds"],
            "stage_wall_seconds": round(wall, 1),
            "loadavg_at_end": list(os.getloadavg()),
            f"reached_room_{args.far_boundary}_at": far,
            "progress": progress,
            "sticky_replay_rooms": route["sticky_replay_rooms"],
        }
        log.info("seed %d: %d rooms %s; room %d at %s", seed, len(route["rooms"]), route["rooms"], args.far_boundary, far)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"note": __doc__.strip().splitlines()[0], "runs": runs}, indent=2) + "\n")
    print(f"\n{'run':<26}{'rooms':>6}{'score':>8}{'frames@7th':>12}{'s@7th':>8}{'total s':>9}")
    for name, r in runs.items():
        far = r[f"reached_room_{args.far_boundary}_at"] if f"reached_room_{args.far_boundary}_at" in r else None
        print(f"{name:<26}{len(r['rooms']):>6}{r['score']:>8g}{(far or {}).get('frames', '-'):>12}{(far or {}).get('seconds', '-'):>8}{r['search_seconds']:>9}")


if __name__ == "__main__":
    main()

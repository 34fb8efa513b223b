"""Is NetHack BC bit-reproducible across processes, and does the game clock matter to it?

Runs ``--steps`` BC updates (the default profile's batch, unroll, lr and seed) from the
pipeline's demos (``data/nethack/demos``) in separate fresh processes:

- ``pinned``: twice with NetHack's clock pinned to the project's epoch (what every stage does);
- ``other_clock``: once pinned to another epoch, which is what an unpinned run at another time
  of day amounts to (NetHack hashes the clock into shop prices and names).

and reports the first update at which each run's loss differs from the first ``pinned`` run
(None: identical to the last bit) and whether the final weights are identical. Writes
``experiments/results/nethack_bc_repro.json``.

Usage (after ``dvc repro nethack_collect_demos``)::

    python experiments/nethack_bc_repro.py [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import functools, hashlib, json, sys
import torch
torch.set_num_threads(1)
from retainrl.core.config import load_params
from retainrl.families.nethack import clock as nethack_clock, sf
from retainrl.families.nethack import stages as nhf
epoch, steps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
nethack_clock.pin_game_clock = functools.partial(nethack_clock.pin_game_clock, epoch)
p = load_params("params.yaml", only="nethack").section("nethack")
pp = p.pretrain
demos = nhf.load_demos("data/nethack/demos")
cfg = sf.sf_config(__import__("pathlib").Path(sys.argv[4]), "bc")
ac, m = sf.behavioural_cloning(demos, cfg, steps=steps, batch=pp.batch, unroll_len=pp.unroll,
                               lr=pp.lr, seed=pp.seed, character=p.env.character, progress=False)
h = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in ac.state_dict().values())).hexdigest()
json.dump({"loss": m["bc_loss"], "acc": m["bc_acc"], "weights_sha256": h}, open(out, "w"))
"""


def run(epoch: int, steps: int, tmp: Path, tag: str) -> dict:
    out = tmp / f"{tag}.json"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, str(epoch), str(steps), str(out), str(tmp / tag)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    res = json.loads(out.read_text())
    res["seconds"] = time.perf_counter() - t0
    return res


def first_difference(a: list[float], b: list[float]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def main() -> None:
    from retainrl.families.nethack.clock import EPOCH

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--other-epoch", type=int, default=EPOCH + 86_400 * 200 + 12_345)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        runs = {"pinned": run(EPOCH, args.steps, tmp, "a"), "pinned_again": run(EPOCH, args.steps, tmp, "b"),
                "other_clock": run(args.other_epoch, args.steps, tmp, "c")}
    ref = runs["pinned"]
    result = {
        "steps": args.steps,
        "epochs": {"pinned": EPOCH, "other_clock": args.other_epoch},
        "runs": {
            k: {"first_loss_difference_at_update": first_difference(ref["loss"], r["loss"]),
                "weights_identical": r["weights_sha256"] == ref["weights_sha256"],
                "final_loss": r["loss"][-1], "seconds": round(r["seconds"], 1)}
            for k, r in runs.items()
        },
    }
    print(json.dumps(result, indent=1))
    dest = ROOT / "experiments/results/nethack_bc_repro.json"
    dest.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

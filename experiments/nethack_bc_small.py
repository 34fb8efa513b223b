"""Small real run: 20 expert games → BC of π* (300 updates) → π* on CLOSE and FAR (5 episodes each).

    PYTHONPATH=. nice -n 10 python experiments/nethack_bc_small.py   (writes experiments/results/nethack_bc_small.json)
"""
import json, time, tempfile, torch
from pathlib import Path
torch.set_num_threads(1)
from retainrl.families.nethack import results as nethack_eval
from retainrl.families.nethack import stages as nhf
from retainrl.core.paths import Paths
from retainrl.core.log import setup_logging
def main():
    setup_logging("WARNING")
    root = Path(tempfile.mkdtemp(prefix="nh_small_"))
    p = nhf.validate_params({"demos": {"games": 20, "seed": 0}, "pretrain": {"steps": 300, "critic": {"env_steps": 0, "fit_episodes": 0}},
                             "finetune": {"methods": []}, "evaluate": {"episodes": 5, "max_steps": 1000}})
    paths = Paths("nethack", root=root)
    t = {}
    t0 = time.time(); s = nhf.collect_demos(p, paths); t["collect_s"] = time.time() - t0
    t0 = time.time(); bc = nhf.pretrain(p, paths); t["pretrain_s"] = time.time() - t0
    t0 = time.time(); ev = nethack_eval.evaluate(p, paths); t["evaluate_s"] = time.time() - t0
    out = {"expert": s, "bc": bc, "eval": ev, "times": t}
    print(json.dumps(out, indent=2))
    (Path(__file__).parent / "results" / "nethack_bc_small.json").write_text(json.dumps(out, indent=2))
if __name__ == "__main__":
    main()

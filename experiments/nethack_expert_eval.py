"""Measure the scripted NetHack expert over N seeded games (the quality numbers the lead reports).

    python experiments/nethack_expert_eval.py --games 100 --seed 0 --out experiments/results/nethack_expert_100.json
"""

from __future__ import annotations

import argparse
import collections
import json
import logging

from tqdm import tqdm

from retainrl.families.nethack.stages import game_seeds, make_env, play_expert, summarize
from retainrl.families.nethack.expert import Expert
from retainrl.core.log import setup_logging

log = logging.getLogger("nethack_expert_eval")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=30_000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--dive-margin", type=int, default=3, help="-1: dive as fast as possible")
    ap.add_argument("--no-elbereth", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="print each game and the bot's reasons")
    args = ap.parse_args()
    setup_logging()
    env = make_env(max_steps=args.max_steps)
    expert = Expert(dive_margin=None if args.dive_margin < 0 else args.dive_margin, elbereth=not args.no_elbereth)
    records, games = [], []
    for i, s in enumerate(tqdm(game_seeds(args.seed, args.games), unit="game")):
        rec = play_expert(env, s, args.max_steps, 4, expert)
        records.append(rec)
        reasons = collections.Counter(expert.reason_log) if hasattr(expert, "reason_log") else {}
        games.append({"i": i, "seeds": s.tolist(), "score": rec.score, "max_depth": rec.max_depth, "turns": rec.turns,
                      "steps": len(rec.actions), "done": rec.done, "far_step": rec.far_step, "end": [m for _, m in list(expert.trace)[-8:] if m]})
        if args.verbose:
            print(games[-1], dict(reasons.most_common(6)) if reasons else "", flush=True)
    env.close()
    summary = summarize(records)
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"summary": summary, "games": games, "command": vars(args)}, fh, indent=2)


if __name__ == "__main__":
    main()

"""Does the scripted expert reach Sokoban often enough for Sokoban-entry FAR starts? (issue #19)

The study also evaluates NetHack from the states where its expert first entered Sokoban. Sokoban
is entered by the *up* staircase on the level below the Oracle (``dungeon.def``: the Oracle at
Dlvl 5–9, Sokoban chained one level below it, "up"), so a bot that only ever descends never goes
there. This replays the demo games (stored seeds + actions, ``nethack_collect_demos``) and counts,
per game, every dungeon branch the hero stood in (names read from NLE's own ``dungeon.def``, in
the order NetHack numbers them) and the deepest level. Writes
``experiments/results/nethack_sokoban.json``.

    python experiments/nethack_sokoban_reach.py --demos data/nethack/demos
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("nethack_sokoban_reach")
BL_DEPTH, BL_DNUM = 12, 23  # NLE's blstats: depth, dungeon number


def dungeon_names() -> list[str]:
    """The dungeons in NetHack's numbering (the order of ``DUNGEON:`` lines in dungeon.def)."""
    import nle

    text = (Path(nle.__file__).parent / "nethackdir" / "dat" / "dungeon.def").read_text()
    return re.findall(r'^DUNGEON:\s*"([^"]+)"', text, flags=re.M)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from retainrl.core.artifacts import save_json
    from retainrl.core.log import setup_logging
    from retainrl.families.nethack.games import game_actions, iter_replay, load_demos, make_env

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", type=Path, default=ROOT / "data/nethack/demos")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments/results/nethack_sokoban.json")
    args = ap.parse_args(argv)
    setup_logging()
    names = dungeon_names()
    demos = load_demos(args.demos)
    env = make_env(max_steps=10**7)
    per_game = []
    for i in tqdm(range(len(demos["seeds"])), desc="replaying demo games"):
        seen, deepest = set(), 0
        for obs, _ in iter_replay(env, demos["seeds"][i], game_actions(demos, i)):
            bl = obs["blstats"]
            seen.add(names[int(bl[BL_DNUM])])
            deepest = max(deepest, int(bl[BL_DEPTH]))
        per_game.append({"game": i, "branches": sorted(seen), "max_depth": deepest})
    env.close()
    visits = Counter(b for g in per_game for b in g["branches"])
    depths = np.array([g["max_depth"] for g in per_game])
    out = {"games": len(per_game), "games_per_branch": dict(visits), "sokoban_games": visits.get("Sokoban", 0),
           "games_reaching_dlvl_6": int((depths >= 6).sum()), "max_depth_median": float(np.median(depths)),
           "dungeons": names, "per_game": per_game}
    save_json(args.out, out)  # atomic
    log.info("Sokoban in %d of %d games; branches %s; wrote %s", out["sokoban_games"], out["games"], dict(visits), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""NetHack evaluation and report: π* and every fine-tuning snapshot on CLOSE and FAR.

The family's ``results`` module (see ``retainrl.core.family``): a change to how policies are
scored reruns only these two stages, not the demos, BC and APPO.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from retainrl.core.config import ConfigError
from retainrl.retention.methods import BASELINE, REGISTRY
from retainrl.families.nethack.params import Params
from retainrl.families.nethack.games import (
    META_FILE,
    Progress,
    cpu_cores,
    game_seeds,
    make_env,
    reset_seeded,
    restore_far_state,
)
from retainrl.families.nethack.heldout import eval_starts, load_expert, load_starts, starts_dir  # noqa: F401 (eval_starts: the stage)

log = logging.getLogger(__name__)


#: The two evaluation parts, in the order their episode streams are numbered.
PARTS = ("close", "far")
#: Episodes played side by side by one evaluation process (one NLE env each). Results do not
#: depend on it (one random stream per episode); it bounds the envs, and so the memory, per process.
BATCH = 100


def episode_streams(seed: int, part: str, n: int) -> list[np.random.Generator]:
    """One random stream per episode, a pure function of (sampling seed, part, episode index).

    Why per episode: every policy draws step t of episode e from the same stream (common random
    numbers), so a policy that has barely moved from π* replays π*'s episode step for step, and one
    episode that runs longer or ends early does not shift the draws of every episode after it (as
    one stream shared by the episodes in turn did). That is what makes the paired comparisons of
    ``compare_policies`` tight, and it makes the result independent of how episodes are batched.
    """
    return [np.random.default_rng([seed, PARTS.index(part), e]) for e in range(n)]


def run_episodes(ac, cfg, envs: list, starts: list[dict], max_steps: int, greedy: bool, streams: list, teacher=None) -> list[dict]:
    """Play ``ac`` in every env from its start observation (env already there), all in lockstep.

    One batched forward pass per step for all episodes still running: 5–6× cheaper per step on
    a CPU than one episode at a time (``benchmarks/bench_nethack.py``). Episode i samples its
    actions by inverse CDF with one uniform draw per step from ``streams[i]`` (``greedy``: argmax),
    so its result does not depend on which other episodes share the batch. Per episode: score,
    score gained, depth, levels descended, turns, xplvl, steps, death.

    ``teacher``: π* (an ActorCritic), stepped alongside on the same observations with its own
    GRU state; ``kl_pi_star`` is then the mean over the episode's steps of KL(π*(·|s) ‖ π(·|s))
    on the states this policy visits — how far the policy has moved from π* there (0 for π*).
    Fine-tuning from π* keeps π*'s encoder frozen, and the encoder is most of a forward pass, so
    when the two encoders are equal (:func:`same_encoder`) the teacher reuses the policy's
    encoding: the same numbers, one encoder pass per step instead of two.
    """
    import torch

    from retainrl.families.nethack import sf

    n = len(envs)
    if not (len(starts) == len(streams) == n):
        raise ValueError(f"run_episodes: {n} envs, {len(starts)} start observations, {len(streams)} streams")
    pgs = [Progress.start(o) for o in starts]
    first = [(pg.score, pg.max_depth) for pg in pgs]
    cur = [sf.sf_obs(o) for o in starts]
    steps, died, kl = [0] * n, [False] * n, [0.0] * n
    rnn = torch.zeros(n, cfg.rnn_size)
    t_rnn = None if teacher is None else torch.zeros_like(rnn)
    active = list(range(n))
    shared = teacher is not None and same_encoder(ac, teacher)

    def logits(net, head, state, idx):  # sample-factory's forward, without its action sampling
        core, state[idx] = net.forward_core(head, state[idx])
        return torch.log_softmax(net.forward_tail(core, values_only=False, sample_actions=False)["action_logits"], -1)

    with torch.no_grad():
        for t in range(1, max_steps + 1):
            if not active:
                break
            idx = torch.as_tensor(active)
            x = {k: torch.from_numpy(np.stack([cur[i][k] for i in active])) for k in cur[active[0]]}
            head = ac.forward_head(x)
            logp = logits(ac, head, rnn, idx)
            if teacher is not None:
                logp_t = logits(teacher, head if shared else teacher.forward_head(x), t_rnn, idx)
                step_kl = (logp_t.exp() * (logp_t - logp)).sum(-1).tolist()
            if greedy:
                actions = logp.argmax(-1).tolist()
            else:
                cdf = logp.exp().cumsum(-1)
                u = torch.tensor([streams[i].random() for i in active], dtype=cdf.dtype) * cdf[:, -1]
                actions = (cdf < u[:, None]).sum(-1).clamp(max=cdf.shape[1] - 1).tolist()
            still = []
            for j, i in enumerate(active):
                obs, _, term, trunc, _ = envs[i].step(int(actions[j]))
                steps[i] = t
                if teacher is not None:
                    kl[i] += step_kl[j]
                if term or trunc:
                    died[i] = bool(term)
                    continue
                pgs[i].update(obs)
                cur[i] = sf.sf_obs(obs)
                still.append(i)
            active = still
    return [{"score": pg.score, "score_gain": pg.score - s0, "start_depth": d0, "max_depth": pg.max_depth,
             "levels": pg.max_depth - d0, "turns": pg.turns, "xplvl": pg.xplvl, "steps": steps[i], "died": died[i],
             "kl_pi_star": kl[i] / max(steps[i], 1)} for i, (pg, (s0, d0)) in enumerate(zip(pgs, first))]


def same_encoder(a, b) -> bool:
    """Whether two sample-factory ActorCritics have the same encoder, weight for weight."""
    import torch

    sa, sb = a.encoder.state_dict(), b.encoder.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


#: What the evaluation reports per part (CLOSE: from the game start; FAR: from a FAR start state).
EVAL_KEYS = ("score_gain", "max_depth", "levels", "turns", "xplvl", "kl_pi_star")


def _policy_snapshots(p: Params, paths) -> dict[str, list[list[tuple[int, Path, Path]]]]:
    """method → per seed → [(step, experiment dir, snapshot file)], sorted by step."""
    from retainrl.core.artifacts import require

    out = {}
    for m in p.finetune.methods:
        root = require(paths.finetune(m), f"fine-tuned NetHack policy ({m})")
        seeds = sorted(root.glob("seed_*"), key=lambda d: int(d.name.split("_")[1]))
        if not seeds:
            raise ConfigError(f"{root}: no seed_<k> runs; re-run nethack_finetune@{m}")
        out[m] = []
        for d in seeds:
            snaps = sorted((d / "snapshots").glob("step_*.pth"))
            if not snaps:
                raise ConfigError(f"{d / 'snapshots'}: no policy snapshots; re-run nethack_finetune@{m}")
            out[m].append([(int(f.stem.split("_")[1]), d, f) for f in snaps])
    return out


class Player:
    """What one evaluation process holds to play policies: one env per episode, the games, π*.

    ``play`` plays one policy (π* for ``snapshot`` None, else a fine-tuning snapshot with π* as
    the KL teacher) on both parts with sampling seed ``evaluate.seed + k``.
    """

    def __init__(self, p: Params, starts_path: str, pretrained_dir: str):
        from retainrl.families.nethack import sf

        self.ev = p.evaluate
        self.games, self.far = load_starts(starts_path)
        if len(self.far["game"]) < self.ev.episodes:  # more is fine: the first n are what a run for n finds
            raise ConfigError(f"{starts_path}: {len(self.far['game'])} held-out FAR starts for evaluate.episodes "
                              f"{self.ev.episodes}; re-run nethack_eval_starts")
        self.close_seeds = game_seeds(self.ev.seed, self.ev.episodes)
        self.pi_star, self.cfg = sf.load_sf_policy(Path(pretrained_dir))
        self.pi_star.eval()
        self.envs = [make_env(p.env.character, 10**7) for _ in range(min(self.ev.episodes, BATCH))]

    def play(self, snapshot: tuple[str, str] | None, k: int) -> dict[str, list[dict]]:
        from retainrl.families.nethack import sf

        if snapshot is None:
            ac, cfg, teacher = self.pi_star, self.cfg, None  # its KL to itself is 0
        else:
            ac, cfg = sf.load_snapshot(Path(snapshot[0]), Path(snapshot[1]))
            teacher = self.pi_star
        ac.eval()
        res = {}
        for part in PARTS:
            streams = episode_streams(self.ev.seed + k, part, self.ev.episodes)
            res[part] = []
            for lo in range(0, self.ev.episodes, len(self.envs)):  # in batches of at most BATCH envs
                eps = range(lo, min(lo + len(self.envs), self.ev.episodes))
                envs = self.envs[: len(eps)]
                if part == "close":
                    starts = [reset_seeded(env, self.close_seeds[e]) for e, env in zip(eps, envs)]
                else:  # episode e from held-out start e: each start once per policy and sampling seed
                    starts = [restore_far_state(env, self.games, self.far, e) for e, env in zip(eps, envs)]
                res[part] += run_episodes(ac, cfg, envs, starts, self.ev.max_steps, self.ev.greedy, [streams[e] for e in eps], teacher)
        return res

    def close(self) -> None:
        for env in self.envs:
            env.close()


_PLAYER: Player | None = None  # an evaluation worker process's own Player


def _start_player(p: Params, starts_path: str, pretrained_dir: str) -> None:
    import atexit

    import torch

    global _PLAYER
    torch.set_num_threads(1)  # one process per core: the cores play policies side by side
    _PLAYER = Player(p, starts_path, pretrained_dir)
    atexit.register(_PLAYER.close)


def _play_job(job: tuple[tuple[str, str] | None, int]) -> dict:
    assert _PLAYER is not None
    return _PLAYER.play(*job)


def play_all(p: Params, paths, jobs: list, processes: int | None = None):
    """Yield ``Player.play`` of every job, in job order, using every CPU core this process may use.

    Policies are independent, and each episode draws from its own stream, so which process
    plays which policy changes nothing but float rounding (one thread per process here, the
    default thread count in-process). ``processes`` None: one per core (capped by the jobs); 1
    plays everything in this process.
    """
    if processes is None:
        processes = cpu_cores()
    processes = max(1, min(processes, len(jobs)))
    if processes == 1:
        player = Player(p, str(starts_dir(paths)), str(paths.pretrained))
        try:
            for job in jobs:
                yield player.play(*job)
        finally:
            player.close()
        return
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from retainrl.core.procs import pool_initializer

    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding NLE and torch threads
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=pool_initializer,  # workers die with the stage
                             initargs=(os.getpid(), _start_player, p, str(starts_dir(paths)), str(paths.pretrained))) as pool:
        yield from pool.map(_play_job, jobs)


def evaluate(p: Params, paths, device=None) -> dict:
    """Stage: π* and every fine-tuning snapshot of every method and seed on CLOSE and FAR.

    CLOSE = ``evaluate.episodes`` fresh seeded games from the start (score, max depth, turns,
    xplvl after at most ``evaluate.max_steps`` env steps); FAR = as many episodes from the
    replayed FAR start states (where the expert first reached Dlvl ``far.start_depth``): the
    score gained on top of the state's score and the levels descended; on both, the mean
    KL(π* ‖ π) over the states the policy visits (π* stepped alongside: how far fine-tuning moved
    the policy from π* on CLOSE, where it trains, and on FAR, where it does not). Every policy plays the
    same games; a method's seed k samples its actions with sampling seed ``evaluate.seed`` + k,
    one random stream per episode (``episode_streams``: common random numbers), and π* is played
    once per such sampling seed (as many as ``finetune.seeds``). Why: a sampled 30-game score of
    one policy is itself noisy (π*'s three sampling seeds scored 42.0 / 33.7 / 31.9 on the same
    games), so π*'s side of a comparison must rest on as many episodes as a method's, and seed k
    of a method pairs with π*'s seed k (same games, same draws: a policy that has barely moved
    replays π*'s episodes nearly step for step). A method's step-0 snapshot *is* π* (same
    weights) and reuses π*'s episodes of its sampling seed;
    ``scratch``'s step 0 is its random init and is played.

    Writes ``metrics.json`` (final snapshot, mean/std over seeds: what ``dvc metrics`` reads),
    ``summary.json`` (also per seed and π*), ``close_score.json`` / ``far_score.json`` (mean
    over seeds per snapshot step: ``dvc plots``) and ``episodes.json`` (every episode).
    """
    from tqdm import tqdm

    from retainrl.core.artifacts import atomic_path, save_json
    from retainrl.pipeline.evaluation import scalar_metrics, spread

    expert = load_expert(starts_dir(paths))
    snapshots = _policy_snapshots(p, paths)
    n_seeds = max(len(seeds) for seeds in snapshots.values()) if snapshots else 1
    # One job per policy to play: π* once per sampling seed, then every snapshot of every method and
    # seed (a step-0 snapshot of a method that starts from π* reuses π*'s episodes of that seed).
    jobs: list[tuple[tuple[str, str] | None, int]] = [(None, k) for k in range(n_seeds)]
    keys: list[tuple[str, int, int]] = [("pretrained", k, 0) for k in range(n_seeds)]
    for m, seeds in snapshots.items():
        for k, snaps in enumerate(seeds):
            for step, exp_dir, snap in snaps:
                if step == 0 and REGISTRY[m].starts_from_pretrained:
                    continue
                jobs.append(((str(exp_dir), str(snap)), k))
                keys.append((m, k, step))

    def means(res: dict) -> dict:
        return {f"{part}_{k}": float(np.mean([r[k] for r in res[part]])) for part in PARTS for k in EVAL_KEYS}

    rows: list[dict] = []
    got: dict[tuple[str, int, int], dict] = {}
    with tqdm(total=len(jobs), desc="NetHack evaluation", unit="policy") as bar:
        for (policy, k, step), res in zip(keys, play_all(p, paths, jobs)):
            bar.update()
            got[policy, k, step] = means(res)
            for part in PARTS:
                rows += [{"policy": policy, "seed": k, "step": step, "part": part, "episode": e, **r} for e, r in enumerate(res[part])]
            log.info("%s seed %d (step %d): CLOSE score %.1f, FAR gain %.1f", policy, k, step,
                     got[policy, k, step]["close_score_gain"], got[policy, k, step]["far_score_gain"])
    pre_means = [got["pretrained", k, 0] for k in range(n_seeds)]
    per_step: dict[str, list[dict[int, dict]]] = {
        m: [{step: (pre_means[k] if step == 0 and REGISTRY[m].starts_from_pretrained else got[m, k, step]) for step, _, _ in snaps}
            for k, snaps in enumerate(seeds)]
        for m, seeds in snapshots.items()
    }

    summary = {"pretrained": {key: spread([pm[key] for pm in pre_means]) for key in pre_means[0]}, "methods": {}}
    curves = {"close": [], "far": []}
    steps = sorted(set().union(*[set(g) for seeds in per_step.values() for g in seeds]))
    for part, key in (("close", "close_score_gain"), ("far", "far_score_gain")):
        for step in steps:
            row = {"step": int(step)}
            for m, seeds in per_step.items():
                vals = [g[step][key] for g in seeds if step in g]
                if vals:
                    row[m] = float(np.mean(vals))
                    row[f"{m}_std"] = float(np.std(vals))
            curves[part].append(row)
    for m, seeds in per_step.items():
        finals = [g[max(g)] for g in seeds]
        summary["methods"][m] = {k: spread([f[k] for f in finals]) for k in finals[0]}
        summary["methods"][m]["final_step"] = int(max(seeds[0]))
    summary["far_starts"] = expert["summary"]["starts"]  # distinct held-out starts, one episode each
    summary["comparisons"] = compare_policies(rows, list(per_step))
    summary["expert"] = expert_on_protocol(expert, rows)
    # The shared metrics: CLOSE = score from the game start, which is also the whole task in
    # NetHack; FAR = score gained from the Dlvl-4 starts; unbounded scores, one value per seed.
    from retainrl.pipeline.study import Curves, frozen_row, study_metrics

    def seed_curve(seeds, key):
        return np.asarray([[g[s][key] for s in sorted(g)] for g in seeds], dtype=float)

    for m, seeds in per_step.items():  # the shared curves need one checkpoint schedule per method
        for k, g in enumerate(seeds):
            if sorted(g) != sorted(seeds[0]):
                raise ValueError(f"nethack evaluate: {m} seed {k} has snapshots at {sorted(g)}, seed 0 at {sorted(seeds[0])}")

    # The frozen-π* floor is not played: under the common random numbers π* replays its episodes of
    # sampling seed k exactly at every snapshot, so its curve is its step-0 means, constant.
    schedule = sorted(next(iter(per_step.values()))[0]) if per_step else [0]
    floor = Curves(step=schedule, **{part: np.asarray([[pm[key]] * len(schedule) for pm in pre_means], float)
                                     for part, key in (("close", "close_score_gain"), ("far", "far_score_gain"), ("full", "close_score_gain"))})
    summary["frozen"] = frozen_row(floor)
    summary["study"] = study_metrics({
        m: Curves(step=sorted(seeds[0]), close=seed_curve(seeds, "close_score_gain"), far=seed_curve(seeds, "far_score_gain"),
                  full=seed_curve(seeds, "close_score_gain"))
        for m, seeds in per_step.items()
    }, bounded=False, floor=floor)
    metrics = {"pretrained": scalar_metrics(summary["pretrained"]), **{m: scalar_metrics({k: v for k, v in s.items() if k != "final_step"})
                                                                        for m, s in summary["methods"].items()},
               "frozen": summary["frozen"], "study": summary["study"], **protocol_metrics(summary)}
    with atomic_path(paths.evaluation, directory=True) as tmp:
        save_json(tmp / "metrics.json", metrics)
        save_json(tmp / "summary.json", summary)
        save_json(tmp / "close_score.json", curves["close"])
        save_json(tmp / "far_score.json", curves["far"])
        save_json(tmp / "episodes.json", rows)
    return summary


def final_episodes(rows: list[dict], policy: str, part: str, key: str = "score_gain") -> np.ndarray:
    """(seeds, episodes) of ``key`` for a policy's final snapshot on ``part`` (π*: one row per sampling seed)."""
    sel = [r for r in rows if r["policy"] == policy and r["part"] == part]
    seeds = sorted({r["seed"] for r in sel}, key=lambda s: -1 if s is None else s)
    out = []
    for k in seeds:
        mine = [r for r in sel if r["seed"] == k]
        last = max(r["step"] for r in mine)
        out.append([r[key] for r in sorted(mine, key=lambda r: r["episode"]) if r["step"] == last])
    return np.asarray(out, float)


def compare_policies(rows: list[dict], methods: list[str]) -> list[dict]:
    """Paired bootstrap differences (``retainrl.pipeline.stats``) of the final policies, CLOSE and FAR.

    CLOSE episode e is game e, FAR episode e starts from held-out start e, for every policy and
    seed: the bootstrap draws one set of games / start states for all seeds and both policies
    (clustered by start state), and resamples each policy's seeds on their own.

    Score: every method against π*, and every retention method against vanilla ``finetune``
    (the study's two questions: does fine-tuning keep/improve on π*? does retention beat FT?).
    KL(π* ‖ π) on the visited states: every retention method against ``finetune`` (does it move
    the policy less from π*?). The whole set is Holm-corrected (``stats.holm``): the report's
    verdicts hold its family-wise error rate at 5%.
    """
    from retainrl.pipeline.stats import holm, paired_difference

    retention = [m for m in methods if REGISTRY[m].retains] if BASELINE in methods else []
    plan = [("score_gain", m, "pretrained") for m in methods] + [("score_gain", m, BASELINE) for m in retention]
    plan += [("kl_pi_star", m, BASELINE) for m in retention]
    out = []
    for part in ("close", "far"):
        for key, a, b in plan:
            xa, xb = final_episodes(rows, a, part, key), final_episodes(rows, b, part, key)
            cmp = paired_difference(xa, xb)
            out.append({"part": part, "a": a, "b": b, "metric": key, **cmp})
    return holm(out)


def expert_on_protocol(expert: dict, rows: list[dict]) -> dict:
    """The expert's CLOSE score and FAR score gained on the evaluation's own games and held-out
    starts (``heldout``), and π* over the expert on each, paired by episode (π*'s sampling seeds
    resampled too)."""
    from retainrl.pipeline.stats import paired_ratio

    out = {"games_played": expert["summary"]["games_played"], "starts": expert["summary"]["starts"]}
    for part in PARTS:
        ex = np.asarray([[e["score_gain"] for e in expert[part]]], float)
        pi = final_episodes(rows, "pretrained", part)
        out[part] = {"expert_score_gain": float(ex.mean()), "expert_levels": float(np.mean([e["levels"] for e in expert[part]])),
                     "pi_star_score_gain": float(pi.mean()),
                     "pi_star_over_expert": paired_ratio(pi, ex) if ex.mean() > 0 else None}
    return out


def protocol_metrics(summary: dict) -> dict:
    """What ``dvc metrics show`` (and the generated block of docs/nethack.md) says of the protocol
    beyond the shared metrics: the number of distinct held-out FAR starts, the expert on the same
    games and starts with π*/expert, and every paired comparison of the final policies with its
    Holm-corrected verdict, keyed ``<part>/<metric>/<policy>-vs-<policy>``."""
    from retainrl.pipeline.stats import verdict

    ex = summary["expert"]
    paired = {f"{c['part']}/{c['metric']}/{c['a']}-vs-{c['b']}": {
        **{k: float(c[k]) for k in ("diff", "ci_low", "ci_high", "p_holm")}, "verdict": verdict(c)}
        for c in summary.get("comparisons", [])}
    return {"protocol": {"far_starts": int(summary["far_starts"]), "holm_comparisons": len(paired),
                         "expert": {part: {"expert_score_gain": ex[part]["expert_score_gain"],
                                           "pi_star_score_gain": ex[part]["pi_star_score_gain"],
                                           "pi_star_over_expert": ex[part]["pi_star_over_expert"]} for part in PARTS}},
            "paired": paired}


def report(p: Params, paths) -> None:
    """Stage: report.md (expert, π*, each method's final CLOSE/FAR over seeds, the paired
    comparisons, the committed coefficient sweep and 16-epoch control: ``probes``) and two
    figures (rendered by ``pipeline.report``); the probes' numbers in ``probes.METRICS_FILE`` (``dvc metrics``).

    ``close_score.png``: CLOSE score over fine-tuning (the study's Figure 3a);
    ``far_score.png``: score gained from the FAR start states over fine-tuning (its Figure 5).
    """
    from retainrl.core.artifacts import load_json, require, save_json
    from retainrl.families.nethack import probes
    from retainrl.pipeline.report import Figure, Line, Panel, Report, Section, Table, floor_sentence, fmt, study_section, write
    from retainrl.pipeline.stats import verdict

    ev_dir = Path(paths.evaluation)
    summary = load_json(ev_dir / "summary.json", "NetHack evaluation summary")
    curves = {part: load_json(ev_dir / f"{part}_score.json", f"NetHack {part.upper()} curves") for part in ("close", "far")}
    meta = json.loads(require(Path(paths.demos) / META_FILE, "NetHack demo metadata").read_text())
    ft = p.finetune
    depth = meta["far_start_depth"]
    intro = []
    s = meta.get("summary", {})
    if s:
        intro.append(f"Expert over {s['games']} seeded games: reached Dlvl {depth} in "
                     f"{100 * s.get('reached_dlvl%d' % depth, 0):.0f}%, median score {s['score_median']:.0f} "
                     f"(mean {s['score_mean']:.0f}), median max depth {s['depth_median']:.0f} (mean {s['depth_mean']:.2f}).")
    intro.append(
        f"Fine-tuning: APPO (sample-factory), {ft.env_steps:,} env steps per run, {ft.seeds} seeds per method, "
        f"lr {ft.lr:g}, batch {ft.batch_size} × {ft.epochs} SGD epoch{'s' if ft.epochs > 1 else ''}, {ft.num_envs} envs × rollout "
        f"{ft.rollout}, training episodes cut at {ft.max_episode_steps:,} steps. Evaluation: {p.evaluate.episodes} episodes per "
        f"part and policy, at most {p.evaluate.max_steps:,} env steps each ({'greedy' if p.evaluate.greedy else 'sampled'} actions). "
        f"CLOSE = from the start of a game; FAR = from the state where the expert first reached Dlvl {depth} in a held-out game "
        f"({summary['far_starts']} distinct starts from games that no demo, BC update or BC-buffer entry comes from, each played "
        "once per policy and sampling seed), scored as the score gained on top of that state's. Mean ± std over seeds of the final policy "
        f"(π*: over {len(summary['pretrained']['close_score_gain'].get('per_seed', [0]))} sampling seeds, one per training seed).")
    policies = [("π* (pretrained)", summary["pretrained"])] + list(summary["methods"].items())
    finals = Table(["policy", "CLOSE score", "CLOSE turns", "CLOSE dlvl", "CLOSE xplvl", "FAR score gained", "FAR levels descended",
                    "CLOSE KL(π*‖π)", "FAR KL(π*‖π)"],
                   [[name, fmt(m["close_score_gain"], ".1f"), fmt(m["close_turns"], ".0f"), fmt(m["close_max_depth"]),
                     fmt(m["close_xplvl"]), fmt(m["far_score_gain"], ".1f"), fmt(m["far_levels"]), fmt(m["close_kl_pi_star"], ".3f"),
                     fmt(m["far_kl_pi_star"], ".3f")] for name, m in policies])
    per_seed = "Per seed (final CLOSE score / FAR score gained): " + "; ".join(
        f"{name}: " + ", ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(m["close_score_gain"]["per_seed"], m["far_score_gain"]["per_seed"]))
        for name, m in [("π* (per sampling seed)", summary["pretrained"])] + list(summary["methods"].items()))
    ex = summary["expert"]

    def ratio(r):
        return "–" if r is None else f"{r['ratio']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"

    expert = Table(["part", "expert", "π*", "π* / expert (95% interval)"],
                   [[part.upper() + (" score" if part == "close" else " score gained"), f"{ex[part]['expert_score_gain']:.1f}",
                     f"{ex[part]['pi_star_score_gain']:.1f}", ratio(ex[part]["pi_star_over_expert"])] for part in ("close", "far")])
    sections = [
        Section(None, [*intro, finals]),
        Section("π* against its teacher on the same protocol", [
            f"The scripted expert played the evaluation's {p.evaluate.episodes} CLOSE games and, from each of the "
            f"{ex['starts']} held-out FAR starts (found in {ex['games_played']} expert games), {p.evaluate.max_steps:,} more "
            "steps. On FAR it keeps the memory of its own way down, which a policy started there lacks: an upper reference. "
            "Interval: paired bootstrap over episodes and π*'s sampling seeds.", expert]),
        study_section(summary["study"], "score",
                      "CLOSE and the full task: the score from the game start; FAR: the score gained from the Dlvl-4 starts. "
                      "Scores are unbounded, so forward transfer is AUC − AUC_scratch. Seeds are the only resampled unit here; "
                      "the paired comparisons below also resample the games. The frozen-π* row is not played: under the common "
                      "random numbers of this evaluation π* replays its step-0 episodes exactly at every snapshot, so its "
                      "curve is its step-0 scores and its forgetting, the noise floor, is 0 "
                      f"({floor_sentence(summary['frozen'], 1)})"),
        Section(None, [per_seed]),
    ]
    if summary.get("comparisons"):
        c0 = summary["comparisons"][0]
        rows = []
        for c in summary["comparisons"]:
            f = "+.3f" if c["metric"] == "kl_pi_star" else "+.1f"
            rows.append([c["part"].upper(), "KL" if c["metric"] == "kl_pi_star" else "score", c["a"],
                         "π*" if c["b"] == "pretrained" else c["b"], f"{c['diff']:{f}}", f"[{c['ci_low']:{f}}, {c['ci_high']:{f}}]",
                         f"{c['p_above']:.2f}", f"{c['p_holm']:.3f}", verdict(c)])
        sections.append(Section("Paired differences of the final policies", [
            f"Every policy plays the same {c0['episodes']} games / FAR starts; episode e of seed k of every policy, π*'s included, "
            f"draws its actions from the same random stream; {100 * c0['level']:.0f}% bootstrap interval over games and seeds, FAR "
            f"clustered by start state ({summary['far_starts']} distinct held-out FAR starts, one episode each per seed; "
            "`retainrl/pipeline/stats.py`). Score: CLOSE score, FAR score gained; KL: mean KL(π*‖π) on the states the "
            "policy visits (lower = closer to π*). Verdicts: *higher*/*lower* when the Holm-corrected p-value over all "
            f"{len(summary['comparisons'])} comparisons of this table is below 0.05 (a 5% family-wise error rate); the "
            "intervals are the uncorrected 95% ones.",
            Table(["part", "metric", "policy", "vs", "difference", "interval", "P(policy > vs)", "p (Holm)", "verdict"], rows)]))

    def figure(part, file, title, ylabel):
        lines = []
        for m in summary["methods"]:
            pts = [(r["step"], r[m], r[f"{m}_std"]) for r in curves[part] if m in r]
            if pts:
                x, y, e = (np.array(v, float) for v in zip(*pts))
                lines.append(Line(m, x, y, y - e, y + e))
        ref = summary["pretrained"][f"{part}_score_gain"]["mean"]
        return Figure(file, title, [Panel(title, "fine-tuning env steps", ylabel, lines, ref)])

    sweep_file = Path(paths.root) / probes.SWEEP_FILE
    sweep = load_json(sweep_file, "NetHack retention sweep") if sweep_file.exists() else None
    prov = None if sweep is None else probes.provenance(sweep, p, probes.pi_star_md5(paths.pretrained))
    sections += probes.sections(sweep, {"l2": p.retention.l2.coef, "ewc": p.retention.ewc.coef}, prov)
    sections.append(Section(None, [
        figure("close", "close_score.png", "CLOSE: score from the start of a game", "score"),
        figure("far", "far_score.png", f"FAR: score gained from the expert's first arrival on Dlvl {depth}", "score gained")]))
    write(Report("NetHack (Human Monk): forgetting of pre-trained capabilities", sections), paths.report)
    save_json(Path(paths.root) / probes.METRICS_FILE, probes.metrics(sweep, prov))

"""NetHack (NLE, Human Monk): seeded, exactly replayable games, the scripted expert's demos, FAR starts.

The study's NetHack setting: π* is behavioural cloning of an expert; CLOSE is dungeon level 1
(where a cloned policy spends nearly all its time) and FAR is the deeper dungeon. FAR is
evaluated from the states where the expert *first reached Dlvl 4*.

Environment. ``NetHackScore`` with the NetHack Challenge's interface (the full keyboard,
``nle.nethack.ACTIONS``; no --More--, menu or y/n question answered for the agent), score
reward without the step penalty, and the three NLE seeds (core, disp, lgen) fixed per game.
``NetHackChallenge-v0`` itself refuses seeding, which is why it is not used. With the seeds
set, ``fix_moon_phase`` on (moon phase and Friday 13th come from the seed, not the wall clock),
the game library's remaining clock read pinned (``clock``: NLE still takes the hero's
"birthday" from ``time()``, which shop prices and names hash) and the same actions, NetHack
replays the game bit for bit at any time of day, so:

* a demonstration is stored as its seeds plus its action sequence (one byte a step: a whole
  game is a few KiB); per-step observations for BC are re-rendered by replay, which runs at
  raw NLE speed, far faster than the expert itself (see ``benchmarks/bench_nethack.py``);
* a FAR start state is (seeds, action prefix): it is restored by replaying the prefix, no
  patched NLE or game save needed (what the original code required).

Options: NLE's defaults, except that autopickup takes gold only (picking up scrolls, potions
and wands inside a shop makes the shopkeeper block the door, and the bot would be stuck).

Stages (the family stage API; the sample-factory side lives in ``sf``):

* ``collect_demos``: the scripted expert (``expert``) on ``demos.games`` seeded games →
  ``games.npz`` (seeds, uint8 actions, per-game score / max depth / turns / FAR step),
  ``far_starts.npz`` (FAR start states: seeds + prefix length), ``meta.json`` (summary);
* ``pretrain``: BC of sample-factory's recurrent ActorCritic, then its critic → an SF experiment dir;
* ``far_states`` (the generic far_buffer stage's question): FAR states (depth ≥ far.boundary)
  with π*'s logits and GRU state;
* ``fisher`` (replaces the generic stage): EWC's diagonal Fisher of π*'s actor on those states;
* ``train`` (the generic finetune driver's loop): APPO (sample-factory: serial mode on CPU,
  parallel with ``finetune.workers`` > 1) from π* with scratch/finetune/l2/ewc/bc/ks; em refused;
* ``evaluate`` and ``report`` (the ``results`` module): every policy from fresh games (CLOSE)
  and from the FAR start states (FAR); report.md and its figures.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from retainrl.core.config import ConfigError
from retainrl.families.nethack.games import (  # noqa: F401  (re-exported: the family's API)
    DEMO_ARRAYS,
    DEMO_FILE,
    FAR_FILE,
    META_FILE,
    OBS_KEYS,
    GameRecord,
    Progress,
    check_replay,
    cpu_cores,
    far_start_states,
    game_actions,
    game_seeds,
    iter_replay,
    load_demos,
    make_env,
    replay,
    reset_seeded,
    restore_far_state,
)
from retainrl.families.nethack.params import FinetuneParams, Params, validate_params  # noqa: F401

log = logging.getLogger(__name__)

def play_expert(env, seeds, max_steps: int, start_depth: int = 4, expert=None) -> GameRecord:
    """Play one seeded game with the scripted expert and record what replay needs."""
    from retainrl.families.nethack.expert import Expert

    expert = expert or Expert()
    expert.reset()
    t0 = time.perf_counter()
    obs = reset_seeded(env, seeds)
    actions: list[int] = []
    pg = Progress.start(obs)
    far_step = -1
    done = False
    while len(actions) < max_steps:
        a = expert.act(obs)
        actions.append(a)
        obs, _, term, trunc, _ = env.step(a)
        done = term or trunc
        if done:
            break
        if pg.update(obs) and pg.max_depth >= start_depth and far_step < 0:
            far_step = len(actions)
    return GameRecord(
        seeds=np.asarray(seeds, np.int64),
        actions=np.asarray(actions, np.uint8),
        score=pg.score,
        max_depth=pg.max_depth,
        turns=pg.turns,
        done=done,
        far_step=far_step,
        seconds=time.perf_counter() - t0,
    )


def summarize(records: list[GameRecord], start_depth: int = 4) -> dict:
    depth = np.array([r.max_depth for r in records])
    score = np.array([r.score for r in records])
    steps = np.array([len(r.actions) for r in records])
    secs = sum(r.seconds for r in records)
    return {
        "games": len(records),
        f"reached_dlvl{start_depth}": float((depth >= start_depth).mean()),
        "score_median": float(np.median(score)),
        "score_mean": float(score.mean()),
        "depth_median": float(np.median(depth)),
        "depth_mean": float(depth.mean()),
        "turns_median": float(np.median([r.turns for r in records])),
        "steps_mean": float(steps.mean()),
        "died_or_ended": float(np.mean([r.done for r in records])),
        "expert_steps_per_s": float(steps.sum() / max(secs, 1e-9)),
    }



# --------------------------------------------------------------------------- demos on disk


def save_demos(out_dir: Path, records: list[GameRecord], p: Params) -> None:
    """Write games.npz (+ far_starts.npz, meta.json) into ``out_dir`` (already a temp dir)."""
    lengths = np.array([len(r.actions) for r in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    arrays = dict(
        seeds=np.stack([r.seeds for r in records]).astype(np.int64),
        actions=np.concatenate([r.actions for r in records]).astype(np.uint8) if records else np.zeros(0, np.uint8),
        offsets=offsets,
        score=np.array([r.score for r in records], np.int64),
        max_depth=np.array([r.max_depth for r in records], np.int64),
        turns=np.array([r.turns for r in records], np.int64),
        steps=lengths,
        done=np.array([r.done for r in records], bool),
        far_step=np.array([r.far_step for r in records], np.int64),
    )
    with (out_dir / DEMO_FILE).open("wb") as fh:
        np.savez_compressed(fh, **arrays)
    far = far_start_states(arrays)
    with (out_dir / FAR_FILE).open("wb") as fh:
        np.savez_compressed(fh, **far)
    import nle

    meta = {
        "character": p.env.character,
        "nle_version": nle.__version__,
        "action_set": "nle.nethack.ACTIONS",
        "far_start_depth": p.far.start_depth,
        # the expert's steps/s is logged, not stored: a DVC out must be byte-identical on a rerun
        "summary": {k: v for k, v in summarize(records, p.far.start_depth).items() if k != "expert_steps_per_s"} if records else {},
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")



# --------------------------------------------------------------------------- stages


def collect_demos(p: Params, paths, device=None) -> dict:
    """Stage: the expert plays ``p.demos.games`` seeded games; writes ``paths.demos`` atomically."""
    from tqdm import tqdm

    from retainrl.core.artifacts import atomic_path
    from retainrl.families.nethack.expert import Expert

    seeds = game_seeds(p.demos.seed, p.demos.games)
    env = make_env(p.env.character, p.env.max_steps)
    expert = Expert()
    records = []
    try:
        for s in tqdm(seeds, desc="nethack expert games", unit="game"):
            rec = play_expert(env, s, p.env.max_steps, p.far.start_depth, expert)
            log.info("game %s: score %d, max depth %d, turns %d, steps %d", s.tolist(), rec.score, rec.max_depth, rec.turns, len(rec.actions))
            records.append(rec)
        for rec in tqdm(records, desc="checking the replays", unit="game"):
            check_replay(env, rec)
    finally:
        env.close()
    summary = summarize(records, p.far.start_depth)
    log.info("expert over %d games: %s", len(records), summary)
    with atomic_path(paths.demos, directory=True) as tmp:
        save_demos(tmp, records, p)
    return summary


def pretrain(p: Params, paths, device=None) -> dict:
    """Stage: BC of π* on the demos, then its critic on π*'s own games; writes ``paths.pretrained``.

    The directory is a sample-factory experiment dir: ``checkpoint_p0/checkpoint_000000000_0.pth``
    and ``config.json`` (the APPO learner loads π* from it), plus ``metrics.json`` (BC loss and
    accuracy curves; the critic's fit to π*'s returns before and after the warm-up).
    """
    from retainrl.core.artifacts import atomic_path
    from retainrl.families.nethack import sf

    demos = load_demos(paths.demos)
    cfg = sf.sf_config(Path(paths.pretrained).parent, Path(paths.pretrained).name)
    pp = p.pretrain
    ac, metrics = sf.behavioural_cloning(demos, cfg, steps=pp.steps, batch=pp.batch, unroll_len=pp.unroll,
                                         lr=pp.lr, seed=pp.seed, character=p.env.character)
    summary = {k: float(np.mean(v[-20:])) for k, v in metrics.items() if v}
    log.info("BC done: %s", summary)
    with atomic_path(paths.pretrained, directory=True) as tmp:
        sf.save_sf_checkpoint(ac, cfg, tmp, cfg.learning_rate)
        critic = critic_warmup(p, tmp, cfg, device) if pp.critic.env_steps or pp.critic.fit_episodes else {}
        summary["critic"] = critic
        (tmp / "metrics.json").write_text(json.dumps({"final": summary, "curves": metrics}) + "\n")
    return summary


def play_returns(ac, cfg, env, seeds, max_steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """π (``ac``) plays each seeded game for up to ``max_steps``; per step: its critic's value,
    the critic's input features and the return-to-go it should predict.

    Sampled actions; the game is cut after ``max_steps`` (the training episode cap: sample-factory
    treats the cut as an end, ``value_bootstrap`` off). The target is the discounted return-to-go
    of the rewards as the learner sees them (× ``reward_scale``, clipped at ``reward_clip``,
    discount ``gamma``). Returns ``value`` (denormalised), ``features`` (N, d), ``target``.
    """
    import torch

    from retainrl.families.nethack import sf

    gen = torch.Generator().manual_seed(seed)
    values, targets, feats = [], [], []
    hook = ac.critic_linear.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach().reshape(-1).clone()))
    ac.eval()
    try:
        with torch.no_grad():
            for s in seeds:
                obs = reset_seeded(env, s)
                rnn = torch.zeros(1, cfg.rnn_size)
                rs = []
                for _ in range(max_steps):
                    out = ac({k: torch.from_numpy(v)[None] for k, v in sf.sf_obs(obs).items()}, rnn)
                    rnn = out["new_rnn_states"]
                    v = out["values"].reshape(1, 1).clone()
                    if ac.returns_normalizer is not None:
                        ac.returns_normalizer(v, denormalize=True)
                    values.append(float(v))
                    a = int(torch.multinomial(torch.softmax(out["action_logits"][0], -1), 1, generator=gen))
                    obs, r, term, trunc, _ = env.step(a)
                    rs.append(float(np.clip(r * cfg.reward_scale, -cfg.reward_clip, cfg.reward_clip)))
                    if term or trunc:
                        break
                acc, ret = 0.0, np.zeros(len(rs))
                for t in range(len(rs) - 1, -1, -1):
                    acc = rs[t] + cfg.gamma * acc
                    ret[t] = acc
                targets += list(ret)
    finally:
        hook.remove()
    features = torch.stack(feats).numpy() if feats else np.zeros((0, 0), np.float32)
    return {"value": np.asarray(values), "features": features, "target": np.asarray(targets)}


def critic_fit(ac, cfg, env, seeds, max_steps: int, seed: int = 0) -> dict:
    """How well ``ac``'s critic predicts its own policy's return on these games (``play_returns``).

    Returns the mean value and target, the MSE and the explained variance
    1 − Var(target − V) / Var(target) over all steps.
    """
    got = play_returns(ac, cfg, env, seeds, max_steps, seed)
    v, g = got["value"], got["target"]
    var = float(np.var(g))
    return {"value_mean": float(v.mean()), "return_mean": float(g.mean()), "mse": float(np.mean((v - g) ** 2)),
            "explained_variance": float(1.0 - np.var(g - v) / var) if var > 0 else float("nan"), "steps": int(len(g))}


def fit_critic_mc(ac, features: np.ndarray, target: np.ndarray, ridge: float = 0.5) -> None:
    """Set ``ac``'s value head to the least-squares fit of Monte-Carlo returns (in place).

    The returns normaliser gets the targets' mean and variance (as if it had seen them), and
    ``critic_linear`` the ridge-regression solution on the normalised targets over its own input
    features. Why: APPO's TD(λ) targets bootstrap from the critic, so a head that starts off the
    returns' scale creeps towards it only over many updates (γ = 0.999, 32-step rollouts); the
    regression puts it there in one solve, and the APPO warm-up then refines it. The ridge
    penalty is ``ridge`` × N (N samples): π*'s early-game returns are mostly chance (which monster
    turns up), and on held-out games a strong pull towards the mean predicts best (N = 16k:
    penalty 10⁴ explained 4% of the variance, 1 explained −28%).
    """
    import torch

    n, d = features.shape
    mean, var = float(target.mean()), float(target.var())
    norm = ac.returns_normalizer
    if norm is not None:
        norm.running_mean.fill_(mean)
        norm.running_var.fill_(var)
        norm.count.fill_(float(n))
        z = np.clip((target - mean) / np.sqrt(var + 1e-5), -5.0, 5.0)
    else:
        z = target
    x = np.concatenate([features.astype(np.float64), np.ones((n, 1))], 1)
    reg = ridge * n * np.eye(d + 1)
    reg[d, d] = 0.0  # the bias is not shrunk
    w = np.linalg.solve(x.T @ x + reg, x.T @ z)
    with torch.no_grad():
        ac.critic_linear.weight.copy_(torch.as_tensor(w[:d], dtype=ac.critic_linear.weight.dtype)[None])
        ac.critic_linear.bias.fill_(float(w[d]))


def appo_settings(ft: FinetuneParams, device=None) -> dict:
    """``run_appo`` keywords shared by fine-tuning and the critic warm-up: the env layout, the
    episode cap and sample-factory's device name (``gpu`` for a CUDA device, else ``cpu``), so the
    warm-up's critic sees the episodes the fine-tuning runs will."""
    return {"num_envs": ft.num_envs, "rollout": ft.rollout, "batch_size": ft.batch_size, "max_episode_steps": ft.max_episode_steps,
            "workers": ft.workers, "batched_sampling": ft.batched_sampling,
            "device": "gpu" if device is not None and str(device).startswith("cuda") else "cpu"}


def critic_warmup(p: Params, exp_dir: Path, cfg, device=None) -> dict:
    """Fit π*'s critic to π*'s own returns, the actor untouched; overwrites ``exp_dir``'s checkpoint.

    Two steps: (1) ``fit_episodes`` games of π*, the value head regressed on their Monte-Carlo
    returns (``fit_critic_mc``); (2) ``env_steps`` of APPO with everything but ``critic_linear``
    frozen (the study's ``skip_train``; TD targets, as in fine-tuning). The actor must come out
    byte-identical (checked). Returns the critic's fit (``critic_fit``) on ``check_episodes``
    other games before, after (1) and after (2), and the APPO run's env steps and speed.
    """
    import tempfile

    import torch

    from retainrl.families.nethack import sf
    from retainrl.retention.methods import RetentionContext, build_retention

    cw, ft = p.pretrain.critic, p.finetune
    check = game_seeds(cw.seed + 1, cw.check_episodes)
    env = make_env(p.env.character, 10**7)

    def fit(ac) -> dict:
        return critic_fit(ac, cfg, env, check, ft.max_episode_steps, cw.seed) if cw.check_episodes else {}

    ac, _ = sf.load_sf_policy(exp_dir)
    actor = {k: v.clone() for k, v in ac.state_dict().items() if not k.startswith(("critic_linear", "returns_normalizer"))}
    out = {"before": fit(ac)}
    if cw.fit_episodes:
        got = play_returns(ac, cfg, env, game_seeds(cw.seed, cw.fit_episodes), ft.max_episode_steps, cw.seed)
        fit_critic_mc(ac, got["features"], got["target"])
        out["after_mc"] = fit(ac)
        sf.save_sf_checkpoint(ac, cfg, exp_dir, cfg.learning_rate)
    if cw.env_steps:
        log.info("critic warm-up: %d env steps of APPO with only the critic trained", cw.env_steps)
        with tempfile.TemporaryDirectory(prefix="nethack-critic-") as d:
            plain = build_retention("finetune", RetentionContext(), p.retention, learner="appo", off_policy=False)
            res = sf.run_appo(Path(exp_dir).resolve(), Path(d) / "critic", plain,
                              env_steps=cw.env_steps, lr=cw.lr, entropy=0.0, freeze_encoder=False, seed=cw.seed, snapshots=1,
                              train_only=("critic_linear",), **appo_settings(ft, device))
            snaps = sorted((Path(d) / "critic" / "snapshots").glob("step_*.pth"))
            if res["status"] != 0 or len(snaps) < 2:
                raise RuntimeError(f"critic warm-up: sample-factory exited with status {res['status']} after {res['env_steps']} env steps")
            ac.load_state_dict(torch.load(snaps[-1], map_location="cpu")["model"])
        out["after"] = fit(ac)
        out.update(env_steps=res["env_steps"])  # not its speed: the artifact must not depend on the machine's load
        log.info("critic warm-up: %.0f env steps/s", res["env_steps_per_s"])
        sf.save_sf_checkpoint(ac, cfg, exp_dir, cfg.learning_rate)
    env.close()
    moved = [k for k, v in actor.items() if not torch.equal(v, ac.state_dict()[k])]
    if moved:
        raise RuntimeError(f"critic warm-up changed π*'s actor ({', '.join(moved[:3])}, …): only critic_linear may train")
    for stage in ("after_mc", "after"):
        if out.get(stage) and out["before"]:
            log.info("critic fit to π*'s returns (%s): MSE %.1f → %.1f, explained variance %.2f → %.2f, mean value %.1f (returns %.1f)",
                     stage, out["before"]["mse"], out[stage]["mse"], out["before"]["explained_variance"],
                     out[stage]["explained_variance"], out[stage]["value_mean"], out[stage]["return_mean"])
    return out


def __getattr__(name: str):
    """``learner`` (the APPO adapter) is imported on first use: it pulls in sample-factory, which
    loading params or running collect_demos does not need."""
    if name == "learner":
        from retainrl.learners import appo

        return appo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_pretrained(p: Params, paths, device=None):
    """π* as retention methods see it inside APPO (:class:`retainrl.learners.appo.SFTeacher`): its
    weights θ*; its outputs on online states come from the envs, which step π* alongside."""
    from retainrl.families.nethack import sf
    from retainrl.learners.appo import SFTeacher

    return SFTeacher(sf.load_sf_policy(paths.pretrained)[0])


def far_states(p: Params, paths, pretrained=None, device=None) -> dict:
    """The generic far_buffer stage's question: FAR states (depth ≥ far.boundary) of the demos,
    with π*'s logits (``targets``) and GRU state (``obs/rnn``) on them.

    π* is run along each whole demo (its recurrent state depends on the history), and every
    ``far_buffer.every``-th step at depth ≥ boundary is kept until ``far_buffer.size`` states.
    The stored GRU state lets the BC retention loss evaluate the fine-tuned policy on exactly
    the context π* had, which is also why the family computes π*'s outputs itself.
    """
    import torch
    from tqdm import tqdm

    from retainrl.families.nethack import sf

    demos = load_demos(paths.demos)
    ac, cfg = sf.load_sf_policy(paths.pretrained)
    ac.eval()
    env = make_env(p.env.character, 10**7)
    keep: dict[str, list] = {k: [] for k in (*OBS_PARTS, "rnn", "targets", "action", "game", "step")}
    n = 0
    try:
        with torch.no_grad():
            for g in tqdm(range(len(demos["seeds"])), desc="FAR buffer", unit="game"):
                if n >= p.far_buffer.size:
                    break
                if demos["max_depth"][g] < p.far.boundary:
                    continue
                rnn = torch.zeros(1, cfg.rnn_size)
                far_steps = 0
                for t, (obs, action) in enumerate(iter_replay(env, demos["seeds"][g], game_actions(demos, g))):
                    x = {k: torch.from_numpy(v)[None] for k, v in sf.sf_obs(obs).items()}
                    out = ac(x, rnn)
                    if int(obs["blstats"][12]) >= p.far.boundary:
                        if far_steps % p.far_buffer.every == 0 and n < p.far_buffer.size:
                            for k, v in x.items():
                                keep[k].append(v[0].numpy())
                            keep["targets"].append(out["action_logits"][0].numpy())
                            keep["rnn"].append(rnn[0].numpy())
                            keep["action"].append(action)
                            keep["game"].append(g)
                            keep["step"].append(t)
                            n += 1
                        far_steps += 1
                    rnn = out["new_rnn_states"]
    finally:
        env.close()
    if n == 0:
        raise ConfigError(f"far_buffer: no demo step reaches depth ≥ far.boundary={p.far.boundary}; collect more or longer demos")
    log.info("FAR states: %d from %d games", n, len(set(keep["game"])))
    arrays = {k: np.stack(v) for k, v in keep.items()}
    return {"obs": {k: arrays.pop(k) for k in (*OBS_PARTS, "rnn")}, **arrays}


#: The observation parts sample-factory's encoder reads (``sf.sf_obs``); a FAR state is them plus π*'s GRU state.
OBS_PARTS = ("chars", "blstats", "misc", "message")


def fisher(p: Params, paths, device=None) -> dict:
    """Stage: diagonal Fisher of π*'s actor (everything but the critic) on FAR-buffer states. It
    replaces the generic fisher stage: π*'s output on a state depends on its GRU state, which
    torch.func's per-state Jacobians of the generic estimator do not carry.

    Each state is evaluated with the GRU state π* had there (stored in the buffer), so the
    gradients are those of the policy as it acts in FAR. Written as safetensors, one tensor per
    parameter name of sample-factory's ActorCritic, clipped below at ``fisher.min_value``.
    """
    import torch

    from retainrl.core.artifacts import atomic_path, save_tensors
    from retainrl.families.nethack import sf
    from retainrl.pipeline import far_buffer

    buf = far_buffer.load(paths, required=("targets", "action"))
    ac, cfg = sf.load_sf_policy(paths.pretrained)
    ac.eval()
    params = {n: q for n, q in ac.named_parameters() if not n.startswith("critic_linear")}
    acc = {n: torch.zeros_like(q) for n, q in params.items()}
    gen = torch.Generator().manual_seed(p.fisher.seed)
    n = min(p.fisher.states, len(buf["action"]))
    idx = torch.randperm(len(buf["action"]), generator=gen)[:n].tolist()
    for i in idx:
        x = {k: torch.from_numpy(buf["obs"][k][i : i + 1]) for k in OBS_PARTS}
        out = ac(x, torch.from_numpy(buf["obs"]["rnn"][i : i + 1]))
        logp = torch.log_softmax(out["action_logits"], -1)[0]
        if p.fisher.estimator == "expert":
            a = int(buf["action"][i])
        else:
            a = int(torch.multinomial(logp.exp().detach(), 1, generator=gen))
        grads = torch.autograd.grad(logp[a], list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads):
            if g is not None:
                acc[name] += g.detach() ** 2
    fisher_diag = {name: (v / n).clamp_min(p.fisher.min_value) for name, v in acc.items()}
    with atomic_path(paths.fisher, directory=True) as tmp:
        save_tensors(tmp / "fisher.safetensors", fisher_diag, {"states": n, "estimator": p.fisher.estimator})
    total = float(sum(v.sum() for v in fisher_diag.values()))
    log.info("Fisher on %d FAR states: %d tensors, total %.3g", n, len(fisher_diag), total)
    return {"states": n, "tensors": len(fisher_diag), "total": total}


def _retention(p: Params, paths, method: str, seed: int):
    """The retention method of the run with seed ``seed``, built in the process that trains it, by the generic driver's
    rule (:func:`retainrl.pipeline.finetune.retention_for`: just what the method needs, one
    seeding rule): θ* for l2/ewc (π*'s outputs on the online states come from the envs, which
    run π* alongside, for ks), the Fisher (ewc), the FAR buffer with π*'s logits and GRU states (bc)."""
    import sys

    from retainrl.pipeline.finetune import retention_for, retention_loaders

    return retention_for(method, seed, p, retention_loaders(sys.modules[__name__], p, paths, None))


TIMING = ("wall_s", "env_steps_per_s")  # what run_appo measures of the machine, not of the run


def finetune_seed(p: Params, paths, device, method: str, k: int, run_dir: Path, threads: int | None = None) -> dict:
    """One APPO run of ``method`` (seed ``finetune.seed + k``) into ``run_dir``; its ``retention.json``.

    A module-level function so that ``finetune`` can run seeds in spawned processes; ``threads``
    pins torch's thread count there (one per process, as the stage's own default). A ``run_dir``
    with ``retention.json`` is a finished run (kept from a killed stage): it is returned as it is;
    one with a sample-factory checkpoint resumes from it.
    """
    from retainrl.families.nethack import sf

    done = run_dir / "retention.json"
    if done.is_file():
        log.info("finetune[%s] seed %d/%d: finished before the stage was stopped, kept", method, k + 1, p.finetune.seeds)
        return json.loads(done.read_text())
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    ft = p.finetune
    seed = ft.seed + k
    retention = _retention(p, paths, method, seed)
    log.info("finetune[%s] seed %d/%d: %d env steps", method, k + 1, ft.seeds, ft.env_steps)
    res = sf.run_appo(Path(paths.pretrained).resolve() if retention.starts_from_pretrained else None, run_dir, retention,
                      env_steps=ft.env_steps, lr=ft.lr, epochs=ft.epochs, entropy=0.0 if retention.retains else ft.entropy,
                      freeze_encoder=ft.freeze_encoder, seed=seed, snapshots=ft.snapshots,
                      save_every_s=p.checkpoint.every_s, far_share=ft.far_share, demos=Path(paths.demos),
                      **appo_settings(ft, device))
    if res["status"] != 0:
        raise RuntimeError(f"sample-factory APPO exited with status {res['status']} ({method}, seed {seed})")
    res = {"method": method, "seed": seed, "coef": retention.coef(0), **res}
    tmp = run_dir / ".retention.json.tmp"  # written last and atomically: it marks the run finished
    # the run's speed is logged, not stored: the same run must be the same bytes on a loaded machine
    tmp.write_text(json.dumps({k: v for k, v in res.items() if k not in TIMING}) + "\n")
    tmp.replace(done)
    log.info("finetune[%s] seed %d: %.0f env steps/s, %d training episodes", method, seed, res["env_steps_per_s"], res["train_episodes"])
    return res


def train(p: Params, paths, device, run) -> list[dict]:
    """The generic finetune stage's loop: APPO fine-tuning of π* with one retention method,
    ``finetune.seeds`` runs into ``run.out/seed_<k>/`` (a sample-factory experiment dir:
    checkpoints, ``snapshots/step_<n>.pth``, ``train_episodes.json``, ``retention.json``), seed =
    finetune.seed + k. ``scratch`` starts from a random init (same network), the others from π*;
    entropy is off and the encoder frozen whenever a retention method is on (the study's setting).

    In serial mode (``finetune.workers`` 1: one process steps the envs and learns) the seeds run
    side by side in ``finetune.processes`` spawned processes, one thread each: on a 2-core box
    that is ~2× the throughput of one run at a time, and each run is exactly what it is alone
    (its own seed, its own process; tested). Parallel mode already uses every core, so its seeds
    run one after another.

    Resumable: the runs live in ``.checkpoints/nethack_finetune@<method>/<key>/seed_<k>/`` (outside
    DVC's outs, which DVC deletes before a rerun) and are copied into the out when all are done.
    A rerun after a kill keeps the finished seeds and resumes the others from sample-factory's
    last checkpoint (every ``checkpoint.every_s``).
    """
    import shutil

    from retainrl.core.artifacts import require

    if run.cls.starts_from_pretrained:
        require(paths.pretrained, "pretrained NetHack policy (π*)")
    ft = p.finetune
    method = run.method
    processes = 1 if ft.workers > 1 else min(ft.seeds, ft.processes or cpu_cores())
    dirs = [(run.checkpoint().directory / f"seed_{k}").resolve() for k in range(ft.seeds)]
    if processes == 1:
        runs = [finetune_seed(p, paths, device, method, k, d) for k, d in enumerate(dirs)]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from retainrl.core.log import setup_logging
        from retainrl.core.procs import pool_initializer

        log.info("finetune[%s]: %d seeds in %d processes", method, ft.seeds, processes)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding NLE and torch threads
        # the workers die with the stage: a killed stage leaves no orphan writing into its checkpoints
        with ProcessPoolExecutor(processes, mp_context=ctx, initializer=pool_initializer,
                                 initargs=(os.getpid(), setup_logging)) as pool:
            futures = [pool.submit(finetune_seed, p, paths, device, method, k, d, 1) for k, d in enumerate(dirs)]
            runs = [f.result() for f in futures]
    for k, d in enumerate(dirs):
        shutil.copytree(d, run.out / f"seed_{k}")
    return runs

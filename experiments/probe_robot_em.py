"""Probe: does SAC's actor loss on EM's memory keep the cloned π* (RoboticSequence)?

EM differs from plain fine-tuning only by keeping pre-training transitions in the replay; early on
they are nearly all of it, so EM's first updates are offline SAC on FAR states. This probe runs
exactly that, from the pipeline's own artifacts (``models/robot/pretrained``: π*, its pre-trained
critics and EM's memory), and measures π*'s success on each FAR stage alone every
``--eval-every`` updates, under variants that would each be a plausible fix:

- ``sac``: SAC as in fine-tuning (auto-tuned entropy from α = 1, actor lr 1e-3);
- ``alpha0``: no entropy bonus at all (α = 0, fixed): the collapse is not the entropy term;
- ``actor_lr_1e-4``: a 10× smaller actor step;
- ``cql``: the critics first trained with a CQL penalty (Q pushed down on random and perturbed
  policy actions, up on the memory's actions) so that π*'s actions are the critic's maximum;
- ``weight_noise``: no update at all, Gaussian noise of std ``--noise`` (0.01) on every actor
  weight — the size of 10 Adam steps at lr 1e-3 — to tell a fragile π* from a harmful gradient;
- ``online_far``: not offline — SAC online on the FAR stages alone (episodes alternate between
  them) from π* for ``--online-steps`` env steps, one update per step, half of every batch from
  EM's memory (RLPD-style): can SAC itself turn the cloned π* into a SAC-trained one cheaply?

Usage (after ``dvc repro robot_pretrain``)::

    python experiments/probe_robot_em.py [--updates 750] [--variants sac alpha0 actor_lr_1e-4 cql weight_noise online_far]

Writes ``experiments/results/robot_em_probe.json`` (merging with the variants already there). Two
stacked models per variant (independent batches and noise); for ``online_far`` the "update"
column of the curve counts env steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from retainrl.learners import sac
from retainrl.core.config import load_params
from retainrl.retention.methods import RetentionParams
from retainrl.families.robot import stages as robot
from retainrl.core.paths import Paths
from retainrl.retention.methods import Finetune, RetentionContext

log = logging.getLogger("probe_robot_em")
VARIANTS = ("sac", "alpha0", "actor_lr_1e-4", "cql", "weight_noise", "online_far")


def cql_penalty(agent, obs: torch.Tensor, act: torch.Tensor, gen: torch.Generator, k: int = 8, temp: float = 10.0) -> torch.Tensor:
    """CQL(H): temp·logsumexp(Q/temp) over random and perturbed-policy actions minus Q(s, a_data)."""
    m, b, d = obs.shape
    ob = obs.unsqueeze(2).expand(m, b, k, d).reshape(m, b * k, d)
    rand = torch.rand(m, b * k, act.shape[-1], generator=gen) * 2 - 1
    with torch.no_grad():
        pol = agent.sample(ob, generator=gen)[0]
    pol = (pol + 0.3 * torch.randn(pol.shape, generator=gen)).clamp(-1, 1)
    q_data = agent.q(obs, act)
    out = 0.0
    for i in range(2):
        q_ood = torch.cat([agent.q(ob, rand)[i], agent.q(ob, pol)[i]], 1).reshape(m, 2, b, k).permute(0, 2, 1, 3).reshape(m, b, 2 * k)
        out = out + (temp * torch.logsumexp(q_ood / temp, -1) - q_data[i]).mean(1).sum()
    return out


class FarStagesAlone:
    """A RoboticSequence whose episodes are the FAR stages run alone, in turn (for ``sac.VecEnv``)."""

    def __init__(self, p, seed: int):
        self.seq = robot.RoboticSequence(p.env, seed)
        self.stages = p.env.far_stages
        self.n = 0

    def reset(self):
        self.n += 1
        return self.seq.reset(stage=self.stages[self.n % len(self.stages)], single=True)

    def step(self, action):
        return self.seq.step(action)


def online_far(learner, p, memory_batch, evaluate, args) -> None:
    """``--online-steps`` env steps per model on the FAR stages, one update per step, each batch
    half online replay and half EM's memory; evaluation every ``--online-eval-every`` steps."""
    from retainrl.retention.replay import ProtectedReplay

    agent, m, half = learner.agent, learner.agent.n_models, p.finetune.batch_size // 2
    venv = sac.VecEnv([FarStagesAlone(p, 8_000 + i) for i in range(m)])
    replay = ProtectedReplay(p.finetune.replay_size, sac.replay_specs(agent.spec, m))
    for step in range(1, args.online_steps + 1):
        with torch.no_grad():
            act = agent.sample(torch.as_tensor(venv.obs).unsqueeze(1), generator=learner.gen)[0].squeeze(1)
        obs, nxt, rew, term, _, _ = venv.step(act.numpy())
        replay.add({"obs": torch.as_tensor(obs)[None], "act": act[None], "rew": torch.as_tensor(rew)[None],
                    "next_obs": torch.as_tensor(nxt)[None], "terminal": torch.as_tensor(term)[None]})
        if len(replay) >= half:
            online, offline = sac.to_models_first(replay.sample(half, learner.gen)), memory_batch(half)
            learner.update({k: torch.cat([online[k], offline[k]], 1) for k in online})
        if step % args.online_eval_every == 0:
            evaluate(step)


def run_variant(name: str, p, pi_star, memory: dict[str, torch.Tensor], args) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    m = 2
    agent = pi_star.replicate(m)
    f = p.finetune
    learner = sac.SACLearner(agent, sac.SACConfig(lr=f.lr, gamma=f.gamma, tau=f.tau, init_alpha=f.init_alpha), Finetune(RetentionContext(), RetentionParams()), gen)
    n = memory["obs"].shape[0]

    def batch(size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(n, (m, size), generator=gen)
        return {k: v[idx] for k, v in memory.items()}

    if name == "alpha0":
        learner.log_alpha.data.fill_(-30.0)
        learner.alpha_opt.param_groups[0]["lr"] = 0.0
    if name == "actor_lr_1e-4":
        learner.actor_opt.param_groups[0]["lr"] = 1e-4
    if name == "cql":
        for _ in range(args.cql_steps):
            b = batch(f.batch_size)
            loss = learner.critic_loss(b) + args.cql_weight * cql_penalty(agent, b["obs"], b["act"], gen)
            learner.critic_opt.zero_grad(set_to_none=True)
            loss.backward()
            learner.critic_opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(learner.target.critic_parameters(), agent.critic_parameters(), f.tau)
    seqs = [robot.RoboticSequence(p.env, 7_000 + i) for i in range(m)]
    rows = []

    def evaluate(update: int) -> None:
        succ = {p.env.tasks[k]: robot.rollout_stage_alone(agent, seqs, k, args.episodes).mean(1).tolist() for k in p.env.far_stages}
        with torch.no_grad():
            b = batch(512)
            q_pi = torch.min(*agent.q(b["obs"], agent.sample(b["obs"], deterministic=True)[0])).mean().item()
            q_data = torch.min(*agent.q(b["obs"], b["act"])).mean().item()
        rows.append({"update": update, "success": succ, "q_policy": q_pi, "q_memory_actions": q_data, "alpha": learner.log_alpha.exp().tolist()})
        log.info("%s update %d: FAR success %s, Q(s, π) %.0f vs Q(s, a_memory) %.0f", name, update, {t: np.round(v, 2).tolist() for t, v in succ.items()}, q_pi, q_data)

    if name == "weight_noise":
        with torch.no_grad():
            for w in agent.actor_parameters():
                w.add_(args.noise * torch.randn(w.shape, generator=gen))
        evaluate(0)
        return {"variant": name, "noise": args.noise, "curve": rows}
    evaluate(0)
    if name == "online_far":
        online_far(learner, p, batch, evaluate, args)
    else:
        for u in range(1, args.updates + 1):
            learner.update(batch(f.batch_size))
            if u % args.eval_every == 0:
                evaluate(u)
    for s in seqs:
        s.close()
    return {"variant": name, "curve": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=750)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per FAR stage and model")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--cql-steps", type=int, default=1500)
    parser.add_argument("--cql-weight", type=float, default=1.0)
    parser.add_argument("--online-steps", type=int, default=20_000, help="env steps per model (online_far)")
    parser.add_argument("--online-eval-every", type=int, default=5_000)
    parser.add_argument("--noise", type=float, default=0.01, help="std of the weight noise (weight_noise)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="experiments/results/robot_em_probe.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    p = load_params(only="robot").section("robot")
    paths = Paths("robot")
    pi_star = robot.load_pretrained(p, paths, "cpu")
    memory = {k: torch.as_tensor(v) for k, v in robot._load_memory(paths).items()}
    started = time.perf_counter()
    results = [run_variant(v, p, pi_star, memory, args) for v in args.variants]
    out = {"updates": args.updates, "episodes": args.episodes, "models": 2, "memory": int(memory["obs"].shape[0]),
           "seconds": round(time.perf_counter() - started, 1), "variants": results}
    path = Path(args.out)
    if path.exists():  # keep the variants measured by earlier runs
        old = {v["variant"]: v for v in json.loads(path.read_text()).get("variants", [])}
        out["variants"] = list({**old, **{v["variant"]: v for v in results}}.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

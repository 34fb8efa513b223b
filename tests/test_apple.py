"""AppleRetrieval dynamics, the expert, π*, and the vectorised REINFORCE learner."""

import numpy as np
import pytest
import torch

from retainrl.learners import reinforce
from retainrl.families.apple import stages as A


def run_episode(env, policy_fn, phase=1):
    obs = env.reset(phase)
    total = np.zeros(env.batch)
    steps = 0
    while not env.done.all():
        obs, r, _ = env.step(policy_fn(obs))
        total += r
        steps += 1
    return total, steps


def test_expert_solves_the_task_in_exactly_2M_steps():
    env = A.AppleRetrieval(c=0.5, M=7, T=100, batch=(3,))
    total, steps = run_episode(env, A.expert_action)
    assert steps == 14
    assert env.success.all() and env.reached_apple.all()
    assert (total == 14).all()  # +1 for every step


def test_observation_encodes_the_phase_and_home_is_a_wall():
    env = A.AppleRetrieval(c=0.25, M=2, T=10, batch=(1,))
    obs = env.reset()
    assert obs.tolist() == [[1.0, -0.25]]
    obs, r, _ = env.step(np.array([A.LEFT]))  # walk into the wall at home
    assert env.x.item() == 0 and r.item() == -1
    env.step(np.array([A.RIGHT]))
    obs, r, _ = env.step(np.array([A.RIGHT]))  # reaches the apple: phase 2 starts
    assert r.item() == 1 and obs.tolist() == [[1.0, 0.25]] and env.reached_apple.all()
    obs, r, _ = env.step(np.array([A.RIGHT]))  # wrong way in phase 2
    assert r.item() == -1 and env.x.item() == 3


def test_episode_times_out_after_T_steps_and_finished_episodes_stay_put():
    env = A.AppleRetrieval(c=0.5, M=5, T=12, batch=(2,))
    _, steps = run_episode(env, lambda o: np.full(o.shape[:-1], A.LEFT))
    assert steps == 12 and not env.success.any()
    env.reset()
    env.done[0] = True
    _, r, alive = env.step(np.array([A.RIGHT, A.RIGHT]))
    assert alive.tolist() == [False, True] and r.tolist() == [0.0, 1.0] and env.x.tolist() == [0, 1]


def test_far_reset_starts_at_the_apple_heading_home():
    env = A.AppleRetrieval(c=0.5, M=4, T=100, batch=(1,))
    obs = env.reset(2)
    assert env.x.item() == 4 and obs[0, 1].item() == 0.5
    _, steps = run_episode(env, A.expert_action, phase=2)
    assert steps == 4 and env.success.all()


def test_pretrained_policy_has_the_state_coverage_gap():
    """π* is cloned on phase 2 only: it walks home well but walks the wrong way in phase 1 (c < 1)."""
    p = A.Params()
    pi = A.clone(A.make_demos(p.env, p.demos), p.pretrain)
    scores = A.evaluate_policy(pi, p.env, 400, np.random.default_rng(0))
    assert scores["far"].item() > 0.95
    assert scores["close"].item() < 0.05
    w = pi.weight[0]
    assert w[0] < 0 and w[1] < 0  # aligned with −[1, c]


def test_the_frozen_floor_is_pi_star_resampled_on_the_methods_schedule():
    """The frozen row plays π* afresh at every checkpoint: its level is π*'s, its start − min is
    sampling noise only (positive, small), and it never draws the same episodes twice."""
    p = A.Params()
    pi = A.clone(A.make_demos(p.env, p.demos), p.pretrain)
    p = p.model_copy(update={"finetune": p.finetune.model_copy(update={"seeds": 3, "eval_episodes": 200})})
    steps = np.arange(0, 60, 5)
    floor = A.frozen_curves(p, pi, steps)
    assert {k: v.shape for k, v in floor.items()} == {k: (3, len(steps)) for k in ("close", "far", "full")}
    level = A.evaluate_policy(pi, p.env, 4000, np.random.default_rng(1))["far"].item()
    assert abs(floor["far"].mean() - level) < 0.02
    start_minus_min = floor["far"][:, 0] - floor["far"].min(axis=1)
    assert (start_minus_min < 0.1).all()
    assert len(np.unique(floor["far"])) > 1 or level in (0.0, 1.0)
    assert np.array_equal(A.frozen_curves(p, pi, steps)["far"], floor["far"])  # its own fixed stream


def test_stacked_models_get_exactly_their_own_gradients():
    """Summing the losses of stacked seeds gives each seed the gradient it would get alone."""
    p = A.Params()
    w = torch.tensor([[-1.0, -0.5], [0.3, 0.2]])
    both = A.LogisticPolicy(2, w)
    ro = A.rollout(both, p.env, 16, np.random.default_rng(0))
    reinforce.policy_gradient_loss(both, ro, baseline=True).backward()
    for i in range(2):
        one = A.LogisticPolicy(1, w[i : i + 1])
        sub = reinforce.Rollout(*(t[i : i + 1] for t in (ro.obs, ro.actions, ro.rewards, ro.alive, ro.success)))
        reinforce.policy_gradient_loss(one, sub, baseline=True).backward()
        assert torch.allclose(one.weight.grad[0], both.weight.grad[i], atol=1e-6)


def test_policy_gradient_pushes_phase_one_towards_the_apple():
    p = A.Params()
    pol = A.LogisticPolicy(1, torch.tensor([[-1.0, -2.0]]))
    ro = A.rollout(pol, p.env, 64, np.random.default_rng(1))
    reinforce.policy_gradient_loss(pol, ro, baseline=True).backward()
    s1 = torch.tensor([1.0, -p.env.c])
    assert torch.dot(-pol.weight.grad[0], s1) > 0  # a descent step raises the phase-1 logit


def test_finetuning_forgets_and_bc_retains():
    """The study's effect on a small budget: vanilla fine-tuning loses FAR success, BC keeps it."""
    from retainrl.retention.fisher import fisher_diagonal

    p = A.Params.model_validate({"finetune": {"iterations": 150, "eval_every": 5, "eval_episodes": 300}})
    pi = A.clone(A.make_demos(p.env, p.demos), p.pretrain)
    far = A.far_buffer_in_memory(pi, p.env, p.far_buffer)
    f = fisher_diagonal(pi, far["obs"])
    forget = {}
    for method in ("finetune", "bc"):
        curves, _ = A.finetune_seeds(method, p, pi, far, f, seeds=3, progress=False)
        forget[method] = (curves["far"][:, 0] - curves["far"].min(1).values).mean().item()
        assert curves["far"][:, 0].min() > 0.9  # starts from π*
    assert forget["finetune"] > 0.15
    assert forget["bc"] < forget["finetune"] / 3


def test_vectorised_rollout_matches_the_plain_loop_statistically():
    from benchmarks.bench_apple import plain_episode

    p = A.Params()
    w = torch.tensor([[0.8, -1.0]])
    pol = A.LogisticPolicy(1, w)
    ro = A.rollout(pol, p.env, 2000, np.random.default_rng(0))
    vec_return = ro.rewards.sum(1).mean().item()
    import random

    rng = random.Random(0)
    loop_return = sum(plain_episode(w[0].tolist(), p.env.c, p.env.M, p.env.T, rng)[0] for _ in range(2000)) / 2000
    assert vec_return == pytest.approx(loop_return, abs=2.0)


def test_ks_decays_once_per_reinforce_update(monkeypatch):
    """REINFORCE takes one actor gradient step per iteration: KS sees steps 0 … iterations − 1."""
    from retainrl.retention.methods import KS

    p = A.Params.model_validate({"finetune": {"iterations": 5, "seeds": 2, "eval_every": 5, "eval_episodes": 4, "episodes_per_iteration": 4}})
    steps = []
    orig = KS.aux_loss
    monkeypatch.setattr(KS, "aux_loss", lambda self, pol, online, step: steps.append(step) or orig(self, pol, online, step))
    pretrained = A.LogisticPolicy(1, torch.tensor([[0.5, -1.0]]))
    A.finetune_seeds("ks", p, pretrained, None, None, progress=False)
    assert steps == [0, 1, 2, 3, 4]

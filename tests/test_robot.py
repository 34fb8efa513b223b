"""RoboticSequence + stacked SAC: stitching, heads, retention gradients, bad input, a tiny end-to-end run.

CPU only; the whole file runs in well under three minutes. Stitching logic is tested on stand-in
task envs whose success step is scripted (exact, fast); one test uses real Meta-World envs.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from conftest import dvc_outs
from retainrl.learners import sac
from retainrl.core.config import ConfigError, load_params
from retainrl.retention.methods import RetentionParams
from retainrl.families.robot import stages as robot
from retainrl.retention import ProtectedReplay, RetentionContext, build_retention, fisher_diagonal

torch.set_num_threads(1)


# --------------------------------------------------------------------------- stand-ins


class FakeTask:
    """A task env that succeeds at step ``succeed_at`` (None: never) with reward ``r`` per step."""

    def __init__(self, succeed_at: int | None, r: float = 2.0, tag: float = 0.0):
        self.succeed_at, self.r, self.tag = succeed_at, r, tag
        self.resets = 0

    def seed(self, seed):  # Meta-World's: the stream the next reset draws positions from
        self.seeded = seed

    def reset(self, seed=None):
        self.n = 0
        self.resets += 1
        return np.full(robot.BASE_OBS_DIM, self.tag + 0.01 * self.resets), {}

    def step(self, action):
        self.n += 1
        ok = self.succeed_at is not None and self.n >= self.succeed_at
        return np.full(robot.BASE_OBS_DIM, self.tag), self.r, False, False, {"success": float(ok)}


STUDY_TASKS = ["hammer", "push", "peg-unplug-side", "push-wall"]


def fake_sequence(succeed_at=(3, 4, 5, 6), T=10, beta=1.5):
    env = robot.EnvParams(tasks=STUDY_TASKS, T=T, beta=beta)  # the study's 4 stages (the default has 3)
    tasks = [FakeTask(s, tag=float(i)) for i, s in enumerate(succeed_at)]
    return robot.RoboticSequence(env, 0, task_envs=tasks), env


def stage_of(obs, n=4):
    onehot = obs[robot.BASE_OBS_DIM + 1 :]
    assert onehot.sum() == 1 and len(onehot) == n
    return int(onehot.argmax())


# --------------------------------------------------------------------------- stitching


def test_stage_switch_on_success_is_terminal_but_not_done_and_pays_the_bonus():
    seq, env = fake_sequence()
    obs = seq.reset()
    assert stage_of(obs) == 0 and obs[robot.BASE_OBS_DIM] == 0.0
    for t in range(1, 3):
        obs, r, term, done, info = seq.step(np.zeros(4))
        assert (r, term, done) == (2.0, False, False)
        assert obs[robot.BASE_OBS_DIM] == pytest.approx(t / env.T)  # normalised stage time
    obs, r, term, done, info = seq.step(np.zeros(4))  # stage 0 succeeds at its 3rd step
    assert info == {"stage": 0, "success": True, "t": 3, "completed": 1}
    assert r == pytest.approx(1.5 * 2.0 * (10 - 3))  # r' = β·r·(T − t)
    assert term and not done
    assert stage_of(obs) == 1 and obs[robot.BASE_OBS_DIM] == 0.0  # next stage, fresh clock
    assert obs[0] == pytest.approx(1.01)  # the next task's env was reset


def test_full_episode_runs_all_stages_and_ends_on_the_last_success():
    seq, _ = fake_sequence()
    seq.reset()
    dones, stages = [], []
    while True:
        _, _, term, done, info = seq.step(np.zeros(4))
        stages.append(info["stage"])
        if done:
            break
    assert stages == [0] * 3 + [1] * 4 + [2] * 5 + [3] * 6
    assert info["completed"] == 4 and info["success"] and term


def test_timeout_is_terminal_and_ends_the_episode():
    seq, env = fake_sequence(succeed_at=(2, None, 5, 6), T=7)
    seq.reset()
    seq.step(np.zeros(4))
    seq.step(np.zeros(4))  # stage 0 solved → stage 1 (never succeeds)
    for t in range(1, 7):
        _, r, term, done, info = seq.step(np.zeros(4))
        assert not term and not done and r == 2.0
    _, r, term, done, info = seq.step(np.zeros(4))
    assert term and done and not info["success"] and info["completed"] == 1 and info["t"] == 7
    assert r == 2.0  # no bonus on a timeout


def test_start_at_a_given_stage_and_single_stage_episodes():
    seq, _ = fake_sequence()
    obs = seq.reset(stage=2, single=True)
    assert stage_of(obs) == 2
    for _ in range(4):
        assert not seq.step(np.zeros(4))[3]
    _, _, term, done, info = seq.step(np.zeros(4))
    assert term and done and info["success"] and info["stage"] == 2  # single: no move to stage 3
    assert stage_of(seq.reset()) == 2  # the start stage sticks
    assert stage_of(seq.reset(stage=0, single=False)) == 0
    with pytest.raises(ValueError, match="stage must be"):
        seq.reset(stage=4)


def test_real_metaworld_positions_are_random_and_expert_solves_a_far_stage():
    env = robot.EnvParams()
    seq = robot.RoboticSequence(env, 3)
    last = env.n_stages - 1  # push-wall, a FAR stage
    goals = {tuple(np.round(seq.reset(stage=last, single=True)[36:39], 4)) for _ in range(3)}
    assert len(goals) == 3  # new goal position each stage start
    done, info = False, None
    while not done:
        _, _, _, done, info = seq.step(seq.expert_action())
    assert info["success"] and info["stage"] == last and info["t"] < env.T


# --------------------------------------------------------------------------- agent


SPEC = sac.AgentSpec(obs_dim=robot.BASE_OBS_DIM + 1 + 4, act_dim=4, n_stages=4, hidden=16, layers=2)


def obs_batch(n, stage=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, SPEC.obs_dim, generator=g)
    x[:, SPEC.stage_slice] = 0
    st = torch.randint(4, (n,), generator=g) if stage is None else torch.full((n,), stage)
    x[torch.arange(n), SPEC.obs_dim - 4 + st] = 1
    return x


def test_drift_from_pi_star_is_zero_at_pi_star_and_per_seed():
    """The retention-vs-freezing columns: each stacked seed's mean KL(π*‖π) and action shift on
    the given states are 0 while it is π*, and only the seed whose actor moved moves away from 0."""
    from retainrl.families.robot.results import drift

    pi = sac.SACAgent(SPEC, 1, generator=torch.Generator().manual_seed(0))
    agent = pi.replicate(3)
    x = obs_batch(64, seed=1)
    for value in drift(pi, agent, x):
        assert np.allclose(value, 0.0, atol=1e-6)
    with torch.no_grad():
        agent.actor.weights[-1][1] += 0.05  # seed 1's last actor layer, every head
    for value in drift(pi, agent, x):
        assert value[1] > 1e-3 and np.allclose(value[[0, 2]], 0.0, atol=1e-6)


def test_heads_are_chosen_by_stage_id():
    agent = sac.SACAgent(SPEC, 1, generator=torch.Generator().manual_seed(0))
    x = obs_batch(1, stage=0)
    outs = []
    for k in range(4):
        xk = x.clone()
        xk[:, SPEC.stage_slice] = 0
        xk[0, SPEC.obs_dim - 4 + k] = 1
        agent.zero_grad()
        out = agent.dist_params(xk)
        out.sum().backward()
        w_grad = agent.actor.weights[-1].grad[0]  # (hidden, n_stages · 2A)
        touched = (w_grad.abs().sum(0) > 0).reshape(4, 8).any(1)
        assert touched.tolist() == [i == k for i in range(4)]  # only head k learns from stage k
        outs.append(out.detach())
    assert not torch.allclose(outs[0], outs[1])
    q1, q2 = agent.q(obs_batch(5), torch.zeros(5, 4))
    assert q1.shape == q2.shape == (1, 5)


def test_stacked_models_are_independent():
    stack = sac.SACAgent(SPEC, 3, generator=torch.Generator().manual_seed(1))
    x = obs_batch(7)
    out = stack.dist_params(x)
    for i in range(3):
        assert torch.allclose(stack.select(i).dist_params(x)[0], out[i], atol=1e-6)
    out[1].sum().backward()
    assert stack.actor.weights[0].grad[0].abs().sum() == 0 and stack.actor.weights[0].grad[1].abs().sum() > 0
    rep = stack.select(2).replicate(4)
    assert torch.allclose(rep.dist_params(x), out[2].detach().expand(4, -1, -1), atol=1e-6)


def test_tanh_gaussian_log_prob_matches_torch():
    agent = sac.SACAgent(SPEC, 2, generator=torch.Generator().manual_seed(2))
    x = obs_batch(6)
    a, logp = agent.sample(x, generator=torch.Generator().manual_seed(3))
    mean, log_std = agent.dist_params(x).chunk(2, -1)
    base = torch.distributions.Normal(mean, log_std.exp())
    dist = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
    ref = dist.log_prob(a.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)
    assert torch.allclose(logp, ref, atol=1e-3, rtol=1e-4)


# --------------------------------------------------------------------------- retention on the SAC actor


def perturbed(pi_star: sac.SACAgent, m: int, scale: float, seed: int = 5) -> sac.SACAgent:
    agent = pi_star.replicate(m)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, prm in agent.named_parameters():
            prm.add_(scale * torch.randn(prm.shape, generator=g))
    return agent


def aux_grads(method: str, agent, ctx, params=None, online=None):
    params = params or RetentionParams(l2={"coef": 3.0}, ewc={"coef": 7.0}, bc={"coef": 1.0, "batch_size": 32}, ks={"coef": 1.0})
    m = build_retention(method, ctx, params, learner="sac", off_policy=sac.OFF_POLICY)
    agent.zero_grad(set_to_none=True)
    loss = m.aux_loss(agent, online, 0)
    if loss is None:
        return None
    loss.backward()
    return {n: p.grad for n, p in agent.named_parameters()}


@pytest.fixture(scope="module")
def pi_star():
    return sac.SACAgent(SPEC, 1, generator=torch.Generator().manual_seed(4))


def test_l2_and_ewc_gradients_are_the_analytic_ones_and_leave_the_critic_alone(pi_star):
    agent = perturbed(pi_star, 2, 0.05)
    anchor = dict(pi_star.named_parameters())
    fisher = fisher_diagonal(pi_star, obs_batch(16), estimator="exact")
    assert set(fisher) == {n for n, _ in pi_star.named_parameters() if n.startswith("actor")}
    ctx = RetentionContext(pretrained=pi_star, fisher=fisher)
    g_l2 = aux_grads("l2", agent, ctx)
    g_ewc = aux_grads("ewc", agent, ctx)
    for n, p in agent.named_parameters():
        if n.startswith("critic"):
            assert g_l2[n] is None and g_ewc[n] is None
            continue
        diff = (p - anchor[n]).detach()
        assert torch.allclose(g_l2[n], 2 * 3.0 * diff, atol=1e-6)
        assert torch.allclose(g_ewc[n], 2 * 7.0 * fisher[n] * diff, atol=1e-6)


def test_exact_fisher_of_the_sac_actor_matches_the_closed_form(pi_star):
    x = obs_batch(3, seed=9)
    f = fisher_diagonal(pi_star, x, estimator="exact", min_value=0.0)
    name = "actor.weights.1"
    param = dict(pi_star.named_parameters())[name]
    total = torch.zeros_like(param)
    for i in range(3):
        out = pi_star.dist_params(x[i : i + 1])[0, 0]
        mean, log_std = out.chunk(2)
        for d in range(4):
            gm = torch.autograd.grad(mean[d], param, retain_graph=True)[0]
            gl = torch.autograd.grad(log_std[d], param, retain_graph=True)[0]
            total += gm.pow(2) / torch.exp(2 * log_std[d].detach()) + 2 * gl.pow(2)
    assert torch.allclose(f[name], total / 3, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("method", ["bc", "ks"])
def test_distillation_gradient_is_zero_at_pi_star_and_not_after_a_perturbation(pi_star, method):
    far_obs = obs_batch(64, seed=11)
    with torch.no_grad():
        targets = pi_star.dist_params(far_obs)[0]
    ctx = RetentionContext(pretrained=pi_star, far_obs=far_obs, far_targets=targets, generator=torch.Generator().manual_seed(0))
    online = obs_batch(32, seed=12).unsqueeze(0).expand(2, -1, -1)
    at_star = aux_grads(method, pi_star.replicate(2), ctx, online=online)
    moved = aux_grads(method, perturbed(pi_star, 2, 0.05), ctx, online=online)
    for n in at_star:
        if n.startswith("critic"):
            assert at_star[n] is None and moved[n] is None
        else:
            assert at_star[n].abs().max() < 1e-5
    assert sum(float(moved[n].abs().sum()) for n in moved if n.startswith("actor")) > 1e-3


def test_em_is_accepted_for_sac_and_protects_the_expert_transitions():
    demos = {
        "obs": np.random.rand(30, SPEC.obs_dim).astype(np.float32),
        "act": np.random.rand(30, 4).astype(np.float32),
        "rew": np.arange(30, dtype=np.float32),
        "next_obs": np.random.rand(30, SPEC.obs_dim).astype(np.float32),
        "terminal": np.zeros(30, np.float32),
    }
    ctx = RetentionContext(pretrain_transitions=robot.em_transitions(demos, 2))
    method = build_retention("em", ctx, RetentionParams(em={"share": 0.2}), learner="sac", off_policy=sac.OFF_POLICY)
    replay = ProtectedReplay(100, sac.replay_specs(SPEC, 2))
    method.setup_replay(replay)
    assert replay.n_protected == 20  # share · capacity (fewer than the 30 demos)
    for _ in range(300):  # wrap the online part several times
        replay.add({k: torch.ones(1, *v.shape[1:]) * -1 for k, v in replay.data.items()})
    assert torch.equal(replay.data["rew"][:20], torch.arange(20.0).unsqueeze(1).expand(20, 2))
    assert len(replay) == 100


def test_learner_adds_the_aux_loss_and_passes_online_states_only_to_ks(pi_star, monkeypatch):
    calls = []
    for method in ("finetune", "l2", "ks"):
        ctx = RetentionContext(pretrained=pi_star)
        m = build_retention(method, ctx, RetentionParams(l2={"coef": 1e4}), learner="sac", off_policy=True)
        orig = m.aux_loss
        monkeypatch.setattr(m, "aux_loss", lambda pol, online, step, orig=orig, name=method: calls.append((name, None if online is None else tuple(online.shape))) or orig(pol, online, step))
        agent = perturbed(pi_star, 2, 0.05)
        learner = sac.SACLearner(agent, sac.SACConfig(lr=1e-2), m, torch.Generator().manual_seed(0))
        b = {"obs": obs_batch(8).expand(2, -1, -1), "act": torch.zeros(2, 8, 4), "rew": torch.ones(2, 8), "next_obs": obs_batch(8, seed=1).expand(2, -1, -1), "terminal": torch.zeros(2, 8)}
        before = sum(float((p - q).pow(2).sum()) for (n, p), (_, q) in zip(agent.named_parameters(), pi_star.named_parameters()) if n.startswith("actor"))
        learner.update(b)
        after = sum(float((p - q).pow(2).sum()) for (n, p), (_, q) in zip(agent.named_parameters(), pi_star.named_parameters()) if n.startswith("actor"))
        if method == "l2":
            assert after < before  # a strong anchor pulls the actor back towards θ*
    assert calls == [("finetune", None), ("l2", None), ("ks", (2, 8, SPEC.obs_dim))]


def test_terminal_transitions_do_not_bootstrap(pi_star):
    m = build_retention("finetune", RetentionContext(), RetentionParams(), learner="sac", off_policy=True)
    learner = sac.SACLearner(pi_star.replicate(1), sac.SACConfig(gamma=0.9), m, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in learner.target.critic_parameters():
            p.add_(100.0)  # a huge target value would leak into y if terminal transitions bootstrapped
    obs = obs_batch(4).unsqueeze(0)
    b = {"obs": obs, "act": torch.zeros(1, 4, 4), "rew": torch.full((1, 4), 3.0), "next_obs": obs, "terminal": torch.ones(1, 4)}
    q1, q2 = learner.agent.q(obs, b["act"])
    expected = ((q1 - 3.0).pow(2) + (q2 - 3.0).pow(2)).mean()
    assert torch.allclose(learner.critic_loss(b), expected.detach(), rtol=1e-5)
    b["terminal"].zero_()
    assert not torch.allclose(learner.critic_loss(b), expected.detach(), rtol=1e-3)


# --------------------------------------------------------------------------- bad input


def write_params(tmp_path, robot_section: str):
    path = tmp_path / "params.yaml"
    path.write_text("profile: default\ndevice: cpu\nrobot:\n" + textwrap.indent(textwrap.dedent(robot_section), "  "))
    return path


@pytest.mark.parametrize(
    "section, key, words",
    [
        ("env:\n  tasks: [hammer, pushh, peg-unplug-side, push-wall]\n", "robot.env.tasks", "pushh"),
        ("env:\n  tasks: [push-wall]\n  far: []\n", "robot.env.tasks", "at least two"),
        ("env:\n  far: [peg-unplug-side, push]\n", "robot.env.far", "suffix"),
        ("env:\n  tasks: [hammer, push]\n  far: [hammer, push]\n", "robot.env.far", "suffix"),
        ("finetune:\n  methods: [bc, nope]\n", "robot.finetune.methods", "nope"),
        ("retention:\n  regularize_critic: true\n", "regularize_critic", "not supported"),
    ],
)
def test_bad_params_name_the_key(tmp_path, section, key, words):
    with pytest.raises(ConfigError) as err:
        load_params(write_params(tmp_path, section), only="robot")
    assert key in str(err.value) and words in str(err.value)


def test_good_params_and_em_for_sac(tmp_path):
    p = load_params(write_params(tmp_path, "env:\n  tasks: [push, push-wall]\n  far: [push-wall]\nfinetune:\n  methods: [em, bc]\n"), only="robot").section("robot")
    assert p.env.far_stages == [1] and p.env.obs_dim == 39 + 1 + 2 and p.finetune.methods == ["em", "bc"]
    assert robot.Params().retention.ewc.coef == 100.0  # the study's coefficients are the defaults


def test_gate_fails_with_a_clear_message():
    p = robot.Params()
    with pytest.raises(RuntimeError, match="pretrain gate failed.*push-wall"):
        robot.check_gate(p, np.array([0.0, 1.0, 0.5]))  # drawer-close, peg-unplug-side, push-wall
    robot.check_gate(p, np.array([0.0, 0.95, 0.9]))


# --------------------------------------------------------------------------- critic pre-training


def test_discounted_returns_restart_at_every_terminal():
    rew = np.array([1.0, 2.0, 4.0, 10.0, 3.0], np.float32)
    term = np.array([0, 0, 1, 0, 1], np.float32)
    g = robot.discounted_returns(rew, term, 0.5)
    np.testing.assert_allclose(g, [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4, 10 + 0.5 * 3, 3])
    with pytest.raises(ValueError, match="last transition is not terminal"):
        robot.discounted_returns(rew, np.zeros(5, np.float32), 0.5)


def test_critic_pretraining_fits_the_monte_carlo_returns():
    """Episodes whose return is set by the state (a large success bonus at the end, like
    RoboticSequence's): the Monte-Carlo regression must bring the held-out critic close to them."""
    rng = np.random.default_rng(0)
    spec = sac.AgentSpec(obs_dim=6, act_dim=2, n_stages=1, hidden=32, layers=2)
    agent = sac.SACAgent(spec, 1, generator=torch.Generator().manual_seed(0))
    obs, rew, term = [], [], []
    for _ in range(60):
        length = int(rng.integers(5, 15))
        for t in range(length):
            o = np.r_[rng.normal(size=4), (length - t) / 15, 1.0]  # steps to the end: the return is a function of the state
            obs.append(o)
            rew.append(1.0 + (300.0 if t == length - 1 else 0.0))
            term.append(float(t == length - 1))
    obs = np.asarray(obs, np.float32)
    trans = {"obs": obs, "act": rng.uniform(-1, 1, (len(obs), 2)).astype(np.float32), "rew": np.asarray(rew, np.float32),
             "next_obs": obs, "terminal": np.asarray(term, np.float32)}
    cfg = robot.FinetuneParams(gamma=0.8)  # returns from ≈ 300 (at the bonus) down to ≈ 15
    pcfg = robot.PretrainParams(critic_mc_steps=600, critic_steps=0, batch_size=128)
    fit = robot.fit_critic(agent, trans, cfg, pcfg, torch.Generator().manual_seed(1))
    before, after = fit["before"], fit["monte_carlo"]
    assert after["mean_abs_error"] < 0.3 * before["mean_abs_error"]
    assert after["corr"] > 0.8 > before["corr"]
    assert fit["td"] == after  # no TD steps: the Monte-Carlo fit is what the critic keeps


# --------------------------------------------------------------------------- end to end
# The stage functions end to end: tests/test_pipeline_e2e.py (`_robot`) checks what each stage of
# the smoke DAG wrote, sized by the smoke profile. SMOKE: a tinier config for in-process tests.


SMOKE = {
    "net": {"hidden": 32, "layers": 2},
    "env": {"tasks": ["push", "push-wall"], "far": ["push-wall"], "T": 100},
    "demos": {"episodes": 2},
    "pretrain": {"bc_steps": 30, "dagger_rounds": 1, "dagger_episodes": 1, "critic_mc_steps": 10, "critic_steps": 10, "explore_episodes": 1, "eval_episodes": 1, "gate": 0.0},
    "far_buffer": {"size": 64},
    "fisher": {"states": 16},
    "finetune": {"seeds": 2, "steps": 40, "batch_size": 16, "replay_size": 400, "update_every": 10, "random_steps": 10, "eval_every": 20, "eval_episodes": 1, "checkpoints": 2},
}


def test_code_defaults_are_the_default_profile(root):
    """Params() must equal the params.yaml robot section under the default profile."""
    p = load_params(root / "params.yaml", profile="default", only="robot").section("robot")
    assert p == robot.Params()


def test_dvc_stages_declare_the_paths_the_code_writes(root):
    import yaml

    from retainrl.core.paths import Paths

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    paths = Paths("robot")
    outs = dvc_outs(root)
    assert outs["robot_collect_demos"] == [str(paths.demos)]
    assert outs["robot_pretrain"] == [str(paths.pretrained)]
    assert outs["robot_far_buffer"] == [str(paths.far_buffer)]
    assert outs["robot_fisher"] == [str(paths.fisher)]
    assert outs["robot_finetune"] == [str(paths.finetune_root / "${item.method}")]
    assert all(o.startswith(str(paths.evaluation)) for o in outs["robot_evaluate"])
    assert outs["robot_report"] == [str(paths.report)]
    plots = [next(iter(p)) for p in stages["robot_evaluate"]["plots"]]
    assert plots == [str(paths.evaluation / f) for f in ("close_success.json", "far_success.json", "completed.json")]


def test_online_sac_pretraining_trains_on_far_stages_and_keeps_the_pretraining_transitions():
    """pretrain.online_steps: SAC from the cloned π* on the FAR stages only; the replay keeps every
    pre-training transition, EM's memory is drawn from pre-training + online transitions."""
    p = robot.Params.model_validate({**SMOKE, "pretrain": {**SMOKE["pretrain"], "online_steps": 30}})
    demos = robot.make_demos(p.env, p.demos)
    gen = torch.Generator().manual_seed(0)
    agent = sac.SACAgent(robot.agent_spec(p), 1, generator=gen)
    agent.set_normalizer(torch.as_tensor(demos["obs"]), robot.BASE_OBS_DIM)
    trans = {k: demos[k] for k in robot.TRANSITION_KEYS}
    before = [q.detach().clone() for q in agent.actor_parameters()]
    filled, info = robot.online_sac(agent, trans, p, gen)
    n = len(trans["obs"])
    assert info["steps"] == 30 and info["transitions"] == n + 30 == len(filled["obs"])
    np.testing.assert_array_equal(filled["obs"][:n], trans["obs"])  # pre-training transitions kept, first
    online_stages = filled["obs"][n:, -p.env.n_stages:].argmax(1)
    assert set(online_stages.tolist()) <= set(p.env.far_stages) and online_stages[0] == p.env.far_stages[0]
    assert [c["step"] for c in info["curve"]] == [0, 20, 30] and set(info["curve"][0]) == {"step", "push-wall"}
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor_parameters()))  # SAC updated the actor
    # A replay too small for all of them keeps a random half-replay's worth.
    small = p.model_copy(update={"finetune": p.finetune.model_copy(update={"replay_size": n})})
    filled, info = robot.online_sac(agent, trans, small, gen)
    assert info["transitions"] == n // 2 + 30
    rows = {r.tobytes() for r in trans["obs"]}
    assert all(r.tobytes() in rows for r in filled["obs"][: n // 2])


def test_ks_decays_once_per_actor_update(pi_star):
    """KS's coefficient after N SAC updates is max(floor, coef·decay^N): the step is the update count."""
    params = RetentionParams(ks={"coef": 1.0, "decay": 0.5, "floor": 0.2})
    m = build_retention("ks", RetentionContext(pretrained=pi_star), params, learner="sac", off_policy=True)
    steps = []
    orig = m.aux_loss
    m.aux_loss = lambda pol, online, step: steps.append(step) or orig(pol, online, step)
    learner = sac.SACLearner(perturbed(pi_star, 1, 0.05), sac.SACConfig(), m, torch.Generator().manual_seed(0))
    b = {"obs": obs_batch(8).unsqueeze(0), "act": torch.zeros(1, 8, 4), "rew": torch.ones(1, 8), "next_obs": obs_batch(8, seed=1).unsqueeze(0), "terminal": torch.zeros(1, 8)}
    for _ in range(4):
        learner.update(b)
    assert steps == [0, 1, 2, 3]
    assert [m.coef(s) for s in steps] == pytest.approx([1.0, 0.5, 0.25, 0.2])


def test_an_episode_depends_on_the_sequence_seed_alone_not_on_the_pooled_envs_history():
    """Meta-World ignores ``reset(seed=...)``; positions come from the env's own stream. A
    sequence must re-seed the env it is handed, or an evaluation's start states would depend on
    what the pooled env did before (and a resumed run could not rebuild them)."""
    env = robot.EnvParams(tasks=["push", "push-wall"], far=["push-wall"], T=20)
    first = robot.RoboticSequence(env, 7)
    start = first.reset(stage=1, single=True)
    first.close()
    used = robot.RoboticSequence(env, 8)  # takes the pooled envs and moves their streams on
    for _ in range(3):
        used.reset(stage=1, single=True)
    used.close()
    again = robot.RoboticSequence(env, 7)  # gets the same, now-used env objects back
    np.testing.assert_array_equal(again.reset(stage=1, single=True), start)
    assert not np.array_equal(robot.RoboticSequence(env, 9).reset(stage=1, single=True), start)


def test_the_docs_close_probe_table_is_the_committed_probe_results(root):
    """docs/robot.md's CLOSE-candidate table is generated from the committed probe file, and the
    default CLOSE is the one candidate with any success there."""
    import json

    from retainrl.pipeline.docblocks import read_block
    from experiments.probe_robot_close import BEGIN, DOCS, END, OUT, table

    results = json.loads(OUT.read_text())
    assert read_block(DOCS, BEGIN, END) == table(results).strip(), \
        "run: python experiments/probe_robot_close.py --docs"
    learned = [c["task"] for c in results["candidates"] if c["best_close_success"] > 0]
    p = load_params(root / "params.yaml", only="robot").section("robot")
    assert learned == p.env.tasks[: p.env.n_stages - len(p.env.far)]

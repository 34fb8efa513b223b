"""The retention library's methods inside sample-factory's APPO learner: gradient checks against the closed forms.

``learners.appo.attach`` makes sample-factory's learner a ``RetentionLearner`` whose
``_calculate_losses`` adds the method's auxiliary loss (the same classes every learner uses, seeing
the network through ``SFPolicy``) to APPO's policy loss; everything after it (backward, clipping,
Adam) is the learner's own. Here the learner's original loss is replaced by a known
stand-in, so the gradient of what the retention learner returns must be exactly the stand-in's
gradient plus the method's:

* l2:  2·coef·(θ − θ*) on the actor, nothing on the critic or on a frozen encoder;
* ewc: 2·coef·F·(θ − θ*);
* ks:  coef_t·(softmax(z) − π*(·|s))·valid/Σvalid on the learner's logits z, coef_t = max(floor, coef·decay^t);
* bc:  the gradient of coef·E KL(π* ‖ π_θ) on FAR-buffer states computed by the retention library's ``kl``.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

pytest.importorskip("sample_factory")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from retainrl.core.config import ConfigError  # noqa: E402
from retainrl.families.nethack import stages as nhf  # noqa: E402
from retainrl.families.nethack import sf  # noqa: E402
from retainrl.learners.appo import RetentionLearner, SFTeacher, attach  # noqa: E402
from retainrl.core.paths import Paths  # noqa: E402
from retainrl.pipeline import generic  # noqa: E402
from retainrl.retention.dists import kl  # noqa: E402
from retainrl.retention.methods import REGISTRY, RetentionContext  # noqa: E402
from retainrl.retention.methods import RetentionParams  # noqa: E402


def method(name: str, anchor: dict | None = None, fisher: dict | None = None, far: dict | None = None, seed: int = 0, **params):
    """A retention method as the NetHack family builds it: π* (θ* = ``anchor``) seen through SFTeacher."""
    pretrained = None
    if anchor is not None:
        import copy

        pretrained = copy.deepcopy(_NET[0])
        with torch.no_grad():
            for n, q in pretrained.named_parameters():
                q.copy_(anchor[n])
        pretrained = SFTeacher(pretrained)
    elif name == "ks":
        pretrained = SFTeacher(_NET[0])  # its outputs on online states come with the batch
    ctx = RetentionContext(pretrained=pretrained, fisher=fisher, generator=torch.Generator().manual_seed(seed),
                           far_obs=None if far is None else {k: torch.from_numpy(np.asarray(far[k])) for k in ("chars", "blstats", "misc", "message", "rnn")},
                           far_targets=None if far is None else torch.from_numpy(np.asarray(far["logits"])).float())
    return REGISTRY[name](ctx, RetentionParams.model_validate(params))


_NET: list = []


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    import gymnasium as gym
    from sample_factory.model.actor_critic import create_actor_critic

    torch.manual_seed(0)
    cfg = sf.sf_config(tmp_path_factory.mktemp("sf"), "grad")
    ac = create_actor_critic(cfg, sf.obs_space(), gym.spaces.Discrete(sf.N_ACTIONS))
    anchor = {n: q.detach().clone() for n, q in ac.named_parameters()}
    with torch.no_grad():  # move every parameter away from θ*
        for q in ac.parameters():
            q.add_(0.01 * torch.randn_like(q))
    _NET[:] = [ac]
    return ac, cfg, anchor


def random_obs(n: int, gen: torch.Generator) -> dict:
    return {
        "chars": torch.randint(32, 127, (n, *sf.MAP_SHAPE), generator=gen, dtype=torch.uint8),
        "blstats": torch.cat([torch.randint(0, 21, (n, 2), generator=gen).float(), torch.rand(n, sf.BLSTATS - 2, generator=gen) * 10], 1),
        "misc": torch.zeros(n, 3),
        "message": torch.randint(0, 127, (n, sf.MSG_LEN), generator=gen, dtype=torch.uint8),
    }


def patched_policy_loss(monkeypatch, loss, ac, base, mb=None, dist=None, learner=None):
    """policy_loss as the retention learner returns it, with ``base`` as APPO's own; with
    ``learner`` (a retention learner from an earlier call) also that learner, which keeps its step."""
    from sample_factory.algo.learning.learner import Learner

    def stand_in(self, mb, num_invalids):
        return dist, base(self.actor_critic), None, None, None, torch.zeros(()), {}

    monkeypatch.setattr(Learner, "_calculate_losses", stand_in)
    keep = learner is not None
    if learner is None:
        learner = object.__new__(Learner)  # sample-factory's own class, as LearnerWorker builds it
        learner.actor_critic = ac
        attach(learner, loss)
    res = learner._calculate_losses(mb if mb is not None else {}, 0)
    assert "retention_loss" in res[-1]
    return (res[1], learner) if keep or dist is not None else res[1]


def test_attach_changes_only_that_learner_and_survives_the_trip_to_a_learner_process(net):
    """Parallel mode pickles the learner to a spawned process: class and loss must travel along."""
    import pickle

    from sample_factory.algo.learning.learner import Learner

    ac, _, anchor = net
    learner, other = object.__new__(Learner), object.__new__(Learner)
    loss = method("l2", anchor, l2={"coef": 2.0})
    attach(learner, loss, freeze_encoder=True, snapshot_dir=None, snapshot_steps=[30, 10])
    learner.actor_updates = 7
    assert isinstance(learner, RetentionLearner) and type(other) is Learner  # the class itself is untouched
    assert Learner._calculate_losses.__qualname__ == "Learner._calculate_losses"
    clone = pickle.loads(pickle.dumps(learner))
    assert type(clone) is RetentionLearner and clone.pending == [10, 30] and clone.freeze_encoder
    assert clone.retention.name == "l2" and clone.actor_updates == 7
    assert all(torch.equal(clone.retention.anchor[k], v) for k, v in loss.anchor.items())
    assert "critic_linear.weight" not in loss.anchor  # the critic is never regularised
    with pytest.raises(TypeError, match="Learner"):
        attach(clone, loss)  # already a retention learner


def grads(ac, loss) -> dict:
    for q in ac.parameters():
        q.grad = None
    loss.backward()
    return {n: (q.grad.clone() if q.grad is not None else torch.zeros_like(q)) for n, q in ac.named_parameters()}


def base_loss(ac):
    """A stand-in for APPO's loss touching the actor head and the critic."""
    return (ac.action_parameterization.distribution_linear.bias ** 2).sum() + ac.critic_linear.weight.sum()


def test_sample_factory_returns_the_policy_loss_second():
    """The patch adds to element 1 of _calculate_losses' result: that must stay APPO's policy loss."""
    from sample_factory.algo.learning.learner import Learner

    src = inspect.getsource(Learner._calculate_losses)
    assert "return action_distribution, policy_loss, exploration_loss, kl_old, kl_loss, value_loss, loss_summaries" in src
    assert "actor_loss: Tensor = policy_loss + exploration_loss + kl_loss" in inspect.getsource(Learner._train)


@pytest.mark.parametrize("name", ["l2", "ewc"])
def test_l2_and_ewc_gradients_through_the_learner(monkeypatch, net, name):
    ac, _, anchor = net
    gen = torch.Generator().manual_seed(1)
    fisher = {n: torch.rand(q.shape, generator=gen) + 0.1 for n, q in ac.named_parameters() if not n.startswith("critic_linear")}
    coef = 3.0
    loss = globals()["method"](name, anchor, fisher if name == "ewc" else None, **{name: {"coef": coef}})
    for frozen in (False, True):
        total = patched_policy_loss(monkeypatch, loss, ac, base_loss)
        if frozen:  # what RetentionLearner.init does after loading π*: the encoder stops training
            for q in ac.encoder.parameters():
                q.requires_grad_(False)
            total = patched_policy_loss(monkeypatch, loss, ac, base_loss)
        g = grads(ac, total)
        g0 = grads(ac, base_loss(ac))
        for pname, q in ac.named_parameters():
            if not q.requires_grad:
                continue
            expect = g0[pname].clone()
            if not pname.startswith("critic_linear") and not (frozen and pname.startswith("encoder")):
                d = (q.detach() - anchor[pname]) * 2 * coef
                expect += d * fisher[pname] if name == "ewc" else d
            torch.testing.assert_close(g[pname], expect, rtol=1e-5, atol=1e-7, msg=f"{name} {pname}")
        for q in ac.encoder.parameters():
            q.requires_grad_(True)


def test_ks_gradient_on_the_learners_logits_with_decay_and_floor(monkeypatch, net):
    from sample_factory.algo.utils.action_distributions import get_action_distribution
    from sample_factory.utils.attr_dict import AttrDict

    ac, _, _ = net
    gen = torch.Generator().manual_seed(2)
    n, coef, decay, floor = 6, 0.75, 0.5, 0.33
    teacher = torch.randn(n, sf.N_ACTIONS, generator=gen)
    z = torch.randn(n, sf.N_ACTIONS, generator=gen, requires_grad=True)
    valids = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    mb = AttrDict({"normalized_obs": {"teacher_logits": teacher}, "valids": valids})
    loss = method("ks", ks={"coef": coef, "decay": decay, "floor": floor})
    learner = None
    for t, coef_t in enumerate([0.75, 0.375, 0.33, 0.33]):  # coef·decay^t, floored: one step per actor update
        dist = get_action_distribution(ac.action_space, z)
        total, learner = patched_policy_loss(monkeypatch, loss, ac, lambda _: torch.zeros(()), mb=mb, dist=dist, learner=learner)
        (gz,) = torch.autograd.grad(total, z)
        expect = coef_t * (torch.softmax(z, -1) - torch.softmax(teacher, -1)) * valids[:, None] / valids.sum()
        torch.testing.assert_close(gz, expect.detach(), rtol=1e-5, atol=1e-8, msg=f"update {t}")
        assert learner.retention_last == pytest.approx(float(coef_t * (kl("categorical", teacher, z.detach())[valids]).mean()), rel=1e-5)
        assert learner.actor_updates == t + 1


def test_bc_gradient_matches_the_retention_librarys_kl_on_far_states(monkeypatch, net):
    ac, cfg, _ = net
    gen = torch.Generator().manual_seed(3)
    n = 5
    buf = {k: v.numpy() for k, v in random_obs(n, gen).items()}
    buf["logits"] = torch.randn(n, sf.N_ACTIONS, generator=gen).numpy()
    buf["rnn"] = torch.randn(n, cfg.rnn_size, generator=gen).numpy() * 0.1
    coef = 2.0
    loss = method("bc", far=buf, seed=7, bc={"coef": coef, "batch_size": n})
    total = patched_policy_loss(monkeypatch, loss, ac, base_loss)
    g = grads(ac, total)
    idx = torch.randint(n, (n,), generator=torch.Generator().manual_seed(7))  # the states BC drew
    x = {k: torch.from_numpy(buf[k])[idx] for k in ("chars", "blstats", "misc", "message")}
    out = ac(x, torch.from_numpy(buf["rnn"])[idx])
    ref = base_loss(ac) + coef * kl("categorical", torch.from_numpy(buf["logits"])[idx], out["action_logits"]).mean()
    g_ref = grads(ac, ref)
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-7, msg=name)
    assert float(g["action_parameterization.distribution_linear.bias"].abs().sum()) > 0
    assert float((g["critic_linear.weight"] - 1.0).abs().max()) < 1e-6  # the critic only sees APPO's own loss


def test_finetune_and_scratch_add_nothing(monkeypatch, net):
    ac, _, _ = net
    for name in ("finetune", "scratch"):
        total = patched_policy_loss(monkeypatch, method(name), ac, base_loss)
        assert float(total) == pytest.approx(float(base_loss(ac)))


def test_em_is_refused_naming_the_method_list(tmp_path):
    with pytest.raises(ConfigError, match=r"nethack\.finetune\.methods: method 'em' \(episodic memory\) needs an off-policy learner"):
        generic.stage(nhf, "finetune")(nhf.validate_params({}), Paths("nethack", root=tmp_path), None, "em")
    with pytest.raises(ConfigError, match=r"nethack\.finetune\.methods: .*'em'"):
        nhf.validate_params({"finetune": {"methods": ["finetune", "em"]}})


def test_snapshot_schedule_is_even_and_ends_at_the_budget():
    assert sf.snapshot_schedule(1000, 1) == [1000]
    assert sf.snapshot_schedule(1000, 4) == [250, 500, 750, 1000]
    assert np.all(np.diff(sf.snapshot_schedule(12_000, 3)) > 0)


def test_run_appo_reports_a_runner_that_fails_to_start(monkeypatch, tmp_path):
    """sample-factory's runner.init() failing (no learner, no snapshot) comes back as its status."""
    import sample_factory.train as sft

    class FailingRunner:
        learners, env_steps = {}, {}

        def init(self):
            return 3

        def run(self):  # pragma: no cover - must not be reached
            raise AssertionError("run() after a failed init()")

    monkeypatch.setattr(sft, "make_runner", lambda cfg: (cfg, FailingRunner()))
    res = sf.run_appo(None, tmp_path / "run", method("finetune"), env_steps=64, num_envs=2, rollout=8,
                      batch_size=16, lr=1e-3, entropy=0.0)
    assert res["status"] == 3 and res["actor_updates"] == 0 and res["env_steps"] == 0
    assert json.loads((tmp_path / "run" / "train_episodes.json").read_text()) == []


def test_critic_warmup_trains_only_the_value_head_on_pi_stars_games(tmp_path):
    """The study's skip_train: APPO runs with π* playing, and only critic_linear (and the returns
    normaliser's statistics) change; the actor that BC produced is byte-identical afterwards."""
    import gymnasium as gym
    from sample_factory.model.actor_critic import create_actor_critic

    p = nhf.validate_params({"pretrain": {"critic": {"fit_episodes": 1, "env_steps": 96, "check_episodes": 1, "lr": 1e-2}},
                             "finetune": {"num_envs": 2, "rollout": 8, "batch_size": 16, "max_episode_steps": 40}})
    exp = tmp_path / "pretrained"
    cfg = sf.sf_config(tmp_path, "pretrained")
    torch.manual_seed(0)
    ac = create_actor_critic(cfg, sf.obs_space(), gym.spaces.Discrete(sf.N_ACTIONS))
    sf.save_sf_checkpoint(ac, cfg, exp, cfg.learning_rate)
    before = {k: v.clone() for k, v in ac.state_dict().items()}
    res = nhf.critic_warmup(p, exp, cfg)
    after, _ = sf.load_sf_policy(exp)
    changed = {k for k, v in after.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("critic_linear", "returns_normalizer")) for k in changed), changed
    assert any(k.startswith("critic_linear") for k in changed)
    assert res["env_steps"] >= 96 and len(list((exp / "checkpoint_p0").glob("*.pth"))) == 1
    for fit in (res["before"], res["after_mc"], res["after"]):
        assert fit["steps"] > 0 and np.isfinite(fit["mse"]) and np.isfinite(fit["value_mean"])


def test_critic_fit_is_zero_error_for_a_critic_that_knows_the_returns(monkeypatch):
    """critic_fit's target is the clipped, discounted return-to-go of the policy's own episode."""
    cfg = type("Cfg", (), {"rnn_size": 4, "gamma": 0.5, "reward_scale": 1.0, "reward_clip": 10.0})()
    rewards = [0.0, 3.0, 25.0, 1.0]  # 25 is clipped to 10
    returns = [0.0 + 0.5 * (3 + 0.5 * (10 + 0.5 * 1)), 3 + 0.5 * (10 + 0.5 * 1), 10 + 0.5 * 1, 1.0]

    class Env:
        t = 0

        def step(self, a):
            self.t += 1
            return {}, rewards[self.t - 1], self.t == len(rewards), False, {}

    class Oracle(torch.nn.Module):
        returns_normalizer = None

        def __init__(self):
            super().__init__()
            self.critic_linear, self.t = torch.nn.Identity(), 0

        def forward(self, x, rnn):
            self.t += 1
            values = self.critic_linear(torch.tensor([[returns[self.t - 1]]]))
            return {"new_rnn_states": rnn, "values": values, "action_logits": torch.zeros(1, 3)}

    env = Env()
    monkeypatch.setattr(nhf, "reset_seeded", lambda e, s: {})
    monkeypatch.setattr(sf, "sf_obs", lambda obs: {})
    fit = nhf.critic_fit(Oracle(), cfg, env, [None], max_steps=10)
    assert fit["steps"] == 4 and fit["mse"] == pytest.approx(0.0, abs=1e-9)
    assert fit["explained_variance"] == pytest.approx(1.0) and fit["return_mean"] == pytest.approx(np.mean(returns))


def test_fit_critic_mc_recovers_a_linear_value_and_sets_the_normaliser(tmp_path):
    """The Monte-Carlo fit: normaliser = the targets' moments; the head, read back through the
    normaliser, reproduces targets that are linear in its input features."""
    import gymnasium as gym
    from sample_factory.model.actor_critic import create_actor_critic

    ac = create_actor_critic(sf.sf_config(tmp_path, "mc"), sf.obs_space(), gym.spaces.Discrete(sf.N_ACTIONS))
    gen = np.random.default_rng(0)
    d = ac.critic_linear.in_features
    x = gen.normal(size=(4000, d)).astype(np.float32)
    target = 15.0 + 3.0 * x[:, 0] - 2.0 * x[:, 5]
    nhf.fit_critic_mc(ac, x, target, ridge=1e-6)
    assert float(ac.returns_normalizer.running_mean) == pytest.approx(target.mean())
    assert float(ac.returns_normalizer.running_var) == pytest.approx(target.var(), rel=1e-6)
    with torch.no_grad():
        v = ac.critic_linear(torch.from_numpy(x)).reshape(-1, 1).clone()
        ac.returns_normalizer(v, denormalize=True)
    np.testing.assert_allclose(v.numpy().ravel(), target, atol=1e-2)


def test_a_resumed_env_replays_the_game_it_was_playing_to_the_checkpoint(tmp_path):
    """An env of a resumed run (its logs cut to the checkpoint's step count) comes back in the game
    it was playing, at the step it had reached, and then goes on exactly as the uninterrupted env:
    the same observations for the same actions, across the next episode boundary too."""
    from types import SimpleNamespace

    logs = tmp_path / "episode_log"
    logs.mkdir()
    cfg = SimpleNamespace(nethack_character="mon-hum-neu-mal", nethack_seed=7, serial_mode=True, nethack_max_steps=30,
                          nethack_episode_log=str(logs), nethack_far_share=0.0, nethack_teacher="", nethack_steps_offset=0)
    env_config = SimpleNamespace(env_id=1)
    acts = np.random.default_rng(0).integers(0, 8, 120)  # the 8 compass moves: no prompts, no quitting

    def play(env, first_obs, actions):
        seen, obs = [], first_obs
        for a in actions:
            obs, _, term, trunc, _ = env.step(int(a))
            if term or trunc:  # as sample-factory does
                obs = env.reset()[0]
            seen.append(obs)
        return seen

    fresh = sf.make_sf_env("nethack", cfg, env_config)
    try:
        uninterrupted = play(fresh, fresh.reset()[0], acts)
    finally:
        fresh.close()
    ends = [json.loads(line)["env_local_steps"] for line in (logs / "env_0001.jsonl").read_text().splitlines()]
    assert len(ends) >= 3 and (logs / "actions_0001.u8").read_bytes() == bytes(acts.tolist())
    at = ends[1] + (ends[2] - ends[1]) // 2  # the checkpoint: mid-way through the third game
    sf.cut_episode_log(logs, at)
    resumed = sf.make_sf_env("nethack", SimpleNamespace(**{**vars(cfg), "nethack_steps_offset": at}), env_config)
    try:
        assert resumed.resume[0] == 2 and len(resumed.resume[1]) == at - ends[1]
        obs = resumed.reset()[0]
        for key in ("chars", "blstats", "message"):
            assert np.array_equal(obs[key], uninterrupted[at - 1][key]), key
        after = play(resumed, obs, acts[at:])
        assert all(np.array_equal(a["chars"], b["chars"]) and np.array_equal(a["blstats"], b["blstats"])
                   for a, b in zip(after, uninterrupted[at:]))
    finally:
        resumed.close()
    assert (logs / "actions_0001.u8").read_bytes() == bytes(acts.tolist())  # the replay is not logged twice
    sf.cut_episode_log(logs, at)
    with open(logs / "actions_0001.u8", "r+b") as f:  # parallel mode: an env behind its share of the checkpoint
        f.truncate(at - 1)
    game, actions = sf.in_progress_game(logs / "env_0001.jsonl", at)
    assert game == 2 and len(actions) == at - 1 - ends[1]
    with pytest.raises(ValueError, match="episode log"):
        sf.in_progress_game(None, at)


def test_a_frozen_encoder_runs_once_per_batch_and_the_run_is_bit_identical(monkeypatch, tmp_path):
    """With the encoder frozen, the learner computes its output once per batch instead of once per
    SGD epoch; with one minibatch per epoch that is the same computation on the same tensor, so a
    multi-epoch run ends on exactly the weights of the uncached run. A trained encoder (scratch)
    is not cached."""
    import gymnasium as gym
    from sample_factory.algo.learning.learner import Learner
    from sample_factory.model.actor_critic import create_actor_critic

    pistar = tmp_path / "pistar"
    cfg = sf.sf_config(tmp_path, "pistar")
    torch.manual_seed(0)
    sf.save_sf_checkpoint(create_actor_critic(cfg, sf.obs_space(), gym.spaces.Discrete(sf.N_ACTIONS)), cfg, pistar, 1e-3)
    cached_calls: list[bool] = []
    original = Learner._calculate_losses

    def spy(self, mb, num_invalids):
        cached_calls.append("head_outputs" in mb and "forward_head" in vars(self.actor_critic))
        return original(self, mb, num_invalids)

    monkeypatch.setattr(Learner, "_calculate_losses", spy)

    def run(name: str, cache: bool, pretrained=pistar) -> dict:
        monkeypatch.setattr(RetentionLearner, "cache_head", cache)
        cached_calls.clear()
        sf.run_appo(pretrained, tmp_path / name, method("finetune"), env_steps=64, num_envs=2, rollout=8, batch_size=16,
                    lr=1e-2, entropy=0.001, epochs=4, max_episode_steps=40, seed=3)
        snaps = sorted((tmp_path / name / "snapshots").glob("step_*.pth"))
        return {"model": torch.load(snaps[-1], map_location="cpu")["model"], "cached": list(cached_calls)}

    on, off = run("cached", True), run("uncached", False)
    assert on["cached"] and all(on["cached"]) and not any(off["cached"])
    assert len(on["cached"]) == len(off["cached"]) >= 8  # ≥ 2 batches × 4 epochs, one minibatch each
    start = sf.load_sf_policy(pistar)[0].state_dict()
    assert any(not torch.equal(on["model"][k], start[k]) for k in start)  # the run did train
    assert all(torch.equal(on["model"][k], off["model"][k]) for k in on["model"]), "the cache changed the run"
    assert not any(run("scratch", True, pretrained=None)["cached"])  # scratch trains its encoder: nothing cached

"""Retention library: values checked against hand computations and reference estimators."""

import math

import pytest
import torch
from torch import nn

from retainrl.core.config import ConfigError
from retainrl.retention.methods import RetentionParams
from retainrl.retention import ProtectedReplay, RetainablePolicy, RetentionContext, build_retention, check_method
from retainrl.retention.dists import kl
from retainrl.retention.fisher import fisher_diagonal, monte_carlo_fisher


class TinyCategorical(RetainablePolicy):
    family = "categorical"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.actor = nn.Linear(3, 4)
        self.critic = nn.Linear(3, 1)

    def dist_params(self, obs):
        return self.actor(obs)

    def critic_output(self, obs):
        return self.critic(obs).squeeze(-1)


class TinyGaussian(RetainablePolicy):
    family = "gaussian"

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Linear(3, 5), nn.Tanh())
        self.mean = nn.Linear(5, 2)
        self.log_std = nn.Linear(5, 2)

    def dist_params(self, obs):
        h = self.body(obs)
        return torch.cat([self.mean(h), 0.5 * torch.tanh(self.log_std(h))], -1)


def copy_of(policy):
    other = type(policy)()
    other.load_state_dict(policy.state_dict())
    return other


def params(**kw):
    return RetentionParams.model_validate(kw)


def perturb(policy, scale=0.3):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_l2_penalty_matches_hand_computation_and_skips_the_critic():
    star = TinyCategorical()
    pol = copy_of(star)
    perturb(pol)
    m = build_retention("l2", RetentionContext(pretrained=star), params(l2={"coef": 0.7}), learner="t", off_policy=False)
    expected = 0.7 * sum(((pol.state_dict()[k] - star.state_dict()[k]) ** 2).sum() for k in ("actor.weight", "actor.bias"))
    assert torch.allclose(m.aux_loss(pol, None, 0), expected)
    # With critic regularisation on, the critic's distance counts too.
    mc = build_retention("l2", RetentionContext(pretrained=star), params(l2={"coef": 0.7}, regularize_critic=True), learner="t", off_policy=False)
    assert mc.aux_loss(pol, None, 0) > expected


def test_ewc_penalty_on_a_tiny_net():
    star = TinyCategorical()
    pol = copy_of(star)
    with torch.no_grad():
        pol.actor.weight[0, 0] += 2.0
        pol.actor.bias[1] -= 1.0
    fisher = {"actor.weight": torch.full((4, 3), 0.5), "actor.bias": torch.tensor([1.0, 3.0, 1.0, 1.0])}
    m = build_retention("ewc", RetentionContext(pretrained=star, fisher=fisher), params(ewc={"coef": 2.0}), learner="t", off_policy=False)
    # 2 · (0.5 · 2² + 3 · 1²) = 10
    assert m.aux_loss(pol, None, 0).item() == pytest.approx(10.0)
    loss = m.aux_loss(pol, None, 0)
    loss.backward()
    assert pol.actor.weight.grad[0, 0].item() == pytest.approx(2 * 2.0 * 0.5 * 2.0)  # 2·coef·F·Δ
    assert pol.critic.weight.grad is None


def test_ewc_needs_a_fisher():
    with pytest.raises(ConfigError, match="ewc.*fisher"):
        build_retention("ewc", RetentionContext(pretrained=TinyCategorical()), params(), learner="t", off_policy=False)


@pytest.mark.parametrize("policy_cls", [TinyCategorical, TinyGaussian])
def test_bc_and_ks_kl_vanish_at_the_pretrained_weights(policy_cls):
    star = policy_cls()
    obs = torch.randn(32, 3, generator=torch.Generator().manual_seed(2))
    ctx = RetentionContext(pretrained=star, far_obs=obs, far_targets=star.dist_params(obs).detach(), generator=torch.Generator().manual_seed(0))
    for name in ("bc", "ks"):
        pol = copy_of(star)
        m = build_retention(name, ctx, params(), learner="t", off_policy=False)
        loss = m.aux_loss(pol, obs, 0)
        assert loss.item() == pytest.approx(0.0, abs=1e-6)
        loss.backward()
        assert all(p.grad is None or p.grad.abs().max() < 1e-5 for p in pol.parameters())
        perturb(pol)
        assert m.aux_loss(pol, obs, 0).item() > 1e-3


def test_gaussian_kl_closed_form():
    p = torch.tensor([[0.0, 0.0]])  # mean 0, log std 0
    q = torch.tensor([[1.0, math.log(2.0)]])
    # KL(N(0,1) || N(1,4)) = log 2 + (1 + 1)/(2·4) − 1/2
    assert kl("gaussian", p, q).item() == pytest.approx(math.log(2) + 2 / 8 - 0.5)


def test_ks_coefficient_decays_exponentially_to_its_floor():
    m = build_retention("ks", RetentionContext(pretrained=TinyCategorical()), params(ks={"coef": 0.75, "decay": 0.5, "floor": 0.1}), learner="t", off_policy=False)
    assert [m.coef(t) for t in range(5)] == pytest.approx([0.75, 0.375, 0.1875, 0.1, 0.1])


def test_scratch_and_finetune_add_nothing():
    for name in ("scratch", "finetune"):
        m = build_retention(name, RetentionContext(), params(), learner="t", off_policy=False)
        assert m.aux_loss(TinyCategorical(), None, 0) is None
    assert not build_retention("scratch", RetentionContext(), params(), learner="t", off_policy=False).starts_from_pretrained


def test_em_refused_by_on_policy_learners_with_a_clear_error():
    with pytest.raises(ConfigError, match="'em'.*off-policy.*'reinforce' is on-policy"):
        check_method("em", learner="reinforce", off_policy=False)
    with pytest.raises(ConfigError, match="unknown retention method 'ewk'"):
        check_method("ewk", learner="sac", off_policy=True)
    assert check_method("em", learner="sac", off_policy=True).name == "em"


def test_gaussian_fisher_exact_matches_monte_carlo():
    pol = TinyGaussian()
    obs = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    exact = fisher_diagonal(pol, obs, estimator="exact", min_value=0.0)
    mc = monte_carlo_fisher(pol, obs, samples_per_state=1500, generator=torch.Generator().manual_seed(4))
    for name in exact:
        rel = (exact[name] - mc[name]).norm() / exact[name].norm()
        assert rel < 0.08, (name, rel)


def test_categorical_fisher_exact_and_sampled_match_monte_carlo():
    pol = TinyCategorical()
    obs = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    exact = fisher_diagonal(pol, obs, estimator="exact", min_value=0.0)
    mc = monte_carlo_fisher(pol, obs, samples_per_state=1500, generator=torch.Generator().manual_seed(4))
    sampled = fisher_diagonal(pol, obs.repeat(400, 1), estimator="sampled", min_value=0.0, generator=torch.Generator().manual_seed(9))
    assert set(exact) == {"actor.weight", "actor.bias"}  # actor only by default
    for name in exact:
        assert (exact[name] - mc[name]).norm() / exact[name].norm() < 0.08
        assert (exact[name] - sampled[name]).norm() / exact[name].norm() < 0.1


def test_logistic_fisher_is_p_one_minus_p_s_squared():
    from retainrl.families.apple.stages import LogisticPolicy

    pol = LogisticPolicy(1, torch.tensor([[-1.0, -2.0]]))
    s = torch.tensor([[1.0, 0.5]])
    p = torch.sigmoid(torch.tensor(-1.0 - 1.0))
    f = fisher_diagonal(pol, s, min_value=0.0)["weight"]
    assert torch.allclose(f, (p * (1 - p) * s**2), atol=1e-6)
    clipped = fisher_diagonal(pol, s * 0, min_value=1e-5)["weight"]
    assert torch.all(clipped == 1e-5)


def test_protected_replay_never_evicts_protected_transitions():
    specs = {"obs": ((2,), torch.float32), "tag": ((), torch.long)}
    buf = ProtectedReplay(100, specs)
    protected = {"obs": torch.randn(30, 2), "tag": torch.full((30,), -1)}
    buf.protect(protected, share=0.1)  # 10 of the 30 fit in a 10% share
    assert buf.n_protected == 10
    for i in range(50):
        buf.add({"obs": torch.randn(7, 2), "tag": torch.full((7,), i)})
    assert len(buf) == 100
    assert torch.equal(buf.data["obs"][:10], protected["obs"][:10])
    assert torch.all(buf.data["tag"][:10] == -1)
    assert torch.all(buf.data["tag"][10:] >= 0)
    batch = buf.sample(20_000, torch.Generator().manual_seed(0))
    assert (batch["tag"] == -1).float().mean().item() == pytest.approx(0.1, abs=0.01)


def test_em_method_fills_the_protected_share():
    specs = {"obs": ((2,), torch.float32)}
    buf = ProtectedReplay(50, specs)
    ctx = RetentionContext(pretrain_transitions={"obs": torch.ones(40, 2)})
    m = build_retention("em", ctx, params(em={"share": 0.2}), learner="sac", off_policy=True)
    m.setup_replay(buf)
    assert buf.n_protected == 10 and len(buf) == 10


def test_the_registry_is_the_only_list_of_methods():
    """RetentionParams has one section per registered method (built from REGISTRY), so a new
    method is one class in retention/ plus its params; every family's params validate with it."""
    from retainrl.core.config import load_params
    from retainrl.retention.methods import REGISTRY

    assert set(RetentionParams.model_fields) == set(REGISTRY) | {"regularize_critic"}
    for name, cls in REGISTRY.items():
        assert isinstance(getattr(RetentionParams(), name), cls.Params)
    params = load_params("params.yaml")
    for family in params.sections:
        assert set(params.section(family).retention.model_dump()) == set(REGISTRY) | {"regularize_critic"}

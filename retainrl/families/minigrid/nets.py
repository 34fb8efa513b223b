"""Networks for RoomChain: a small actor-critic and a random-network-distillation bonus over the
one-hot egocentric view.

* :class:`ActorCritic` – one-hot cells (object, colour, state) and heading → a two-layer tanh
  trunk → policy logits and two value heads (extrinsic, intrinsic) for PPO+RND. The heads are
  named ``critic_*`` so retention regularises the actor (trunk + policy head) only, as the study does.
* :class:`GridRND` – RND's fixed random target and trained predictor on the same one-hot input;
  it offers what :func:`retainrl.learners.ppo_rnd.train` calls (``predictor``, ``error``,
  ``update_stats``). One-hot inputs need no running normalisation, so ``update_stats`` keeps none.
"""

from __future__ import annotations

import torch
from torch import nn

from retainrl.retention.policy import RetainablePolicy

N_OBJECTS, N_COLOURS, N_STATES, N_DIRS = 11, 6, 3, 4
IN_FEATURES = 49 * (N_OBJECTS + N_COLOURS + N_STATES) + N_DIRS


def one_hot(obs: torch.Tensor) -> torch.Tensor:
    """(B, 148) uint8 → (B, 984) float: each cell's object, colour and state one-hot, then the heading.

    Written as comparisons with ``arange`` rather than ``F.one_hot``, which cannot run under
    ``torch.func.vmap`` (the exact Fisher's per-state Jacobians)."""
    x = obs.long()
    cells = x[..., :147].reshape(*x.shape[:-1], 49, 3, 1)

    def code(v, n):
        return (v == torch.arange(n, device=v.device)).float()

    parts = [code(cells[..., 0, :], N_OBJECTS), code(cells[..., 1, :], N_COLOURS), code(cells[..., 2, :], N_STATES)]
    return torch.cat([torch.cat(parts, -1).flatten(-2), code(x[..., 147:148], N_DIRS)], -1)


class ActorCritic(RetainablePolicy):
    family = "categorical"
    critic_prefixes = ("critic",)

    def __init__(self, n_actions: int = 4, hidden: int = 64):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(IN_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.actor = nn.Linear(hidden, n_actions)
        self.critic_ext = nn.Linear(hidden, 1)
        self.critic_int = nn.Linear(hidden, 1)

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.trunk(one_hot(obs)))

    def critic_output(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.trunk(one_hot(obs))
        return torch.cat([self.critic_ext(h), self.critic_int(h)], dim=-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.dist_params(obs)

    def logits_and_values(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(one_hot(obs))
        return self.actor(h), torch.cat([self.critic_ext(h), self.critic_int(h)], dim=-1)


class GridRND(nn.Module):
    def __init__(self, out: int = 64):
        super().__init__()
        self.target = nn.Sequential(nn.Linear(IN_FEATURES, out), nn.Tanh(), nn.Linear(out, out))
        self.predictor = nn.Sequential(nn.Linear(IN_FEATURES, out), nn.ReLU(), nn.Linear(out, out))
        for p in self.target.parameters():
            p.requires_grad_(False)

    def update_stats(self, obs: torch.Tensor) -> None:
        """Nothing to track: the one-hot input is already on one scale."""

    def error(self, obs: torch.Tensor) -> torch.Tensor:
        x = one_hot(obs)
        return (self.predictor(x) - self.target(x)).pow(2).mean(-1)

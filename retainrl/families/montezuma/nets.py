"""Networks and behavioural cloning for Montezuma's Revenge.

* :class:`ActorCritic` – the PPO+RND agent of Burda et al. (2018) as the study used it: a Nature
  CNN trunk on 4 stacked 84×84 frames, a policy head and two value heads (extrinsic and
  intrinsic return). The heads are named ``critic_*`` so that retention methods, which regularise
  the actor only (the study's default), leave the value heads alone; the trunk counts as actor.
* :func:`behaviour_clone` – cross-entropy training of the actor on the demo's FAR segments
  (:func:`retainrl.families.montezuma.stages.far_segments`).

The RND networks (a fixed random target and a trained predictor) belong to the learner:
:mod:`retainrl.learners.rnd`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from retainrl.learners.rnd import nature_cnn
from retainrl.retention.policy import RetainablePolicy

log = logging.getLogger(__name__)


class ActorCritic(RetainablePolicy):
    """Categorical policy + extrinsic/intrinsic value heads over uint8 frame stacks."""

    family = "categorical"
    critic_prefixes = ("critic",)

    def __init__(self, n_actions: int = 18, frame_stack: int = 4, hidden: int = 448):
        super().__init__()
        self.trunk = nature_cnn(frame_stack, hidden)
        self.actor = nn.Linear(hidden, n_actions)
        self.critic_ext = nn.Linear(hidden, 1)
        self.critic_int = nn.Linear(hidden, 1)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.trunk(obs.float() / 255.0)

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.features(obs))

    def critic_output(self, obs: torch.Tensor) -> torch.Tensor:
        h = self.features(obs)
        return torch.cat([self.critic_ext(h), self.critic_int(h)], dim=-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The distribution parameters (retention's Fisher calls the module itself)."""
        return self.dist_params(obs)

    def logits_and_values(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One trunk pass for both heads (what PPO wants)."""
        h = self.features(obs)
        return self.actor(h), torch.cat([self.critic_ext(h), self.critic_int(h)], dim=-1)


def behaviour_clone(
    model: ActorCritic, obs: np.ndarray, actions: np.ndarray, *, steps: int, lr: float = 1e-4,
    batch_size: int = 64, seed: int = 0, device: torch.device | str = "cpu",
) -> list[float]:
    """Cross-entropy on (obs, action) pairs; returns the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    obs_t = torch.as_tensor(obs)
    act_t = torch.as_tensor(actions)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(obs_t), (min(batch_size, len(obs_t)),), generator=gen)
        logits = model.dist_params(obs_t[idx].to(device))
        loss = nn.functional.cross_entropy(logits, act_t[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses

"""Networks and BC data for Montezuma's Revenge.

* :class:`ActorCritic` – the PPO+RND agent of Burda et al. (2018) as the study used it: a Nature
  CNN trunk on 4 stacked 84×84 frames, a policy head and two value heads (extrinsic and
  intrinsic return). The heads are named ``critic_*`` so that retention methods, which regularise
  the actor only (the study's default), leave the value heads alone; the trunk counts as actor.
* :class:`RND` – a fixed random target and a trained predictor on the newest frame; the
  prediction error is the intrinsic reward. Output size 512 as in the study.
* :func:`far_segments` – (observation, action, room) of the demo in each FAR room, recreated by
  replaying the demo's actions from the room's entry state in :class:`MontezumaEnv` without
  sticky actions (the demo is deterministic; observations are not stored, which keeps demos tiny).
* :func:`behaviour_clone` – cross-entropy training of the actor on such segments.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from retainrl.retention.policy import RetainablePolicy

log = logging.getLogger(__name__)


def _nature_cnn(in_channels: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, out), nn.ReLU(),
    )


class ActorCritic(RetainablePolicy):
    """Categorical policy + extrinsic/intrinsic value heads over uint8 frame stacks."""

    family = "categorical"
    critic_prefixes = ("critic",)

    def __init__(self, n_actions: int = 18, frame_stack: int = 4, hidden: int = 448):
        super().__init__()
        self.trunk = _nature_cnn(frame_stack, hidden)
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


class RND(nn.Module):
    """Random network distillation on the newest frame, with running observation normalisation."""

    def __init__(self, out: int = 512):
        super().__init__()
        self.target = _nature_cnn(1, out)
        self.predictor = nn.Sequential(_nature_cnn(1, 512), nn.Linear(512, out))
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.zeros(1, 84, 84))
        self.register_buffer("var", torch.ones(1, 84, 84))
        self.register_buffer("count", torch.tensor(1e-4))

    def update_stats(self, obs: torch.Tensor) -> None:
        x = obs[:, -1:].float()
        b_mean, b_var, b = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, tot = b_mean - self.mean, self.count + b
        self.mean += delta * b / tot
        self.var = (self.var * self.count + b_var * b + delta**2 * self.count * b / tot) / tot
        self.count = tot

    def error(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-sample prediction error (the intrinsic reward before normalisation)."""
        x = ((obs[:, -1:].float() - self.mean) / self.var.sqrt().clamp_min(1e-6)).clamp(-5, 5)
        return (self.predictor(x) - self.target(x)).pow(2).mean(-1)


def far_segments(arrays: dict[str, np.ndarray], far_boundary: int, env_params=None) -> dict[str, np.ndarray]:
    """Observations, actions and rooms of the demo from the entry of route room ``far_boundary`` on.

    One segment per FAR room: the env is reset at the room's stored entry state (a fresh frame
    stack, exactly how evaluation and the FAR buffer start an episode there) and the demo's
    actions are replayed up to the entry of the next FAR room (the last one: to the end).
    ``arrays`` is what :func:`retainrl.envs.montezuma.load_demos` returns first.
    """
    from retainrl.config import ConfigError
    from retainrl.envs.montezuma import EnvParams, MontezumaEnv, split_route

    rooms = [int(r) for r in arrays["rooms"]]
    close, _ = split_route(rooms, far_boundary)
    env = MontezumaEnv(env_params or EnvParams(), sticky=0.0)
    actions = arrays["actions"]
    out_obs, out_act, out_room = [], [], []
    for j in range(len(close), len(rooms)):
        start = int(arrays["entry_steps"][j])
        stop = int(arrays["entry_steps"][j + 1]) if j + 1 < len(rooms) else len(actions)
        obs = env.reset(arrays["entry_states"][j])
        for a in actions[start:stop]:
            out_obs.append(obs)
            out_act.append(int(a))
            out_room.append(env.ram().room)
            obs, _, terminated, _, _ = env.step(int(a))
            if terminated:
                break
    if not out_act:
        raise ConfigError(
            f"montezuma.route.far_boundary: the demo has no steps from route room #{far_boundary} "
            f"(room {rooms[len(close)]}) on; lower it or let the search go further"
        )
    return {"obs": np.stack(out_obs), "actions": np.asarray(out_act, dtype=np.int64), "rooms": np.asarray(out_room)}


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

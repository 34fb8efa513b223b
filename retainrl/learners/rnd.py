"""Random network distillation (Burda et al. 2018): the exploration bonus of PPO+RND.

A fixed, randomly initialised target network and a trained predictor look at the newest frame;
the predictor's error is the intrinsic reward (novel frames are predicted badly). Observations
are normalised by running statistics before both networks. Output size 512 as in the study.
"""

from __future__ import annotations

import torch
from torch import nn


def nature_cnn(in_channels: int, out: int) -> nn.Sequential:
    """The Nature-DQN trunk (3 convolutions, one linear layer) on 84×84 frames."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, out), nn.ReLU(),
    )


class RND(nn.Module):
    """Random network distillation on the newest frame, with running observation normalisation."""

    def __init__(self, out: int = 512):
        super().__init__()
        self.target = nature_cnn(1, out)
        self.predictor = nn.Sequential(nature_cnn(1, 512), nn.Linear(512, out))
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

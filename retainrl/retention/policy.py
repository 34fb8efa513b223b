"""What a retention method needs from a policy: its distribution parameters and which weights are the actor's."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from retainrl.retention.dists import Family


class RetainablePolicy(nn.Module):
    """Base class for policies that retention methods can regularise.

    Subclasses set ``family`` and implement :meth:`dist_params`. Parameters whose names start
    with one of ``critic_prefixes`` belong to the critic; retention leaves them alone unless
    asked to regularise the critic too. A policy with a critic that may be distilled implements
    :meth:`critic_output`.
    """

    family: Family = "categorical"
    critic_prefixes: tuple[str, ...] = ("critic",)

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Calling the policy gives its distribution parameters (what torch.func transforms see)."""
        return self.dist_params(obs)

    def critic_output(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no critic to regularise")

    def has_critic(self) -> bool:
        return type(self).critic_output is not RetainablePolicy.critic_output

    def is_critic_param(self, name: str) -> bool:
        return name.startswith(self.critic_prefixes)

    def retained_parameters(self, include_critic: bool = False) -> Iterator[tuple[str, nn.Parameter]]:
        for name, param in self.named_parameters():
            if include_critic or not self.is_critic_param(name):
                yield name, param

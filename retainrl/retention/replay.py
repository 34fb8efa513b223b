"""A replay buffer with a protected share, the storage behind episodic memory (EM).

Protected transitions (from pre-training) fill the first slots and are never overwritten; online
transitions cycle through the remaining ``capacity - n_protected`` slots. Sampling is uniform
over every filled slot, so the protected share of each batch equals its share of the buffer.
"""

from __future__ import annotations

import math

import torch

from retainrl.core.config import ConfigError


class ProtectedReplay:
    def __init__(self, capacity: int, specs: dict[str, tuple[tuple[int, ...], torch.dtype]], device: torch.device | str = "cpu"):
        if capacity <= 0:
            raise ConfigError(f"replay capacity must be positive (got {capacity})")
        self.capacity = capacity
        self.device = torch.device(device)
        self.data = {k: torch.zeros((capacity, *shape), dtype=dtype, device=self.device) for k, (shape, dtype) in specs.items()}
        self.n_protected = 0
        self.cursor = 0  # next online slot, relative to n_protected
        self.n_online = 0

    def __len__(self) -> int:
        return self.n_protected + self.n_online

    def protect(self, transitions: dict[str, torch.Tensor], share: float) -> None:
        """Store up to ``share·capacity`` transitions permanently (call before any online ``add``)."""
        if len(self):
            raise RuntimeError("protect() must be called on an empty buffer")
        missing = set(self.data) - set(transitions)
        if missing:
            raise ConfigError(f"episodic memory: pre-training transitions lack {sorted(missing)}")
        n_avail = next(iter(transitions.values())).shape[0]
        n = min(n_avail, math.floor(share * self.capacity))
        if n >= self.capacity:
            raise ConfigError("episodic memory: the protected share leaves no room for online data")
        for k, v in self.data.items():
            v[:n] = transitions[k][:n].to(self.device, v.dtype)
        self.n_protected = n

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        """Append online transitions (leading axis = batch); the oldest online ones are overwritten."""
        free = self.capacity - self.n_protected
        n = next(iter(batch.values())).shape[0]
        idx = self.n_protected + (self.cursor + torch.arange(n)) % free
        for k, v in self.data.items():
            v[idx.to(self.device)] = batch[k].to(self.device, v.dtype)
        self.cursor = (self.cursor + n) % free
        self.n_online = min(free, self.n_online + n)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if not len(self):
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randint(len(self), (batch_size,), generator=generator).to(self.device)
        return {k: v[idx] for k, v in self.data.items()}

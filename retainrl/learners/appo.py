"""sample-factory's APPO learner with a retention term, in serial and in parallel mode.

sample-factory has no plug-in point for an extra loss: ``LearnerWorker`` builds a plain
``Learner``. ``attach`` turns that instance into a ``RetentionLearner`` (this subclass) after the
runner is initialised and before it starts. In serial mode the learner then runs in this
process; in parallel mode the runner pickles the ``LearnerWorker`` to a spawned learner process,
and the instance travels with its class reference (this module, imported there) and its
attributes (the retention loss with its anchor, Fisher, FAR buffer and generator state). No
global patch of sample-factory's classes is involved, so several runs in one process cannot
leak into each other.

What the subclass adds:

* the retention loss (``RetentionLoss``) is added to APPO's policy loss in ``_calculate_losses``,
  so it goes through the learner's own backward, gradient clipping and optimizer step;
* the encoder is frozen after the learner loads π* (the study froze encoders while fine-tuning);
  or, with ``train_only``, everything but the parameters under those name prefixes (the critic
  warm-up of ``pretrain``: APPO on π*'s own games with only ``critic_linear`` trained);
* the model is saved to ``snapshot_dir/step_<n>.pth`` at the initial weights (n = 0) and when
  the learner's env-step count first reaches each of ``snapshot_steps``; every snapshot also
  records how often the retention loss was applied and its last value (the learner may live in
  another process: snapshots are how that reaches the caller).
"""

from __future__ import annotations

from pathlib import Path

import torch
from sample_factory.algo.learning.learner import Learner


class RetentionLearner(Learner):
    """``Learner`` + retention loss + encoder freezing + snapshots (see the module docstring)."""

    retention = None  # RetentionLoss
    freeze_encoder: bool = False
    train_only: tuple[str, ...] = ()
    snapshot_dir: Path | None = None
    pending: list[int] = []

    def snapshot(self, step: int) -> None:
        if self.snapshot_dir is None:
            return
        Path(self.snapshot_dir).mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.actor_critic.state_dict(), "env_steps": int(self.env_steps), "step": step,
                    "retention_calls": self.retention.calls, "retention_loss_last": self.retention.last},
                   Path(self.snapshot_dir) / f"step_{step:09d}.pth")

    def init(self):
        out = super().init()
        if self.freeze_encoder:
            for prm in self.actor_critic.encoder.parameters():
                prm.requires_grad_(False)
        if self.train_only:
            for name, prm in self.actor_critic.named_parameters():
                if not name.startswith(self.train_only):
                    prm.requires_grad_(False)
        self.snapshot(0)
        return out

    def _calculate_losses(self, mb, num_invalids):
        res = list(super()._calculate_losses(mb, num_invalids))
        aux = self.retention(self.actor_critic, mb, res[0])
        res[1] = res[1] + aux  # policy_loss: part of the actor loss
        res[-1]["retention_loss"] = aux.detach()
        return tuple(res)

    def train(self, batch):
        out = super().train(batch)
        while self.pending and self.env_steps >= self.pending[0]:
            self.snapshot(self.pending.pop(0))
        return out


def attach(learner: Learner, loss, freeze_encoder: bool = True, snapshot_dir: Path | None = None,
           snapshot_steps: list[int] | tuple = (), train_only: tuple[str, ...] = ()) -> RetentionLearner:
    """Make ``learner`` (a plain sample-factory ``Learner``, not yet initialised) a ``RetentionLearner``.

    ``train_only``: parameter-name prefixes; when given, every other parameter is frozen.
    """
    if type(learner) is not Learner:
        raise TypeError(f"attach: expected sample-factory's Learner, got {type(learner).__name__}")
    learner.__class__ = RetentionLearner
    learner.retention = loss
    learner.freeze_encoder = bool(freeze_encoder)
    learner.snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
    learner.pending = sorted(int(s) for s in snapshot_steps)
    learner.train_only = tuple(train_only)
    return learner

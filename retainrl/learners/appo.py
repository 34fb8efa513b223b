"""sample-factory's APPO learner with a retention method attached, in serial and in parallel mode.

sample-factory has no plug-in point for an extra loss: ``LearnerWorker`` builds a plain
``Learner``. ``attach`` turns that instance into a ``RetentionLearner`` (this subclass) after the
runner is initialised and before it starts. In serial mode the learner then runs in this
process; in parallel mode the runner pickles the ``LearnerWorker`` to a spawned learner process,
and the instance travels with its class reference (this module, imported there) and its
attributes (the retention loss with its anchor, Fisher, FAR buffer and generator state). No
global patch of sample-factory's classes is involved, so several runs in one process cannot
leak into each other.

What the subclass adds:

* the retention method's auxiliary loss (any :class:`retainrl.retention.methods.RetentionMethod`:
  the same classes every other learner uses) is added to APPO's policy loss in
  ``_calculate_losses``, so it goes through the learner's own backward, gradient clipping and
  optimizer step. ``_calculate_losses`` runs once per minibatch and SGD epoch, i.e. once per actor
  gradient update: that count is the method's step (KS's decay), as in every learner;
* the encoder is frozen after the learner loads π* (the study froze encoders while fine-tuning);
  or, with ``train_only``, everything but the parameters under those name prefixes (the critic
  warm-up of ``pretrain``: APPO on π*'s own games with only ``critic_linear`` trained);
* a frozen encoder is run once per batch, not once per SGD epoch: sample-factory's
  ``_calculate_losses`` recomputes ``forward_head`` on every minibatch of every epoch, although
  with no trainable encoder parameter (and a deterministic encoder, as every encoder here is) its
  output cannot change within a batch. ``_train`` computes it over the whole batch and stores it
  in the batch (``head_outputs``), so every minibatch slices it with the rest. With one minibatch
  per epoch (the NetHack runs) that is the same computation on the same tensor, so the run is
  bit-identical (tested); the NetHack encoder was about half of the learner's time at 16 epochs
  (``benchmarks/bench_appo_head_cache.py``);
* the model is saved to ``snapshot_dir/step_<n>.pth`` at the initial weights (n = 0) and when
  the learner's env-step count first reaches each of ``snapshot_steps``; every snapshot also
  records how many actor updates were taken and the retention loss's last value (the learner
  may live in another process: snapshots are how that reaches the caller);
* resume: sample-factory's own checkpoints (``<exp>/checkpoint_p0/``, written every
  ``--save_every_sec`` and loaded at start under ``--restart_behavior=resume``) carry weights,
  optimiser, ``train_step`` and ``env_steps``; this subclass adds what it owns (the actor-update
  count, so KS's schedule goes on where it stopped, the last retention loss, the retention
  method's torch stream) and the process's global torch/numpy RNG streams. A resumed learner
  takes no step-0 snapshot and only the snapshots still ahead. What cannot come back is the
  envs' state: the games restart, so a resumed run is statistically, not bitwise, the
  uninterrupted one (measured: docs/orchestration.md).

:class:`SFPolicy` is how a retention method sees sample-factory's recurrent actor-critic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sample_factory.algo.learning.learner import Learner

from retainrl.retention.methods import RetentionMethod
from retainrl.retention.policy import RetainablePolicy

LEARNER = "appo"
#: APPO learns from the rollouts it just collected: no replay, so no episodic memory.
OFF_POLICY = False


class SFPolicy(RetainablePolicy):
    """The learner's sample-factory actor-critic as a :class:`RetainablePolicy` (categorical actions).

    Its parameters keep their sample-factory names (the Fisher and θ* are keyed by them); the
    critic is ``critic_linear``. A recurrent policy's output on a state depends on the hidden state
    it carried through the episode, so ``dist_params`` takes a dict of observations that either
    holds that output already (an online minibatch: the learner's own forward pass computed
    ``action_logits``) or the hidden state to run the network from (``rnn``: a FAR buffer stores π*'s).
    """

    family = "categorical"
    critic_prefixes = ("critic_linear",)

    def __init__(self, actor_critic):
        super().__init__()
        for name, child in actor_critic.named_children():
            self.add_module(name, child)  # the same parameter names as the wrapped model
        object.__setattr__(self, "_net", actor_critic)  # not registered twice

    def dist_params(self, obs: dict) -> torch.Tensor:
        if "action_logits" in obs:
            return obs["action_logits"].float()
        return self._net({k: v for k, v in obs.items() if k != "rnn"}, obs["rnn"])["action_logits"]


class SFTeacher(RetainablePolicy):
    """π* as retention methods see it inside APPO: its weights θ* (l2, ewc) and its outputs on the
    online states, which the envs compute (``teacher_logits``: only they hold π*'s recurrent state).

    It holds plain tensors, not the network, so the learner (and the method holding this) can be
    pickled to sample-factory's learner process in parallel mode.
    """

    family = "categorical"
    critic_prefixes = ("critic_linear",)

    def __init__(self, actor_critic):
        super().__init__()
        self.weights = {n: q.detach().clone() for n, q in actor_critic.named_parameters()}

    def retained_parameters(self, include_critic: bool = False):
        for name, w in self.weights.items():
            if include_critic or not self.is_critic_param(name):
                yield name, w

    def dist_params(self, obs: dict) -> torch.Tensor:
        return obs["teacher_logits"].float()


def _numpy_rng_state() -> dict:
    """numpy's global stream as tensors and plain numbers: sample-factory loads its checkpoints with
    torch's ``weights_only`` loader, which refuses numpy arrays (it would then silently start over)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "gauss": float(gauss)}


def _set_numpy_rng_state(st: dict) -> None:
    np.random.set_state((st["name"], st["keys"].numpy().astype(np.uint32), st["pos"], st["has_gauss"], st["gauss"]))


class RetentionLearner(Learner):
    """``Learner`` + retention loss + encoder freezing + snapshots (see the module docstring)."""

    retention: RetentionMethod | None = None
    actor_updates: int = 0
    retention_last: float = 0.0
    _policy_view: SFPolicy | None = None
    freeze_encoder: bool = False
    train_only: tuple[str, ...] = ()
    snapshot_dir: Path | None = None
    pending: list[int] = []
    resumed: bool = False
    cache_head: bool = True  # off only to measure what the cache saves

    def snapshot(self, step: int) -> None:
        if self.snapshot_dir is None:
            return
        Path(self.snapshot_dir).mkdir(parents=True, exist_ok=True)
        torch.save({"model": self.actor_critic.state_dict(), "env_steps": int(self.env_steps), "step": step,
                    "actor_updates": self.actor_updates, "retention_loss_last": self.retention_last},
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
        if self.resumed:  # snapshots up to the checkpoint exist already; only those ahead are due
            self.pending = [s for s in self.pending if s > self.env_steps]
        else:
            self.snapshot(0)
        return out

    def _generator(self) -> torch.Generator | None:
        return getattr(getattr(self.retention, "ctx", None), "generator", None)

    def _get_checkpoint_dict(self):
        out = super()._get_checkpoint_dict()
        gen = self._generator()
        out["retainrl"] = {"actor_updates": self.actor_updates, "retention_last": self.retention_last,
                           "torch_rng": torch.get_rng_state(), "numpy_rng": _numpy_rng_state(),
                           "generator": None if gen is None else gen.get_state()}
        return out

    def _load_state(self, checkpoint_dict, load_progress=True):
        super()._load_state(checkpoint_dict, load_progress)
        mine = checkpoint_dict.get("retainrl")
        if mine is None or not load_progress:  # π*'s checkpoint (a fresh run): nothing of ours in it
            return
        self.actor_updates = int(mine["actor_updates"])
        self.retention_last = float(mine["retention_last"])
        torch.set_rng_state(mine["torch_rng"])
        _set_numpy_rng_state(mine["numpy_rng"])
        gen = self._generator()
        if gen is not None and mine["generator"] is not None:
            gen.set_state(mine["generator"])
        self.resumed = True

    def _head_is_frozen(self) -> bool:
        return self.cache_head and not any(p.requires_grad for p in self.actor_critic.encoder.parameters())

    def _train(self, gpu_buffer, batch_size, experience_size, num_invalids):
        if self._head_is_frozen():
            with torch.no_grad(), self.timing.add_time("forward_head_once"):
                gpu_buffer["head_outputs"] = self.actor_critic.forward_head(gpu_buffer["normalized_obs"])
        return super()._train(gpu_buffer, batch_size, experience_size, num_invalids)

    def _calculate_losses(self, mb, num_invalids):
        if "head_outputs" in mb:  # the frozen encoder's output, computed once for the batch in ``_train``
            ac = self.actor_critic
            ac.forward_head = lambda _obs, out=mb["head_outputs"]: out  # shadows the method for this call only
            try:
                res = list(super()._calculate_losses(mb, num_invalids))
            finally:
                del ac.forward_head
        else:
            res = list(super()._calculate_losses(mb, num_invalids))
        online = None
        if self.retention.uses_online_states:  # the minibatch's valid steps, with both policies' outputs
            valid = mb.valids if "valids" in mb else slice(None)
            online = {"action_logits": res[0].raw_logits[valid], "teacher_logits": mb.normalized_obs["teacher_logits"][valid]}
        if getattr(self, "_policy_view", None) is None:
            self._policy_view = SFPolicy(self.actor_critic)
        if online is not None and online["action_logits"].shape[0] == 0:
            aux = None  # every step of this minibatch is invalid: no state to distil on (a mean over none is NaN)
        else:
            aux = self.retention.aux_loss(self._policy_view, online, self.actor_updates)
        self.actor_updates += 1  # still an actor gradient update: KS's schedule counts it
        if aux is None:
            aux = res[1].new_zeros(())
        res[1] = res[1] + aux  # policy_loss: part of the actor loss
        res[-1]["retention_loss"] = aux.detach()
        self.retention_last = float(aux.detach())
        return tuple(res)

    def train(self, batch):
        out = super().train(batch)
        while self.pending and self.env_steps >= self.pending[0]:
            self.snapshot(self.pending.pop(0))
        return out


def attach(learner: Learner, retention: RetentionMethod, freeze_encoder: bool = True, snapshot_dir: Path | None = None,
           snapshot_steps: list[int] | tuple = (), train_only: tuple[str, ...] = ()) -> RetentionLearner:
    """Make ``learner`` (a plain sample-factory ``Learner``, not yet initialised) a ``RetentionLearner``.

    ``train_only``: parameter-name prefixes; when given, every other parameter is frozen.
    """
    if type(learner) is not Learner:
        raise TypeError(f"attach: expected sample-factory's Learner, got {type(learner).__name__}")
    learner.__class__ = RetentionLearner
    learner.retention = retention
    learner.actor_updates = 0
    learner.freeze_encoder = bool(freeze_encoder)
    learner.snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
    learner.pending = sorted(int(s) for s in snapshot_steps)
    learner.train_only = tuple(train_only)
    learner.resumed = False
    return learner

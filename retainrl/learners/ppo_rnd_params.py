"""The knobs :func:`retainrl.learners.ppo_rnd.train` reads, with the study's Montezuma values as defaults.

Kept apart from the learner (no torch import) so that validating params.yaml stays cheap. A family
that fine-tunes with PPO+RND derives its ``FinetuneParams`` from :class:`PPORNDParams`, adds its own
knobs (methods, seeds, evaluation) and overrides only the defaults it changes.
"""

from __future__ import annotations

from pydantic import Field

from retainrl.core.config import Strict


class PPORNDParams(Strict):
    """PPO+RND: ``updates`` × ``envs`` × ``steps`` agent steps per seed; the study ran 128 envs ×
    128 steps for ~1200 updates on Montezuma (lr 1e-4, γ_ext 0.999, γ_int 0.99, GAE λ 0.95, ext/int
    advantage coefficients 2/1, 4 epochs × 4 minibatches, clip 0.1, entropy 0.001)."""

    updates: int = Field(12, gt=0)
    envs: int = Field(8, gt=0)
    steps: int = Field(128, gt=0)
    lr: float = Field(1e-4, gt=0)
    gamma_ext: float = Field(0.999, gt=0, le=1)
    gamma_int: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    ext_coef: float = Field(2.0, ge=0)
    int_coef: float = Field(1.0, ge=0, description="weight of RND's exploration bonus")
    epochs: int = Field(4, gt=0)
    minibatches: int = Field(4, gt=0)
    clip: float = Field(0.1, gt=0)
    entropy: float = Field(0.001, ge=0)
    rnd_update_proportion: float = Field(0.25, gt=0, le=1, description="share of each minibatch that trains RND's predictor")
    max_grad_norm: float = Field(0.5, gt=0)

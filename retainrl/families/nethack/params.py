"""NetHack's params.yaml section (``nethack:``): the typed, validated schema of every knob."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from retainrl.core.config import ConfigError, Strict
from retainrl.core.checkpoint import CheckpointParams
from retainrl.retention.methods import method_list
from retainrl.retention.methods import RetentionParams

ROLES = ("arc", "bar", "cav", "hea", "kni", "mon", "pri", "ran", "rog", "sam", "tou", "val", "wiz")
RACES = ("hum", "elf", "dwa", "gno", "orc")
ALIGNS = ("law", "neu", "cha")
GENDERS = ("mal", "fem")


class EnvParams(Strict):
    #: role-race-alignment-gender as NLE spells it; the study (and the expert) use the Human Monk.
    character: str = "mon-hum-neu-mal"
    #: An expert game is cut after this many env steps (keys pressed, prompts included).
    max_steps: int = Field(30_000, gt=0)

    @field_validator("character")
    @classmethod
    def _known_character(cls, value: str) -> str:
        parts = value.split("-")
        allowed = [ROLES, RACES, ALIGNS, GENDERS]
        if len(parts) != 4 or any(p not in a for p, a in zip(parts, allowed)):
            raise ValueError(
                f"unknown character {value!r}; expected role-race-alignment-gender with role in "
                f"{ROLES}, race in {RACES}, alignment in {ALIGNS}, gender in {GENDERS} "
                "(e.g. 'mon-hum-neu-mal', the study's Human Monk)"
            )
        return value


class DemoParams(Strict):
    games: int = Field(100, gt=0, description="seeded expert games to record")
    seed: int = Field(0, ge=0, description="master seed; game i's NLE seeds derive from (seed, i)")


class FarParams(Strict):
    #: FAR = dungeon level ≥ boundary; Dlvl 1 is CLOSE, so the boundary cannot be below 2.
    boundary: int = 2
    #: FAR start states are where the expert first reached this dungeon level (the study: 4).
    start_depth: int = 4

    @field_validator("boundary")
    @classmethod
    def _far_beyond_close(cls, value: int) -> int:
        if value < 2:
            raise ValueError("FAR boundary must be ≥ 2 (dungeon level 1 is CLOSE)")
        return value

    @field_validator("start_depth")
    @classmethod
    def _deep_enough(cls, value: int) -> int:
        if value < 2:
            raise ValueError("FAR start depth must be ≥ 2 (dungeon level 1 is CLOSE)")
        return value


class CriticWarmupParams(Strict):
    """π*'s critic fitted on π*'s own games, the rest of the network frozen.

    The study's ``skip_train``: before the policy may move, the value head learns what π* earns
    (APPO's advantages are only as good as it). First a least-squares fit of π*'s Monte-Carlo
    returns (puts the value on the returns' scale at once), then APPO with every parameter but
    ``critic_linear`` frozen (TD targets, as in fine-tuning). The APPO run uses fine-tuning's env settings
    (``finetune.num_envs``, ``rollout``, ``batch_size``, ``max_episode_steps``, ``workers``,
    ``batched_sampling``), so the critic fits the returns the fine-tuning runs will see.
    """

    fit_episodes: int = Field(16, ge=0, description="π* games whose Monte-Carlo returns the value head is first regressed on")
    env_steps: int = Field(50_000, ge=0, description="then APPO env steps with only the critic trained (0: none)")
    lr: float = Field(1e-3, gt=0)
    check_episodes: int = Field(4, ge=0, description="other π* games on which the critic's fit is measured at each step")
    seed: int = Field(1, ge=0, description="master seed of the fit games (check games: seed + 1) and of the APPO run")


class PretrainParams(Strict):
    """BC of π* (sample-factory's recurrent ActorCritic), then its critic with the rest frozen."""

    steps: int = Field(2000, gt=0, description="BC updates (each on batch × unroll expert steps)")
    batch: int = Field(8, gt=0, description="games replayed side by side")
    unroll: int = Field(32, gt=0, description="truncated-BPTT length")
    lr: float = Field(1e-3, gt=0)
    seed: int = 0
    critic: CriticWarmupParams = CriticWarmupParams()


class FarBufferParams(Strict):
    """The BC retention buffer: FAR states (depth ≥ far.boundary) from the demos with π*'s outputs."""

    size: int = Field(2048, gt=0)
    every: int = Field(4, gt=0, description="keep every n-th FAR step of a game (consecutive states are near-duplicates)")


class NetHackFisherParams(Strict):
    """EWC's diagonal Fisher of π*'s actor on FAR-buffer states.

    ``expert``: squared gradients of log π*(a_expert | s) (the study's NetHack choice, the
    "empirical" Fisher); ``sampled``: of log π*(a | s) with a ~ π*(·|s) (an unbiased estimate of
    the true Fisher). The closed-form expectation over 121 actions is not offered: 121 backward
    passes per state buy nothing here.
    """

    estimator: Literal["expert", "sampled"] = "expert"
    states: int = Field(512, gt=0)
    min_value: float = Field(1e-5, ge=0)
    seed: int = 0


class FinetuneParams(Strict):
    """APPO fine-tuning of π* in sample-factory, one run per retention method and seed."""

    methods: method_list("appo", off_policy=False) = ["scratch", "finetune", "l2", "ewc", "bc", "ks"]
    seeds: int = Field(2, gt=0, description="independent runs per method (seed = finetune.seed + k)")
    env_steps: int = Field(20_000, gt=0, description="env steps per run")
    #: Training episodes start at fresh seeded games (CLOSE) and are cut after this many env steps
    #: (the study plays to the end; a cap keeps episodes resetting within a small budget).
    max_episode_steps: int = Field(30_000, gt=0)
    #: 1: sample-factory's serial mode (synchronous APPO in one process: small CPU boxes, and
    #: reproducible); more: its parallel mode, this many rollout-worker processes + a learner
    #: process, asynchronous APPO (the study's setup; for a many-core GPU machine).
    workers: int = Field(1, gt=0)
    num_envs: int = Field(4, gt=0, description="envs per rollout worker")
    #: sample-factory's batched sampler: one tensor batch per worker step instead of per-env bookkeeping.
    batched_sampling: bool = True
    rollout: int = Field(32, gt=0)
    batch_size: int = Field(512, gt=0)
    lr: float = Field(1e-4, gt=0)
    #: SGD passes over each batch (sample-factory's ``num_epochs``; the study: 1). More passes
    #: take more gradient steps per env step: the drift a small CPU budget can afford.
    epochs: int = Field(1, gt=0)
    #: Serial mode (workers 1): seeds run side by side in this many processes; null = one per
    #: CPU core (capped by ``seeds``). Results do not depend on it.
    processes: int | None = Field(None, gt=0)
    #: The study: entropy 0.001, and 0 whenever a retention method is on.
    entropy: float = Field(0.001, ge=0)
    freeze_encoder: bool = True
    #: Policy snapshots kept at evenly spaced env steps (the last is the final policy); each is
    #: evaluated on CLOSE and FAR for the curves over fine-tuning.
    snapshots: int = Field(2, gt=0)
    #: Share of training episodes that start from a FAR start state of the demos instead of a
    #: fresh game (evenly spread: episode e is FAR when ⌊(e+1)·share⌋ > ⌊e·share⌋). 0 is the
    #: study's design (fine-tuning starts where CLOSE starts). The control for the 16-epoch
    #: setting runs vanilla fine-tuning with FAR in its training distribution (docs/nethack.md).
    far_share: float = Field(0.0, ge=0, le=1)
    seed: int = 0


class EvalParams(Strict):
    """CLOSE: episodes from the start of fresh seeded games; FAR: from held-out FAR start states
    (``heldout``: where the expert first reached ``far.start_depth`` in games of its own)."""

    episodes: int = Field(30, gt=0, description="episodes per policy snapshot and per part (CLOSE games, distinct FAR starts)")
    max_steps: int = Field(2000, gt=0, description="env steps per evaluation episode")
    greedy: bool = False
    seed: int = Field(10_000, description="master seed of the CLOSE games (and of the policies' sampling seeds)")
    far_seed: int = Field(20_000, description="master seed of the held-out expert games that give the FAR starts")


class Params(Strict):
    env: EnvParams = EnvParams()
    demos: DemoParams = DemoParams()
    far: FarParams = FarParams()
    pretrain: PretrainParams = PretrainParams()
    far_buffer: FarBufferParams = FarBufferParams()
    fisher: NetHackFisherParams = NetHackFisherParams()
    finetune: FinetuneParams = FinetuneParams()
    retention: RetentionParams = RetentionParams()
    evaluate: EvalParams = EvalParams()
    checkpoint: CheckpointParams = CheckpointParams()

    @model_validator(mode="after")
    def _start_in_far(self):
        if self.retention.regularize_critic:
            raise ValueError(
                "retention.regularize_critic: not supported for NetHack (APPO's value head is trained by the "
                "learner alone; retention acts on the policy)"
            )
        masters = {"demos.seed": self.demos.seed, "evaluate.seed": self.evaluate.seed}
        for key, value in masters.items():
            if self.evaluate.far_seed == value:
                raise ValueError(f"evaluate.far_seed ({value}) must differ from {key}: the FAR starts must come from "
                                 "games that π* was not cloned on and that CLOSE does not play")
        if self.far.start_depth < self.far.boundary:
            raise ValueError(
                f"far.start_depth ({self.far.start_depth}) must be ≥ far.boundary ({self.far.boundary}): "
                "FAR start states must lie in FAR"
            )
        return self


def validate_params(raw: dict, section: str = "nethack") -> Params:
    """Validate a raw ``nethack`` params section, failing with a ConfigError that names the dotted key.

    (What ``retainrl.core.config.load_params`` does for registered families, usable before registration.)
    """
    from pydantic import ValidationError

    from retainrl.core.config import _format_validation

    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, section)) from None


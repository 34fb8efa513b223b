"""Typed, validated params.yaml.

params.yaml holds every knob. Its top level is:

* ``profile``: which overlay to apply (``smoke``, ``default`` or ``paper``);
* ``device``: ``auto`` | ``cpu`` | ``cuda``;
* one section per environment family (``apple``, ...), each validated by the pydantic model
  that the family's ``stages`` module exports as ``Params`` (families are the sub-packages of
  ``retainrl.families``, see :mod:`retainrl.core.family`);
* ``profiles``: for each profile, a partial copy of the tree whose values replace the base ones.

The base values are the ``default`` profile, so ``profiles.default.<family>`` must be empty,
and every family has a ``profiles.<profile>.<family>`` overlay for every profile (``{}`` is
fine). That fixed shape is what lets each dvc.yaml stage depend on exactly the active profile's
overlay of its own family (``params: [profile, "profiles.${profile}.apple", apple.…]``): tuning
one family never invalidates another family's cached results, and editing an inactive profile
invalidates nothing. A bad value fails here, before any compute, with the dotted key that is wrong.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from retainrl.core.errors import ConfigError
from retainrl.core.family import family_names, module_name

PROFILES = ("smoke", "default", "paper")

DEFAULT_PARAMS = Path("params.yaml")
COMMON_KEYS = {"profile", "device", "profiles"}




class Strict(BaseModel):
    """Base for every params section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def deep_merge(base: dict, overlay: dict, path: str = "") -> dict:
    """Return ``base`` with ``overlay``'s values put in; an overlay key absent from base is an error."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        dotted = f"{path}{key}"
        if key not in out:
            raise ConfigError(f"profiles: '{dotted}' is not a key of the base params (typo?)")
        if isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = deep_merge(out[key], value, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def family_modules() -> dict[str, str]:
    """{family: its stage module}, for every family package present (see ``core.family``)."""
    return {name: module_name(name) for name in family_names()}


def _format_validation(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = e.get("input")
        lines.append(f"{loc}: {msg}" + (f" (got {got!r})" if got is not None and e["type"] != "extra_forbidden" and not isinstance(got, dict) else ""))
    return "; ".join(lines)


def resolve_raw(raw: dict, profile: str | None = None) -> dict:
    """Apply the active profile's overlay to the raw params tree (no validation of sections)."""
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml must be a mapping")
    profile = profile or raw.get("profile", "default")
    if profile not in PROFILES:
        raise ConfigError(f"profile: unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    profiles = raw.get("profiles") or {}
    unknown = set(profiles) - set(PROFILES)
    if unknown:
        raise ConfigError(f"profiles: unknown profile(s) {sorted(unknown)}; allowed: {', '.join(PROFILES)}")
    filled = {k: v for k, v in (profiles.get("default") or {}).items() if v}
    if filled:
        raise ConfigError(
            "profiles.default: must hold only empty overlays ({}); the base values are the default profile, edit them "
            f"in place (found overlay keys under {sorted(filled)})"
        )
    base = {k: v for k, v in raw.items() if k != "profiles"}
    merged = deep_merge(base, profiles.get(profile) or {}, "")
    merged["profile"] = profile
    return merged


def load_raw(path: str | Path = DEFAULT_PARAMS) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    with path.open() as fh:
        return yaml.safe_load(fh) or {}


class Params:
    """The resolved, validated params: common keys plus one typed section per family."""

    def __init__(self, profile: str, device: str, sections: dict[str, BaseModel]):
        self.profile = profile
        self.device = device
        self.sections = sections

    def section(self, name: str) -> BaseModel:
        if name not in self.sections:
            raise ConfigError(f"{name}: no such section in params.yaml (families present: {sorted(self.sections)})")
        return self.sections[name]


def load_params(path: str | Path = DEFAULT_PARAMS, *, profile: str | None = None, only: str | None = None) -> Params:
    """Load params.yaml, apply the profile, and validate.

    ``only`` validates a single family section (a stage of one environment need not import the
    others' heavy dependencies); the common keys are always checked.
    """
    raw = load_raw(path)
    merged = resolve_raw(raw, profile)
    device = merged.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device: must be one of auto, cpu, cuda (got {device!r})")
    families = family_modules()
    unknown = set(merged) - COMMON_KEYS - set(families)
    if unknown:
        raise ConfigError(
            f"{sorted(unknown)[0]}: unknown top-level key; allowed: {sorted(COMMON_KEYS | set(families))}"
        )
    names = [only] if only else [k for k in merged if k in families]
    if only and only not in families:
        raise ConfigError(f"env: unknown environment {only!r}; known: {', '.join(sorted(families))}")
    sections = {}
    for name in names:
        if name not in merged:
            raise ConfigError(f"{name}: section missing from params.yaml")
        model = importlib.import_module(families[name]).Params
        sections[name] = _validate(model, merged[name], name)
        for needed in PROFILES if "profiles" in raw else ():  # a bare file (no profiles) is fine outside DVC
            if not isinstance(((raw.get("profiles") or {}).get(needed) or {}).get(name), dict):
                raise ConfigError(
                    f"profiles.{needed}.{name}: missing; every family needs an overlay in every profile "
                    "(dvc.yaml stages depend on them by key; use {} for no change)"
                )
        # The other profiles must be valid too: a typo in `paper` should not wait for a GPU run.
        for other in (raw.get("profiles") or {}):
            if other != merged["profile"]:
                _validate(model, resolve_raw(raw, other)[name], f"profiles.{other}: {name}")
        overlay = ((raw.get("profiles") or {}).get(merged["profile"]) or {}).get(name) or {}
        if "methods" in (overlay.get("finetune") or {}):
            raise ConfigError(
                f"profiles.{merged['profile']}.{name}.finetune.methods: the method list expands into dvc.yaml stages "
                "and cannot differ between profiles; change the base list instead"
            )
    return Params(profile=merged["profile"], device=device, sections=sections)


def _validate(model: type[BaseModel], data: Any, prefix: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(err, prefix)) from None

"""The contract every family keeps, checked for each one found in retainrl/families/ (the smoke
DAG of each runs in tests/test_pipeline_e2e.py, which checks its shared study metrics)."""

import importlib

import pytest
import yaml

from retainrl.core.config import PROFILES, load_params
from retainrl.core.family import STAGES, TRAINING_STAGES, family_names, module_name
from retainrl.pipeline import generic

FAMILIES = family_names()


def test_the_registry_finds_every_family_folder():
    assert set(FAMILIES) >= {"apple", "robot", "montezuma", "nethack"}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_modules_export_the_stage_api(family):
    stages = importlib.import_module(module_name(family))
    results = importlib.import_module(module_name(family, "evaluate"))
    assert hasattr(stages, "Params")
    for stage in TRAINING_STAGES:
        # its own function, or the answers the generic stage asks (load_pretrained, far_states, train…)
        assert callable(generic.stage(stages, stage)), f"{family}.stages.{stage}"
        assert not generic.missing_answers(stages, stage), (family, stage)
    for stage in ("evaluate", "report"):
        assert callable(getattr(results, stage, None)), f"{family}.results.{stage}"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_has_every_stage_in_dvc_yaml(family, root):
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        assert f"{family}_{stage}" in stages, f"dvc.yaml has no {family}_{stage}"
        assert stages[f"{family}_{stage}"]["cmd"].startswith(f"python -m stages.{stage} {family}")


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_params_validate_on_every_profile(family, profile):
    section = load_params("params.yaml", profile=profile, only=family).section(family)
    assert section.finetune.methods, (family, profile)


def test_a_family_without_the_answers_a_generic_stage_asks_is_told_which():
    import types

    bare = types.ModuleType("retainrl.families.pear.stages")
    bare.load_pretrained = lambda p, paths, device=None: None
    with pytest.raises(AttributeError, match="far_states"):
        generic.stage(bare, "far_buffer")
    assert callable(generic.stage(bare, "fisher"))
    bare.far_buffer = lambda p, paths, device=None: None  # its own stage replaces the generic one
    assert generic.stage(bare, "far_buffer") is bare.far_buffer

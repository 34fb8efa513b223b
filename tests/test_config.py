"""params.yaml validation: every profile loads, bad input names its key before any compute."""

import subprocess
import sys

import pytest
import yaml

from retainrl.core.config import ConfigError, load_params, resolve_raw


def write(tmp_path, mutate):
    raw = yaml.safe_load(open("params.yaml"))
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_every_profile_validates(profile):
    params = load_params("params.yaml", profile=profile)
    assert params.profile == profile
    apple = params.section("apple")
    assert apple.env.M <= apple.env.T / 2


def test_profiles_override_base_values():
    raw = yaml.safe_load(open("params.yaml"))
    smoke = resolve_raw(raw, "smoke")
    assert smoke["apple"]["finetune"]["seeds"] < raw["apple"]["finetune"]["seeds"]
    assert smoke["apple"]["finetune"]["lr"] == raw["apple"]["finetune"]["lr"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["apple"]["finetune"].update(methods=["finetune", "ewk"]), r"apple\.finetune\.methods.*ewk"),
        (lambda r: r["apple"]["env"].update(M=0), r"apple\.env\.M"),
        (lambda r: r["apple"]["env"].update(M=51), r"M must be ≤ T/2"),
        (lambda r: r["apple"]["env"].update(c=0), r"apple\.env\.c"),
        (lambda r: r["apple"]["finetune"].update(methods=["finetune", "em"]), r"'em'.*on-policy"),
        (lambda r: r["apple"]["sweep"].update(c=[0.5, -1.0]), r"apple\.sweep\.c"),
        (lambda r: r["apple"]["sweep"].update(M=[10, 80]), r"sweep\.M"),
        (lambda r: r["apple"]["finetune"].update(lr_typo=1), r"apple\.finetune\.lr_typo: unknown key"),
        (lambda r: r.update(profile="huge"), r"profile: unknown profile 'huge'"),
        (lambda r: r["profiles"]["smoke"]["apple"].update(nope=1), r"profiles: 'apple\.nope'"),
        (lambda r: r.update(device="tpu"), r"device"),
        (lambda r: r.update(montezuma_typo={}), r"montezuma_typo: unknown top-level key"),
    ],
)
def test_bad_params_fail_naming_the_key(tmp_path, mutate, message):
    path = write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_stage_cli_reports_bad_params_and_missing_artifacts(tmp_path, root):
    path = write(tmp_path, lambda r: r["apple"]["env"].update(M=-3))
    env_dir = tmp_path
    res = subprocess.run([sys.executable, "-m", "stages.collect_demos", "apple", "--params", str(path)], cwd=root, capture_output=True, text=True)
    assert res.returncode == 2 and "apple.env.M" in res.stderr
    res = subprocess.run([sys.executable, "-m", "stages.collect_demos", "robotz", "--params", str(path)], cwd=root, capture_output=True, text=True)
    assert res.returncode == 2 and "unknown environment 'robotz'" in res.stderr
    # A stage whose upstream artifact is missing names it (run in an empty directory).
    good = write(tmp_path, lambda r: None)
    res = subprocess.run(
        [sys.executable, "-c", "import sys; from retainrl.core.stage import main; sys.exit(main('pretrain'))", "apple", "--params", str(good)],
        cwd=env_dir, capture_output=True, text=True,
    )
    assert res.returncode == 2 and "data/apple/demos/demos.npz: missing expert demonstrations" in res.stderr
    assert not (env_dir / "models").exists()


def test_profiles_cannot_change_the_method_list(tmp_path):
    path = write(tmp_path, lambda r: r["profiles"]["smoke"]["apple"]["finetune"].update(methods=["finetune"]))
    with pytest.raises(ConfigError, match="profiles.smoke.apple.finetune.methods"):
        load_params(path, profile="smoke")


def test_an_invalid_inactive_profile_is_reported(tmp_path):
    path = write(tmp_path, lambda r: r["profiles"]["paper"]["apple"]["finetune"].update(seeds=0))
    with pytest.raises(ConfigError, match="profiles.paper: apple.finetune.seeds"):
        load_params(path, profile="default")


def test_the_default_profile_overlay_must_be_empty(tmp_path):
    """The base values *are* the default profile; a second place to set them would hide edits."""
    path = write(tmp_path, lambda r: r["profiles"]["default"].update(apple={"demos": {"episodes": 3}}))
    with pytest.raises(ConfigError, match=r"profiles.default: must hold only empty overlays .*\['apple'\]"):
        load_params(path)


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_every_family_needs_an_overlay_in_every_profile(tmp_path, profile):
    """dvc.yaml stages depend on profiles.${profile}.<family> by key; a missing one is named."""
    path = write(tmp_path, lambda r: r["profiles"][profile].pop("apple"))
    with pytest.raises(ConfigError, match=rf"profiles\.{profile}\.apple: missing"):
        load_params(path, only="apple")


def resolved_params() -> dict[str, list[str]]:
    """Each stage's params keys as DVC resolves dvc.yaml (templating included), from a fresh process."""
    code = (
        "import json\nfrom dvc.repo import Repo\nfrom dvc.dependency.param import ParamsDependency\n"
        "print(json.dumps({s.addressing: [k for d in s.deps if isinstance(d, ParamsDependency) for k in d.params] "
        "for s in Repo('.').index.stages}))"
    )
    import json

    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_each_stage_depends_on_its_own_family_and_the_active_profile_only():
    """Tuning one family never invalidates another's cached stages, and editing an inactive profile
    (``profiles.paper.*`` while running ``default``) invalidates nothing: a stage reads its own
    family's overlay of the active profile alone."""
    from retainrl.core.family import family_names

    active = yaml.safe_load(open("params.yaml"))["profile"]
    stages = resolved_params()
    assert len(stages) > 20
    for name, keys in stages.items():
        family = name.split("_", 1)[0]
        assert family in family_names(), name
        assert {"profile", f"profiles.{active}.{family}"} <= set(keys), (name, keys)
        foreign = [k for k in keys if k != "profile" and k.split(".")[0] not in ("profiles", family)
                   or k.startswith("profiles.") and k != f"profiles.{active}.{family}"]
        assert not foreign, (name, foreign)


def test_a_methods_coefficients_rerun_only_its_own_finetune():
    """``<family>.retention.<m>`` is a dependency of finetune@m alone among the fine-tuning stages."""
    from retainrl.retention.methods import REGISTRY

    finetunes = {n: k for n, k in resolved_params().items() if "_finetune@" in n}
    assert finetunes
    for name, keys in finetunes.items():
        family, method = name.split("_finetune@")
        own = [k for k in keys if k.startswith(f"{family}.retention")]
        assert sorted(own) == sorted([f"{family}.retention.regularize_critic", f"{family}.retention.{method}"]), (name, own)
        others = set(REGISTRY) - {method}
        assert not [k for k in keys if k == f"{family}.retention" or k.startswith(f"{family}.retention.") and k.split(".")[2] in others], name


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["montezuma"]["env"].update(game="pong"), r"montezuma\.env\.game: unknown game 'pong'"),
        (lambda r: r["montezuma"]["route"].update(far_boundary=1), r"montezuma\.route\.far_boundary"),
        (lambda r: r["montezuma"]["finetune"].update(methods=["finetune", "em"]), r"montezuma\.finetune\.methods.*off-policy"),
        (lambda r: r["profiles"]["paper"]["montezuma"]["finetune"].update(seeds=0), r"profiles\.paper: montezuma\.finetune\.seeds"),
    ],
)
def test_bad_montezuma_params_fail_naming_the_key(tmp_path, mutate, message):
    path = write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=message):
        load_params(path, only="montezuma")


def test_montezuma_profiles_exist_and_scale():
    """Every profile has a montezuma overlay (dvc.yaml's stages read the active one) and scales the budget."""
    raw = yaml.safe_load(open("params.yaml"))
    assert raw["profiles"]["smoke"]["montezuma"] and raw["profiles"]["paper"]["montezuma"]
    smoke, default, paper = (load_params("params.yaml", profile=p, only="montezuma").section("montezuma") for p in ("smoke", "default", "paper"))
    assert smoke.finetune.updates < default.finetune.updates < paper.finetune.updates
    assert default.finetune.seeds >= 2 and paper.finetune.envs == 128 and paper.finetune.steps == 128
    assert smoke.finetune.methods == default.finetune.methods == paper.finetune.methods


def test_far_boundary_beyond_the_demo_route_is_a_stage_error(tmp_path, root):
    """A FAR boundary beyond the rooms the demos reach fails in collect_demos with the key named."""
    def mutate(r):
        r["profile"] = "smoke"
        smoke = r["profiles"]["smoke"]["montezuma"]
        smoke["route"]["far_boundary"] = 9
        smoke["search"]["warm_start"] = str(root / smoke["search"]["warm_start"])

    path = write(tmp_path, mutate)
    res = subprocess.run([sys.executable, "-m", "stages.collect_demos", "montezuma", "--params", str(path)], cwd=tmp_path, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert res.returncode == 2 and "montezuma.route.far_boundary: 9 is beyond" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "data" / "montezuma" / "demos").exists()


def test_device_resolution_says_which_and_why(caplog, monkeypatch):
    """`device: auto` on a CPU build of torch must say so in the stage log, not fall back silently."""
    import torch

    from retainrl.core import device as dev

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with caplog.at_level("INFO", logger="retainrl.core.device"):
        assert dev.resolve_device("auto").type == "cpu"
    assert "CPU build" in caplog.text and "TORCH=cuda" in caplog.text
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "sees no GPU" in dev._resolve("auto")[1]
    with pytest.raises(ConfigError, match=r"device: 'cuda' was requested.*built for CUDA 13.0"):
        dev.resolve_device("cuda")
    assert dev.resolve_device("cpu").type == "cpu"


def test_the_apple_sweep_reads_only_its_methods_retention_params():
    """Tuning a method the sweep does not run (e.g. ks) must not rerun the sweeps."""
    raw = yaml.safe_load(open("params.yaml"))
    sweeps = {n: k for n, k in resolved_params().items() if n.startswith("apple_sweep@")}
    assert sweeps
    for name, keys in sweeps.items():
        retention = sorted(k.removeprefix("apple.retention.") for k in keys if k.startswith("apple.retention."))
        assert retention == sorted(["regularize_critic", *raw["apple"]["sweep"]["methods"]]), name
        assert "apple" not in keys and "apple.retention" not in keys

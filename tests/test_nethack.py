"""NetHack family: exact seeded replay, demos on disk, FAR start states, params errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("nle")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # the CI box is shared; thread oversubscription makes small convs crawl

from conftest import dvc_outs  # noqa: E402
from retainrl.core.config import ConfigError  # noqa: E402
from retainrl.families.nethack import stages as nhf  # noqa: E402
from retainrl.families.nethack import results as nethack_eval  # noqa: E402
from retainrl.core.paths import Paths  # noqa: E402
from retainrl.pipeline import far_buffer, generic  # noqa: E402


def finetune(p, paths, method: str) -> dict:
    """The finetune stage in process (the generic driver running NetHack's loop): each seed's ``retention.json``."""
    generic.stage(nhf, "finetune")(p, paths, None, method)
    return {"runs": [json.loads((d / "retention.json").read_text()) for d in sorted(paths.finetune(method).glob("seed_*"))]}

SEEDS = nhf.game_seeds(0, 2)


@pytest.fixture(scope="module")
def env():
    e = nhf.make_env(max_steps=5000)
    yield e
    e.close()


@pytest.fixture(scope="module")
def game(env):
    return nhf.play_expert(env, SEEDS[0], max_steps=600, start_depth=2)


def _final(env, seeds, actions):
    obs, total, done = nhf.replay(env, seeds, actions)
    return {k: obs[k].copy() for k in ("glyphs", "blstats", "tty_chars", "message", "inv_strs")}, total, done


def test_replay_from_seeds_and_actions_is_exact(env, game):
    a, ra, _ = _final(env, game.seeds, game.actions)
    b, rb, _ = _final(env, game.seeds, game.actions)  # the env has been played on in between
    fresh = nhf.make_env(max_steps=5000)
    try:
        c, rc, _ = _final(fresh, game.seeds, game.actions)
    finally:
        fresh.close()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_array_equal(a[key], c[key], err_msg=key)
    assert ra == rb == rc
    assert int(a["blstats"][9]) == game.score  # the score the expert saw
    assert int(a["blstats"][20]) == game.turns


def test_replayed_observations_are_what_the_expert_saw(env, game):
    """Demos store no observations: BC re-renders them by replay. Feeding the replayed
    observations to a fresh (deterministic) expert must give back every recorded action."""
    from retainrl.families.nethack.expert import Expert

    bot = Expert()
    replayed = [bot.act(obs) for obs, _ in nhf.iter_replay(env, game.seeds, game.actions)]
    assert replayed == game.actions.tolist()


def test_check_replay_accepts_the_game_and_names_a_record_that_is_not_it(env, game):
    from dataclasses import replace

    nhf.check_replay(env, game)
    with pytest.raises(ConfigError, match=r"does not reproduce it: score/turns/depth"):
        nhf.check_replay(env, replace(game, score=game.score + 3))
    other = replace(game, seeds=SEEDS[1])  # the same keys in another game
    with pytest.raises(ConfigError, match=str(SEEDS[1].tolist()[0])):
        nhf.check_replay(env, other)


def test_seeds_matter(env):
    a = nhf.reset_seeded(env, SEEDS[0])["glyphs"].copy()
    b = nhf.reset_seeded(env, SEEDS[1])["glyphs"].copy()
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(nhf.reset_seeded(env, SEEDS[0])["glyphs"], a)


def test_game_seeds_are_a_pure_function_of_the_master_seed():
    np.testing.assert_array_equal(nhf.game_seeds(3, 4), nhf.game_seeds(3, 4))
    assert not np.array_equal(nhf.game_seeds(3, 4), nhf.game_seeds(4, 4))
    np.testing.assert_array_equal(nhf.game_seeds(3, 4)[:2], nhf.game_seeds(3, 2))


def test_expert_makes_progress_on_dlvl1(game):
    assert game.turns > 100 and len(game.actions) <= 600
    assert game.max_depth >= 2 and game.far_step > 0  # this seed leaves Dlvl 1 within 600 keys


def test_collect_demos_round_trip_and_far_state_restore(tmp_path, env, monkeypatch):
    p = nhf.validate_params({"env": {"max_steps": 600}, "demos": {"games": 2, "seed": 0}, "far": {"start_depth": 2}})
    paths = Paths("nethack", root=tmp_path)
    summary = nhf.collect_demos(p, paths)
    assert summary["games"] == 2
    files = sorted(f.name for f in paths.demos.iterdir())
    assert files == sorted([nhf.DEMO_FILE, nhf.FAR_FILE, nhf.META_FILE])
    assert not [f for f in paths.demos.parent.iterdir() if f.name.startswith(".")]  # no temp left
    # byte-identical on a rerun: the same games, and no wall-clock figure in the out
    first = {f.name: f.read_bytes() for f in paths.demos.iterdir()}
    assert "per_s" not in first[nhf.META_FILE].decode()
    nhf.collect_demos(p, paths)
    assert {f.name: f.read_bytes() for f in paths.demos.iterdir()} == first
    demos = nhf.load_demos(paths.demos)
    np.testing.assert_array_equal(demos["seeds"], SEEDS)
    assert demos["actions"].dtype == np.uint8 and demos["offsets"][-1] == len(demos["actions"])
    # Game 0 replays to the recorded summary.
    obs, _, _ = nhf.replay(env, demos["seeds"][0], nhf.game_actions(demos, 0))
    assert int(obs["blstats"][9]) == demos["score"][0]
    # FAR start states: replaying the prefix lands on the start depth, one step earlier does not.
    far = nhf.far_start_states(demos)
    assert len(far["game"]) >= 1
    obs = nhf.restore_far_state(env, demos, far, 0)
    assert int(obs["blstats"][12]) == 2
    g, n = int(far["game"][0]), int(far["prefix"][0])
    before, _, _ = nhf.replay(env, far["seeds"][0], nhf.game_actions(demos, g)[: n - 1])
    assert int(before["blstats"][12]) == 1


def test_held_out_starts_are_the_same_on_one_process_and_on_two(tmp_path):
    """eval_starts plays the expert's games on a process pool; the games are independent and
    deterministic, so the starts (the first n candidate games, in seed order, that reach the
    depth), the expert's episodes and the count of games tried do not depend on the process count."""
    from retainrl.families.nethack import heldout

    p = nhf.validate_params({"env": {"max_steps": 600}, "far": {"start_depth": 2}, "evaluate": {"episodes": 3, "max_steps": 15}})
    out = {}
    for procs in (1, 2):
        paths = Paths("nethack", root=tmp_path / f"p{procs}")
        summary = heldout.eval_starts(p, paths, processes=procs)
        games, _ = heldout.load_starts(heldout.starts_dir(paths))
        out[procs] = (summary, games, heldout.load_expert(heldout.starts_dir(paths)))
    (s1, g1, e1), (s2, g2, e2) = out[1], out[2]
    assert s1 == s2 and e1 == e2 and s1["starts"] == 3 and s1["games_played"] >= 3
    assert all(np.array_equal(g1[k], g2[k]) for k in ("seeds", "actions", "offsets"))
    assert len(e1["close"]) == 3 and all(e["start_depth"] == 2 and e["steps"] <= 15 for e in e1["far"])


def test_empty_missing_and_corrupted_demo_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="games.npz: missing NetHack demonstrations"):
        nhf.load_demos(tmp_path)
    (tmp_path / nhf.DEMO_FILE).write_bytes(b"")
    with pytest.raises(ConfigError, match="games.npz: demo file is empty"):
        nhf.load_demos(tmp_path)
    (tmp_path / nhf.DEMO_FILE).write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(ConfigError, match="games.npz: cannot read NetHack demonstrations"):
        nhf.load_demos(tmp_path)
    np.savez(tmp_path / nhf.DEMO_FILE, seeds=np.zeros((1, 3)))
    with pytest.raises(ConfigError, match=r"games.npz: NetHack demonstrations lacks arrays \['actions'"):
        nhf.load_demos(tmp_path)
    arrays = {k: np.zeros(0, np.int64) for k in nhf.DEMO_ARRAYS}
    arrays["seeds"], arrays["offsets"] = np.zeros((0, 3), np.int64), np.zeros(1, np.int64)
    np.savez(tmp_path / nhf.DEMO_FILE, **arrays)
    with pytest.raises(ConfigError, match="games.npz: demo file holds no games"):
        nhf.load_demos(tmp_path)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"env": {"character": "mon-hum-neu-xyz"}}, r"nethack\.env\.character: unknown character 'mon-hum-neu-xyz'"),
        ({"env": {"character": "Monk"}}, r"nethack\.env\.character: unknown character"),
        ({"far": {"boundary": 1}}, r"nethack\.far\.boundary: FAR boundary must be ≥ 2"),
        ({"far": {"boundary": 0}}, r"nethack\.far\.boundary"),
        ({"far": {"boundary": 5}}, r"far\.start_depth \(4\) must be ≥ far\.boundary \(5\)"),
        ({"demos": {"games": 0}}, r"nethack\.demos\.games"),
        ({"fisher": {"estimator": "exact"}}, r"nethack\.fisher\.estimator"),
        ({"pretrain": {"unroll": 0}}, r"nethack\.pretrain\.unroll"),
        ({"finetune": {"epochs": 0}}, r"nethack\.finetune\.epochs"),
        ({"finetune": {"processes": 0}}, r"nethack\.finetune\.processes"),
        ({"finetune": {"methods": ["em"]}}, r"nethack\.finetune\.methods: .*'em' \(episodic memory\) needs an off-policy learner"),
        ({"env": {"charcter": "mon-hum-neu-mal"}}, r"nethack\.env\.charcter: unknown key"),
        ({"retention": {"regularize_critic": True}}, r"retention\.regularize_critic: not supported for NetHack"),
        ({"evaluate": {"far_seed": 0}}, r"evaluate\.far_seed \(0\) must differ from demos\.seed"),
        ({"evaluate": {"far_seed": 7, "seed": 7}}, r"evaluate\.far_seed \(7\) must differ from evaluate\.seed"),
    ],
)
def test_bad_params_fail_naming_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        nhf.validate_params(raw)


def test_default_params_are_the_studys_monk():
    p = nhf.validate_params({})
    assert p.env.character == "mon-hum-neu-mal" and p.far.boundary == 2 and p.far.start_depth == 4


def test_bc_pretrain_writes_a_sample_factory_policy_and_far_buffer(tmp_path, monkeypatch):
    """Smoke: collect → BC (a few updates) → sample-factory checkpoint reloads → FAR buffer."""
    pytest.importorskip("sample_factory")
    from retainrl.families.nethack import sf

    p = nhf.validate_params({
        "env": {"max_steps": 600}, "demos": {"games": 2}, "far": {"boundary": 2, "start_depth": 2},
        "pretrain": {"steps": 2, "batch": 2, "unroll": 8, "critic": {"env_steps": 0, "fit_episodes": 0}},
        "far_buffer": {"size": 12, "every": 3},
    })
    paths = Paths("nethack", root=tmp_path)
    nhf.collect_demos(p, paths)
    summary = nhf.pretrain(p, paths)
    assert np.isfinite(summary["bc_loss"]) and summary["critic"] == {}
    ckpt = list((paths.pretrained / "checkpoint_p0").glob("checkpoint_*.pth"))
    assert len(ckpt) == 1 and (paths.pretrained / "config.json").exists()
    ac, cfg = sf.load_sf_policy(paths.pretrained)
    assert cfg.use_rnn and cfg.rnn_type == "gru"
    generic.stage(nhf, "far_buffer")(p, paths)
    buf = far_buffer.load(paths, required=("targets", "action"))
    assert buf["targets"].shape == (12, 121) and buf["obs"]["rnn"].shape == (12, cfg.rnn_size)
    assert (buf["obs"]["blstats"][:, 12] >= 2).all()  # FAR only
    # The stored logits are π*'s on the stored state and GRU context.
    ac.eval()
    with torch.no_grad():
        x = {k: torch.from_numpy(buf["obs"][k][:3]) for k in ("chars", "blstats", "misc", "message")}
        out = ac(x, torch.from_numpy(buf["obs"]["rnn"][:3]))
    np.testing.assert_allclose(out["action_logits"].numpy(), buf["targets"][:3], rtol=1e-4, atol=1e-4)
    # EWC's Fisher: one non-negative tensor per actor parameter, none for the critic.
    from safetensors.torch import load_file

    res = nhf.fisher(p, paths)
    fisher = load_file(str(paths.fisher / "fisher.safetensors"))
    actor = {n for n, _ in ac.named_parameters() if not n.startswith("critic_linear")}
    assert set(fisher) == actor and res["states"] == 12
    assert all((v >= 1e-5).all() for v in fisher.values())
    assert sum(float(v.sum()) for v in fisher.values()) > 1e-5 * sum(v.numel() for v in fisher.values())

    # Retention losses, as the family builds them from what each method needs: zero at π*, the
    # textbook formula once the actor moves.
    from retainrl.learners.appo import SFPolicy

    def build(name, **params):
        q = p.model_copy(update={"retention": p.retention.model_validate({**p.retention.model_dump(), **params})})
        return nhf._retention(q, paths, name, 0)

    l2, ewc, bc = build("l2", l2={"coef": 2.0}), build("ewc", ewc={"coef": 3.0}), build("bc", bc={"coef": 1.0, "batch_size": 4})
    view = SFPolicy(ac)
    assert float(l2.aux_loss(view, None, 0)) == 0.0 and float(ewc.aux_loss(view, None, 0)) == 0.0
    with torch.no_grad():
        ac.action_parameterization.distribution_linear.bias.add_(0.5)
        ac.critic_linear.bias.add_(7.0)  # the critic is never regularised
    nb = ac.action_parameterization.distribution_linear.bias.numel()
    f = fisher["action_parameterization.distribution_linear.bias"]
    assert float(l2.aux_loss(view, None, 0)) == pytest.approx(2.0 * 0.25 * nb, rel=1e-5)
    assert float(ewc.aux_loss(view, None, 0)) == pytest.approx(3.0 * 0.25 * float(f.sum()), rel=1e-5)
    assert float(bc.aux_loss(view, None, 0)) > 0.0  # π_θ moved away from π* on FAR states
    bc.aux_loss(view, None, 0).backward()
    assert ac.action_parameterization.distribution_linear.bias.grad is not None

    # APPO through sample-factory from π*, with the BC retention loss wired into its learner; 2 seeds.
    p2 = p.model_copy(update={"finetune": p.finetune.model_copy(update={
        "env_steps": 256, "num_envs": 2, "rollout": 16, "batch_size": 64, "seeds": 2, "snapshots": 2, "max_episode_steps": 100,
        "processes": 2})})
    res = finetune(p2, paths, "bc")  # the 2 seeds side by side in 2 spawned processes
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    for k, r in enumerate(res["runs"]):
        assert r["status"] == 0 and r["actor_updates"] > 0 and r["retention_loss_last"] > 0 and r["env_steps"] >= 256
        run = paths.finetune("bc") / f"seed_{k}"
        assert len(list((run / "checkpoint_p0").glob("checkpoint_*.pth"))) == 1  # the fine-tuned one (π*'s copy is dropped)
        assert sorted(f.name for f in (run / "snapshots").glob("*.pth")) == ["step_000000000.pth", "step_000000128.pth", "step_000000256.pth"]
        eps = json.loads((run / "train_episodes.json").read_text())
        assert eps and all(e["max_depth"] >= 1 for e in eps)  # 100-step training episodes ended and were logged
        # sample-factory's `git diff` of the repository the tests run in (a checkout) stays out of the artifact.
        assert not (run / "git.diff").exists()
    # Each seed's run is exactly what it is alone: seed 1 again, here in this process (one thread, as its worker had).
    threads = torch.get_num_threads()
    try:
        alone = nhf.finetune_seed(p2, paths, None, "bc", 1, tmp_path / "alone", threads=1)
    finally:
        torch.set_num_threads(threads)
    assert alone["actor_updates"] == res["runs"][1]["actor_updates"] and alone["env_steps"] == res["runs"][1]["env_steps"]
    last = "snapshots/step_000000256.pth"
    a, b = torch.load(tmp_path / "alone" / last)["model"], torch.load(paths.finetune("bc") / "seed_1" / last)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    # ... and the same bytes, file for file, though it ran elsewhere (another directory, another
    # process, another moment): no timing, no working directory, no commit stamp in the artifact.
    def files(d):
        return {f.relative_to(d).as_posix(): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}

    alone_files, stage_files = files(tmp_path / "alone"), files(paths.finetune("bc") / "seed_1")
    assert alone_files.keys() == stage_files.keys() and "sf_log.txt" not in alone_files
    assert [f for f in alone_files if alone_files[f] != stage_files[f]] == []
    saved = json.loads(alone_files["config.json"])
    assert saved["git_hash"] == "unknown" and "train_dir" not in saved and not saved["nethack_teacher"].startswith("/")
    assert "env_steps_per_s" not in json.loads(alone_files["retention.json"])
    # The step-0 snapshot is π* itself; the last one is what sample-factory saved last.
    snap0, _ = sf.load_snapshot(paths.finetune("bc") / "seed_0", paths.finetune("bc") / "seed_0" / "snapshots" / "step_000000000.pth")
    pi_star, _ = sf.load_sf_policy(paths.pretrained)
    for (n, a), b in zip(snap0.state_dict().items(), pi_star.state_dict().values()):
        assert torch.equal(a, b), n

    # Kickstarting: π* is stepped in the env and its logits reach the learner with the batch.
    p2k = p2.model_copy(update={"finetune": p2.finetune.model_copy(update={"seeds": 1, "snapshots": 1})})
    res = finetune(p2k, paths, "ks")
    assert res["runs"][0]["status"] == 0 and res["runs"][0]["actor_updates"] > 0 and res["runs"][0]["retention_loss_last"] > 0
    # finetune.epochs: sample-factory trains on each batch that many times, the retention term in every SGD step.
    p2e = p2k.model_copy(update={"finetune": p2k.finetune.model_copy(update={"epochs": 3})})
    res3 = finetune(p2e, paths, "ks")
    assert res3["runs"][0]["env_steps"] == res["runs"][0]["env_steps"]
    assert res3["runs"][0]["actor_updates"] == 3 * res["runs"][0]["actor_updates"]

    # finetune.far_share reaches sample-factory's envs: every other training episode starts on the demos' FAR state.
    p2f = p2k.model_copy(update={"finetune": p2k.finetune.model_copy(update={"far_share": 0.5, "env_steps": 512})})
    finetune(p2f, paths, "finetune")
    eps = json.loads((paths.finetune("finetune") / "seed_0" / "train_episodes.json").read_text())
    by_env = {}
    for e in eps:
        by_env.setdefault(e["env"], []).append(e["max_depth"] >= p.far.start_depth)
    assert by_env and all(starts[:2] == [False, True] for starts in by_env.values()), by_env

    # Parallel mode (the paper profile's): 2 rollout-worker processes + a learner process; the
    # retention learner runs in the spawned learner process and still applies the KS loss.
    p2p = p2k.model_copy(update={"finetune": p2k.finetune.model_copy(update={"workers": 2, "env_steps": 1024, "max_episode_steps": 16})})
    res = finetune(p2p, paths, "ks")
    run = res["runs"][0]
    assert run["status"] == 0 and run["workers"] == 2 and run["env_steps"] >= 1024
    assert run["actor_updates"] > 0 and run["retention_loss_last"] > 0
    eps = json.loads((paths.finetune("ks") / "seed_0" / "train_episodes.json").read_text())
    # episodes from the second worker's envs reached the log (16-step episodes: one rollout of it ends one; 1024 steps
    # leave room for a worker process that starts late on a loaded machine)
    assert {e["env"] for e in eps} & {2, 3}
    assert sorted(f.name for f in (paths.finetune("ks") / "seed_0" / "snapshots").glob("*.pth")) == ["step_000000000.pth", "step_000001024.pth"]

    # evaluate (π* and the BC-retained policy's snapshots on CLOSE and FAR) → report.
    p3 = p2.model_copy(update={"finetune": p2.finetune.model_copy(update={"methods": ["bc"]}),
                               "evaluate": p2.evaluate.model_copy(update={"episodes": 2, "max_steps": 20})})
    # Held-out FAR starts: games of the expert's own from evaluate.far_seed, none of them a demo game;
    # each replays to where the expert first stood on Dlvl far.start_depth; the expert plays the protocol.
    from retainrl.families.nethack import heldout

    with pytest.raises(ConfigError, match="no such file|eval_starts"):
        nethack_eval.evaluate(p3, paths)
    expert = nethack_eval.eval_starts(p3, paths)
    games, starts = heldout.load_starts(heldout.starts_dir(paths))
    demo_seeds = {tuple(s) for s in nhf.load_demos(paths.demos)["seeds"].tolist()}
    assert len(starts["game"]) == 2 and not {tuple(s) for s in games["seeds"].tolist()} & demo_seeds
    env = nhf.make_env(p.env.character, 10**6)
    try:
        for k in range(2):
            obs = nhf.restore_far_state(env, games, starts, k)
            assert nhf.Progress.start(obs).max_depth == p3.far.start_depth
    finally:
        env.close()
    record = heldout.load_expert(heldout.starts_dir(paths))
    assert expert["starts"] == 2 and len(record["close"]) == len(record["far"]) == 2
    assert all(e["start_depth"] == p3.far.start_depth and e["steps"] <= 20 for e in record["far"])
    summary = nethack_eval.evaluate(p3, paths)
    assert summary["far_starts"] == 2 and summary["expert"]["far"]["expert_score_gain"] == pytest.approx(
        np.mean([e["score_gain"] for e in record["far"]]))
    assert all("p_holm" in c and c["holm_m"] == len(summary["comparisons"]) for c in summary["comparisons"])
    assert set(summary["methods"]) == {"bc"} and summary["methods"]["bc"]["final_step"] == 256
    # π* is played once per sampling seed, one per training seed, so both sides of a comparison
    # rest on as many episodes; seed k of a method pairs with π*'s seed k.
    assert len(summary["pretrained"]["close_score_gain"]["per_seed"]) == 2
    episodes = json.loads((paths.evaluation / "episodes.json").read_text())
    assert {r["seed"] for r in episodes if r["policy"] == "pretrained"} == {0, 1}
    assert {c["seeds"][1] for c in summary["comparisons"] if c["b"] == "pretrained"} == {2}
    bc_final = summary["methods"]["bc"]
    assert len(bc_final["far_score_gain"]["per_seed"]) == 2 and bc_final["far_max_depth"]["min"] >= 2
    assert bc_final["close_max_depth"]["min"] >= 1
    metrics = json.loads((paths.evaluation / "metrics.json").read_text())
    assert set(metrics) == {"pretrained", "frozen", "bc", "study", "protocol", "paired"} and set(metrics["bc"]["close_score_gain"]) == {"mean", "std"}
    # `dvc metrics show` names the protocol (distinct held-out FAR starts, the expert and π*/expert) and every paired
    # comparison with its Holm verdict, as the evaluation's summary has them
    assert metrics["protocol"]["far_starts"] == summary["far_starts"]
    assert metrics["protocol"]["expert"]["far"]["expert_score_gain"] == summary["expert"]["far"]["expert_score_gain"]
    assert metrics["protocol"]["holm_comparisons"] == len(summary["comparisons"]) == len(metrics["paired"])
    c = summary["comparisons"][0]
    assert metrics["paired"][f"{c['part']}/{c['metric']}/{c['a']}-vs-{c['b']}"]["p_holm"] == c["p_holm"]
    assert set(metrics["study"]["bc"]) >= {"forgetting", "close_final", "far_final", "full_final", "auc"}
    assert metrics["pretrained"]["far_kl_pi_star"]["mean"] == 0.0 and metrics["bc"]["far_kl_pi_star"]["mean"] > 0.0
    # KL(π*‖π) on the visited states: exactly 0 for π* against itself, positive once the policy moved.
    import copy

    moved = copy.deepcopy(pi_star)
    with torch.no_grad():
        moved.action_parameterization.distribution_linear.weight.add_(0.05 * torch.randn_like(moved.action_parameterization.distribution_linear.weight))
    envs = [nhf.make_env(p.env.character, 10**6) for _ in range(3)]
    seeds = nhf.game_seeds(5, 3)

    def play(policy, which=(0, 1, 2), steps=15, stream_seed=0, teacher=pi_star):
        starts = [nhf.reset_seeded(envs[i], seeds[i]) for i in which]
        streams = nethack_eval.episode_streams(stream_seed, "close", 3)
        return nethack_eval.run_episodes(policy, cfg, [envs[i] for i in which], starts, steps, False, [streams[i] for i in which], teacher)

    try:
        for policy, zero in ((pi_star, True), (snap0, True), (moved, False)):
            r = play(policy)
            assert all((e["kl_pi_star"] == 0.0) is zero and e["kl_pi_star"] >= 0.0 for e in r)
        # Episodes in lockstep give each episode what it gives alone: its draws come from its own
        # stream, not from a stream shared with the episodes batched beside it.
        together = play(moved, steps=40)
        alone = [play(moved, which=(i,), steps=40)[0] for i in range(3)]
        # (KL to float rounding: a batch of 3 and a batch of 1 round the matmuls differently).
        def exact(eps):
            return [{k: v for k, v in e.items() if k != "kl_pi_star"} for e in eps]

        assert exact(together) == exact(alone)
        assert [e["kl_pi_star"] for e in together] == pytest.approx([e["kl_pi_star"] for e in alone], rel=1e-5)
        # `moved` keeps π*'s encoder (as fine-tuning with a frozen encoder does), so the teacher reuses its
        # encoding; encoding twice gives the same episodes and KLs, and another encoder is not reused.
        assert nethack_eval.same_encoder(moved, pi_star)
        with monkeypatch.context() as mp:
            mp.setattr(nethack_eval, "same_encoder", lambda a, b: False)
            assert play(moved, steps=40) == together
        other = copy.deepcopy(moved)
        with torch.no_grad():
            next(other.encoder.parameters()).add_(1.0)
        assert not nethack_eval.same_encoder(other, pi_star)
        # Common random numbers: the same policy with the same sampling seed replays its episodes
        # exactly; another sampling seed plays them differently.
        assert play(moved, steps=40) == together
        other = play(moved, steps=40, stream_seed=1)
        assert [e["kl_pi_star"] for e in other] != [e["kl_pi_star"] for e in together]
        with pytest.raises(ValueError, match="3 envs, 2 start observations"):
            nethack_eval.run_episodes(moved, cfg, envs, [nhf.reset_seeded(e, s) for e, s in zip(envs[:2], seeds)], 5, False,
                                      nethack_eval.episode_streams(0, "close", 3))
    finally:
        for env in envs:
            env.close()
    # Policies played side by side in worker processes give what one process gives, in job order.
    run = paths.finetune("bc") / "seed_1"
    jobs = [(None, 0), ((str(run), str(run / "snapshots" / "step_000000256.pth")), 1), ((str(run), str(run / "snapshots" / "step_000000128.pth")), 0)]
    one = list(nethack_eval.play_all(p3, paths, jobs, processes=1))
    two = list(nethack_eval.play_all(p3, paths, jobs, processes=2))
    for a, b in zip(one, two, strict=True):
        for part in nethack_eval.PARTS:
            assert exact(a[part]) == exact(b[part])
            assert [e["kl_pi_star"] for e in a[part]] == pytest.approx([e["kl_pi_star"] for e in b[part]], rel=1e-4, abs=1e-7)
    assert all(e["kl_pi_star"] == 0.0 for e in one[0]["close"]) and any(e["kl_pi_star"] > 0 for e in one[1]["close"])
    assert one[1] != one[2]  # another snapshot, another sampling seed: other episodes
    # Episodes played in batches of one env give what one batch of all of them gives.
    import unittest.mock

    with unittest.mock.patch.object(nethack_eval, "BATCH", 1):
        batched = list(nethack_eval.play_all(p3, paths, jobs[:2], processes=1))
    for a, b in zip(one[:2], batched, strict=True):
        for part in nethack_eval.PARTS:
            assert exact(a[part]) == exact(b[part])
    curve = json.loads((paths.evaluation / "close_score.json").read_text())
    assert [r["step"] for r in curve] == [0, 128, 256] and all("bc" in r for r in curve)
    nethack_eval.report(p3, paths)
    text = (paths.report / "report.md").read_text()
    assert "| bc |" in text and "| π* (pretrained) |" in text and "π* against its teacher" in text and "2 distinct held-out FAR starts" in text
    for png in ("far_score.png", "close_score.png"):
        assert (paths.report / png).stat().st_size > 0


def test_finetune_refuses_em_and_missing_pretrained_before_any_compute(tmp_path):
    p = nhf.validate_params({})
    paths = Paths("nethack", root=tmp_path)
    with pytest.raises(ConfigError, match="'em' .*off-policy"):
        finetune(p, paths, "em")
    with pytest.raises(ConfigError, match="missing pretrained NetHack policy"):
        finetune(p, paths, "ks")
    with pytest.raises(ConfigError, match="missing pretrained NetHack policy"):
        finetune(p, paths, "l2")


def test_registered_family_validates_through_params_yaml(tmp_path):
    import yaml

    from retainrl.core.config import load_params
    from retainrl.core.family import get_family

    assert get_family("nethack") is nhf
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"nethack": {"far": {"boundary": 1}}}))
    with pytest.raises(ConfigError, match=r"nethack\.far\.boundary: FAR boundary must be ≥ 2"):
        load_params(path, only="nethack")
    path.write_text(yaml.safe_dump({"nethack": {"env": {"character": "mon-hum-neu-mal"}}}))
    assert load_params(path, only="nethack").section("nethack").far.start_depth == 4


def test_sample_factory_env_starts_episodes_in_far_start_states(env, game):
    from retainrl.families.nethack import sf

    demos = {
        "seeds": game.seeds[None], "actions": game.actions, "offsets": np.array([0, len(game.actions)]),
        "far_step": np.array([game.far_step]),
    }
    far = nhf.far_start_states(demos)
    sfenv = sf.NetHackSF(max_steps=5000, far=(demos, far))
    try:
        obs, _ = sfenv.reset()
        assert sfenv.observation_space.contains(obs)
        assert obs["blstats"][12] == 2  # the fixture game's start depth
        obs2, r, term, trunc, _ = sfenv.step(0)
        assert not (term or trunc) and obs2["chars"].shape == (21, 79)
    finally:
        sfenv.close()
    # finetune.far_share (the control): that share of the training episodes from FAR states, evenly spread
    assert [sf.far_episode(e, 0.25) for e in range(8)] == [False, False, False, True] * 2
    assert sum(sf.far_episode(e, 0.3) for e in range(1000)) == 300
    assert not any(sf.far_episode(e, 0.0) for e in range(50)) and all(sf.far_episode(e, 1.0) for e in range(50))
    mixed = sf.NetHackSF(max_steps=5000, seeds=nhf.game_seeds(3, 4), far=(demos, far), far_share=0.5)
    try:
        depths = [int(mixed.reset()[0]["blstats"][12]) for _ in range(4)]
        assert depths == [1, 2, 1, 2]  # a fresh game, the FAR start, a fresh game, the FAR start
    finally:
        mixed.close()


def test_dvc_yaml_declares_the_nethack_paths_and_profile_params():
    """nethack_* outs are the directories retainrl.core.paths gives the family; params follow the per-family convention."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((root / "params.yaml").read_text())
    p = Paths("nethack")
    for stage, out in (("collect_demos", p.demos), ("pretrain", p.pretrained), ("far_buffer", p.far_buffer), ("fisher", p.fisher)):
        assert raw[f"nethack_{stage}"]["outs"] == [str(out)], stage
        assert raw[f"nethack_{stage}"]["cmd"] == f"python -m stages.{stage} nethack"
    assert raw["nethack_finetune"]["outs"] == [str(p.finetune("${item.method}"))]
    assert raw["nethack_finetune"]["matrix"]["method"] == "${nethack.finetune.methods}"
    assert raw["nethack_finetune"]["cmd"] == "python -m stages.finetune nethack ${item.method}"
    assert list(raw["nethack_evaluate"]["metrics"][0]) == [str(p.evaluation / "metrics.json")]
    assert dvc_outs(root)["nethack_report"] == [str(p.report)]
    for name, stage in raw.items():
        if name.startswith("nethack_"):
            assert stage["params"][:2] == ["profile", "profiles.${profile}.nethack"], name
            assert all(k.startswith("nethack.") for k in stage["params"][2:]), name
    for profile in ("smoke", "paper"):
        assert "methods" not in params["profiles"][profile]["nethack"].get("finetune", {})
    assert "em" not in params["nethack"]["finetune"]["methods"]


def test_budget_probe_overrides_a_knob_by_dotted_key_and_names_a_bad_one():
    """`probe_nethack_budget.py --set KEY=VALUE` changes exactly that knob, re-validated; typos name the key."""
    from experiments.probe_nethack_budget import _override
    from retainrl.core.config import load_params

    p = load_params("params.yaml", only="nethack").section("nethack")
    q = _override(p, ["retention.ks.decay=0.99936", "finetune.processes=2", "finetune.methods=[finetune, ks]"])
    assert q.retention.ks.decay == 0.99936 and q.finetune.processes == 2 and q.finetune.methods == ["finetune", "ks"]
    assert q.retention.ks.coef == p.retention.ks.coef and q.finetune.env_steps == p.finetune.env_steps
    with pytest.raises(ConfigError, match=r"nethack\.retention\.ks\.dekay: unknown key"):
        _override(p, ["retention.ks.dekay=1"])
    with pytest.raises(ConfigError, match=r"nethack\.finetune\.lr is not a section"):
        _override(p, ["finetune.lr.x=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        _override(p, ["retention.ks.decay"])
    with pytest.raises(ConfigError, match=r"nethack\.retention\.ks\.decay: .*less than or equal to 1"):
        _override(p, ["retention.ks.decay=2"])


def test_probe_table_bolds_only_intervals_that_exclude_zero(tmp_path):
    """docs/nethack.md's probe table is generated from the result files; a shown difference is bold, a missing pair '–'."""
    from experiments.nethack_probe_table import row

    def cmp(part, a, b, diff, lo, hi):
        return {"part": part, "a": a, "b": b, "metric": "score_gain", "diff": diff, "ci_low": lo, "ci_high": hi, "episodes": 300}

    f = tmp_path / "nethack_demo_probe.json"
    f.write_text(json.dumps({"env_steps": 30000, "seeds": 3, "epochs": 16, "lr": 0.001, "seconds": 600, "set": ["retention.ks.decay=0.9"],
                             "comparisons": [cmp("close", "finetune", "pretrained", -11.0, -14.5, -7.5),
                                             cmp("close", "ks", "pretrained", 1.8, -2.7, 7.0),
                                             {**cmp("close", "ks", "finetune", -0.7, -0.8, -0.6), "metric": "kl_pi_star"}]}))
    cells = [c.strip() for c in row(f).strip("|").split("|")]
    assert cells[:8] == ["demo", "30,000", "3", "16", "0.001", "retention.ks.decay=0.9", "300", "10"]
    assert cells[8:] == ["**-11.0 [-14.5, -7.5]**", "+1.8 [-2.7, +7.0]", "–", "–", "–", "–"]  # the KL row is not a score


def test_budget_probe_training_curve_is_the_mean_score_per_slice_of_the_run(tmp_path):
    from experiments.probe_nethack_budget import train_curve

    f = tmp_path / "train_episodes.json"
    f.write_text(json.dumps([{"score": s, "env_steps": 100 * i} for i, s in enumerate([0, 0, 10, 10, 20, 20, 30, 30, 40, 40])]))
    assert train_curve(f) == [0.0, 10.0, 20.0, 30.0, 40.0]
    assert train_curve(f, parts=2) == [8.0, 32.0]

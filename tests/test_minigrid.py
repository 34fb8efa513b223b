"""MiniGrid RoomChain: the environment, its expert, the study's coverage gap in π*, the exact
Fisher through the one-hot encoding, and bit-for-bit resume of PPO on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("minigrid")

from retainrl.families.minigrid import stages  # noqa: E402
from retainrl.pipeline import generic  # noqa: E402
from retainrl.families.minigrid.env import FORWARD, TOGGLE, ChainEnv, expert_action  # noqa: E402
from retainrl.families.minigrid.nets import IN_FEATURES, ActorCritic, one_hot  # noqa: E402

P = stages.Params()


def _episode(env: ChainEnv, policy=expert_action, start_room=None, limit=1000):
    obs, rooms, actions = [env.reset(start_room)], [env.room()], []
    for _ in range(limit):
        a = policy(env)
        o, r, terminated, truncated, info = env.step(a)
        obs.append(o)
        rooms.append(info["room"])
        actions.append(a)
        if terminated or truncated:
            return np.stack(obs), rooms, actions, terminated and r > 0
    raise AssertionError("the episode never ended")


def test_the_expert_solves_every_layout_and_opens_exactly_the_shut_doors():
    env = stages.make_env(P, 99, 0)
    for _ in range(30):
        _, rooms, actions, solved = _episode(env)
        assert solved and rooms[0] == 0 and max(rooms) == P.env.rooms - 1
        assert actions.count(TOGGLE) == P.env.close_rooms  # the open FAR doors need no toggle


def test_the_doors_are_shut_in_close_and_open_in_far():
    env = stages.make_env(P, 5, 0)
    env.reset()
    g = env.env.grid
    doors = {x // (P.env.room_size - 1): g.get(x, y) for x in range(g.width) for y in range(g.height)
             if (c := g.get(x, y)) is not None and c.type == "door"}
    assert sorted(doors) == list(range(1, P.env.rooms))
    assert [not doors[i].is_open for i in sorted(doors)] == [i <= P.env.close_rooms for i in sorted(doors)]


def test_episodes_are_a_function_of_the_seed_and_start_where_asked():
    a, b, c = stages.make_env(P, 1, 2), stages.make_env(P, 1, 2), stages.make_env(P, 1, 3)
    ea, eb, ec = _episode(a)[0], _episode(b)[0], _episode(c)[0]
    assert np.array_equal(ea, eb) and not (len(ea) == len(ec) and np.array_equal(ea, ec))
    far = stages.make_env(P, 7, start_room=P.env.close_rooms)
    far.reset()
    assert far.room() == P.env.close_rooms


def test_the_fast_view_is_minigrids_own_through_toggles_and_state_restores():
    """RoomChain renders the egocentric view with numpy from a cached grid encoding; it must be
    MiniGrid's own ``gen_obs`` (slice, rotate, occlusion) cell for cell, including after a door
    is toggled open or shut and after ``set_state`` swaps the grid."""
    from minigrid.minigrid_env import MiniGridEnv

    rng = np.random.default_rng(0)
    toggles = 0
    for seed in range(6):
        env = stages.make_env(P, 11, seed)
        env.reset(int(rng.integers(0, P.env.rooms)))
        saved = None
        for t in range(150):
            # mostly the expert (it walks through doors and toggles them), sometimes a random action
            a = expert_action(env) if rng.random() < 0.7 else int(rng.integers(0, 4))
            toggles += a == TOGGLE
            _, _, terminated, truncated, _ = env.step(a)
            mine, theirs = env.env.gen_obs(), MiniGridEnv.gen_obs(env.env)
            assert np.array_equal(mine["image"], theirs["image"]) and mine["direction"] == theirs["direction"], (seed, t)
            if t == 3:
                saved = env.get_state()
            if terminated or truncated:
                if saved is not None:
                    env.set_state(saved)  # back to a mid-episode state of another grid
                    saved = None
                else:
                    env.reset()
    assert toggles > 10


def test_reset_and_step_return_the_view_of_the_state_they_leave():
    """reset/step pass on the observation MiniGrid built inside its own step (not a second render):
    it must be the agent's view of the state after the step, heading included."""
    env = stages.make_env(P, 4, 0)
    rng = np.random.default_rng(1)
    seen = [env.reset()]
    assert np.array_equal(seen[0], env.obs())
    for a in rng.integers(0, 4, 60):
        o, *_, terminated, truncated, _ = env.step(int(a))
        assert np.array_equal(o, env.obs()) and o[-1] == env.env.agent_dir
        seen.append(o)
        if terminated or truncated:
            seen.append(env.reset())
    assert len({x.tobytes() for x in seen}) > 5  # the view changes as the agent turns and moves


def test_state_round_trip_continues_identically_mid_episode():
    env = stages.make_env(P, 3, 0)
    env.reset()
    for _ in range(5):
        env.step(expert_action(env))
    saved = env.get_state()
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 4, 40)
    first = [env.step(int(a))[:3] for a in acts] + [tuple(env.reset())]
    env.set_state(saved)
    second = [env.step(int(a))[:3] for a in acts] + [tuple(env.reset())]
    for x, y in zip(first, second):
        assert all(np.array_equal(u, v) for u, v in zip(x, y))


def test_one_hot_encodes_each_cell_and_the_heading():
    env = stages.make_env(P, 0, 0)
    obs = torch.as_tensor(env.reset())[None]
    x = one_hot(obs)
    assert x.shape == (1, IN_FEATURES) and float(x.sum()) == 49 * 3 + 1
    assert torch.equal(one_hot(obs[0]), x[0])


def test_pi_star_cloned_on_far_is_good_on_far_and_bad_on_close(tmp_path):
    """The study's coverage gap, measured: π* never saw a shut door."""
    p = stages.Params(demos={"episodes": 60}, finetune={"eval_episodes": 40})
    paths = _paths(tmp_path)
    stages.collect_demos(p, paths)
    stages.pretrain(p, paths)
    scores = __import__("json").loads((paths.pretrained / "scores.json").read_text())
    assert scores["far_success"] >= 0.8 and scores["close_success"] <= 0.2
    generic.stage(stages, "far_buffer")(p, paths)
    generic.stage(stages, "fisher")(p, paths)  # the exact estimator runs torch.func over the one-hot encoding
    from safetensors.torch import load_file

    fim = load_file(str(paths.fisher / "fisher.safetensors"))
    model = stages.load_pretrained(p, paths)
    assert set(fim) == {n for n, _ in model.retained_parameters()} and all(bool((v > 0).all()) for v in fim.values())


def test_the_same_tag_scores_every_policy_on_the_same_episodes():
    torch.manual_seed(0)
    a, b = ActorCritic(), ActorCritic()
    sa, sa2 = stages.score(a, P, 12, 6), stages.score(a, P, 12, 6)
    assert all(np.array_equal(sa[k], sa2[k]) for k in sa)
    envs = [stages.make_env(P, stages.EVAL_STREAM, 12, 1, k) for k in range(3)]
    layouts = [e.reset(0) for e in envs]
    again = [stages.make_env(P, stages.EVAL_STREAM, 12, 1, k).reset(0) for k in range(3)]
    assert all(np.array_equal(x, y) for x, y in zip(layouts, again))
    assert stages.score(b, P, 13, 6)["far"].shape == (6,)


@pytest.mark.parametrize("method", ["finetune", "ks"])
def test_ppo_on_roomchain_resumes_bit_for_bit(method, tmp_path, monkeypatch):
    """Killed after update 3 of 6 (a checkpoint after every update), PPO+RND on RoomChain resumes
    to the uninterrupted run's weights and curves."""
    from retainrl.families.minigrid.nets import GridRND
    from retainrl.learners import ppo_rnd
    from retainrl.core.checkpoint import Checkpoint
    from retainrl.retention.methods import build_retention, context_for

    monkeypatch.chdir(tmp_path)
    p = stages.Params(env={"max_steps": 20}, finetune={"updates": 6, "envs": 2, "steps": 16, "epochs": 1, "minibatches": 2, "eval_every": 2,
                                "eval_episodes": 2})
    torch.manual_seed(1)
    pi = ActorCritic()

    def run(ckpt, stop_after=None):
        gen = torch.Generator().manual_seed(4)
        ret = build_retention(method, context_for(method, gen, pretrained=lambda: pi), p.retention, learner="ppo_rnd",
                              off_policy=False)
        torch.manual_seed(2)
        rnd, model = GridRND(), ActorCritic()
        model.load_state_dict(pi.state_dict())
        envs = [stages.make_env(p, stages.TRAIN_STREAM, 0, i) for i in range(2)]
        calls = {"n": 0}

        def on_eval(update, m):
            calls["n"] += 1
            if stop_after is not None and update > stop_after:
                raise KeyboardInterrupt  # the kill
            return {k: float(v.mean()) for k, v in stages.score(m, p, update, 2).items()}

        curves = ppo_rnd.train(model, rnd, envs, p.finetune, ret, gen, device=torch.device("cpu"), on_eval=on_eval,
                               progress=False, checkpoint=ckpt)
        return model, curves

    ref_model, ref_curves = run(None)
    ckpt = Checkpoint(tmp_path / "ck", every_s=0)
    with pytest.raises(KeyboardInterrupt):
        run(ckpt, stop_after=3)
    model, curves = run(ckpt)
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert curves == ref_curves  # the whole dict: no wall-clock may make the finetune stage's curves.json differ


def test_bad_params_name_the_key():
    from retainrl.core.errors import ConfigError
    from retainrl.core.config import _validate

    with pytest.raises(ConfigError, match="minigrid.env"):
        _validate(stages.Params, {"env": {"rooms": 2, "close_rooms": 2}}, "minigrid")


def _paths(tmp_path):
    from retainrl.core.paths import Paths

    return Paths(env="minigrid", root=tmp_path)


def test_forward_is_what_the_expert_does_in_an_open_far_room():
    env = stages.make_env(P, 11, start_room=P.env.close_rooms)
    _, rooms, actions, solved = _episode(env, start_room=P.env.close_rooms)
    assert solved and TOGGLE not in actions and FORWARD in actions


def test_the_docs_sweep_table_is_the_committed_probe_results(root):
    """docs/minigrid.md's settings and coefficient table is generated from the committed probe file."""
    import json

    from retainrl.pipeline.docblocks import read_block
    from experiments.probe_minigrid_settings import BEGIN, END, OUT, table

    assert read_block(root / "docs" / "minigrid.md", BEGIN, END) == table(json.loads(OUT.read_text())).strip(), \
        "run: python experiments/probe_minigrid_settings.py --docs"


def test_sweep_table_rows_are_means_with_the_seed_range():
    from experiments.probe_minigrid_settings import table

    ev = lambda far, close, full: {"update": 0, "far": far, "close": close, "full": full}  # noqa: E731
    runs = [{"seed": 0, "eval": [ev(1.0, 0.0, 0.0), ev(0.4, 1.0, 0.4)], "kl_close": 0.1, "kl_far": 0.2},
            {"seed": 1, "eval": [ev(1.0, 0.0, 0.0), ev(0.8, 0.5, 0.5)], "kl_close": 0.3, "kl_far": 0.0}]
    row = table({"l2_coef_0.01": {"updates": 40, "runs": runs}}).splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["`l2_coef_0.01`", "2 × 40", "0.60 (0.40–0.80)", "0.60 (0.40–0.80)", "0.75 (0.50–1.00)",
                     "0.45 (0.40–0.50)", "0.200 (0.100–0.300)", "0.100 (0.000–0.200)"]


def _probe_results(full_bc, full_ft):
    """A π* probe results dict (experiments/probe_minigrid_pistar.py) from final full-task successes."""
    def runs(finals):
        return {"runs": [{"seed": k, "eval": [{"update": 0, "far": 1.0, "close": 0.0, "full": 0.0},
                                             {"update": 5, "far": 0.9, "close": f, "full": f}]} for k, f in enumerate(finals)]}

    return {"pistars": {str(i): {"pistar_seed": i, "pretrained": {"far_success": 1.0, "close_success": 0.0},
                                 "methods": {"finetune": runs(ft), "bc": runs(bc)}}
                        for i, (bc, ft) in enumerate(zip(full_bc, full_ft))}}


def test_the_pistar_probe_counts_the_draw_of_pistar_in_its_interval():
    from experiments.probe_minigrid_pistar import analyse, table

    # BC ahead on every π*: shown per π* and over π*s
    clear = _probe_results([[1.0, 0.9, 1.0, 0.95, 1.0]] * 3, [[0.0, 0.1, 0.0, 0.05, 0.0]] * 3)
    clear["analysis"] = analyse(clear)
    over = clear["analysis"]["bc"]["full"]["over_pistars"]
    assert over["ci_low"] > 0.8 and over["pistars"] == 3
    assert all(c["ci_low"] > 0 for c in clear["analysis"]["bc"]["full"]["per_pistar"])
    # BC ahead on one π* only, level on the others: that π* is shown alone, the interval over π*s reaches 0
    mixed = _probe_results([[1.0] * 5, [1.0] * 5, [1.0] * 5], [[0.0] * 5, [1.0] * 5, [1.0] * 5])
    mixed["analysis"] = analyse(mixed)
    per = mixed["analysis"]["bc"]["full"]["per_pistar"]
    assert per[0]["diff"] == 1.0 and per[1]["diff"] == 0.0
    assert mixed["analysis"]["bc"]["full"]["over_pistars"]["ci_low"] == 0.0
    assert "over 3 π*s" in table(mixed)


def test_the_docs_pistar_table_is_the_committed_probe_results():
    import json

    from experiments.probe_minigrid_pistar import BEGIN, DOCS, END, OUT, table
    from retainrl.pipeline.docblocks import read_block

    if not OUT.exists():
        pytest.skip("the π* probe has not been run")
    assert read_block(DOCS, BEGIN, END) == table(json.loads(OUT.read_text())).strip()

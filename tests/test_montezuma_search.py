"""The deterministic Go-Explore search and the collect_demos stage (small budgets, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ale_py")

from retainrl.core.config import ConfigError
from retainrl.families.montezuma import stages as mz
from retainrl.pipeline import generic
from retainrl.families.montezuma import search as ms
from retainrl.core.paths import Paths

FIXTURE = Path(__file__).parents[1] / mz.ROUTE_PREFIX


def test_smoke_search_finds_the_key():
    """From the start of the game a 60k-frame search earns a reward (the room-1 key) and the
    trajectory it returns earns it again when replayed from reset on a fresh emulator.

    The search is deterministic, so seed 1 always finds it at the same frame (≈41k); other seeds
    need 40k–400k frames (see the report in route.json's ``search.progress``)."""
    search = ms.GoExplore(seed=1)
    result = search.run(60_000, progress_bar=False)
    assert result.score >= 100
    assert result.frames <= 60_000 + ms.FRAME_SKIP * search.explore_steps
    rep = ms.replay(result.actions)
    assert rep["score"] == result.score and rep["rooms"] == result.rooms and not rep["lost_life"]
    assert len(search.archive) > 20  # it explored more than a straight line


def test_search_is_deterministic():
    a = ms.GoExplore(seed=3)
    ra = a.run(12_000, progress_bar=False)
    b = ms.GoExplore(seed=3)
    rb = b.run(12_000, progress_bar=False)
    assert sorted(a.archive) == sorted(b.archive)
    assert np.array_equal(ra.actions, rb.actions) and ra.frames == rb.frames
    c = ms.GoExplore(seed=4)
    c.run(12_000, progress_bar=False)
    assert sorted(c.archive) != sorted(a.archive)


def test_archive_cells_hold_consistent_trajectories():
    """Every cell's stored action list, replayed from reset, ends in that cell without a death."""
    search = ms.GoExplore(seed=0)
    search.run(8_000, progress_bar=False)
    from retainrl.families.montezuma.ale import decode_ram

    rng = np.random.default_rng(0)
    cells = list(search.archive.values())
    for cell in [cells[i] for i in rng.choice(len(cells), size=min(6, len(cells)), replace=False)]:
        actions = search.trajectory(cell)
        rep = ms.replay(actions)
        assert not rep["lost_life"]
        ale = search.ale
        ale.reset_game()
        for a in actions:
            ale.act(search.actions[int(a)])
        assert search.cell_key(decode_ram(ale.getRAM())) == cell.key


def _fixture_result(monkeypatch):
    with np.load(FIXTURE) as data:
        actions = data["actions"]
    rep = ms.replay(actions)

    def fake_run(self, frame_budget, **kw):
        return ms.SearchResult(actions, rep["rooms"], rep["score"], 1234, 0.5, 10, 3, [(0, 0.0, 1, 0.0)])

    monkeypatch.setattr(ms.GoExplore, "run", fake_run)
    return actions, rep


def test_collect_demos_writes_verified_route(tmp_path, monkeypatch):
    """collect_demos replays what the search returns, splits the route and stores entry states.

    The search itself is replaced by the recorded route prefix (rooms 1 → 2 → 6) so that this
    runs in seconds; the real search is exercised above and in benchmarks/bench_montezuma.py.
    """
    actions, rep = _fixture_result(monkeypatch)
    p = mz.parse_params({"route": {"far_boundary": 3}, "search": {"sticky_checks": 2}})
    paths = Paths("montezuma", root=tmp_path)
    mz.collect_demos(p, paths)
    arrays, route = mz.load_demos(paths)
    assert route["rooms"] == rep["rooms"] and route["close"] == rep["rooms"][:2] and route["far"] == rep["rooms"][2:]
    assert np.array_equal(arrays["actions"], actions) and arrays["entry_states"].dtype == np.uint8
    assert list(arrays["entry_ram"][:, 3]) == rep["rooms"]  # RAM[3] is the room
    assert len(route["sticky_replay_rooms"]) == 2 and route["verified_by_replay"]
    far = mz.room_start_states(paths, p, "far")
    assert [f["room"] for f in far] == rep["rooms"][2:] and far[0]["entered_from"] == 2
    env = mz.MontezumaEnv(p.env)
    env.reset(far[0]["state"])
    assert env.ram().room == far[0]["room"]
    assert json.loads((paths.demos / "route.json").read_text())["far_boundary"] == 3
    assert not [x for x in paths.demos.parent.iterdir() if x.name.endswith(".tmp")]


def test_close_rooms_choose_where_fine_tuning_starts(tmp_path, monkeypatch):
    """``route.close_rooms`` k: CLOSE is the k route rooms before the FAR boundary, fine-tuning envs
    reset into the first of them (its stored entry state); null keeps the study's design, the whole
    route before the boundary from the game's start. FAR and the demos do not depend on it."""
    _, rep = _fixture_result(monkeypatch)  # rooms 1 → 2 → 6
    base = {"route": {"far_boundary": 3}, "search": {"sticky_checks": 0}}
    paths = Paths("montezuma", root=tmp_path)
    mz.collect_demos(mz.parse_params(base), paths)
    one = mz.parse_params({**base, "route": {"far_boundary": 3, "close_rooms": 1}})
    study = mz.parse_params({**base, "route": {"far_boundary": 3, "close_rooms": None}})
    assert [s["room"] for s in mz.room_start_states(paths, one, "close")] == [2]
    assert [s["room"] for s in mz.room_start_states(paths, study, "close")] == [1, 2]
    assert [s["room"] for s in mz.room_start_states(paths, one, "far")] == [6] == [s["room"] for s in mz.room_start_states(paths, study, "far")]
    assert mz.training_start(paths, study) is None
    start = mz.training_start(paths, one)
    assert np.array_equal(start, mz.room_start_states(paths, one, "close")[0]["state"])
    env = mz.MontezumaEnv(one.env, start=start)
    for _ in range(2):  # every episode, not only the first, starts there
        env.reset()
        assert env.ram().room == 2
        for _ in range(3):
            env.step(0)
    game = mz.MontezumaEnv(study.env, start=mz.training_start(paths, study))
    game.reset()
    assert game.ram().room == 1


def test_collect_demos_refuses_far_boundary_beyond_route(tmp_path, monkeypatch):
    _fixture_result(monkeypatch)
    p = mz.parse_params({"route": {"far_boundary": 7}, "search": {"sticky_checks": 0}})
    paths = Paths("montezuma", root=tmp_path)
    with pytest.raises(ConfigError, match=r"montezuma\.route\.far_boundary"):
        mz.collect_demos(p, paths)
    assert not paths.demos.exists()


def test_load_demos_missing_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="missing Montezuma demos"):
        mz.load_demos(Paths("montezuma", root=tmp_path))


def test_smoke_profile_collect_demos_from_warm_start(tmp_path):
    """The smoke profile: seed the archive with the bundled route prefix (rooms 1 → 2 → 6), search
    a little more, and get a real, replay-verified route with a CLOSE and a FAR part."""
    p = mz.parse_params(
        {
            "search": {"warm_start": str(FIXTURE), "frame_budget": 40_000, "sticky_checks": 1},
            "route": {"far_boundary": 3},
        }
    )
    paths = Paths("montezuma", root=tmp_path)
    mz.collect_demos(p, paths)
    arrays, route = mz.load_demos(paths)
    # the search goes on to rooms 5 and 7 but only peeks into them: the route is 1 → 2 → 6
    assert route["rooms_in_order_of_entry"][:3] == [1, 2, 6] and len(route["rooms_in_order_of_entry"]) >= 4
    assert route["rooms"] == [1, 2, 6] and set(route["detours"]) == set(route["rooms_in_order_of_entry"][3:])
    assert route["far"] == [6] and route["verified_by_replay"]
    assert route["search"]["frames"] <= 40_000 + 4 * 100
    # the demos hold no wall-clock figure (a rerun must reproduce them byte for byte); the timings
    # go to the search report
    assert "seconds" not in (paths.demos / mz.ROUTE_JSON).read_text()
    timing = json.loads((mz.search_report_dir(paths) / mz.TIMING_JSON).read_text())
    assert timing["progress"][-1]["frames"] <= route["search"]["frames"] and timing["seconds"] > 0
    first = {f.name: f.read_bytes() for f in paths.demos.iterdir()}
    mz.collect_demos(p, paths)
    assert {f.name: f.read_bytes() for f in paths.demos.iterdir()} == first
    with np.load(FIXTURE) as data:
        prefix = data["actions"]
    assert len(arrays["actions"]) > len(prefix)


def test_pretrain_clones_the_far_segment(tmp_path, monkeypatch):
    """pretrain reads the demos, replays the FAR segment and writes a loadable π* and RND."""
    import torch
    from safetensors.torch import load_file

    from retainrl.families.montezuma.nets import ActorCritic

    _fixture_result(monkeypatch)
    p = mz.parse_params(
        {"route": {"far_boundary": 2}, "search": {"sticky_checks": 0}, "pretrain": {"steps": 40, "lr": 1e-3, "batch_size": 16, "hidden": 64}}
    )
    paths = Paths("montezuma", root=tmp_path)
    mz.collect_demos(p, paths)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mz.pretrain(p, paths)
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((paths.pretrained / "metrics.json").read_text())
    assert metrics["far_rooms"] == [2, 6] and metrics["segment_steps"] == 110
    assert metrics["bc_loss_last"] < metrics["bc_loss_first"] and metrics["rnd_loss_last"] < metrics["rnd_loss_first"]
    model = ActorCritic(hidden=64)
    model.load_state_dict(load_file(str(paths.pretrained / "policy.safetensors")))
    assert set(load_file(str(paths.pretrained / "rnd.safetensors"))) >= {"mean", "var", "count"}


def test_far_buffer_and_fisher(tmp_path, monkeypatch):
    """far_buffer rolls π* out from FAR start states and stores its outputs; fisher covers the
    actor's weights only, positive everywhere (clipped below)."""
    import torch
    from safetensors.torch import load_file

    _fixture_result(monkeypatch)
    p = mz.parse_params(
        {
            "route": {"far_boundary": 2},
            "search": {"sticky_checks": 0},
            "pretrain": {"steps": 5, "batch_size": 8, "hidden": 32},
            "far_buffer": {"size": 40, "rollout_steps": 15},
            "fisher": {"states": 8},
        }
    )
    paths = Paths("montezuma", root=tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mz.collect_demos(p, paths)
        mz.pretrain(p, paths)
        generic.stage(mz, "far_buffer")(p, paths)
        generic.stage(mz, "fisher")(p, paths)
    finally:
        torch.set_num_threads(threads)
    with np.load(paths.far_buffer / "far_buffer.npz") as buf:
        assert buf["obs"].shape == (40, 4, 84, 84) and buf["targets"].shape == (40, 18) and buf["critic"].shape == (40, 2)
        assert set(buf["rooms"].tolist()) & {2, 6}
    fim = load_file(str(paths.fisher / "fisher.safetensors"))
    assert fim and not any(k.startswith("critic") for k in fim)
    assert all(bool((v >= 1e-5).all()) for v in fim.values())


ROUTE_SEED1 = Path(__file__).parent / "data" / "montezuma_route_seed1.npz"


def test_route_drops_rooms_the_demo_only_peeks_into(tmp_path):
    """The route found by the default search (seed 1, 1.45M frames) enters rooms 5 and 12 and walks
    straight back the way it came with nothing gained: they are not on the route, and the 7th
    room (the FAR boundary) becomes 22, which the demo crosses to 23."""
    with np.load(ROUTE_SEED1) as data:
        actions = data["actions"]
    rep = ms.replay(actions)
    assert rep["rooms"] == [1, 2, 6, 5, 7, 13, 12, 14, 22, 23] and not rep["lost_life"]
    assert rep["route"]["rooms"] == [1, 2, 6, 7, 13, 14, 22, 23]
    # room 7 is first peeked into (6 → 7 → 6) and crossed later: its entry is the crossing one
    i = rep["route"]["rooms"].index(7)
    assert rep["route"]["entry_steps"][i] > rep["entry_steps"][rep["rooms"].index(7)]
    p = mz.parse_params({"search": {"sticky_checks": 0}, "route": {"far_boundary": 7}})
    paths = Paths("montezuma", root=tmp_path)
    mz.write_demos(p, paths, actions, {"frames": 0})
    _, route = mz.load_demos(paths)
    assert route["far"] == [22, 23] and route["detours"] == [5, 12]
    far = mz.room_start_states(paths, p, "far")
    assert [f["entered_from"] for f in far] == [14, 22]
    kept = mz.parse_params({"search": {"sticky_checks": 0}, "route": {"far_boundary": 7, "drop_detours": False}})
    mz.write_demos(kept, Paths("montezuma", root=tmp_path / "kept"), actions, {"frames": 0})
    assert mz.load_demos(Paths("montezuma", root=tmp_path / "kept"))[1]["far"] == [12, 14, 22, 23]


def test_far_boundary_without_demo_steps_is_an_error(tmp_path):
    """A FAR boundary at the last room of a route that ends on entering it leaves nothing to clone."""
    from retainrl.families.montezuma.stages import far_segments

    with np.load(FIXTURE) as data:
        actions = data["actions"]
    rep = ms.replay(actions)
    cut = actions[: rep["entry_steps"][-1]]  # stop right at the entry of the last room (6)
    p = mz.parse_params({"search": {"sticky_checks": 0}, "route": {"far_boundary": 3}})
    paths = Paths("montezuma", root=tmp_path)
    mz.write_demos(p, paths, cut, {"frames": 0})
    arrays, _ = mz.load_demos(paths)
    with pytest.raises(ConfigError, match=r"montezuma\.route\.far_boundary: the demo has no steps"):
        far_segments(arrays, 3)

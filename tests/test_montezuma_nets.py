"""Montezuma networks and BC data (groundwork for pretrain): shapes, actor/critic split, BC learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ale_py")

from retainrl.families.montezuma import stages as mz
from retainrl.families.montezuma import nets
from retainrl.learners.rnd import RND
from retainrl.families.montezuma.search import replay

FIXTURE = Path(__file__).parents[1] / mz.ROUTE_PREFIX


@pytest.fixture(scope="module")
def segment():
    with np.load(FIXTURE) as data:
        actions = data["actions"]
    rep = replay(actions)
    arrays = {
        "actions": actions,
        "rooms": np.asarray(rep["rooms"]),
        "entry_steps": np.asarray(rep["entry_steps"]),
        "entry_states": np.stack(rep["entry_states"]),
    }
    return mz.far_segments(arrays, far_boundary=2), rep


def test_far_segment_replays_the_route(segment):
    seg, rep = segment
    n = rep["entry_steps"][2] - rep["entry_steps"][1]
    assert seg["obs"].shape == (n, 4, 84, 84) and seg["obs"].dtype == np.uint8
    assert seg["rooms"][0] == 2 and set(seg["rooms"]) == {2}  # room 2 until the step into room 6


def test_actor_critic_split_and_shapes():
    model = nets.ActorCritic()
    obs = torch.zeros(3, 4, 84, 84, dtype=torch.uint8)
    logits, values = model.logits_and_values(obs)
    assert torch.equal(model(obs), logits)
    assert logits.shape == (3, 18) and values.shape == (3, 2)
    actor = {n for n, _ in model.retained_parameters()}
    assert actor and not any(n.startswith("critic") for n in actor)
    assert {n for n, _ in model.retained_parameters(include_critic=True)} > actor
    rnd = RND()
    rnd.update_stats(obs + 10)
    assert rnd.error(obs).shape == (3,)
    assert not any(p.requires_grad for p in rnd.target.parameters())


def test_behaviour_cloning_fits_the_segment(segment):
    seg, _ = segment
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI box has 2 shared cores; oversubscription is slower
    try:
        model = nets.ActorCritic(hidden=64)
        losses = nets.behaviour_clone(model, seg["obs"], seg["actions"], steps=60, lr=1e-3, batch_size=16)
    finally:
        torch.set_num_threads(threads)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])  # from ln 18 towards the memorised labels

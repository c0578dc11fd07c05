"""Difficulty of the default synthetic traffic, calibrated like the real I-80 benchmark:
replaying the recorded car succeeds (>= 98%), keeping speed and heading rarely does (10-30%;
16.2% on real I-80)."""

import numpy as np
import pytest

from traffic_sim.evaluate import run_episodes
from traffic_sim.generator import GeneratorConfig, generate
from traffic_sim.scene import Scene


@pytest.fixture(scope="module")
def outcomes():
    """Both built-in policies on every episode of two 5-minute samples of default traffic."""
    result = {"human": [], "no-action": []}
    for seed in (0, 1):
        table = generate(GeneratorConfig(minutes=5.0, seed=seed))
        scene = Scene.from_table(table)
        for policy in result:
            result[policy].append(run_episodes(scene, scene.episodes["all"], policy))
    return {p: {k: np.concatenate([o[k] for o in runs]) for k in runs[0]} for p, runs in result.items()}


def test_replaying_the_recorded_car_succeeds(outcomes):
    human = outcomes["human"]
    assert len(human["success"]) > 1000
    assert human["success"].mean() >= 0.98
    assert not human["collision"].any()


def test_no_action_baseline_is_as_hard_as_on_i80(outcomes):
    no_action = outcomes["no-action"]
    assert 0.10 <= no_action["success"].mean() <= 0.30
    # It fails mostly by collisions, and gets about half as far as the recorded drivers.
    assert no_action["collision"].mean() > 0.6
    ratio = no_action["distance"].mean() / outcomes["human"]["distance"].mean()
    assert 0.3 < ratio < 0.7

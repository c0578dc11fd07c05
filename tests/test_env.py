"""The Gymnasium environment: API conformance, determinism, vector envs and video."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import traffic_sim
from traffic_sim.env import TrafficEnv


@pytest.fixture(scope="module")
def env_kwargs(traffic_file):
    return {"trajectories": str(traffic_file)}


def test_registered():
    assert traffic_sim.ENV_ID in gym.registry


def test_check_env(env_kwargs):
    env = gym.make(traffic_sim.ENV_ID, **env_kwargs, history=3, render_mode="rgb_array")
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (3, 3, 117, 24) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (3, 4)
    for key in ("proximity_cost", "lane_cost", "offroad_cost", "collision", "off_road",
                "success", "distance"):
        assert key in info


def test_same_seed_same_episode(env_kwargs):
    a = gym.make(traffic_sim.ENV_ID, **env_kwargs)
    b = gym.make(traffic_sim.ENV_ID, **env_kwargs)
    oa, ia = a.reset(seed=123)
    ob, ib = b.reset(seed=123)
    assert ia["track"] == ib["track"]
    for _ in range(15):
        act = np.array([0.5, 0.0], dtype=np.float32)
        ra = a.step(act)
        rb = b.step(act)
        assert np.array_equal(ra[0]["image"], rb[0]["image"]) and ra[1] == rb[1]


def test_human_actions_through_the_env_reach_the_end(env_kwargs):
    env = TrafficEnv(**env_kwargs, split="all")
    sc = env.scene
    longest = env.episodes[np.argmin(sc.tr_y[sc.ep_row[env.episodes]])]  # starts farthest back
    _, info = env.reset(options={"track": int(longest)})
    sim, cars = env.sim, env.cars
    terminated = truncated = False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(sim.human_actions(cars)[0].astype(np.float32))
    assert info["success"] and not info["collision"]
    assert info["distance"] > 100.0


def test_no_action_terminates_with_a_reason(env_kwargs):
    env = TrafficEnv(**env_kwargs, split="all")
    env.reset(seed=0)
    for _ in range(2000):
        _, _, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        if terminated or truncated:
            break
    assert terminated or truncated
    assert info["collision"] or info["off_road"] or info["success"] or truncated


def test_sync_vector_env(env_kwargs):
    venv = gym.vector.SyncVectorEnv([lambda: gym.make(traffic_sim.ENV_ID, **env_kwargs)] * 3)
    obs, _ = venv.reset(seed=7)
    assert obs["image"].shape == (3, 1, 3, 117, 24)
    obs, reward, term, trunc, info = venv.step(np.zeros((3, 2), dtype=np.float32))
    assert reward.shape == (3,)
    venv.close()


def test_rgb_array_and_record_video(env_kwargs, tmp_path):
    env = gym.make(traffic_sim.ENV_ID, **env_kwargs, render_mode="rgb_array")
    env = gym.wrappers.RecordVideo(env, str(tmp_path), episode_trigger=lambda e: True,
                                   disable_logger=True)
    env.reset(seed=0)
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    for _ in range(12):
        env.step(np.zeros(2, dtype=np.float32))
    env.close()
    videos = list(tmp_path.glob("*.mp4"))
    assert videos and videos[0].stat().st_size > 1000


def test_bad_arguments():
    with pytest.raises(ValueError):
        TrafficEnv(trajectories="/nonexistent/file.txt")

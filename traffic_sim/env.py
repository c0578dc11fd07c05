"""Gymnasium environment: drive one car through recorded highway traffic.

A thin shell over :class:`traffic_sim.sim.ReplaySimulator` (the batched core).

## Observation
A dict:

=========  ==========================  =============================================
key        shape / dtype               meaning
=========  ==========================  =============================================
``image``  (history, 3, 117, 24) uint8 egocentric state images (lanes, vehicles,
                                       off-road), oldest first
``state``  (history, 4) float32        (x, y, vx, vy) [m, m/s] in the road frame
=========  ==========================  =============================================

At reset the history is the controlled car's recorded past (the episode starts after 20
frames of it).

## Action
``Box(2)``: acceleration [m/s^2] in [-10, 10] and steering [1/m] in [-0.5, 0.5] (curvature;
positive turns right). Actions are clipped to the box.

## Reward
Minus the policy's cost: ``-(proximity + 0.2 lane + 1.0 off-road)`` (see
:mod:`traffic_sim.costs`), and ``-1`` more on a collision or leaving the road.

## Episode end
``terminated`` on a collision, leaving the road or arriving at the end of the evaluation
stretch (``info["success"]``); ``truncated`` when the recording ends.

## Arguments
``trajectories`` (path(s) to NGSIM or generated files; default: the embedded synthetic
I-80 traffic, generated and cached on first use), ``location``, ``split``
("train", "val", "test" or "all"), ``history`` (frames in the observation, 1-20),
``render_mode`` ("human" or "rgb_array").

``reset(options={"track": k})`` drives the episode of recorded track ``k``; otherwise an
episode of the split is drawn with the environment's random generator.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .costs import image_costs
from .loading import load_scene
from .raster import IMAGE_H, IMAGE_W, N_CHANNELS
from .scene import HISTORY
from .sim import ReplaySimulator

ACC_LIMIT = 10.0  # [m/s^2]
STEER_LIMIT = 0.5  # [1/m]
LANE_WEIGHT = 0.2  # lambda_l of the policy's cost
OFFROAD_WEIGHT = 1.0  # lambda_o of the policy's cost


class TrafficEnv(gym.Env):
    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 10}

    def __init__(self, trajectories=None, location=None, split="train", history=1,
                 render_mode=None, scene=None):
        if not 1 <= history <= HISTORY:
            raise ValueError(f"history must be 1..{HISTORY}, got {history}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}")
        self.scene = scene if scene is not None else load_scene(trajectories, location)
        if split not in self.scene.episodes:
            raise ValueError(f"split must be one of {sorted(self.scene.episodes)}, got {split!r}")
        self.episodes = self.scene.episodes[split]
        if len(self.episodes) == 0:
            raise ValueError(f"no episodes in split {split!r} of this data")
        self.sim = ReplaySimulator(self.scene)
        self.history = history
        self.render_mode = render_mode
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (history, N_CHANNELS, IMAGE_H, IMAGE_W), np.uint8),
            "state": spaces.Box(-np.inf, np.inf, (history, 4), np.float32),
        })
        self.action_space = spaces.Box(np.array([-ACC_LIMIT, -STEER_LIMIT], dtype=np.float32),
                                       np.array([ACC_LIMIT, STEER_LIMIT], dtype=np.float32))
        self.cars = None
        self._images = None
        self._states = None
        self._viewer = None
        self._last_action = np.zeros(2)

    # ------------------------------------------------------------------ API
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        if "track" in options:
            track = int(options["track"])
            if not 0 <= track < self.scene.n_tracks or self.scene.ep_row[track] < 0:
                raise ValueError(f"track {track} is not usable as an episode")
        else:
            track = int(self.episodes[self.np_random.integers(len(self.episodes))])
        self.cars = self.sim.start([track])
        self._images = self.sim.history_images([track])[0, -self.history:]
        self._states = self.sim.history_states([track])[0, -self.history:]
        self._last_action = np.zeros(2)
        obs = self._obs()
        info = self._info(self._images[-1:])
        if self.render_mode == "human":
            self.render()
        return obs, info

    def step(self, action):
        if self.cars is None:
            raise RuntimeError("call reset() before step()")
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(1, 2),
                         self.action_space.low, self.action_space.high)
        self._last_action = action[0]
        image = self.sim.step(self.cars, action, observe=True)
        self._images = np.concatenate([self._images[1:], image]) if self.history > 1 else image
        state = self.cars.state_vector()
        self._states = np.concatenate([self._states[1:], state]) if self.history > 1 else state
        info = self._info(image)
        cost = info["proximity_cost"] + LANE_WEIGHT * info["lane_cost"] + OFFROAD_WEIGHT * info["offroad_cost"]
        reward = -float(cost) - float(info["collision"] or info["off_road"])
        terminated = bool(info["collision"] or info["off_road"] or info["success"])
        truncated = bool(self.cars.truncated[0])
        if self.render_mode == "human":
            self.render()
        return self._obs(), reward, terminated, truncated, info

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode")
            return None
        from .viewer import EnvRenderer

        if self._viewer is None:
            self._viewer = EnvRenderer(self.scene, window=self.render_mode == "human")
        frame = self._viewer.draw(self.cars, self._images[-1], self._last_action)
        return frame if self.render_mode == "rgb_array" else None

    def close(self):
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None

    # ------------------------------------------------------------- helpers
    def _obs(self):
        return {"image": self._images.copy(), "state": self._states.astype(np.float32)}

    def _info(self, image):
        c = self.cars
        costs = image_costs(image, c.v, c.length, c.width)
        return {
            "proximity_cost": float(costs["proximity_cost"][0]),
            "lane_cost": float(costs["lane_cost"][0]),
            "offroad_cost": float(costs["offroad_cost"][0]),
            "collision": bool(c.collision[0]),
            "off_road": bool(c.off_road[0]),
            "success": bool(c.success[0]),
            "distance": float(c.distance[0]),
            "track": int(c.track[0]),
            "frame": int(c.frame[0]),
            "speed": float(c.v[0]),
        }

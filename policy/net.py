"""The policy network: 20 state images and states -> an action.

    frames (B, 20, 3, 117, 24) --conv x3--> (B, F*h*w) --+
    states (B, 20, 4)          --MLP------> (B, F*h*w) --+--> 3 FC layers --> action (B, 2)

Its input and output are in the units the forward model works in: normalised states and
normalised actions (see :mod:`data.dataset`). The states are made relative before they are
encoded: positions relative to the current one, velocities as they are. The policy sees
where the car has been and how fast it moves, not where on the road it is (the images show
the lanes around it), so it cannot learn a road position by heart.

The action is bounded softly, ``bound * tanh(raw / bound)`` in normalised units (default 3
standard deviations of the expert's actions): an unroll through the forward model must not
ask it for actions far outside what it was trained on. The last layer starts at zero, so an
untrained policy outputs the mean expert action. ``brake_bound`` bounds a negative
acceleration apart (a car brakes harder than it accelerates), ``steer_bound`` the steering
(a curvature: a car that creeps must turn sharply to change lanes within a few metres).
``lateral_acc`` bounds the steering by a lateral acceleration instead where that allows more:
a curvature of ``lateral_acc / speed**2`` (up to :data:`TURN_MAX`), which at highway speeds
is below the steering's bound and lets a car that creeps turn as sharply as a car can.

``lane_end_input`` also gives the policy what a driver knows from the map and the signs: whether
the lane it drives in ends ahead (an on-ramp it must merge out of) and how far away that end is
(:func:`lane_end_inputs`, from :meth:`~traffic_sim.roads.Road.to_lane_end`). The images show a
lane's end only within 35.7 m, and a car on the on-ramp sees the same picture as a car in the
rightmost lane of the main road beyond it: two stretches of road that only a map tells apart.
It reads the road the car drives on (:meth:`PolicyNet.use_road`: the simulator's, the
dataset's), so a policy taught on one location drives another's road as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from world_model.model import IMAGE_SHAPE, ConvEncoder, conv_out

STATE_DIM = 4
ACTION_DIM = 2
TURN_MAX = 0.2  # [1/m] the sharpest steering lateral_acc allows: a 5 m turning radius
LANE_END_RANGE = 300.0  # [m] distance to the lane's end at which lane_end_input's distance saturates
N_LANE_END = 2  # inputs of lane_end_input


def lane_end_inputs(road, x, y) -> np.ndarray:
    """(N, 2) float32 inputs of ``lane_end_input`` for cars at (x, y) [m] on ``road`` (a
    :class:`~traffic_sim.roads.Road`): 1 where the car's lane ends ahead with no lane going on in
    its place (else 0), and the distance to that end over :data:`LANE_END_RANGE`, within [0, 1]
    (1 where it does not end)."""
    to_end = road.to_lane_end(np.asarray(x, dtype=float), np.asarray(y, dtype=float))  # inf: it does not end
    return np.stack([np.isfinite(to_end), np.clip(to_end / LANE_END_RANGE, 0.0, 1.0)], axis=-1).astype(np.float32)


@dataclass(frozen=True)
class PolicyConfig:
    n_cond: int = 20  # frames of history [0.1 s each]
    n_feature: int = 64  # channels of the image encoder's last map
    n_hidden: int = 256  # width of the 3 fully-connected layers
    action_bound: float = 3.0  # soft bound of the normalised action
    n_states: int = 20  # most recent states the policy sees (at most n_cond)
    brake_bound: Optional[float] = None  # soft bound of a negative acceleration (None: action_bound)
    steer_bound: Optional[float] = None  # soft bound of the steering (None: action_bound)
    lateral_acc: Optional[float] = None  # [m/s^2] the steering's bound rises to lateral_acc / speed^2 where that is more
    units: Optional[tuple] = None  # with lateral_acc: (vx mean, vx std, vy mean, vy std) [m/s], steering std [1/m]
    lane_end_input: bool = False  # also input whether the car's lane ends ahead, and how far (lane_end_inputs)

    @staticmethod
    def from_dict(d: dict) -> "PolicyConfig":
        d = dict(d)
        if d.get("units") is not None:
            d["units"] = tuple(d["units"])
        return PolicyConfig(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def limits(self) -> tuple:
        """((lowest acceleration, lowest steering), (highest acceleration, highest steering)):
        the soft bounds of the normalised action."""
        turn = self.steer_bound or self.action_bound
        return (-(self.brake_bound or self.action_bound), -turn), (self.action_bound, turn)

    def with_units(self, stats: dict) -> "PolicyConfig":
        """This config with the units ``lateral_acc`` reads, from a dataset's normalisation
        statistics (``state_mean``, ``state_std``, ``action_std``)."""
        mean, std = stats["state_mean"], stats["state_std"]
        return replace(self, units=(float(mean[2]), float(std[2]), float(mean[3]), float(std[3]),
                                    float(stats["action_std"][1])))

    def turn_limit(self, state: torch.Tensor):
        """The steering's soft bound (normalised) at each of the normalised current states
        (B, 4): the bound of :meth:`limits`, or with ``lateral_acc`` the curvature that gives
        that lateral acceleration at the car's speed where it is more (B,)."""
        turn = self.limits()[1][1]
        if self.lateral_acc is None:
            return turn
        if self.units is None:
            raise ValueError("a policy with lateral_acc needs the units of its normalisation (PolicyConfig.units)")
        vx_mean, vx_std, vy_mean, vy_std, steer_std = self.units
        speed_sq = (state[..., 2] * vx_std + vx_mean) ** 2 + (state[..., 3] * vy_std + vy_mean) ** 2
        curvature = torch.clamp(self.lateral_acc / speed_sq.clamp_min(1e-6), max=TURN_MAX)
        return torch.clamp(curvature / steer_std, min=turn)


class PolicyNet(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = cfg = config
        h, w = IMAGE_SHAPE[1:]
        for _ in range(3):
            h, w = conv_out(h), conv_out(w)
        n_map = cfg.n_feature * h * w
        self.encoder = ConvEncoder(cfg.n_cond * IMAGE_SHAPE[0], cfg.n_feature, dropout=0.0)
        self.road = self.positions = None  # with lane_end_input: the road driven on (use_road)
        self.state_encoder = nn.Sequential(
            nn.Linear(min(cfg.n_states, cfg.n_cond) * STATE_DIM + (N_LANE_END if cfg.lane_end_input else 0),
                      cfg.n_hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(cfg.n_hidden, n_map))
        self.head = nn.Sequential(
            nn.LeakyReLU(0.2), nn.Linear(n_map, cfg.n_hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(cfg.n_hidden, cfg.n_hidden), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(cfg.n_hidden, ACTION_DIM))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def use_road(self, road, stats: dict) -> "PolicyNet":
        """Drive on ``road`` (a :class:`~traffic_sim.roads.Road`), whose states are normalised with
        ``stats`` (``state_mean``, ``state_std``): what ``lane_end_input`` reads. Returns self."""
        self.road = road
        self.positions = (np.asarray(stats["state_mean"], dtype=np.float64)[:2],
                          np.asarray(stats["state_std"], dtype=np.float64)[:2])
        return self

    def lane_end(self, state: torch.Tensor) -> torch.Tensor:
        """(B, 2) the inputs of ``lane_end_input`` at the normalised current states (B, 4)."""
        if self.road is None:
            raise RuntimeError("this policy reads the distance to its lane's end: give it the road first "
                               "(PolicyNet.use_road)")
        mean, std = self.positions
        xy = state[:, :2].detach().double().cpu().numpy() * std + mean
        return torch.from_numpy(lane_end_inputs(self.road, xy[:, 0], xy[:, 1])).to(state.device)

    def forward(self, images: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """images (B, n_cond, 3, H, W) uint8 or float in [0, 1], states (B, n_cond, 4)
        normalised -> normalised action (B, 2)."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        now = states[:, -1]
        states = states[:, -min(self.config.n_states, self.config.n_cond):]
        relative = torch.cat([states[..., :2] - states[:, -1:, :2], states[..., 2:]], -1).flatten(1)
        if self.config.lane_end_input:
            relative = torch.cat([relative, self.lane_end(now).to(relative.dtype)], 1)
        h = self.encoder(images.flatten(1, 2)).flatten(1) + self.state_encoder(relative)
        raw = self.head(h).float()
        (brake, _), (bound, _) = self.config.limits()
        turn = self.config.turn_limit(now.detach().float())  # a bound, not a cost
        acc, steer = raw[:, 0], raw[:, 1]
        # each bound's slope is 1 at 0: near 0 the action is the raw output
        acc = torch.where(acc < 0, -brake * torch.tanh(acc / -brake), bound * torch.tanh(acc / bound))
        return torch.stack([acc, turn * torch.tanh(steer / turn)], 1)

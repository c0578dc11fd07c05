"""Differentiable proximity, lane and off-road costs on (predicted) state images.

The same masks as :mod:`traffic_sim.costs` (which the simulator uses on real images), in
torch, so that a cost's gradient reaches the pixels of a predicted image and through them
the actions that produced it. The masks are separable (a profile along the road times a
profile across it); the max over pixels of mask x channel is computed as a max over columns
then over rows, which gives the same value and the same gradient (to the maximising pixel).

The speed that sets the proximity mask's safe distance comes from the predicted state and is
detached: the policy must not lower its cost by changing the mask.
"""

from __future__ import annotations

from typing import Optional

import torch

from traffic_sim.costs import ACROSS_M, ALONG_M, LANE_HALF, PROX_REACH, SAFE_MARGIN, SAFE_TIME
from traffic_sim.raster import LANES_CHANNEL, OFFROAD_CHANNEL, VEHICLES_CHANNEL
from traffic_sim.roads import LANE_WIDTH

COST_NAMES = ("proximity", "lane", "offroad")
ROAD_END_REACH = 10.0  # [m] the off-road look-ahead's reach at a standstill (see image_costs)


def _ramp(distance: torch.Tensor, flat, fall) -> torch.Tensor:
    """1 within ``flat`` of 0, falling linearly to 0 at ``flat + fall`` (tensors broadcast)."""
    fall = torch.as_tensor(fall, dtype=distance.dtype, device=distance.device).clamp_min(1e-6)
    return (1.0 - (distance.abs() - flat) / fall).clamp(0.0, 1.0)


def image_costs(images: torch.Tensor, speed: torch.Tensor, car_size: torch.Tensor,
                offset: Optional[torch.Tensor] = None,
                rear_speed: Optional[torch.Tensor] = None, rear_weight: float = 1.0,
                reach: Optional[float] = None, offroad_ahead: Optional[float] = None) -> torch.Tensor:
    """Costs of cars from their state images.

    images (..., 3, 117, 24) float in [0, 1]; speed (...) [m/s]; car_size (..., 2) length and
    width [m]. Returns (..., 3): proximity, lane and off-road costs, each in [0, 1].

    ``offset`` (..., 2) [m]: where the car is relative to the image centre, along the road
    (ahead positive) and across it (right positive); the masks move with it. With an offset
    that is zero in value, the costs are unchanged and their gradient with respect to the
    offset is how they change as the car moves among what the image shows.

    ``rear_speed`` (...) [m/s]: the speed that sets the safe distance behind the car (default:
    its own); ``rear_weight``: the proximity mask behind the car is scaled by it (1: the
    symmetric mask of method.md). ``reach`` [m]: how far beyond half the car's width the
    proximity mask falls to 0 sideways (default: ``PROX_REACH``, the neighbouring lane of
    method.md; half a lane counts only the vehicles in the car's own lane).

    ``offroad_ahead`` [s]: the off-road cost also looks ahead, for road that ends, over the
    distance the car covers in that time at its speed plus ``ROAD_END_REACH``: in each row,
    the share of a triangle across the car (falling to 0 a lane's width from its centre) that
    is off the road, less that share beside the car (so that a road's edge alongside, which
    goes on ahead, costs nothing), weighted by a ramp that falls from 1 at the car's front to
    0 at that distance. The off-road cost is the larger of this and the method's cost under
    the car. An on-ramp's end then costs before the car reaches it, like a vehicle standing
    there, and less as the car moves towards the lane beside it, where the road goes on: the
    gradient slows the car and steers it there (the method's cost, under the car, has no
    sideways gradient while the road is gone across the whole lane). A car standing within
    ``ROAD_END_REACH`` of the end still pays, so that only moving over ends the cost.
    """
    lead = images.shape[:-3]
    img = images.reshape(-1, *images.shape[-3:]).float()  # (N, C, H, W)
    speed = speed.reshape(-1, 1).detach().abs().float()  # (N, 1)
    size = car_size.reshape(-1, 2).float()
    along = torch.as_tensor(ALONG_M, dtype=img.dtype, device=img.device)  # (H,) ahead > 0
    across = torch.as_tensor(ACROSS_M, dtype=img.dtype, device=img.device)  # (W,)
    half_length, half_width = 0.5 * size[:, :1], 0.5 * size[:, 1:]  # (N, 1)
    along, across = along[None], across[None]  # (1, H), (1, W)
    lane_along = (along.abs() <= half_length).to(img.dtype)  # (N, H): not moved (a step)
    if offset is not None:
        offset = offset.reshape(-1, 2).to(img.dtype)
        along, across = along - offset[:, :1], across - offset[:, 1:]  # from the moved car
    safe = SAFE_TIME * speed + SAFE_MARGIN  # (N, 1)
    if rear_speed is not None:
        safe_rear = SAFE_TIME * rear_speed.reshape(-1, 1).detach().abs().float() + SAFE_MARGIN
        safe = torch.where(along >= 0, safe, safe_rear)  # (N, H)
    prox_along = _ramp(along, half_length, safe)  # (N, H)
    if rear_weight != 1.0:
        prox_along = prox_along * torch.where(along >= 0, 1.0, float(rear_weight))
    prox_across = _ramp(across, half_width, PROX_REACH if reach is None else reach)  # (N, W)
    lane_across = _ramp(across, 0.0, LANE_HALF)  # (N or 1, W)
    vehicles = img[:, VEHICLES_CHANNEL]  # (N, H, W)
    proximity = ((vehicles * prox_across[:, None, :]).amax(2) * prox_along).amax(1)  # (N,)
    road = img[:, [LANES_CHANNEL, OFFROAD_CHANNEL]]  # (N, 2, H, W)
    lane_off = ((road * lane_across[:, None, None, :]).amax(3) * lane_along[:, None]).amax(2)  # (N, 2)
    if offroad_ahead is not None:
        reach_ahead = float(offroad_ahead) * speed + ROAD_END_REACH  # (N, 1) [m]
        ahead_w = torch.where(along >= -half_length, _ramp(along, half_length, reach_ahead), 0.0)  # (N, H)
        wide = _ramp(across, 0.0, LANE_WIDTH)  # (N or 1, W)
        share = (img[:, OFFROAD_CHANNEL] * wide[:, None, :]).sum(2) / wide.sum(1, keepdim=True)  # (N, H)
        beside = torch.where(along.abs() <= half_length, share.detach(), 0.0).amax(1, keepdim=True)  # (N, 1)
        ends = (torch.relu(share - beside) * ahead_w).amax(1)  # (N,); relu: no gradient at 0
        lane_off = torch.stack([lane_off[:, 0], torch.maximum(lane_off[:, 1], ends)], 1)
    return torch.cat([proximity[:, None], lane_off], 1).reshape(*lead, 3)


def speed_of(states: torch.Tensor, stats: dict) -> torch.Tensor:
    """Speed [m/s] (...) of normalised states (..., 4) (x, y, vx, vy)."""
    mean = torch.as_tensor(stats["state_mean"], dtype=states.dtype, device=states.device)
    std = torch.as_tensor(stats["state_std"], dtype=states.dtype, device=states.device)
    velocity = states[..., 2:] * std[2:] + mean[2:]
    return velocity.norm(dim=-1)

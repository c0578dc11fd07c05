"""Proximity, lane and off-road costs of a car, computed on its state images.

These are the definitions the policy is trained on (the learning code evaluates the same
masks on predicted images); the simulator reports them on real images so that predicted and
actual costs can be compared. All masks are separable: a profile along the road times a
profile across it, evaluated at pixel centres, with the car's centre at the image centre.

* proximity: 1 over the car's footprint, falling linearly to 0 at a speed-dependent safe
  distance ``1.5 s * speed + 1 m`` ahead and behind it, and across the neighbouring lane
  sideways; cost = max over pixels of mask x vehicles channel.
* lane: 1 over the car's length only, and a narrow triangle across (1 at the car's centre
  line, 0 half a lane minus half a pixel away); cost = max of mask x lane-marking channel. A
  car centred in its lane costs ~0; one whose centre line is on a marking about 0.4-0.8
  (the 1 px marking may be split over two pixel columns).
* off-road: the lane mask applied to the off-road channel.
"""

from __future__ import annotations

import numpy as np

from .raster import (IMAGE_H, IMAGE_W, LANES_CHANNEL, OFFROAD_CHANNEL, PX_PER_M,
                     VEHICLES_CHANNEL)
from .roads import LANE_WIDTH

SAFE_TIME = 1.5  # [s] time headway of the safe distance
SAFE_MARGIN = 1.0  # [m] added to the safe distance
PROX_REACH = LANE_WIDTH  # [m] beyond half the car's width, where the mask falls to 0 sideways

# Signed distances of pixel centres from the image centre [m]: ahead is positive.
ALONG_M = (0.5 * IMAGE_H - (np.arange(IMAGE_H) + 0.5)) / PX_PER_M
ACROSS_M = ((np.arange(IMAGE_W) + 0.5) - 0.5 * IMAGE_W) / PX_PER_M
LANE_HALF = 0.5 * LANE_WIDTH - 0.5 / PX_PER_M  # [m] half-width of the lane-cost triangle


def _ramp(distance, flat, fall):
    """1 within ``flat`` of 0, falling linearly to 0 at ``flat + fall`` (arrays broadcast)."""
    return np.minimum(np.maximum(1.0 - (np.abs(distance) - flat) / np.maximum(fall, 1e-6), 0.0), 1.0)


def _profiles(speed, length, width):
    """Separable mask profiles: proximity along (N, 117) and across (N, 24), lane along
    (N, 117) and across (24,)."""
    speed = np.asarray(speed, dtype=float)[:, None]
    half_length = 0.5 * np.asarray(length, dtype=float)[:, None]
    safe = SAFE_TIME * np.abs(speed) + SAFE_MARGIN
    prox_along = _ramp(ALONG_M[None, :], half_length, safe)
    prox_across = _ramp(ACROSS_M[None, :], 0.5 * np.asarray(width, dtype=float)[:, None], PROX_REACH)
    lane_along = (np.abs(ALONG_M[None, :]) <= half_length).astype(float)
    return prox_along, prox_across, lane_along, _LANE_ACROSS


_LANE_ACROSS = _ramp(ACROSS_M, 0.0, LANE_HALF)


def proximity_mask(speed, length, width):
    """(N, 117, 24) proximity masks for cars of the given speeds [m/s] and sizes [m]."""
    speed, length, width = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (speed, length, width))
    along, across, _, _ = _profiles(speed, length, width)
    return along[:, :, None] * across[:, None, :]


def lane_mask(length):
    """(N, 117, 24) lane (and off-road) masks for cars of the given lengths [m]."""
    length = np.atleast_1d(np.asarray(length, dtype=float))
    _, _, along, across = _profiles(np.zeros(len(length)), length, np.ones_like(length))
    return along[:, :, None] * across[None, None, :]


def image_costs(images, speed, length, width) -> dict:
    """Costs of N cars from their state images (N, 3, 117, 24) uint8: a dict of (N,) arrays
    ``proximity_cost``, ``lane_cost`` and ``offroad_cost``, each in [0, 1]."""
    img = np.asarray(images, dtype=np.float32) * (1.0 / 255.0)
    prox_along, prox_across, lane_along, lane_across = _profiles(speed, length, width)
    n = len(prox_along)
    along = np.empty((n, 3, prox_along.shape[1]))
    across = np.empty((n, 3, prox_across.shape[1]))
    along[:, VEHICLES_CHANNEL], across[:, VEHICLES_CHANNEL] = prox_along, prox_across
    for ch in (LANES_CHANNEL, OFFROAD_CHANNEL):
        along[:, ch], across[:, ch] = lane_along, lane_across
    # max over pixels of (along x across) * channel: the profiles are non-negative, so the
    # max separates into columns then rows, without forming the masks.
    cost = ((img * across[:, :, None, :]).max(axis=3) * along).max(axis=2)  # (N, 3)
    return {
        "proximity_cost": cost[:, VEHICLES_CHANNEL],
        "lane_cost": cost[:, LANES_CHANNEL],
        "offroad_cost": cost[:, OFFROAD_CHANNEL],
    }

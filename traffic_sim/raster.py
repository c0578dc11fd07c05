"""The one batched rasteriser of egocentric state images.

A state image is centred on a car and aligned with the road: ``IMAGE_H`` = 117 pixels along
the road (row 0 is the farthest ahead) by ``IMAGE_W`` = 24 across (column 0 on the left), at
``PX_PER_M`` = 6 pixels per lane width (1.64 px/m), so it covers +-35.7 m ahead and behind and
+-2 lanes. Channels (uint8):

====  =========================================================
 0    lane markings (lane edges, 1 px wide so they survive the scale)
 1    other vehicles (the car itself is not drawn)
 2    off-road: everything that is not drivable surface
====  =========================================================

Everything drawn is an axis-aligned rectangle, rendered with exact area coverage
(anti-aliased) by summing 16 weighted impulses per rectangle and integrating them with two
cumulative sums: the separable "integral image" of a box. Vehicles are drawn aligned with the
road; their heading on a freeway stays within about 15 degrees, below this resolution.
Many images are drawn in one call, for the environment, the evaluation and the dataset alike.
"""

from __future__ import annotations

import numpy as np

from .roads import LANE_WIDTH, Road

IMAGE_H = 117  # [px] along the road
IMAGE_W = 24  # [px] across the road
N_CHANNELS = 3
LANES_CHANNEL, VEHICLES_CHANNEL, OFFROAD_CHANNEL = 0, 1, 2
PX_PER_M = 6.0 / LANE_WIDTH  # [px/m] 1.6404: 6 px per lane
LOOK_AHEAD = 0.5 * IMAGE_H / PX_PER_M  # [m] 35.66, also the look-behind
LOOK_SIDE = 0.5 * IMAGE_W / PX_PER_M  # [m] 7.32, two lanes either side
LINE_WIDTH = 1.0 / PX_PER_M  # [m] drawn width of a lane marking: one pixel


def road_rectangles(road: Road):
    """The static rectangles of a road: lane surfaces and lane markings.

    Returns ``(surface, lines)``, each an array (R, 4) of ``[x0, x1, y0, y1]`` in metres.
    """
    surface = np.array([[lane.left, lane.right, lane.y_start, lane.y_end] for lane in road.lanes])
    lines = []
    half = 0.5 * LINE_WIDTH
    for lane in road.lanes:
        for edge in (lane.left, lane.right):
            lines.append([edge - half, edge + half, lane.y_start, lane.y_end])
    lines = np.unique(np.round(np.array(lines), 6), axis=0)
    return surface, lines


class Rasteriser:
    """Draws state images of one road for many cars at once."""

    def __init__(self, road: Road):
        self.road = road
        surface, lines = road_rectangles(road)
        # Extend the surface beyond the study area's ends: the road goes on there.
        surface = surface.copy()
        far = 1e4  # [m]
        surface[surface[:, 2] <= 0.0, 2] = -far
        surface[surface[:, 3] >= road.length, 3] = far
        lines = lines.copy()
        lines[lines[:, 2] <= 0.0, 2] = -far
        lines[lines[:, 3] >= road.length, 3] = far
        self.surface = surface
        self.lines = lines

    def render(self, cx, cy, others_x0=None, others_x1=None, others_y0=None, others_y1=None,
               others_valid=None) -> np.ndarray:
        """State images (N, 3, 117, 24) uint8 centred on the points (cx, cy) [m].

        ``others_*``: (N, K) boxes [m] of the vehicles to draw in each image (lateral extent
        x0..x1, longitudinal y0..y1) and which of them are real (``others_valid``).
        """
        cx = np.asarray(cx, dtype=float)
        cy = np.asarray(cy, dtype=float)
        n = len(cx)
        s_rects = np.broadcast_to(self.surface, (n,) + self.surface.shape)
        l_rects = np.broadcast_to(self.lines, (n,) + self.lines.shape)
        parts = [
            (l_rects, np.ones(l_rects.shape[:2]), LANES_CHANNEL),
            (s_rects, np.ones(s_rects.shape[:2]), OFFROAD_CHANNEL),
        ]
        if others_x0 is not None and np.shape(others_x0)[1] > 0:
            rects = np.stack([others_x0, others_x1, others_y0, others_y1], axis=-1)
            parts.append((rects, np.asarray(others_valid, dtype=float), VEHICLES_CHANNEL))
        cover = _coverage(cx, cy, parts)  # (N, 3, H, W) float
        cover[:, OFFROAD_CHANNEL] = 1.0 - cover[:, OFFROAD_CHANNEL]
        np.clip(cover, 0.0, 1.0, out=cover)
        return (cover * 255.0 + 0.5).astype(np.uint8)


def _axis_impulses(a, b, size):
    """Indices and weights of the 4 impulses whose cumulative sum is the pixel coverage of
    the interval [a, b] (pixel units, clipped to [0, size])."""
    a = np.clip(a, 0.0, size)
    b = np.clip(b, a, size)
    ia = np.floor(a)
    ib = np.floor(b)
    fa = a - ia
    fb = b - ib
    idx = np.stack([ia, ia + 1, ib, ib + 1], axis=-1).astype(np.int64)
    w = np.stack([1.0 - fa, fa, -(1.0 - fb), -fb], axis=-1)
    return idx, w


def _coverage(cx, cy, parts):
    n = len(cx)
    hp, wp = IMAGE_H + 2, IMAGE_W + 2
    plane = hp * wp
    all_idx = []
    all_w = []
    for rects, weight, channel in parts:
        # Rows: ahead is up. Row coordinate of longitudinal position y: (cy - y) * PX + H/2.
        r0 = (cy[:, None] - rects[..., 3]) * PX_PER_M + 0.5 * IMAGE_H
        r1 = (cy[:, None] - rects[..., 2]) * PX_PER_M + 0.5 * IMAGE_H
        c0 = (rects[..., 0] - cx[:, None]) * PX_PER_M + 0.5 * IMAGE_W
        c1 = (rects[..., 1] - cx[:, None]) * PX_PER_M + 0.5 * IMAGE_W
        ri, rw = _axis_impulses(r0, r1, IMAGE_H)  # (N, R, 4)
        ci, cw = _axis_impulses(c0, c1, IMAGE_W)
        visible = (r1 > 0) & (r0 < IMAGE_H) & (c1 > 0) & (c0 < IMAGE_W) & (weight != 0)
        img, rect = np.nonzero(visible)
        base = (img * N_CHANNELS + channel) * plane
        idx = base[:, None, None] + ri[img, rect][:, :, None] * wp + ci[img, rect][:, None, :]
        w = weight[img, rect][:, None, None] * rw[img, rect][:, :, None] * cw[img, rect][:, None, :]
        all_idx.append(idx.ravel())
        all_w.append(w.ravel())
    flat = np.bincount(np.concatenate(all_idx), np.concatenate(all_w), minlength=n * N_CHANNELS * plane)
    grid = flat.reshape(n, N_CHANNELS, hp, wp)
    np.cumsum(grid, axis=2, out=grid)
    np.cumsum(grid, axis=3, out=grid)
    return grid[:, :, :IMAGE_H, :IMAGE_W].copy()

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

Everything drawn is an axis-aligned rectangle with exact area coverage (anti-aliased). The
static road is drawn once per road into maps at sub-pixel offsets and copied out; vehicles
are drawn per image as weighted impulses integrated by two cumulative sums. Vehicles are drawn aligned with the
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


ROAD_BEYOND = 1e4  # [m] how far lanes reaching an end of the study area are drawn past it


def road_rectangles(road: Road):
    """The static rectangles of a road: lane surfaces and lane markings, lanes that reach an
    end of the study area going on past it.

    Returns ``(surface, lines)``, each an array (R, 4) of ``[x0, x1, y0, y1]`` in metres.
    """
    surface, lines = [], []
    half = 0.5 * LINE_WIDTH
    for lane in road.lanes:
        y0, y1 = road.span(lane, ROAD_BEYOND)
        surface.append([lane.left, lane.right, y0, y1])
        for edge in (lane.left, lane.right):
            lines.append([edge - half, edge + half, y0, y1])
    return np.array(surface), np.unique(np.round(np.array(lines), 6), axis=0)


PHASES_ACROSS = 16  # sub-pixel positions of the pre-drawn road, across the road
PHASES_ALONG = 4  # and along it
MAP_MARGIN = 60.0  # [m] pre-drawn road beyond the study area's ends
MAP_SIDE_LANES = 2  # lanes' width of pre-drawn off-road beside the road, beyond an image's half-width


def _cover_1d(a, b, size):
    """(..., size) length of each interval [a, b] (pixel units) inside pixels [i, i + 1]."""
    i = np.arange(size, dtype=float)
    return np.maximum(np.minimum(b[..., None], i + 1.0) - np.maximum(a[..., None], i), 0.0)


class Rasteriser:
    """Draws state images of one road for many cars at once.

    The road (lane markings and off-road) is static: it is drawn once, exactly, into a map of
    the whole road at 16 x 4 sub-pixel offsets, and each image copies its window out of the
    map of the nearest offset (within 1/32 px across and 1/8 px along the road). Vehicles are
    drawn exactly, per image.
    """

    def __init__(self, road: Road):
        self.road = road
        self.surface, self.lines = road_rectangles(road)
        self._maps = None

    # ------------------------------------------------------------ road map
    def _build_maps(self):
        """(phases, 2, rows, cols) uint8 maps of lane markings and off-road."""
        self.map_top = self.road.length + MAP_MARGIN + LOOK_AHEAD  # [m] y of map row 0's top
        # [m] x of map column 0's left: a whole number of lanes left of the road, so that a
        # car centred in a lane needs no sub-pixel offset across.
        side = MAP_SIDE_LANES * LANE_WIDTH + LOOK_SIDE  # [m]
        self.map_left = -np.ceil(side / LANE_WIDTH) * LANE_WIDTH
        rows = int(np.ceil((self.map_top - (-MAP_MARGIN - LOOK_AHEAD)) * PX_PER_M)) + 1
        cols = int(np.ceil((self.road.width - 2 * self.map_left) * PX_PER_M)) + 1
        maps = np.empty((PHASES_ALONG * PHASES_ACROSS, 2, rows, cols), dtype=np.uint8)
        for pr in range(PHASES_ALONG):
            for pc in range(PHASES_ACROSS):
                top = self.map_top - pr / PHASES_ALONG / PX_PER_M
                left = self.map_left + pc / PHASES_ACROSS / PX_PER_M
                for ch, rects in enumerate((self.lines, self.surface)):
                    rc = _cover_1d((top - rects[:, 3]) * PX_PER_M, (top - rects[:, 2]) * PX_PER_M, rows)
                    cc = _cover_1d((rects[:, 0] - left) * PX_PER_M, (rects[:, 1] - left) * PX_PER_M, cols)
                    cover = np.clip(rc.T @ cc, 0.0, 1.0)
                    if ch == 1:
                        cover = 1.0 - cover  # off-road: what no lane covers
                    maps[pr * PHASES_ACROSS + pc, ch] = np.round(cover * 255.0)
        self._maps = maps
        self._windows = np.lib.stride_tricks.sliding_window_view(maps, (IMAGE_H, IMAGE_W), axis=(2, 3))

    def road_channels(self, cx, cy) -> np.ndarray:
        """(N, 2, 117, 24) uint8 lane-marking and off-road channels of images at (cx, cy)."""
        if self._maps is None:
            self._build_maps()
        r = ((self.map_top - cy) * PX_PER_M - 0.5 * IMAGE_H) * PHASES_ALONG
        c = ((cx - self.map_left) * PX_PER_M - 0.5 * IMAGE_W) * PHASES_ACROSS
        r = np.rint(r).astype(np.int64)
        c = np.rint(c).astype(np.int64)
        r0, pr = np.divmod(r, PHASES_ALONG)
        c0, pc = np.divmod(c, PHASES_ACROSS)
        # Beyond the map the road is uniform along its length: clamp to the map's edge.
        max_r = self._windows.shape[2] - 1
        max_c = self._windows.shape[3] - 1
        r0 = np.minimum(np.maximum(r0, 0), max_r)
        c0 = np.minimum(np.maximum(c0, 0), max_c)
        return self._windows[pr * PHASES_ACROSS + pc, :, r0, c0]

    # -------------------------------------------------------------- images
    def render(self, cx, cy, others_x0=None, others_x1=None, others_y0=None, others_y1=None,
               others_valid=None) -> np.ndarray:
        """State images (N, 3, 117, 24) uint8 centred on the points (cx, cy) [m].

        ``others_*``: (N, K) boxes [m] of the vehicles to draw in each image (lateral extent
        x0..x1, longitudinal y0..y1) and which of them are real (``others_valid``).
        """
        cx = np.asarray(cx, dtype=float)
        cy = np.asarray(cy, dtype=float)
        n = len(cx)
        out = np.empty((n, N_CHANNELS, IMAGE_H, IMAGE_W), dtype=np.uint8)
        road = self.road_channels(cx, cy)
        out[:, LANES_CHANNEL] = road[:, 0]
        out[:, OFFROAD_CHANNEL] = road[:, 1]
        if others_x0 is None or np.shape(others_x0)[1] == 0:
            out[:, VEHICLES_CHANNEL] = 0
        else:
            out[:, VEHICLES_CHANNEL] = _vehicles(cx, cy, others_x0, others_x1, others_y0,
                                                 others_y1, others_valid)
        return out


def _axis_impulses(a, b, size):
    """Indices and weights of the 4 impulses whose cumulative sum is the pixel coverage of
    the interval [a, b] (pixel units, clipped to [0, size])."""
    a = np.minimum(np.maximum(a, 0.0), size)
    b = np.minimum(np.maximum(b, a), size)
    ia = np.floor(a)
    ib = np.floor(b)
    idx = np.empty(a.shape + (4,), dtype=np.int64)
    w = np.empty(a.shape + (4,))
    idx[..., 0] = ia
    idx[..., 1] = ia + 1
    idx[..., 2] = ib
    idx[..., 3] = ib + 1
    w[..., 1] = a - ia
    w[..., 0] = 1.0 - w[..., 1]
    w[..., 3] = ib - b
    w[..., 2] = -1.0 - w[..., 3]
    return idx, w


def _vehicles(cx, cy, x0, x1, y0, y1, valid) -> np.ndarray:
    """(N, 117, 24) uint8 vehicles channel: exact area coverage of the boxes. A box's coverage
    is separable: its column coverage times its row coverage, the latter drawn as 4 weighted
    impulses per column and integrated down the rows."""
    n = len(cx)
    # Rows: ahead is up. Row coordinate of longitudinal position y: (cy - y) * PX + H/2.
    r0 = (cy[:, None] - y1) * PX_PER_M + 0.5 * IMAGE_H
    r1 = (cy[:, None] - y0) * PX_PER_M + 0.5 * IMAGE_H
    c0 = (x0 - cx[:, None]) * PX_PER_M + 0.5 * IMAGE_W
    c1 = (x1 - cx[:, None]) * PX_PER_M + 0.5 * IMAGE_W
    visible = np.asarray(valid, dtype=bool) & (r1 > 0) & (r0 < IMAGE_H) & (c1 > 0) & (c0 < IMAGE_W)
    img, box = np.nonzero(visible)
    if len(img) == 0:
        return np.zeros((n, IMAGE_H, IMAGE_W), dtype=np.uint8)
    # Across: the exact coverage of each column; along: 4 impulses, integrated below.
    ri, rw = _axis_impulses(r0[img, box], r1[img, box], IMAGE_H)  # (M, 4)
    cw = _cover_1d(c0[img, box], c1[img, box], IMAGE_W)  # (M, 24)
    hp = IMAGE_H + 2
    idx = (img[:, None, None] * hp + ri[:, :, None]) * IMAGE_W + np.arange(IMAGE_W)
    w = rw[:, :, None] * cw[:, None, :]
    grid = np.bincount(idx.ravel(), w.ravel(), minlength=n * hp * IMAGE_W).reshape(n, hp, IMAGE_W)
    grid = grid[:, :IMAGE_H]
    # Integrate along the rows. For a large batch a loop over whole-batch row slices is
    # faster than numpy's cumsum across a non-contiguous axis; for a few images it is not.
    if n < 64:
        np.cumsum(grid, axis=1, out=grid)
    else:
        for i in range(1, IMAGE_H):
            grid[:, i] += grid[:, i - 1]
    np.minimum(grid, 1.0, out=grid)
    np.maximum(grid, 0.0, out=grid)
    grid *= 255.0
    grid += 0.5
    return grid.astype(np.uint8)

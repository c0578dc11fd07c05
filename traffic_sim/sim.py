"""Batched replay simulation: N controlled cars driving through recorded traffic.

Every other vehicle replays its recorded track and does not react ("driving an invisible
car"). A controlled car is a kinematic car driven by (acceleration [m/s^2], steering [1/m]):

    p   <- p + v * u * dt                 (front centre, heading unit vector u)
    u   <- normalise(u + n * b * v * dt)   (n = right-hand normal of u: b > 0 turns right)
    v   <- max(v + a * dt, 0)

It ends on a collision with a replayed vehicle (oriented boxes), leaving the road (its centre
off the drivable surface), arriving at the end of the study area (success) or when the
recording ends (truncation). Each controlled car takes over one recorded vehicle once it has
20 frames of history inside the evaluation stretch (see :class:`traffic_sim.scene.Scene`);
that vehicle is then removed from the traffic (it is the car itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .follow import FOLLOWERS, follower_actions
from .ngsim import MAX_LENGTH
from .raster import LOOK_AHEAD, LOOK_SIDE, Rasteriser
from .scene import DT, HISTORY, Scene

WINDOW_MARGIN = 10.0  # [m] extra range behind a car when looking up vehicles around it
SIDE_MARGIN = 3.0  # [m] vehicles drawn if their centre line is within the image's half-width plus this


def kinematic_step(x, y, ux, uy, v, acc, steer, dt=DT):
    """One step of the kinematic car model (numpy arrays, or torch tensors, of any matching
    shape: the learning code differentiates through the same step)."""
    x = x + v * ux * dt
    y = y + v * uy * dt
    k = steer * v * dt
    nx, ny = uy, -ux  # right-hand normal in the (lateral, longitudinal) frame
    ux2 = ux + nx * k
    uy2 = uy + ny * k
    norm = (ux2 * ux2 + uy2 * uy2) ** 0.5
    v = v + acc * dt
    v = v.clamp_min(0.0) if hasattr(v, "clamp_min") else np.maximum(v, 0.0)
    return x, y, ux2 / norm, uy2 / norm, v


def boxes_overlap(ax, ay, aux, auy, alen, awid, bx, by, bux, buy, blen, bwid):
    """Separating-axis test of oriented boxes given by front centre, heading, length, width.
    Arrays broadcast; returns a boolean array."""
    # Box centres.
    acx, acy = ax - 0.5 * alen * aux, ay - 0.5 * alen * auy
    bcx, bcy = bx - 0.5 * blen * bux, by - 0.5 * blen * buy
    dx, dy = bcx - acx, bcy - acy
    separated = np.zeros(np.broadcast(dx, dy).shape, dtype=bool)
    for axx, axy in ((aux, auy), (auy, -aux), (bux, buy), (buy, -bux)):
        dist = np.abs(dx * axx + dy * axy)
        ra = 0.5 * alen * np.abs(aux * axx + auy * axy) + 0.5 * awid * np.abs(auy * axx - aux * axy)
        rb = 0.5 * blen * np.abs(bux * axx + buy * axy) + 0.5 * bwid * np.abs(buy * axx - bux * axy)
        separated |= dist >= ra + rb
    return ~separated


@dataclass
class Cars:
    """State of the N controlled cars (struct of arrays)."""

    track: np.ndarray  # recorded track each car took over
    frame: np.ndarray  # current scene frame
    x: np.ndarray  # [m] front centre, lateral
    y: np.ndarray  # [m] front centre, longitudinal
    ux: np.ndarray
    uy: np.ndarray
    v: np.ndarray  # [m/s]
    length: np.ndarray  # [m]
    width: np.ndarray  # [m]
    y0: np.ndarray  # [m] longitudinal position at the start
    steps: np.ndarray  # steps driven
    done: np.ndarray
    collision: np.ndarray
    off_road: np.ndarray
    success: np.ndarray
    truncated: np.ndarray
    hit: np.ndarray  # how a collision happened: an index into HIT_KINDS (0: none)

    @property
    def center_x(self):
        return self.x - 0.5 * self.length * self.ux

    @property
    def center_y(self):
        return self.y - 0.5 * self.length * self.uy

    @property
    def distance(self):
        """[m] distance travelled along the road since the start."""
        return self.y - self.y0

    def state_vector(self) -> np.ndarray:
        """(N, 4) float32 state (x, y, vx, vy) in metres and m/s."""
        return np.stack([self.x, self.y, self.v * self.ux, self.v * self.uy], axis=1).astype(np.float32)


BUILTIN_POLICIES = ("human", "no-action") + tuple(FOLLOWERS)
# How a controlled car collided, from the side of its box that the other vehicle entered by
# the least: "front" (it ran into a vehicle ahead), "rear" (a vehicle ran into it from
# behind), "side" (a vehicle alongside, changing lanes into it or it into them).
HIT_KINDS = ("none", "front", "rear", "side")


def builtin_actions(sim: "ReplaySimulator", cars: Cars, policy: str) -> np.ndarray:
    """(N, 2) actions of a built-in policy: ``human`` replays the actions inferred from each
    car's own recorded track, ``no-action`` keeps speed and heading, ``follow`` is car
    following with the true gaps (:mod:`traffic_sim.follow`), ``follow-merge`` the same that
    also merges out of a lane that ends, ``follow-evade`` that with a shorter headway and
    evasion of vehicles closing in from behind and from the side, ``follow-yield`` that
    also yields to vehicles about to cut in, and ``follow-wait`` ``follow-evade`` that slows
    evenly for its waiting place before a lane's end and does not steer while it stands."""
    if policy == "human":
        return sim.human_actions(cars)
    if policy == "no-action":
        return np.zeros((len(cars.track), 2))
    if policy in FOLLOWERS:
        return follower_actions(sim, cars, policy)
    raise ValueError(f"unknown policy {policy!r}: choose from {', '.join(BUILTIN_POLICIES)}")


class ReplaySimulator:
    """Drives many controlled cars through one recorded scene at once."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.raster = Rasteriser(scene.road)

    # ----------------------------------------------------------------- cars
    def start(self, tracks) -> Cars:
        """Controlled cars taking over the given recorded tracks after their 20-frame history."""
        sc = self.scene
        tracks = np.asarray(tracks, dtype=np.int64)
        rows = sc.ep_row[tracks]
        if (rows < 0).any():
            raise ValueError(f"tracks {tracks[rows < 0][:5].tolist()} are not usable as episodes")
        n = len(tracks)
        false = np.zeros(n, dtype=bool)
        return Cars(
            track=tracks, frame=sc.tr_frame[rows].copy(), x=sc.tr_x[rows].copy(),
            y=sc.tr_y[rows].copy(), ux=sc.tr_ux[rows].copy(), uy=sc.tr_uy[rows].copy(),
            v=sc.tr_speed[rows].copy(), length=sc.track_length[tracks].copy(),
            width=sc.track_width[tracks].copy(), y0=sc.tr_y[rows].copy(),
            steps=np.zeros(n, dtype=np.int64), done=false.copy(), collision=false.copy(),
            off_road=false.copy(), success=false.copy(), truncated=false.copy(),
            hit=np.zeros(n, dtype=np.int8),
        )

    def human_actions(self, cars: Cars) -> np.ndarray:
        """(N, 2) actions inferred from each car's own recorded track at its current step."""
        sc = self.scene
        rows = sc.ep_row[cars.track] + cars.steps
        end = sc.tr_start[cars.track + 1]
        rows = np.minimum(rows, end - 1)
        return np.stack([sc.tr_acc[rows], sc.tr_steer[rows]], axis=1)

    def step(self, cars: Cars, actions, observe: bool = False):
        """Advance the cars that are not done by one frame, in place, and update their flags.

        With ``observe=True`` also return the cars' new state images (N, 3, 117, 24), sharing
        the neighbour search with the collision test."""
        actions = np.asarray(actions, dtype=float)
        live = ~cars.done
        i = np.flatnonzero(live)
        if len(i):
            x, y, ux, uy, v = kinematic_step(cars.x[i], cars.y[i], cars.ux[i], cars.uy[i],
                                             cars.v[i], actions[i, 0], actions[i, 1])
            cars.x[i], cars.y[i], cars.ux[i], cars.uy[i], cars.v[i] = x, y, ux, uy, v
            cars.frame[i] += 1
            cars.steps[i] += 1
        if not observe:
            if len(i):
                self._update_flags(cars, i, self._frames(cars.frame[i]))
            return None
        frame = self._frames(cars.frame)
        rows, valid = self.neighbours(frame, cars.center_x, cars.center_y, cars.track)
        if len(i):
            self._update_flags(cars, i, frame[i], rows[i], valid[i])
        return self._render(cars.center_x, cars.center_y, rows, valid)

    def _frames(self, frame):
        return np.minimum(frame, self.scene.n_frames - 1)

    def _update_flags(self, cars: Cars, i, frame, rows=None, valid=None) -> None:
        sc = self.scene
        out_of_data = cars.frame[i] >= sc.n_frames
        collision = self.collides(cars, i, frame, rows, valid) & ~out_of_data
        off_road = ~sc.road.on_road(cars.center_x[i], cars.center_y[i]) & ~collision
        success = (cars.y[i] >= sc.success_y) & ~collision & ~off_road
        truncated = out_of_data & ~success & ~off_road
        new = i[collision & ~cars.collision[i]]
        if len(new):
            cars.hit[new] = self.hit_kind(cars, new, self._frames(cars.frame[new]))
        cars.collision[i] |= collision
        cars.off_road[i] |= off_road
        cars.success[i] |= success
        cars.truncated[i] |= truncated
        cars.done[i] |= collision | off_road | success | truncated

    # ------------------------------------------------------------ neighbours
    def neighbours(self, frame, cx, cy, exclude_track, reach=LOOK_AHEAD):
        """Rows of the vehicles near each point at each frame: (N, K) row indices and mask.

        Looks ``reach`` metres (plus a vehicle length) ahead and behind along the road; the
        vehicle of ``exclude_track`` (the car itself) is left out."""
        sc = self.scene
        frame = np.asarray(frame, dtype=np.int64)
        lo = np.searchsorted(sc.key, frame * sc.KEY_STRIDE + cy - reach - WINDOW_MARGIN, side="left")
        # A vehicle ahead is found by its front, up to one (longest) vehicle length further.
        hi = np.searchsorted(sc.key, frame * sc.KEY_STRIDE + cy + reach + WINDOW_MARGIN + MAX_LENGTH,
                             side="left")
        lo = np.maximum(lo, sc.frame_start[frame])
        hi = np.minimum(hi, sc.frame_start[frame + 1])
        k = int((hi - lo).max(initial=0))
        rows = lo[:, None] + np.arange(k)[None, :]
        valid = rows < hi[:, None]
        rows = np.where(valid, rows, 0)
        if k:
            valid &= sc.track[rows] != np.asarray(exclude_track)[:, None]
        return rows, valid

    def collides(self, cars: Cars, i, frame, rows=None, valid=None) -> np.ndarray:
        """Which of the cars ``i`` overlap a replayed vehicle at ``frame`` (oriented boxes)."""
        sc = self.scene
        if rows is None:
            rows, valid = self.neighbours(frame, cars.center_x[i], cars.center_y[i],
                                          cars.track[i], reach=0.0)
        hit = np.zeros(len(i), dtype=bool)
        if rows.shape[1] == 0:
            return hit
        # Only pairs whose axis-aligned bounding boxes meet need the separating-axis test.
        lng, wid, ux, uy = sc.length[rows], sc.width[rows], np.abs(sc.ux[rows]), np.abs(sc.uy[rows])
        dx = np.abs(sc.x[rows] - 0.5 * lng * sc.ux[rows] - cars.center_x[i, None])
        dy = np.abs(sc.y[rows] - 0.5 * lng * sc.uy[rows] - cars.center_y[i, None])
        cl, cw = cars.length[i], cars.width[i]
        cux, cuy = np.abs(cars.ux[i]), np.abs(cars.uy[i])
        reach_x = 0.5 * (lng * ux + wid * uy + (cl * cux + cw * cuy)[:, None])
        reach_y = 0.5 * (lng * uy + wid * ux + (cl * cuy + cw * cux)[:, None])
        near = valid & (dx < reach_x) & (dy < reach_y)
        car, col = np.nonzero(near)
        if len(car) == 0:
            return hit
        r = rows[car, col]
        ci = i[car]
        pair = boxes_overlap(cars.x[ci], cars.y[ci], cars.ux[ci], cars.uy[ci], cars.length[ci],
                             cars.width[ci], sc.x[r], sc.y[r], sc.ux[r], sc.uy[r], sc.length[r],
                             sc.width[r])
        hit[car[pair]] = True
        return hit

    def hit_kind(self, cars: Cars, i, frame) -> np.ndarray:
        """For cars ``i`` that overlap a replayed vehicle at ``frame``: the index into
        :data:`HIT_KINDS` of how (the nearest overlapping vehicle decides)."""
        sc = self.scene
        rows, valid = self.neighbours(frame, cars.center_x[i], cars.center_y[i], cars.track[i], reach=0.0)
        kinds = np.zeros(len(i), dtype=np.int8)
        for k, c in enumerate(i):
            r = rows[k][valid[k]]
            r = r[boxes_overlap(cars.x[c], cars.y[c], cars.ux[c], cars.uy[c], cars.length[c],
                                cars.width[c], sc.x[r], sc.y[r], sc.ux[r], sc.uy[r],
                                sc.length[r], sc.width[r])]
            if len(r) == 0:
                continue
            dx = sc.x[r] - 0.5 * sc.length[r] * sc.ux[r] - cars.center_x[c]
            dy = sc.y[r] - 0.5 * sc.length[r] * sc.uy[r] - cars.center_y[c]
            along = dx * cars.ux[c] + dy * cars.uy[c]  # [m] ahead of the car's centre
            across = np.abs(dx * cars.uy[c] - dy * cars.ux[c])
            j = np.argmin(np.hypot(along, across))
            depth_along = 0.5 * (cars.length[c] + sc.length[r[j]]) - abs(along[j])
            depth_across = 0.5 * (cars.width[c] + sc.width[r[j]]) - across[j]
            kinds[k] = (HIT_KINDS.index("side") if depth_across < depth_along else
                        HIT_KINDS.index("front") if along[j] > 0 else HIT_KINDS.index("rear"))
        return kinds

    # ---------------------------------------------------------- observation
    def images_at(self, frame, cx, cy, exclude_track) -> np.ndarray:
        """State images (N, 3, 117, 24) uint8 centred on (cx, cy) at the given frames,
        without the vehicle of ``exclude_track``."""
        frame = self._frames(np.asarray(frame, dtype=np.int64))
        cx = np.asarray(cx, dtype=float)
        cy = np.asarray(cy, dtype=float)
        rows, valid = self.neighbours(frame, cx, cy, exclude_track)
        return self._render(cx, cy, rows, valid)

    def _render(self, cx, cy, rows, valid) -> np.ndarray:
        sc = self.scene
        ox, oy, lng = sc.x[rows], sc.y[rows], sc.length[rows]
        valid = valid & (np.abs(ox - cx[:, None]) < LOOK_SIDE + SIDE_MARGIN)
        half_w = 0.5 * sc.width[rows]
        return self.raster.render(cx, cy, ox - half_w, ox + half_w, oy - lng, oy, valid)

    def observe(self, cars: Cars) -> np.ndarray:
        return self.images_at(cars.frame, cars.center_x, cars.center_y, cars.track)

    def history_images(self, tracks) -> np.ndarray:
        """(N, 20, 3, 117, 24) images of the 20 recorded frames before each takeover."""
        sc = self.scene
        tracks = np.asarray(tracks, dtype=np.int64)
        rows = sc.ep_row[tracks][:, None] + np.arange(1 - HISTORY, 1)[None, :]
        length = sc.track_length[tracks][:, None]
        cx = sc.tr_x[rows] - 0.5 * length * sc.tr_ux[rows]
        cy = sc.tr_y[rows] - 0.5 * length * sc.tr_uy[rows]
        excl = np.repeat(tracks, HISTORY)
        img = self.images_at(sc.tr_frame[rows].ravel(), cx.ravel(), cy.ravel(), excl)
        return img.reshape(len(tracks), HISTORY, *img.shape[1:])

    def history_states(self, tracks) -> np.ndarray:
        """(N, 20, 4) recorded states (x, y, vx, vy) of the 20 frames before each takeover."""
        sc = self.scene
        rows = sc.ep_row[np.asarray(tracks)][:, None] + np.arange(1 - HISTORY, 1)[None, :]
        v = sc.tr_speed[rows]
        return np.stack([sc.tr_x[rows], sc.tr_y[rows], v * sc.tr_ux[rows], v * sc.tr_uy[rows]],
                        axis=-1).astype(np.float32)

"""Synthetic I-80-like traffic, written as NGSIM trajectories.

A microscopic simulation of a freeway stretch around the study area of the I-80 road
(:func:`traffic_sim.roads.i80_road`): 6 main lanes plus an on-ramp that merges into the
right-most lane. Every vehicle

* follows its leader with the Intelligent Driver Model (IDM, Treiber et al. 2000);
* changes lanes with MOBIL (Kesting et al. 2007): only when the new follower need not brake
  harder than ``b_safe`` and the own gain, plus politeness times the neighbours' gain, beats
  a threshold; a lane change is a smooth lateral move over a distance, during which the car
  occupies both lanes, so neighbours in both lanes keep their distance from it;
* on the on-ramp, merges into lane 6 before the ramp ends (stopping at its end if no gap
  comes), helped by lane-6 drivers who open a gap for a waiting ramp car.

Late-afternoon congestion is produced the way it arises on I-80: demand close to the capacity
of a downstream bottleneck. The bottleneck lies beyond the study area and discharges each
lane intermittently (open / blocked phases of random length), which sends stop-and-go waves
upstream through the study area at about -15 to -20 km/h.

All parameters sit in :class:`GeneratorConfig`; the difficulty of the traffic is a matter of
those settings. The simulation is deterministic under a seed: same seed, same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .ngsim import COLUMNS, DT, DTYPES, MS_PER_FRAME, STOPPED_TIME_HEADWAY
from .roads import FT, LANE_WIDTH, Road, synthetic_i80_road

START_TIME_MS = 1113433135000  # [ms] Global_Time of frame 0: 13 Apr 2005, 15:58:55 PDT
GLOBAL_ORIGIN_FT = (6042000.0, 2133000.0)  # [ft] state-plane position of the local origin
GLOBAL_HEADING_DEG = -34.0  # [deg] direction of travel, clockwise from grid north


@dataclass(frozen=True)
class VehicleClass:
    """Sizes, desired speed and driving parameters of one NGSIM vehicle class."""

    v_class: int  # NGSIM v_Class: 1 motorcycle, 2 auto, 3 truck
    share: float  # fraction of the demand
    length: tuple[float, float]  # [m] uniform range
    width: tuple[float, float]  # [m] uniform range
    v0: tuple[float, float]  # [m/s] desired speed, mean and standard deviation
    time_headway: tuple[float, float]  # [s] IDM T, uniform range
    max_acc: float  # [m/s^2] IDM a
    comfort_dec: float  # [m/s^2] IDM b


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that shapes the synthetic traffic. Units in the field comments."""

    minutes: float = 15.0  # [min] recorded duration
    seed: int = 0
    warmup_s: float = 600.0  # [s] simulated before recording starts, to fill the road
    upstream_m: float = 150.0  # [m] road simulated before the study area's entry edge
    bottleneck_m: float = 120.0  # [m] bottleneck distance after the study area's exit edge
    exit_m: float = 80.0  # [m] road simulated after the bottleneck

    # Demand: Poisson arrivals at the upstream boundary.
    main_flow: float = 1450.0  # [veh/h/lane] offered to each main lane
    ramp_flow: float = 500.0  # [veh/h] offered to the on-ramp

    # Bottleneck: each lane alternates open and blocked phases of uniform random length.
    open_s: tuple[float, float] = (20.0, 45.0)  # [s]
    blocked_s: tuple[float, float] = (2.0, 6.0)  # [s]
    target_in_view: float = 135.0  # [veh] study-area occupancy the bottleneck steers towards
    control_gain: float = 4.0  # phase-length change per unit of relative occupancy error
    blocked_scale: tuple[float, float] = (0.25, 3.0)  # bounds of that change, blocked phases
    open_scale: tuple[float, float] = (0.5, 2.0)  # and open phases

    # IDM common parameters.
    jam_distance: float = 2.0  # [m] IDM s0
    idm_delta: float = 4.0  # IDM acceleration exponent
    min_gap: float = 1.0  # [m] bumper-to-bumper distance never undercut
    min_desired_share: float = 0.6  # desired speeds are at least this share of the class mean
    entry_max_speed: float = 30.0  # [m/s] fastest speed at the upstream boundary
    entry_catch_up_s: float = 5.0  # [s] an entering car closes its spare gap over this time
    max_stop_dec: float = 4.0  # [m/s^2] braking a driver accepts to stop for a blocked lane

    # MOBIL lane changing.
    politeness: float = 0.3
    change_threshold: float = 0.2  # [m/s^2] a_th
    b_safe: float = 3.0  # [m/s^2] largest braking imposed on the new follower
    keep_right_bias: float = 0.05  # [m/s^2] added to the gain of a move to the right
    change_prob: float = 0.1  # chance per step that a driver considers changing lanes
    change_cooldown_s: float = 6.0  # [s] after a lane change before the next one
    change_time_s: float = 4.0  # [s] duration of a lane change at the current speed
    change_min_dist: float = 20.0  # [m] shortest road length a lane change spans
    change_lengths: float = 6.0  # shortest lane change, in vehicle lengths
    no_change_zone_m: float = 20.0  # [m] no lane changes this close to the entry or bottleneck

    # On-ramp merging.
    merge_bias: float = 3.0  # [m/s^2] extra gain of leaving the ramp
    yield_share: float = 0.5  # fraction of lane-6 drivers who open a gap for ramp cars
    yield_zone_m: float = 60.0  # [m] ramp cars this close to the ramp end are waiting

    classes: tuple[VehicleClass, ...] = field(
        default_factory=lambda: (
            VehicleClass(2, 0.95, (4.0, 5.3), (1.7, 2.0), (29.0, 3.0), (1.0, 1.6), 1.4, 2.0),
            VehicleClass(3, 0.035, (8.0, 16.0), (2.4, 2.6), (25.0, 2.0), (1.6, 2.2), 0.8, 1.5),
            VehicleClass(1, 0.015, (2.0, 2.4), (0.8, 1.0), (30.0, 3.0), (0.8, 1.2), 2.0, 2.5),
        )
    )


NO_GAP = 1e4  # [m] gap to a leader that does not exist


def _lane_key(lane, y):
    """Sort key of a lane occupancy: by lane, then by position (y within -1,000..9,000 m)."""
    return lane * 10000.0 + (y + 1000.0)


def _idm(v, v0, T, a, b, gap, dv, s0, delta):
    """IDM acceleration [m/s^2] for speed v, desired speed v0, gap [m] and closing speed dv."""
    s_star = s0 + np.maximum(0.0, v * T + v * dv / (2.0 * np.sqrt(a * b)))
    return a * (1.0 - (v / v0) ** delta - (s_star / np.maximum(gap, 0.1)) ** 2)


class _Traffic:
    """Vehicles on the simulated stretch as a struct of arrays (one entry per vehicle)."""

    FIELDS = (
        "y", "v", "acc", "lane", "lane_from", "prog", "lc_dist", "x",
        "x_start", "length", "width", "vclass", "v0", "T", "a", "b", "yields", "cooldown", "rec_id",
    )

    def __init__(self):
        for name in self.FIELDS:
            dtype = np.int64 if name in ("lane", "lane_from", "vclass", "rec_id") else float
            setattr(self, name, np.zeros(0, dtype=dtype))
        self.yields = np.zeros(0, dtype=bool)

    def __len__(self):
        return len(self.y)

    def append(self, **values):
        for name in self.FIELDS:
            arr = getattr(self, name)
            setattr(self, name, np.append(arr, np.asarray(values[name], dtype=arr.dtype)))

    def keep(self, mask):
        for name in self.FIELDS:
            setattr(self, name, getattr(self, name)[mask])


class TrafficGenerator:
    """Runs the microscopic simulation and collects NGSIM rows of the study area."""

    def __init__(self, config: GeneratorConfig, road: Road | None = None):
        self.cfg = config
        self.road = road or synthetic_i80_road()
        self.rng = np.random.default_rng(config.seed)
        main = self.road.main_lanes
        self.n_main = len(main)
        self.ramp_index = self.n_main  # simulation lane index of the on-ramp
        ramp = [lane for lane in self.road.lanes if lane.kind == "on-ramp"]
        self.ramp_end = ramp[0].y_end if ramp else -math.inf  # [m]
        self.centers = np.array([(i + 0.5) * LANE_WIDTH for i in range(self.n_main + 1)])
        self.y_bottleneck = self.road.length + config.bottleneck_m  # [m]
        self.y_exit = self.y_bottleneck + config.exit_m  # [m]
        self.y_entry = -config.upstream_m  # [m]
        self.veh = _Traffic()
        self.next_rec_id = 1
        n_lanes = self.n_main + 1
        self.next_arrival = np.zeros(n_lanes)  # [s] next Poisson arrival per entry lane
        self.waiting = np.zeros(n_lanes, dtype=np.int64)  # arrivals not yet inserted
        self.pending: list[dict | None] = [None] * n_lanes  # next vehicle of each entry queue
        self.blocked = np.zeros(self.n_main, dtype=bool)
        self.phase_end = self.rng.uniform(0.0, config.open_s[1], self.n_main)  # [s]
        for lane in range(n_lanes):
            self.next_arrival[lane] = self._interarrival(lane)
        self.max_width = max(c.width[1] for c in config.classes)  # [m]
        self.clamps = 0  # times the minimum gap had to be enforced by hand

    # ------------------------------------------------------------------ demand
    def _flow(self, lane: int) -> float:
        return (self.cfg.ramp_flow if lane == self.ramp_index else self.cfg.main_flow) / 3600.0

    def _interarrival(self, lane: int) -> float:
        flow = self._flow(lane)
        return self.rng.exponential(1.0 / flow) if flow > 0 else math.inf

    def add_vehicle(self, lane: int, y: float, v: float, **overrides) -> int:
        """Place a vehicle by hand (scenarios, tests): simulation lane index (0 = lane 1),
        front position y [m], speed v [m/s]; any per-vehicle field may be overridden.
        Returns its index in the vehicle arrays."""
        values = self._new_vehicle(lane, y, v_max=math.inf)
        values.update(v=v, **overrides)
        self.veh.append(**values)
        return len(self.veh) - 1

    def _new_vehicle(self, lane: int, y: float, v_max: float) -> dict:
        cfg = self.cfg
        shares = np.array([c.share for c in cfg.classes])
        cls = cfg.classes[self.rng.choice(len(cfg.classes), p=shares / shares.sum())]
        v0 = max(cls.v0[0] + cls.v0[1] * self.rng.standard_normal(), self.cfg.min_desired_share * cls.v0[0])
        return dict(
            y=y, v=min(v0, v_max), acc=0.0, lane=lane, lane_from=lane, prog=1.0, lc_dist=1.0,
            x=self.centers[lane], x_start=self.centers[lane], length=self.rng.uniform(*cls.length),
            width=self.rng.uniform(*cls.width), vclass=cls.v_class, v0=v0,
            T=self.rng.uniform(*cls.time_headway), a=cls.max_acc, b=cls.comfort_dec,
            yields=self.rng.random() < cfg.yield_share, cooldown=0.0, rec_id=0,
        )

    def _insert(self, t: float):
        veh = self.veh
        for lane in range(self.n_main + 1):
            while self.next_arrival[lane] <= t:
                self.waiting[lane] += 1
                self.next_arrival[lane] += self._interarrival(lane)
            if self.waiting[lane] == 0:
                continue
            if self.pending[lane] is None:
                self.pending[lane] = self._new_vehicle(lane, self.y_entry, v_max=self.cfg.entry_max_speed)
            candidate = self.pending[lane]
            occupying = (veh.lane == lane) | (veh.lane_from == lane)
            if occupying.any():
                idx = np.flatnonzero(occupying)
                last = idx[np.argmin(veh.y[idx])]
                gap = veh.y[last] - veh.length[last] - self.y_entry
                v_lead = veh.v[last]
                needed = self.cfg.jam_distance + candidate["T"] * v_lead
                if gap < needed + self.cfg.min_gap:
                    continue  # the vehicle waits upstream (point queue)
                # Faster than the car ahead only by what the spare gap allows.
                candidate["v"] = min(candidate["v"], v_lead + (gap - needed) / self.cfg.entry_catch_up_s)
            self.veh.append(**candidate)
            self.pending[lane] = None
            self.waiting[lane] -= 1

    # ----------------------------------------------------------- neighbourhood
    def _entries(self):
        """Lane occupancy: one entry per vehicle and lane it occupies, sorted by (lane, y)."""
        veh = self.veh
        n = len(veh)
        changing = np.flatnonzero(veh.lane_from != veh.lane)
        owner = np.concatenate([np.arange(n), changing])
        lane = np.concatenate([veh.lane, veh.lane_from[changing]])
        key = _lane_key(lane, veh.y[owner])
        order = np.argsort(key, kind="stable")
        return owner[order], lane[order], key[order]

    # ------------------------------------------------------------------- step
    def step(self, t: float):
        cfg = self.cfg
        veh = self.veh
        n = len(veh)
        if n == 0:
            return
        owner, e_lane, keys = self._entries()
        m = len(owner)
        has_lead = np.zeros(m, dtype=bool)
        has_lead[:-1] = e_lane[1:] == e_lane[:-1]
        lead = np.where(has_lead, np.append(owner[1:], 0), 0)
        gap = np.where(has_lead, veh.y[lead] - veh.length[lead] - veh.y[owner], NO_GAP)
        dv = np.where(has_lead, veh.v[owner] - veh.v[lead], 0.0)
        e_acc = self._idm_of(owner, gap, dv)
        acc = np.full(n, np.inf)
        np.minimum.at(acc, owner, e_acc)
        free_acc = acc.copy()  # car-following only, used by MOBIL

        # Bottleneck: a blocked lane is a stopped obstacle at the bottleneck line; drivers too
        # close to stop comfortably carry on.
        self._update_bottleneck(t)
        before = veh.y < self.y_bottleneck
        lanes_now = np.minimum(veh.lane, self.n_main - 1)
        blocked = before & (self.blocked[lanes_now] | self.blocked[np.minimum(veh.lane_from, self.n_main - 1)])
        dist = self.y_bottleneck - veh.y
        stoppable = dist > veh.v ** 2 / (2.0 * cfg.max_stop_dec) + cfg.min_gap
        obstacle = blocked & stoppable
        if obstacle.any():
            i = np.flatnonzero(obstacle)
            acc[i] = np.minimum(acc[i], self._idm_of(i, dist[i], veh.v[i]))

        # On-ramp end: ramp cars that have not started to merge stop before it.
        on_ramp = (veh.lane == self.ramp_index) & (veh.prog >= 1.0)
        if on_ramp.any():
            i = np.flatnonzero(on_ramp)
            stop_line = self.ramp_end - 0.5 * cfg.change_min_dist  # last point to start a merge
            acc[i] = np.minimum(acc[i], self._idm_of(i, stop_line - veh.y[i], veh.v[i]))
            self._yield_to_ramp(i, acc)

        self._lane_changes(owner, e_lane, keys, free_acc, acc)

        # Integration (ballistic), never backwards.
        v_new = veh.v + acc * DT
        stop = v_new < 0.0
        dy = np.where(stop, -veh.v ** 2 / (2.0 * np.minimum(acc, -1e-9)), veh.v * DT + 0.5 * acc * DT ** 2)
        dy = np.maximum(dy, 0.0)
        v_new = np.maximum(v_new, 0.0)
        y_new = veh.y + dy
        # The minimum gap is a hard constraint (IDM keeps it on its own nearly always).
        for _ in range(2):
            bound = np.where(has_lead, y_new[lead] - veh.length[lead] - cfg.min_gap, np.inf)
            limit = np.full(n, np.inf)
            np.minimum.at(limit, owner, bound)
            over = y_new > limit
            if not over.any():
                break
            self.clamps += int(over.sum())
            y_new = np.where(over, np.maximum(veh.y, limit), y_new)
            v_new = np.where(over, np.minimum(v_new, (y_new - veh.y) / DT), v_new)
        dy = y_new - veh.y
        veh.acc = (v_new - veh.v) / DT
        veh.v = v_new
        veh.y = y_new

        # Lateral motion of lane changes: progress by distance travelled.
        changing = veh.prog < 1.0
        if changing.any():
            i = np.flatnonzero(changing)
            veh.prog[i] = np.minimum(veh.prog[i] + dy[i] / veh.lc_dist[i], 1.0)
            shape = 0.5 * (1.0 - np.cos(np.pi * veh.prog[i]))
            veh.x[i] = veh.x_start[i] + (self.centers[veh.lane[i]] - veh.x_start[i]) * shape
            # The origin lane is free once the car is laterally clear of any car in it.
            # A heading of slope s swings the rear out by up to length * s.
            offset = np.abs(veh.x[i] - self.centers[veh.lane_from[i]])
            swing = veh.length[i] * 0.5 * np.pi * LANE_WIDTH / veh.lc_dist[i]
            clear = offset > 0.5 * (veh.width[i] + self.max_width) + swing
            done = i[(veh.prog[i] >= 1.0) | clear]
            veh.lane_from[done] = veh.lane[done]
            finished = i[veh.prog[i] >= 1.0]
            veh.x[finished] = self.centers[veh.lane[finished]]
            veh.cooldown[finished] = cfg.change_cooldown_s
        veh.cooldown = np.maximum(veh.cooldown - DT, 0.0)

        veh.keep(veh.y - veh.length < self.y_exit)

    def _idm_of(self, i, gap, dv):
        veh = self.veh
        return _idm(veh.v[i], veh.v0[i], veh.T[i], veh.a[i], veh.b[i], gap, dv,
                    self.cfg.jam_distance, self.cfg.idm_delta)

    def _update_bottleneck(self, t: float):
        """Start the next open or blocked phase of each lane whose phase is over.

        Phase lengths are drawn from the configured ranges, then scaled by how far the study
        area is from its target occupancy: a fuller road gets longer open and shorter blocked
        phases. This holds the congestion level steady over the recording instead of letting it
        drift to free flow or to a standstill.
        """
        cfg = self.cfg
        lanes = np.flatnonzero(self.phase_end <= t)
        if len(lanes) == 0:
            return
        y = self.veh.y
        pressure = np.count_nonzero((y >= 0.0) & (y <= self.road.length)) / cfg.target_in_view - 1.0
        gain = cfg.control_gain
        for lane in lanes:
            self.blocked[lane] = not self.blocked[lane]
            if self.blocked[lane]:
                scale = np.clip(1.0 - gain * pressure, *cfg.blocked_scale)
                span = cfg.blocked_s
            else:
                scale = np.clip(1.0 + gain * pressure, *cfg.open_scale)
                span = cfg.open_s
            self.phase_end[lane] = t + scale * self.rng.uniform(*span)

    def _yield_to_ramp(self, ramp_cars, acc):
        """Polite lane-6 drivers slow down behind a waiting ramp car to let it in."""
        veh = self.veh
        waiting = ramp_cars[veh.y[ramp_cars] > self.ramp_end - self.cfg.yield_zone_m]
        if len(waiting) == 0:
            return
        right = self.n_main - 1
        drivers = np.flatnonzero((veh.lane == right) & (veh.prog >= 1.0) & veh.yields)
        if len(drivers) == 0:
            return
        order = np.argsort(veh.y[waiting])
        w_y = veh.y[waiting][order]
        j = np.searchsorted(w_y, veh.y[drivers], side="right")
        has = j < len(w_y)
        drivers, j = drivers[has], j[has]
        target = waiting[order][j]
        gap = veh.y[target] - veh.length[target] - veh.y[drivers]
        yield_acc = self._idm_of(drivers, gap, veh.v[drivers] - veh.v[target])
        ok = (gap > 0) & (yield_acc > -self.cfg.b_safe)
        acc[drivers[ok]] = np.minimum(acc[drivers[ok]], yield_acc[ok])

    def _lane_changes(self, owner, e_lane, keys, free_acc, acc):
        cfg = self.cfg
        veh = self.veh
        n = len(veh)
        idle = (veh.prog >= 1.0) & (veh.cooldown <= 0.0) & (veh.y > self.y_entry + cfg.no_change_zone_m)
        idle &= veh.y < self.y_bottleneck - cfg.no_change_zone_m
        consider = idle & (self.rng.random(n) < cfg.change_prob)
        on_ramp = veh.lane == self.ramp_index
        consider |= idle & on_ramp  # ramp drivers look for a gap every step
        cand = np.flatnonzero(consider)
        if len(cand) == 0:
            return
        # Position of each candidate's own entry, to find its current follower.
        pos_self = np.searchsorted(keys, _lane_key(veh.lane[cand], veh.y[cand]), side="left")
        has_old_f = (pos_self > 0) & (e_lane[np.maximum(pos_self - 1, 0)] == veh.lane[cand])
        old_f = owner[np.maximum(pos_self - 1, 0)]
        has_old_l = (pos_self + 1 < len(keys)) & (e_lane[np.minimum(pos_self + 1, len(keys) - 1)] == veh.lane[cand])
        old_l = owner[np.minimum(pos_self + 1, len(keys) - 1)]

        # Behind a stopped car, the car must be able to clear its own lane before reaching it,
        # or two cars could wait for each other for ever (at a ramp end, say).
        gap_own = np.where(has_old_l, veh.y[old_l] - veh.length[old_l] - veh.y[cand], NO_GAP)
        v_own = np.where(has_old_l, veh.v[old_l], np.inf)
        room = (gap_own > 0.5 * cfg.change_min_dist + cfg.jam_distance) | (v_own > 1.0)
        best_gain = np.full(len(cand), -np.inf)
        best_lane = np.full(len(cand), -1)
        for direction in (-1, 1):
            target = veh.lane[cand] + direction
            valid = (target >= 0) & (target < self.n_main)
            from_ramp = on_ramp[cand]
            valid &= ~from_ramp | (direction == -1)
            valid &= ~from_ramp | (veh.y[cand] < self.ramp_end - 0.5 * cfg.change_min_dist)
            if not valid.any():
                continue
            tgt = np.where(valid, target, 0)
            pos = np.searchsorted(keys, _lane_key(tgt, veh.y[cand]), side="right")
            L_ok = (pos < len(keys)) & (e_lane[np.minimum(pos, len(keys) - 1)] == tgt)
            L = owner[np.minimum(pos, len(keys) - 1)]
            F_ok = (pos > 0) & (e_lane[np.maximum(pos - 1, 0)] == tgt)
            F = owner[np.maximum(pos - 1, 0)]
            gap_l = np.where(L_ok, veh.y[L] - veh.length[L] - veh.y[cand], NO_GAP)
            gap_f = np.where(F_ok, veh.y[cand] - veh.length[cand] - veh.y[F], NO_GAP)
            a_new = self._idm_of(cand, gap_l, np.where(L_ok, veh.v[cand] - veh.v[L], 0.0))
            a_f_new = np.where(F_ok, self._idm_of(F, gap_f, veh.v[F] - veh.v[cand]), 0.0)
            a_f_old = np.where(F_ok, free_acc[F], 0.0)
            # Old follower would follow the old leader instead of the candidate.
            gap_o = np.where(has_old_f & has_old_l, veh.y[old_l] - veh.length[old_l] - veh.y[old_f], NO_GAP)
            dv_o = np.where(has_old_f & has_old_l, veh.v[old_f] - veh.v[old_l], 0.0)
            a_o_new = np.where(has_old_f, self._idm_of(old_f, gap_o, dv_o), 0.0)
            a_o_old = np.where(has_old_f, free_acc[old_f], 0.0)
            # A new follower that is itself leaving the candidate's lane already follows the
            # candidate there and keeps doing so: it needs no extra room.
            trailing = F_ok & (veh.lane_from[F] == veh.lane[cand]) & (veh.lane[F] == tgt)
            follower_ok = trailing | ((gap_f > cfg.jam_distance) & (a_f_new > -cfg.b_safe))
            safe = (gap_l > cfg.jam_distance) & follower_ok & room & (a_new > -cfg.b_safe)
            gain = a_new - acc[cand] + cfg.politeness * (a_f_new - a_f_old + a_o_new - a_o_old)
            if direction == 1:
                gain = gain + cfg.keep_right_bias
            gain = np.where(from_ramp, gain + cfg.merge_bias, gain)
            ok = valid & safe & (gain > cfg.change_threshold) & (gain > best_gain)
            best_gain = np.where(ok, gain, best_gain)
            best_lane = np.where(ok, tgt, best_lane)

        go = best_lane >= 0
        if not go.any():
            return
        movers = cand[go]
        targets = best_lane[go]
        # Two drivers entering the same lane side by side in one step: only the front one goes.
        order = np.lexsort((-veh.y[movers], targets))
        movers, targets = movers[order], targets[order]
        keep = np.ones(len(movers), dtype=bool)
        for k in range(1, len(movers)):
            if targets[k] == targets[k - 1] and keep[k - 1]:
                front = movers[k - 1]
                if veh.y[front] - veh.length[front] - veh.y[movers[k]] < cfg.jam_distance:
                    keep[k] = False
        movers, targets = movers[keep], targets[keep]
        veh.lane_from[movers] = veh.lane[movers]
        veh.lane[movers] = targets
        veh.prog[movers] = 0.0
        veh.x_start[movers] = veh.x[movers]
        # Long vehicles change lanes over a longer distance: a gentler heading keeps their
        # rear from swinging into the next lane.
        lc_dist = np.maximum.reduce([
            veh.v[movers] * cfg.change_time_s,
            np.full(len(movers), cfg.change_min_dist),
            cfg.change_lengths * veh.length[movers],
        ])
        # A ramp car must be over the lane line before the ramp ends.
        from_ramp = veh.lane_from[movers] == self.ramp_index
        room_left = 2.0 * (self.ramp_end - veh.y[movers]) - cfg.jam_distance
        veh.lc_dist[movers] = np.where(from_ramp, np.maximum(np.minimum(lc_dist, room_left),
                                                             cfg.change_min_dist), lc_dist)

    # -------------------------------------------------------------- recording
    def record(self, frame: int, rows: list):
        veh = self.veh
        inside = (veh.y >= 0.0) & (veh.y <= self.road.length)
        if not inside.any():
            return
        new = inside & (veh.rec_id == 0)
        if new.any():
            # NGSIM ids count vehicles in order of entry.
            idx = np.flatnonzero(new)
            idx = idx[np.lexsort((veh.x[idx], -veh.y[idx]))]
            veh.rec_id[idx] = np.arange(self.next_rec_id, self.next_rec_id + len(idx))
            self.next_rec_id += len(idx)
        i = np.flatnonzero(inside)
        rows.append((np.full(len(i), frame), veh.rec_id[i], veh.x[i], veh.y[i], veh.length[i],
                     veh.width[i], veh.vclass[i], veh.v[i], veh.acc[i]))

    def run(self, progress=None) -> pd.DataFrame:
        cfg = self.cfg
        warm_steps = int(round(cfg.warmup_s / DT))
        rec_steps = int(round(cfg.minutes * 60.0 / DT))
        rows: list = []
        for k in range(warm_steps + rec_steps):
            t = k * DT
            self._insert(t)
            self.step(t)
            if k >= warm_steps:
                self.record(k - warm_steps + 1, rows)
            if progress is not None:
                progress(1)
        return self._table(rows)

    def _table(self, rows) -> pd.DataFrame:
        cols = [np.concatenate(c) for c in zip(*rows)]
        frame, vid, x, y, length, width, vclass, speed, acc = cols
        df = pd.DataFrame({"vehicle_id": vid, "frame": frame, "x": x, "y": y, "length": length,
                           "width": width, "v_class": vclass.astype(np.int8), "speed": speed, "acc": acc})
        df["lane"] = self.road.lane_at(df["x"].to_numpy(), df["y"].to_numpy())
        return finish_ngsim_columns(df, self.road.name)


def finish_ngsim_columns(df: pd.DataFrame, location: str) -> pd.DataFrame:
    """Fill the derived NGSIM columns of a table of (vehicle_id, frame, x, y, size, class,
    speed, acc, lane): Total_Frames, Global_Time, global position, neighbours and headways."""
    df = df.sort_values(["frame", "lane", "y"], kind="stable").reset_index(drop=True)
    frame = df["frame"].to_numpy()
    lane = df["lane"].to_numpy()
    y = df["y"].to_numpy()
    vid = df["vehicle_id"].to_numpy()
    same_next = np.zeros(len(df), dtype=bool)
    same_next[:-1] = (frame[1:] == frame[:-1]) & (lane[1:] == lane[:-1])
    preceding = np.where(same_next, np.append(vid[1:], 0), 0)
    headway = np.where(same_next, np.append(y[1:], 0.0) - y, 0.0)  # front to front [m]
    following = np.zeros(len(df), dtype=np.int64)
    following[1:] = np.where(same_next[:-1], vid[:-1], 0)
    speed = df["speed"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        time_headway = np.where((speed > 0) & same_next, headway / np.maximum(speed, 1e-9), 0.0)
    time_headway = np.where(same_next & (speed <= 0), STOPPED_TIME_HEADWAY,
                            np.minimum(time_headway, STOPPED_TIME_HEADWAY))
    df["preceding"] = preceding
    df["following"] = following
    df["space_headway"] = headway
    df["time_headway"] = time_headway
    df["total_frames"] = df.groupby("vehicle_id")["frame"].transform("size").astype(np.int64)
    df["global_time"] = START_TIME_MS + MS_PER_FRAME * df["frame"].astype(np.int64)
    # A fixed placement of the local frame in state-plane coordinates [m]: the road runs
    # along `heading` (clockwise from grid north), lateral x points to the driver's right.
    heading = math.radians(GLOBAL_HEADING_DEG)
    gx0, gy0 = GLOBAL_ORIGIN_FT[0] * FT, GLOBAL_ORIGIN_FT[1] * FT  # [m] origin of the local frame
    along = (math.sin(heading), math.cos(heading))
    right = (math.cos(heading), -math.sin(heading))
    df["global_x"] = gx0 + df["y"] * along[0] + df["x"] * right[0]
    df["global_y"] = gy0 + df["y"] * along[1] + df["x"] * right[1]
    df["location"] = pd.Categorical([location] * len(df))
    df["track_id"] = df["vehicle_id"].astype(np.int64)  # one track per generated vehicle
    df = df.sort_values(["frame", "vehicle_id"], kind="stable").reset_index(drop=True)
    return df[list(COLUMNS)].astype({k: v for k, v in DTYPES.items() if k != "location"})


def generate(config: GeneratorConfig, progress=None) -> pd.DataFrame:
    """Simulate and return the recorded study-area rows as a canonical NGSIM table (the
    columns of :data:`traffic_sim.ngsim.COLUMNS`, one track per vehicle)."""
    return TrafficGenerator(config).run(progress=progress)


"""A privileged reference driver: car following with the true gaps (``--policy follow``).

It is not learned and it sees what no policy does: the replayed vehicles' true positions and
speeds. Longitudinally it is the Intelligent Driver Model (Treiber, Hennecke and Helbing,
2000) behind the nearest vehicle ahead that overlaps its lane; laterally it steers towards
the centre of the lane it is in, and never changes lanes. It shows how far plain car
following gets on a recording (the controlled car is still run into from behind and from
the side, since nobody reacts to it), the reference a learned policy can be measured
against.

``--policy follow-merge`` is the same driver that also merges out of a lane that ends (an
on-ramp, :meth:`~traffic_sim.roads.Road.to_lane_end`): it stops short of the lane's end
behind a standing obstacle there, and steers into the lane beside that goes on as soon as
the true gaps to the vehicles ahead and behind in that lane are accepted (a gap acceptance
rule, as the lane-changing models of traffic simulation have one).

``--policy follow-evade`` is ``follow-merge`` with a shorter headway and gentler acceleration
(:data:`EVADE_IDM`) that also evades what car following ignores, with the true positions and
speeds (:class:`Evasion`): a vehicle closing in from behind in its lane, and one alongside
moving sideways into it. Of the settings of
``benchmarks/probe_follow_ceiling.py``, it did best on the validation split.

``--policy follow-yield`` is ``follow-evade`` that also yields to a vehicle cutting in: one
beside it that, moving sideways as it does now, would be in its way within
:data:`YIELD_EVASION`'s ``cut_in`` seconds counts as a vehicle ahead for car following,
before it is in the lane.

``--policy follow-wait`` is ``follow-evade`` that slows for its waiting place short of a lane's
end early and evenly instead of late and hard: once stopping there takes
:data:`WAIT_BRAKE`, it brakes at what stops it there (IDM behind a standing obstacle brakes
little at first and up to its limit in the last tens of metres). Standing (below
:data:`STILL`), it does not steer unless it merges: a standing car's heading is in neither
its images nor its state, so the steering that would correct it is not for a copy to learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from .scene import DT

ACC_MAX = 2.0  # [m/s^2] IDM maximum acceleration
DECEL_COMFORT = 3.0  # [m/s^2] IDM comfortable deceleration
GAP_MIN = 1.5  # [m] IDM jam distance
HEADWAY = 1.0  # [s] IDM time headway
SPEED_DESIRED = 30.0  # [m/s] IDM desired speed (above any speed on these freeways)
ACC_LIMITS = (-8.0, 3.0)  # [m/s^2] what the follower may command
LANE_MARGIN = 0.3  # [m] lateral overlap below which a vehicle is not in the car's way
HEADING_GAIN = 0.1  # [1/m] wanted heading (lateral unit component) per metre off centre
HEADING_MAX = 0.1  # wanted heading's bound (lateral unit component)
STEER_GAIN = 0.3  # fraction of the heading error corrected per step
# follow-merge
STOP_MARGIN = 10.0  # [m] where it waits before the end of a lane that ends (the recorded drivers: ~12 m)
MERGE_HEADING_MAX = 0.35  # wanted heading's bound while it merges (lateral unit component)
MERGE_HEADWAY = 0.5  # [s] accepted time gap to the vehicle ahead in the lane it merges into, and from the one behind
MERGE_CLOSING_TIME = 1.5  # [s] extra gap from the one behind per m/s it is faster
# follow-evade
ALONGSIDE = 3.0  # [m] beyond overlapping it along the road, a vehicle still counts as alongside
EVADE_FREE = -1.0  # [m/s^2] it accelerates to evade only when car following commands more than this
# follow-wait
WAIT_BRAKE = 1.0  # [m/s^2] it starts braking for its waiting place when stopping there takes this
STILL = 0.5  # [m/s] below this it stands: it does not steer unless it merges


@dataclass(frozen=True)
class IDM:
    """The Intelligent Driver Model's parameters (defaults: the module's constants)."""

    acc_max: float = ACC_MAX  # [m/s^2]
    decel_comfort: float = DECEL_COMFORT  # [m/s^2]
    gap_min: float = GAP_MIN  # [m]
    headway: float = HEADWAY  # [s]
    speed_desired: float = SPEED_DESIRED  # [m/s]


def idm_acceleration(speed, gap, leader_speed, idm: IDM = IDM()):
    """IDM acceleration [m/s^2] at ``speed`` [m/s] behind a leader ``gap`` metres ahead
    (bumper to bumper; ``inf`` for none) driving at ``leader_speed`` [m/s]. Arrays broadcast."""
    speed = np.asarray(speed, dtype=float)
    closing = speed - np.asarray(leader_speed, dtype=float)
    wanted = idm.gap_min + np.maximum(
        speed * idm.headway + speed * closing / (2 * np.sqrt(idm.acc_max * idm.decel_comfort)), 0.0)
    with np.errstate(divide="ignore"):
        interaction = np.where(np.isfinite(gap), (wanted / np.maximum(gap, 0.1)) ** 2, 0.0)
    return idm.acc_max * (1.0 - (speed / idm.speed_desired) ** 4 - interaction)


EVADE_IDM = IDM(headway=0.5, acc_max=1.0)  # follow-evade's car following


@dataclass(frozen=True)
class Evasion:
    """How the follower evades, with the true positions and speeds:

    - a vehicle behind in the car's lane that would reach it within ``rear_time`` seconds at
      the present speeds: accelerate at the limit, unless car following brakes (below
      ``EVADE_FREE``) for the vehicle ahead;
    - a vehicle alongside (within ``ALONGSIDE`` of overlapping it along the road) moving
      sideways towards the car that would touch it within ``side_time`` seconds: if that
      vehicle's centre is ahead of the car's, brake at half the limit; if behind, accelerate
      as above."""

    rear_time: float = 2.0  # [s]
    side_time: float = 1.5  # [s]
    # [s] a vehicle beside that, moving sideways as now, would overlap the car by more than
    # LANE_MARGIN within this is followed as if it were in the lane already (0: when it is)
    cut_in: float = 0.0


YIELD_EVASION = Evasion(cut_in=2.0)  # follow-yield's: follow-evade's, yielding to vehicles cutting in

# The built-in car followers by name: the keyword arguments of follow_actions that make each.
FOLLOWERS = {
    "follow": {},
    "follow-merge": {"merge": True},
    "follow-evade": {"merge": True, "idm": EVADE_IDM, "evade": Evasion()},
    "follow-yield": {"merge": True, "idm": EVADE_IDM, "evade": YIELD_EVASION},
    "follow-wait": {"merge": True, "idm": EVADE_IDM, "evade": Evasion(), "wait_brake": WAIT_BRAKE},
}


def _speeds(sc, rows, frame):
    """[m/s] speeds of the replayed vehicles at scene ``rows`` (N, K) at ``frame`` (N,)."""
    track = sc.track[rows]
    first = sc.tr_start[track]
    return sc.tr_speed[np.minimum(first + frame[:, None] - sc.tr_frame[first], sc.tr_start[track + 1] - 1)]


@lru_cache(maxsize=16)
def merge_targets(road) -> dict:
    """For each lane that ends with no lane going on in its place (see
    :meth:`~traffic_sim.roads.Road.to_lane_end`), the lane beside it that goes on past its end:
    {lane id: that lane}. Cached by road (a frozen dataclass): it is asked at every step."""
    out = {}
    for lane in road.lanes:
        end = road.span(lane)[1]
        ends = np.isfinite(road.to_lane_end(np.array([lane.center]), np.array([end - 1.0])))[0]
        if not ends:
            continue
        for other in road.lanes:
            beside = np.isclose(other.right, lane.left) or np.isclose(other.left, lane.right)
            y0, y1 = road.span(other)
            if other.lane_id != lane.lane_id and beside and y0 < end < y1:
                out[lane.lane_id] = other
                break
    return out


def follow_actions(sim, cars, merge: bool = False, idm: IDM = IDM(),
                   evade: Optional[Evasion] = None, lane_end_sight: float = np.inf,
                   wait_brake: Optional[float] = None) -> np.ndarray:
    """(N, 2) actions (acceleration [m/s^2], steering [1/m]) of the follower for ``cars``
    in ``sim`` (a :class:`~traffic_sim.sim.ReplaySimulator`); with ``merge``, it also merges
    out of a lane that ends (``follow-merge``). ``idm``: its car-following parameters;
    ``evade``: how its acceleration also evades (None: it does not); ``lane_end_sight`` [m]:
    the end of its lane counts (it slows to wait short of it) only within this distance of
    its centre (e.g. :data:`~traffic_sim.raster.LOOK_AHEAD`, what its state image shows);
    ``wait_brake`` [m/s^2]: it brakes evenly for its waiting place once stopping there takes
    this, and does not steer while it stands unless it merges (``follow-wait``; None: IDM
    alone, and it steers)."""
    sc = sim.scene
    frame = np.minimum(cars.frame, sc.n_frames - 1)
    rows, valid = sim.neighbours(frame, cars.center_x, cars.center_y, cars.track)
    if rows.shape[1] == 0:  # nobody near any car: one column that counts for none
        rows, valid = np.zeros((len(frame), 1), dtype=rows.dtype), np.zeros((len(frame), 1), dtype=bool)
    other_cx = sc.x[rows] - 0.5 * sc.length[rows] * sc.ux[rows]
    overlap = 0.5 * (sc.width[rows] + cars.width[:, None]) - np.abs(other_cx - cars.center_x[:, None])
    rear = sc.y[rows] - sc.length[rows] * sc.uy[rows]  # [m] the other vehicle's rear
    speeds = _speeds(sc, rows, frame)  # (N, K) [m/s]
    in_way = overlap  # [m] across the road
    if evade is not None and evade.cut_in > 0:  # or will be within cut_in seconds, moving sideways as now
        dx = np.abs(other_cx - cars.center_x[:, None])
        towards = np.maximum(np.sign(cars.center_x[:, None] - other_cx) * speeds * sc.ux[rows], 0.0)
        in_way = np.maximum(overlap, 0.5 * (sc.width[rows] + cars.width[:, None])
                            - np.maximum(dx - towards * evade.cut_in, 0.0))
    ahead = valid & (in_way > LANE_MARGIN) & (rear > cars.center_y[:, None])
    gaps = np.where(ahead, rear - cars.y[:, None], np.inf)  # bumper to bumper
    lead = np.argmin(gaps, axis=1)
    gap = gaps[np.arange(len(lead)), lead]
    leader_speed = np.where(np.isfinite(gap), speeds[np.arange(len(lead)), lead], cars.v)
    acc = np.clip(idm_acceleration(cars.v, gap, leader_speed, idm), *ACC_LIMITS)

    lane = sc.road.lane_at(cars.center_x, cars.center_y)  # 0: off the road
    centre = np.zeros(max(ln.lane_id for ln in sc.road.lanes) + 1)  # [m] by lane id
    for ln in sc.road.lanes:
        centre[ln.lane_id] = ln.center
    target = np.where(lane > 0, centre[lane], cars.center_x)
    heading_max = np.full(len(lane), HEADING_MAX)
    merging = np.zeros(len(lane), dtype=bool)
    if merge:
        for lane_id, into in merge_targets(sc.road).items():
            mine = lane == lane_id
            if not mine.any():
                continue
            # [m] from the car's front to its lane's end
            to_centre = sc.road.to_lane_end(cars.center_x, cars.center_y)
            to_end = np.where(to_centre <= lane_end_sight, to_centre - (cars.y - cars.center_y), np.inf)
            # the true gaps in the lane it merges into: ahead (its rear to the car's front) and
            # behind (the car's rear to its front), with the speeds of those vehicles
            there = valid & (np.abs(other_cx - into.center) < 0.5 * into.width)
            front = sc.y[rows]
            car_rear = cars.y - cars.length * cars.uy
            is_ahead = there & (front - 0.5 * sc.length[rows] * sc.uy[rows] > cars.center_y[:, None])
            gap_ahead = np.where(is_ahead, rear - cars.y[:, None], np.inf)
            gap_behind = np.where(there & ~is_ahead, car_rear[:, None] - front, np.inf)
            need_ahead = GAP_MIN + MERGE_HEADWAY * cars.v[:, None]
            need_behind = (GAP_MIN + MERGE_HEADWAY * speeds
                           + MERGE_CLOSING_TIME * np.maximum(speeds - cars.v[:, None], 0.0))
            accept = np.all(gap_ahead >= need_ahead, axis=1) & np.all(gap_behind >= need_behind, axis=1)
            go = mine & accept
            # it waits behind a standing obstacle short of the end, and creeps to the end itself
            # while it merges
            stop_gap = np.where(go, to_end, to_end - STOP_MARGIN)
            stop = idm_acceleration(cars.v, np.maximum(stop_gap, 0.0), 0.0, idm)
            if wait_brake is not None:  # [m/s^2] what stops it at its waiting place, once that is wait_brake
                with np.errstate(divide="ignore", invalid="ignore"):
                    even = np.where(stop_gap > 0.0, cars.v ** 2 / (2.0 * stop_gap), np.inf)
                stop = np.where(~go & (even >= wait_brake), np.minimum(stop, -even), stop)
            acc = np.where(mine, np.minimum(acc, np.clip(stop, *ACC_LIMITS)), acc)
            merging |= go
            target = np.where(go, into.center, target)
            heading_max = np.where(go, MERGE_HEADING_MAX, heading_max)
    heading = np.clip(HEADING_GAIN * (target - cars.center_x), -heading_max, heading_max)
    steer = STEER_GAIN * (heading - cars.ux) / (np.maximum(cars.v, 1.0) * DT)
    if wait_brake is not None:
        steer = np.where((cars.v < STILL) & ~merging, 0.0, steer)
    if evade is not None:
        acc = _evade(acc, evade, sc, cars, rows, valid, speeds, other_cx, overlap)
    return np.stack([acc, steer], axis=1)


def _evade(acc, evasion: Evasion, sc, cars, rows, valid, speeds, other_cx, overlap) -> np.ndarray:
    """The car-following acceleration ``acc`` (N,) [m/s^2] changed as ``evasion`` says, from
    the neighbours that :func:`follow_actions` found: scene ``rows`` (N, K) and their
    ``valid`` mask, ``speeds`` [m/s], centres across the road ``other_cx`` [m] and their
    ``overlap`` [m] across the road with the car."""
    other_cy = sc.y[rows] - 0.5 * sc.length[rows] * sc.uy[rows]
    dx = cars.center_x[:, None] - other_cx  # [m] the car's centre from theirs, across the road
    free = acc > EVADE_FREE
    # from behind, in its lane
    behind = valid & (overlap > LANE_MARGIN) & (other_cy < cars.center_y[:, None])
    gap = (cars.y - cars.length * cars.uy)[:, None] - sc.y[rows]  # [m] its rear to their front
    closing = speeds - cars.v[:, None]
    reach = np.where(behind & (closing > 0), gap / np.maximum(closing, 1e-3), np.inf).min(1)  # [s]
    out = np.where((reach < evasion.rear_time) & free, np.maximum(acc, ACC_LIMITS[1]), acc)
    # from the side
    along = other_cy - cars.center_y[:, None]
    near = valid & (overlap <= LANE_MARGIN) & (np.abs(along) < 0.5 * (sc.length[rows] + cars.length[:, None])
                                               + ALONGSIDE)
    towards = np.sign(dx) * speeds * sc.ux[rows]  # [m/s] their sideways speed towards the car
    side_gap = np.abs(dx) - 0.5 * (sc.width[rows] + cars.width[:, None])
    threat = near & (towards > 0.1) & (side_gap < evasion.side_time * towards)
    from_ahead, from_behind = (threat & (along >= 0)).any(1), (threat & (along < 0)).any(1)
    out = np.where(from_behind & ~from_ahead & free, np.maximum(out, ACC_LIMITS[1]), out)
    return np.where(from_ahead, 0.5 * ACC_LIMITS[0], out)


def follower_actions(sim, cars, name: str, evade: bool = True) -> np.ndarray:
    """(N, 2) actions of the built-in follower ``name`` (a key of :data:`FOLLOWERS`); with
    ``evade`` False, its car following alone, without its evasion."""
    settings = dict(FOLLOWERS[name])
    if not evade:
        settings.pop("evade", None)
    return follow_actions(sim, cars, **settings)

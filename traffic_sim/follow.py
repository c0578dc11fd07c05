"""A privileged reference driver: car following with the true gaps (``--policy follow``).

It is not learned and it sees what no policy does: the replayed vehicles' true positions and
speeds. Longitudinally it is the Intelligent Driver Model (Treiber, Hennecke and Helbing,
2000) behind the nearest vehicle ahead that overlaps its lane; laterally it steers towards
the centre of the lane it is in, and never changes lanes. It shows how far plain car
following gets on a recording (the controlled car is still run into from behind and from
the side, since nobody reacts to it), the reference a learned policy can be measured
against.
"""

from __future__ import annotations

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


def idm_acceleration(speed, gap, leader_speed):
    """IDM acceleration [m/s^2] at ``speed`` [m/s] behind a leader ``gap`` metres ahead
    (bumper to bumper; ``inf`` for none) driving at ``leader_speed`` [m/s]. Arrays broadcast."""
    speed = np.asarray(speed, dtype=float)
    closing = speed - np.asarray(leader_speed, dtype=float)
    wanted = GAP_MIN + np.maximum(speed * HEADWAY + speed * closing / (2 * np.sqrt(ACC_MAX * DECEL_COMFORT)), 0.0)
    with np.errstate(divide="ignore"):
        interaction = np.where(np.isfinite(gap), (wanted / np.maximum(gap, 0.1)) ** 2, 0.0)
    return ACC_MAX * (1.0 - (speed / SPEED_DESIRED) ** 4 - interaction)


def follow_actions(sim, cars) -> np.ndarray:
    """(N, 2) actions (acceleration [m/s^2], steering [1/m]) of the follower for ``cars``
    in ``sim`` (a :class:`~traffic_sim.sim.ReplaySimulator`)."""
    sc = sim.scene
    frame = np.minimum(cars.frame, sc.n_frames - 1)
    rows, valid = sim.neighbours(frame, cars.center_x, cars.center_y, cars.track)
    other_cx = sc.x[rows] - 0.5 * sc.length[rows] * sc.ux[rows]
    overlap = 0.5 * (sc.width[rows] + cars.width[:, None]) - np.abs(other_cx - cars.center_x[:, None])
    rear = sc.y[rows] - sc.length[rows] * sc.uy[rows]  # [m] the other vehicle's rear
    ahead = valid & (overlap > LANE_MARGIN) & (rear > cars.center_y[:, None])
    gaps = np.where(ahead, rear - cars.y[:, None], np.inf)  # bumper to bumper
    lead = np.argmin(gaps, axis=1)
    gap = gaps[np.arange(len(lead)), lead]
    # the leader's speed: its track's row at this frame
    lead_row = rows[np.arange(len(lead)), lead]
    track = sc.track[lead_row]
    tr_row = np.minimum(sc.tr_start[track] + frame - sc.tr_frame[sc.tr_start[track]], sc.tr_start[track + 1] - 1)
    leader_speed = np.where(np.isfinite(gap), sc.tr_speed[tr_row], cars.v)
    acc = np.clip(idm_acceleration(cars.v, gap, leader_speed), *ACC_LIMITS)

    lane = sc.road.lane_at(cars.center_x, cars.center_y)  # 0: off the road
    centre = np.zeros(max(ln.lane_id for ln in sc.road.lanes) + 1)  # [m] by lane id
    for ln in sc.road.lanes:
        centre[ln.lane_id] = ln.center
    target = np.where(lane > 0, centre[lane], cars.center_x)
    heading = np.clip(HEADING_GAIN * (target - cars.center_x), -HEADING_MAX, HEADING_MAX)
    steer = STEER_GAIN * (heading - cars.ux) / (np.maximum(cars.v, 1.0) * DT)
    return np.stack([acc, steer], axis=1)

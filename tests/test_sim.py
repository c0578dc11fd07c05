"""Replay simulator: kinematics against closed forms, collision geometry, action inference."""

import math

import numpy as np
import pytest

from traffic_sim.scene import DT, HISTORY
from traffic_sim.sim import HIT_KINDS, ReplaySimulator, boxes_overlap, builtin_actions, kinematic_step


def _drive(v, acc, steer, steps):
    x, y, ux, uy = 0.0, 0.0, 0.0, 1.0
    out = [(x, y, ux, uy, v)]
    for _ in range(steps):
        x, y, ux, uy, v = kinematic_step(x, y, ux, uy, v, acc, steer)
        out.append((x, y, ux, uy, v))
    return np.array(out, dtype=float)


def test_straight_at_constant_speed():
    path = _drive(10.0, 0.0, 0.0, 50)
    assert path[-1, 1] == pytest.approx(50.0)  # 5 s at 10 m/s
    assert np.all(path[:, 0] == 0.0)


def test_constant_acceleration_explicit_euler():
    n, v0, a = 30, 10.0, 2.0
    path = _drive(v0, a, 0.0, n)
    # Position uses the speed before the update: y_n = v0 n dt + a dt^2 n (n - 1) / 2.
    assert path[-1, 1] == pytest.approx(v0 * n * DT + a * DT ** 2 * n * (n - 1) / 2)
    assert path[-1, 4] == pytest.approx(v0 + a * n * DT)


def test_braking_stops_and_never_reverses():
    path = _drive(5.0, -10.0, 0.0, 20)
    assert path[-1, 4] == 0.0
    assert np.all(np.diff(path[:, 1]) >= 0)


def test_constant_steering_turns_on_a_circle():
    v, b, n = 10.0, 0.02, 40  # [m/s], [1/m]
    path = _drive(v, 0.0, b, n)
    step_angle = math.atan(b * v * DT)  # each step rotates the heading by atan(b v dt)
    heading = np.arctan2(path[:, 2], path[:, 3])  # clockwise from the road direction
    assert heading[-1] == pytest.approx(n * step_angle)
    assert path[-1, 0] > 0  # b > 0 turns right (towards higher lane numbers)
    # The points are the vertices of a regular polygon: chord v dt, turning step_angle.
    radius = v * DT / (2 * math.sin(step_angle / 2))
    p = path[:, :2]
    # Centre: from the first chord's midpoint, perpendicular to it.
    mid = 0.5 * (p[0] + p[1])
    chord = (p[1] - p[0]) / np.linalg.norm(p[1] - p[0])
    normal = np.array([chord[1], -chord[0]])
    centre = mid + normal * radius * math.cos(step_angle / 2)
    assert np.linalg.norm(p - centre, axis=1) == pytest.approx(np.full(n + 1, radius), rel=1e-9)


def _box(x, y, angle, length, width):
    """Front centre of a box whose centre is (x, y), heading `angle` from the road direction."""
    ux, uy = math.sin(angle), math.cos(angle)
    return (x + 0.5 * length * ux, y + 0.5 * length * uy, ux, uy, length, width)


@pytest.mark.parametrize("gap, hit", [(-0.1, True), (0.1, False)])
def test_boxes_one_behind_the_other(gap, hit):
    a = _box(0.0, 0.0, 0.0, 4.0, 2.0)
    b = _box(0.0, 4.0 + gap, 0.0, 4.0, 2.0)
    assert bool(boxes_overlap(*a, *b)) is hit


@pytest.mark.parametrize("offset, hit", [(-0.05, True), (0.05, False)])
def test_rotated_box_touching_a_corner(offset, hit):
    # A 2x2 square turned 45 degrees reaches sqrt(2) from its centre along the road.
    a = _box(0.0, 0.0, 0.0, 2.0, 2.0)
    b = _box(0.0, 1.0 + math.sqrt(2) + offset, math.pi / 4, 2.0, 2.0)
    assert bool(boxes_overlap(*a, *b)) is hit
    assert bool(boxes_overlap(*b, *a)) is hit


def test_side_by_side_in_adjacent_lanes_do_not_touch():
    a = _box(1.83, 10.0, 0.0, 4.5, 1.9)
    b = _box(1.83 + 3.66, 10.0, 0.0, 4.5, 1.9)
    assert not boxes_overlap(*a, *b)


def test_human_replay_reproduces_the_recorded_track(small_scene):
    sc = small_scene
    sim = ReplaySimulator(sc)
    tracks = sc.episodes["all"]
    cars = sim.start(tracks)
    worst = 0.0
    while not cars.done.all():
        sim.step(cars, sim.human_actions(cars))
        rows = sc.ep_row[cars.track] + cars.steps
        inside = rows < sc.tr_start[cars.track + 1]
        worst = max(worst, np.abs(cars.x - sc.tr_x[rows.clip(max=len(sc.tr_x) - 1)])[inside].max(),
                    np.abs(cars.y - sc.tr_y[rows.clip(max=len(sc.tr_y) - 1)])[inside].max())
    assert worst < 1e-6  # [m] the inferred actions drive the recorded track
    assert cars.success.mean() >= 0.98
    assert not cars.collision.any()


def test_episode_starts_after_twenty_frames_of_history(small_scene):
    sc = small_scene
    k = sc.episodes["all"][0]
    row = sc.ep_row[k]
    assert row - sc.tr_start[k] >= HISTORY - 1
    assert sc.tr_y[row] - sc.track_length[k] >= sc.start_y
    sim = ReplaySimulator(sc)
    states = sim.history_states([k])[0]
    assert states.shape == (HISTORY, 4)
    cars = sim.start([k])
    assert cars.state_vector()[0] == pytest.approx(states[-1], abs=1e-4)
    images = sim.history_images([k])[0]
    assert images.shape == (HISTORY, 3, 117, 24)
    assert np.array_equal(images[-1], sim.observe(cars)[0])


def test_no_action_collides_and_the_boxes_really_overlap(small_scene):
    sc = small_scene
    sim = ReplaySimulator(sc)
    cars = sim.start(sc.episodes["all"])
    while not cars.done.all():
        sim.step(cars, np.zeros((len(cars.track), 2)))
    assert cars.collision.any()
    assert (cars.collision | cars.off_road | cars.success | cars.truncated).all()
    i = np.flatnonzero(cars.collision)[0]
    rows = np.arange(sc.frame_start[cars.frame[i]], sc.frame_start[cars.frame[i] + 1])
    rows = rows[sc.track[rows] != cars.track[i]]
    hit = boxes_overlap(cars.x[i], cars.y[i], cars.ux[i], cars.uy[i], cars.length[i], cars.width[i],
                        sc.x[rows], sc.y[rows], sc.ux[rows], sc.uy[rows], sc.length[rows], sc.width[rows])
    assert hit.any()


@pytest.mark.parametrize("action, kind", [((-6.0, 0.0), "rear"), ((3.0, 0.0), "front"),
                                          ((0.0, 0.02), "side")])
def test_collisions_are_told_apart(small_scene, action, kind):
    """A car that stops is run into from behind; one that speeds up runs into the car ahead;
    one that turns hard meets the vehicles alongside."""
    sc = small_scene
    sim = ReplaySimulator(sc)
    cars = sim.start(sc.episodes["all"])
    while not cars.done.all():
        sim.step(cars, np.tile(action, (len(cars.track), 1)))
    assert np.array_equal(cars.hit > 0, cars.collision)  # every collision, and only those
    kinds = np.bincount(cars.hit[cars.collision], minlength=len(HIT_KINDS))
    assert kinds.argmax() == HIT_KINDS.index(kind) and kinds.max() > 0.7 * kinds.sum(), kinds
    if kind in ("rear", "front"):  # never the opposite end
        assert kinds[HIT_KINDS.index("front" if kind == "rear" else "rear")] == 0, kinds


def test_splits_are_disjoint_and_stable(small_scene):
    sc = small_scene
    parts = [set(sc.episodes[s].tolist()) for s in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(sc.episodes["all"].tolist())
    assert len(parts[0]) == pytest.approx(0.8 * len(sc.episodes["all"]), abs=1)


def test_idm_known_answers():
    from traffic_sim.follow import ACC_MAX, GAP_MIN, HEADWAY, SPEED_DESIRED, idm_acceleration

    assert idm_acceleration(0.0, np.inf, 0.0) == pytest.approx(ACC_MAX)  # free road, standing
    v = 10.0  # at the equilibrium gap behind a leader of the same speed: only the free-road term
    assert idm_acceleration(v, GAP_MIN + v * HEADWAY, v) == pytest.approx(-ACC_MAX * (v / SPEED_DESIRED) ** 4)
    assert idm_acceleration(v, 3.0, 0.0) < -10.0  # closing fast on a stopped car: brake hard
    assert idm_acceleration(v, 100.0, v) > 0.0  # far behind: speed up


def test_idm_parameters_set_the_equilibrium_gap():
    from traffic_sim.follow import IDM, idm_acceleration

    idm = IDM(headway=0.5, acc_max=1.0, gap_min=2.0, speed_desired=20.0)
    v = 10.0  # 2 m + 10 m/s x 0.5 s = 7 m: only the free-road term, -1 x (10 / 20)^4
    assert idm_acceleration(v, 7.0, v, idm) == pytest.approx(-1.0 / 16)
    assert idm_acceleration(0.0, np.inf, 0.0, idm) == pytest.approx(1.0)
    assert idm_acceleration(v, 11.0, v) < 0.0 < idm_acceleration(v, 11.0, v, idm)  # default wants 11.5 m


def test_a_driver_without_images_drives_through_run_episodes(small_scene):
    """A callable with ``observes = False`` gets no images and drives as the simulator's own
    ``follow`` does, episode for episode."""
    from traffic_sim.evaluate import run_episodes
    from traffic_sim.follow import follow_actions

    sc = small_scene
    sim = ReplaySimulator(sc)
    seen = []

    class Privileged:
        observes = False

        def __call__(self, obs, states, cars):
            seen.append(obs)
            return follow_actions(sim, cars)

    tracks = sc.episodes["all"][:20]
    mine, ref = run_episodes(sc, tracks, Privileged()), run_episodes(sc, tracks, "follow")
    assert seen and all(o is None for o in seen)
    for key in ("success", "collision", "hit", "distance"):
        np.testing.assert_array_equal(mine[key], ref[key])


def test_follow_drives_where_no_action_crashes(small_scene):
    sc = small_scene
    sim = ReplaySimulator(sc)
    out = {}
    for policy in ("no-action", "follow"):
        cars = sim.start(sc.episodes["all"])
        while not cars.done.all():
            sim.step(cars, builtin_actions(sim, cars, policy))
        out[policy] = cars
    front = HIT_KINDS.index("front")
    assert (out["no-action"].hit == front).mean() > 0.3
    assert (out["follow"].hit == front).mean() < 0.02  # it does not run into the car ahead
    assert out["follow"].success.mean() > 0.6 > out["no-action"].success.mean()


def _tracks_scene(specs):
    """A scene on the synthetic I-80 road from hand-made tracks at constant speed along the
    road: ``specs`` of (track id, lateral position [m] of y, y [m] at frame 1, speed [m/s],
    frames, lane of y)."""
    import pandas as pd

    from traffic_sim.ngsim import COLUMNS, DTYPES
    from traffic_sim.scene import Scene

    rows = []
    for tid, x_of_y, y0, v, frames, lane_of_y in specs:
        for f in range(frames):
            y = y0 + v * f * DT
            rows.append(dict(vehicle_id=tid + 1, frame=f + 1, total_frames=frames, global_time=100 * f,
                             x=x_of_y(y), y=y, global_x=0.0, global_y=0.0, length=4.5, width=1.8, v_class=2,
                             speed=v, acc=0.0, lane=lane_of_y(y), preceding=0, following=0,
                             space_headway=0.0, time_headway=0.0, location="synthetic-i80", track_id=tid))
    df = pd.DataFrame(rows, columns=list(COLUMNS)).astype({k: v for k, v in DTYPES.items() if k != "location"})
    df["location"] = df["location"].astype("category")
    return Scene.from_table(df)


def _ramp_scene(platoon: bool):
    """The synthetic I-80 road: one car coming down the on-ramp (lane 7) at 10 m/s, recorded
    merging into lane 6 before the ramp's end, and with ``platoon`` a closed column of vehicles
    in lane 6 beside it (3.5 m gaps at 10 m/s) for the first 20 s."""
    from traffic_sim.roads import LANE_WIDTH

    ramp, lane6 = 6.5 * LANE_WIDTH, 5.5 * LANE_WIDTH
    specs = [(0, lambda y: float(np.interp(y, [200.0, 230.0], [ramp, lane6])), 140.0, 10.0, 450,
              lambda y: 7 if y < 215.0 else 6)]
    if platoon:  # front to back along lane 6, 8 m apart, through the ramp's end for 20 s
        specs += [(1 + k, lambda y: lane6, 260.0 - 8.0 * k, 10.0, 200, lambda y: 6) for k in range(60)]
    return _tracks_scene(specs)


@pytest.mark.parametrize("speed, evades", [(14.0, True), (10.0, False)])
def test_follow_evade_speeds_away_from_a_vehicle_closing_in_from_behind(speed, evades):
    """The car at 10 m/s in lane 3, a vehicle behind it 6 m from its rear: at 14 m/s it would
    reach the car in 1.5 s (< 2 s), and the car accelerates at the limit; at the car's own
    speed it never would, and car following is left as it is."""
    from traffic_sim.follow import ACC_LIMITS, EVADE_IDM, Evasion, follow_actions, follower_actions
    from traffic_sim.roads import LANE_WIDTH

    lane3, start = 2.5 * LANE_WIDTH, 19  # the car takes over at the last of its 20 frames of history
    at = 150.0  # [m] the car's front at the takeover
    sc = _tracks_scene([(0, lambda y: lane3, at - 10.0 * start * DT, 10.0, 200, lambda y: 3),
                        (1, lambda y: lane3, at - 4.5 - 6.0 - speed * start * DT, speed, 200, lambda y: 3)])
    sim = ReplaySimulator(sc)
    cars = sim.start([0])
    assert cars.y[0] == pytest.approx(at)
    following = follow_actions(sim, cars, merge=True, idm=EVADE_IDM)[:, 0]
    evading = follow_actions(sim, cars, merge=True, idm=EVADE_IDM, evade=Evasion())[:, 0]
    assert following[0] < 1.0  # free road ahead at 10 m/s: IDM with a max. of 1 m/s^2
    assert evading[0] == (ACC_LIMITS[1] if evades else following[0])
    np.testing.assert_array_equal(builtin_actions(sim, cars, "follow-evade")[:, 0], evading)
    np.testing.assert_array_equal(follower_actions(sim, cars, "follow-evade", evade=False)[:, 0], following)


@pytest.mark.parametrize("ahead, expect", [(2.0, "brake"), (-2.0, "accelerate")])
def test_follow_evade_makes_way_for_a_vehicle_moving_in_from_the_side(ahead, expect):
    """A vehicle in lane 4 alongside the car in lane 3 (its centre ``ahead`` metres further
    along), drifting towards it at 1 m/s, 0.7 m from it: it would touch the car within 1.5 s.
    Ahead of the car's centre, the car brakes; behind it, the car speeds up."""
    from traffic_sim.follow import ACC_LIMITS, EVADE_IDM, Evasion, follow_actions
    from traffic_sim.roads import LANE_WIDTH

    lane3, start, at, v = 2.5 * LANE_WIDTH, 19, 150.0, 10.0
    x_at = lane3 + 1.8 + 0.7  # [m] its centre beside the car's, 0.7 m between their sides
    sc = _tracks_scene([(0, lambda y: lane3, at - v * start * DT, v, 200, lambda y: 3),
                        (1, lambda y: x_at - (y - at - ahead) / v, at + ahead - v * start * DT, v, 200,
                         lambda y: 4)])
    sim = ReplaySimulator(sc)
    cars = sim.start([0])
    following = follow_actions(sim, cars, merge=True, idm=EVADE_IDM)[:, 0]
    evading = follow_actions(sim, cars, merge=True, idm=EVADE_IDM, evade=Evasion())[:, 0]
    assert -1.0 < following[0] < 1.0  # nothing ahead in its lane
    assert evading[0] == (0.5 * ACC_LIMITS[0] if expect == "brake" else ACC_LIMITS[1])


@pytest.mark.parametrize("drift, yields", [(1.0, True), (0.5, False), (0.0, False)])
def test_follow_yield_follows_a_vehicle_cutting_in_before_it_is_in_the_lane(drift, yields):
    """A vehicle in lane 4, 5 m ahead of the car in lane 3 at the same 10 m/s along the road, drifting
    towards it at ``drift`` m/s, 1.2 m from overlapping it (1.5 m from overlapping it by more
    than LANE_MARGIN): at 1 m/s it is in the car's way within the 2 s of ``cut_in``, and
    follow-yield follows it (car following with a 5 m gap: braking) where follow-evade, with
    nothing in its lane, keeps accelerating; at 0.5 m/s (3 s) or not drifting, the two agree."""
    from traffic_sim.follow import EVADE_IDM, GAP_MIN, LANE_MARGIN, YIELD_EVASION, Evasion, follow_actions, \
        idm_acceleration
    from traffic_sim.roads import LANE_WIDTH

    lane3, start, at, v, ahead = 2.5 * LANE_WIDTH, 19, 150.0, 10.0, 9.5  # its front 9.5 m ahead: a 5 m gap
    x_at = lane3 + 1.8 + 1.2  # [m] its centre at the takeover: 1.2 m between their sides
    sc = _tracks_scene([(0, lambda y: lane3, at - v * start * DT, v, 200, lambda y: 3),
                        (1, lambda y: x_at - drift * (y - at - ahead) / v, at + ahead - v * start * DT, v, 200,
                         lambda y: 4)])
    sim = ReplaySimulator(sc)
    cars = sim.start([0])
    evading = follow_actions(sim, cars, merge=True, idm=EVADE_IDM, evade=Evasion())[0, 0]
    yielding = builtin_actions(sim, cars, "follow-yield")[0, 0]
    assert YIELD_EVASION.cut_in == 2.0 and LANE_MARGIN == 0.3 and GAP_MIN < 5.0
    assert evading == pytest.approx(float(idm_acceleration(v, np.inf, v, EVADE_IDM)))  # free road
    if yields:
        # its rear 5 m ahead (4.5 m long, turned by its drift), at its speed over the ground
        speed = np.hypot(v, drift)
        gap = ahead - 4.5 * v / speed
        assert yielding == pytest.approx(float(idm_acceleration(v, gap, speed, EVADE_IDM)), rel=1e-3)
        assert yielding < 0 < evading
    else:
        assert yielding == evading


@pytest.mark.parametrize("ahead", [50.0, 20.0])
def test_lane_end_sight_keeps_a_lane_end_out_of_sight_out_of_car_following(ahead):
    """On the on-ramp with no gap beside (the platoon), the car's front ``ahead`` metres
    before the ramp's end at 10 m/s: follow-merge slows for it; with the lane's end counted
    only within LOOK_AHEAD of the car's centre (what its state image shows), it does not at
    50 m (free-road IDM, nothing ahead in its lane) and slows the same at 20 m."""
    from traffic_sim.follow import IDM, follow_actions, idm_acceleration
    from traffic_sim.raster import LOOK_AHEAD
    from traffic_sim.roads import LANE_WIDTH

    sc = _ramp_scene(platoon=True)
    sim = ReplaySimulator(sc)
    cars = sim.start([0])
    cars.y[0] = sc.road.lane(7).y_end - ahead
    cars.x[0], cars.ux[0], cars.uy[0] = 6.5 * LANE_WIDTH, 0.0, 1.0
    assert sc.road.lane_at(cars.center_x, cars.center_y)[0] == 7
    seen = follow_actions(sim, cars, merge=True)[0, 0]
    sighted = follow_actions(sim, cars, merge=True, lane_end_sight=LOOK_AHEAD)[0, 0]
    free = float(idm_acceleration(cars.v[0], np.inf, cars.v[0], IDM()))
    assert seen < free - 1.0  # IDM behind a standing obstacle STOP_MARGIN before the end
    if ahead + 0.5 * cars.length[0] > LOOK_AHEAD:
        assert sighted == pytest.approx(free)
    else:
        assert sighted == seen


@pytest.mark.parametrize("ahead", [120.0, 60.0])
def test_follow_wait_brakes_evenly_for_its_waiting_place_and_does_not_steer_standing(ahead):
    """On the on-ramp with no gap beside (the platoon), the car's front ``ahead`` metres before
    the ramp's end at 16 m/s: stopping STOP_MARGIN short of the end takes v^2 / (2 (ahead -
    STOP_MARGIN)); at 120 m that is under WAIT_BRAKE and follow-wait brakes as follow-evade
    does, at 60 m it is more and it brakes at exactly that (IDM alone brakes less there).
    Standing 1 m left of the ramp's centre, turned towards lane 6, follow-evade steers back
    and follow-wait does not steer."""
    from traffic_sim.follow import STILL, STOP_MARGIN, WAIT_BRAKE
    from traffic_sim.roads import LANE_WIDTH

    sc = _ramp_scene(platoon=True)
    sim = ReplaySimulator(sc)
    cars = sim.start([0])
    cars.y[0] = sc.road.lane(7).y_end - ahead
    cars.x[0], cars.ux[0], cars.uy[0], cars.v[0] = 6.5 * LANE_WIDTH, 0.0, 1.0, 16.0
    evade, wait = builtin_actions(sim, cars, "follow-evade")[0], builtin_actions(sim, cars, "follow-wait")[0]
    even = 16.0 ** 2 / (2 * (ahead - STOP_MARGIN))
    if even < WAIT_BRAKE:
        assert wait[0] == evade[0]
    else:
        assert wait[0] == pytest.approx(-even) and evade[0] > -even + 0.5
    cars.x[0] -= 1.0
    cars.ux[0], cars.uy[0] = -0.1, float(np.sqrt(1 - 0.01))
    cars.v[0] = 0.5 * STILL
    evade, wait = builtin_actions(sim, cars, "follow-evade")[0], builtin_actions(sim, cars, "follow-wait")[0]
    assert evade[1] > 0.5 and wait[1] == 0.0


@pytest.mark.parametrize("platoon", [False, True])
def test_follow_merge_leaves_a_ramp_that_ends_and_waits_for_a_gap(platoon):
    from traffic_sim.follow import GAP_MIN, STOP_MARGIN, merge_targets

    sc = _ramp_scene(platoon)
    assert {k: v.lane_id for k, v in merge_targets(sc.road).items()} == {7: 6}
    end = sc.road.lane(7).y_end
    sim = ReplaySimulator(sc)
    out = {}
    for policy in ("follow", "follow-merge"):
        cars = sim.start([0])
        nearest, waited = np.inf, 0
        while not cars.done.all():
            sim.step(cars, builtin_actions(sim, cars, policy))
            if sc.road.lane_at(cars.center_x, cars.center_y)[0] == 7:
                nearest = min(nearest, end - cars.y[0])
                if cars.v[0] < 0.1:  # standing: where it waits
                    waited += 1
                    wait_at = end - cars.y[0]
        out[policy] = (cars, nearest, waited)
    assert out["follow"][0].off_road[0]  # plain car following drives off the ramp's end
    cars, nearest, waited = out["follow-merge"]
    assert cars.success[0] and not cars.collision[0]
    if platoon:  # no gap for 20 s: it stops short of the end and waits, then merges behind the column
        # IDM stands its jam distance behind the obstacle at STOP_MARGIN before the end
        assert wait_at == pytest.approx(STOP_MARGIN + GAP_MIN, abs=0.5) and waited > 50
        assert nearest > 0  # and it was over before the end
    else:  # a free lane beside: it merges on the way, well before the end
        assert nearest > 3 * STOP_MARGIN and waited == 0

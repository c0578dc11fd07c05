"""Synthetic traffic: car-following and lane-change checks with known answers, and the
properties of the generated files (no overlaps, realistic density, determinism)."""

import dataclasses

import numpy as np
import pytest

from traffic_sim.generator import DT, GeneratorConfig, TrafficGenerator, generate

EMPTY = GeneratorConfig(main_flow=0.0, ramp_flow=0.0, open_s=(1e9, 1e9), blocked_s=(1.0, 1.0))


def _empty_road(**overrides):
    gen = TrafficGenerator(dataclasses.replace(EMPTY, **overrides))
    gen.blocked[:] = False
    gen.phase_end[:] = np.inf
    return gen


def _run(gen, seconds):
    for k in range(int(round(seconds / DT))):
        gen.step(k * DT)


def test_follower_stops_at_the_jam_distance_behind_a_stopped_leader():
    gen = _empty_road()
    leader = gen.add_vehicle(2, 300.0, 0.0, v0=1e-3, length=4.5)
    follower = gen.add_vehicle(2, 150.0, 15.0, v0=30.0, T=1.2, a=1.4, b=2.0)
    _run(gen, 90.0)
    veh = gen.veh
    gap = veh.y[leader] - veh.length[leader] - veh.y[follower]
    assert gap == pytest.approx(EMPTY.jam_distance, abs=0.05)
    assert veh.v[follower] == pytest.approx(0.0, abs=0.05)  # [m/s] creeping at most
    assert gen.clamps == 0  # the IDM kept the distance on its own


def test_free_car_reaches_its_desired_speed():
    gen = _empty_road()
    car = gen.add_vehicle(1, -140.0, 10.0, v0=25.0, a=1.4)
    _run(gen, 35.0)
    # IDM free road: dv/dt = a (1 - (v/v0)^4) -> v -> v0.
    assert gen.veh.v[car] == pytest.approx(25.0, abs=0.5)


def _lane_change_scene(follower_y, **overrides):
    """Car at 100 m in lane index 2 stuck behind a slow truck, a car beside it on the left,
    and a fast car in lane index 3 at `follower_y`."""
    settings = dict(change_prob=1.0, change_cooldown_s=0.0, keep_right_bias=0.0)
    gen = _empty_road(**{**settings, **overrides})
    car = gen.add_vehicle(2, 100.0, 12.0, v0=30.0)
    gen.add_vehicle(2, 120.0, 5.0, v0=5.0, length=12.0)  # slow truck ahead
    gen.add_vehicle(1, 101.0, 12.0, v0=12.0)  # beside the car in the left lane: blocks it
    other = gen.add_vehicle(3, follower_y, 25.0, v0=30.0)
    return gen, car, other


def test_no_lane_change_when_the_new_follower_is_too_close():
    gen, car, _ = _lane_change_scene(follower_y=97.0)  # beside the car: unsafe
    gen.step(0.0)
    assert gen.veh.lane[car] == 2 and gen.veh.prog[car] == 1.0


def test_lane_change_when_the_gap_is_safe():
    gen, car, _ = _lane_change_scene(follower_y=-100.0)  # 200 m behind: safe
    gen.step(0.0)
    assert gen.veh.prog[car] < 1.0
    assert gen.veh.lane[car] == 3  # started a change to the free lane


def test_lane_change_is_a_smooth_lateral_move():
    gen, car, _ = _lane_change_scene(follower_y=-100.0, change_cooldown_s=1e9)
    xs = [gen.veh.x[car]]
    for k in range(200):
        gen.step(k * DT)
        xs.append(gen.veh.x[car])
    xs = np.array(xs)
    lateral_speed = np.abs(np.diff(xs)) / DT
    assert abs(xs[-1] - xs[0]) == pytest.approx(3.6576, abs=1e-6)  # exactly one lane
    assert lateral_speed.max() < 2.0  # [m/s] no jumps


@pytest.fixture(scope="module")
def traffic():
    return generate(GeneratorConfig(minutes=2.0, seed=3))


def _overlaps(frame_rows):
    y = frame_rows["y"].to_numpy()
    x = frame_rows["x"].to_numpy()
    length = frame_rows["length"].to_numpy()
    width = frame_rows["width"].to_numpy()
    # Axis-aligned boxes: front centre (x, y), extending `length` backwards.
    lon = (y[:, None] > y[None, :] - length[None, :]) & (y[None, :] > y[:, None] - length[:, None])
    lat = np.abs(x[:, None] - x[None, :]) < 0.5 * (width[:, None] + width[None, :])
    both = lon & lat
    np.fill_diagonal(both, False)
    return int(both.sum() // 2)


def test_recorded_vehicles_never_overlap(traffic):
    total = sum(_overlaps(rows) for _, rows in traffic.groupby("frame"))
    assert total == 0


def test_overlap_check_detects_an_overlap(traffic):
    rows = traffic[traffic["frame"] == traffic["frame"].min()].copy()
    rows.iloc[1, rows.columns.get_loc("x")] = rows.iloc[0]["x"]
    rows.iloc[1, rows.columns.get_loc("y")] = rows.iloc[0]["y"] - 1.0
    assert _overlaps(rows) >= 1


def test_density_and_stop_and_go(traffic):
    in_view = traffic.groupby("frame").size()
    assert 100 <= in_view.mean() <= 200
    speed = traffic["speed"].to_numpy()
    assert np.percentile(speed, 95) > 12.0  # [m/s] moving phases
    per_vehicle = traffic.groupby("vehicle_id")["speed"]
    # Stop and go: most drivers slow down and speed up by more than 8 m/s within 500 m, and
    # a good share of them come (nearly) to a stop.
    assert ((per_vehicle.max() - per_vehicle.min()) > 8.0).mean() > 0.5
    assert (per_vehicle.min() < 2.0).mean() > 0.1
    assert set(traffic["lane"].unique()) <= {1, 2, 3, 4, 5, 6, 7}
    assert {1, 2, 3, 4, 5, 6, 7} <= set(traffic["lane"].unique())


def test_vehicle_sizes_and_mix(traffic):
    per_vehicle = traffic.drop_duplicates("vehicle_id")
    cars = per_vehicle[per_vehicle["v_class"] == 2]
    assert len(cars) / len(per_vehicle) > 0.85
    assert cars["length"].between(3.5, 6.0).all() and cars["width"].between(1.5, 2.2).all()
    trucks = per_vehicle[per_vehicle["v_class"] == 3]
    assert trucks["length"].between(7.0, 20.0).all()


def test_ids_in_order_of_entry_and_positions_advance(traffic):
    first = traffic.groupby("vehicle_id")["frame"].min()
    assert first.is_monotonic_increasing
    dy = traffic.sort_values(["vehicle_id", "frame"]).groupby("vehicle_id")["y"].diff().dropna()
    assert (dy >= -1e-9).all()  # nobody reverses
    # Positions are consistent with speeds: y advances by about v * dt per frame.
    t = traffic.sort_values(["vehicle_id", "frame"])
    same = t["vehicle_id"].to_numpy()[1:] == t["vehicle_id"].to_numpy()[:-1]
    step = np.diff(t["y"].to_numpy())[same]
    mean_v = 0.5 * (t["speed"].to_numpy()[1:] + t["speed"].to_numpy()[:-1])[same]
    assert np.max(np.abs(step - mean_v * DT)) < 0.05


def _file_bytes(tmp_path, name, **settings):
    from traffic_sim.ngsim import write_raw

    path = tmp_path / name
    write_raw(generate(GeneratorConfig(minutes=0.5, warmup_s=60.0, **settings)), path)
    return path.read_bytes()


def test_same_seed_same_bytes(tmp_path):
    a = _file_bytes(tmp_path, "a.txt", seed=3)
    assert a == _file_bytes(tmp_path, "b.txt", seed=3)
    assert a != _file_bytes(tmp_path, "c.txt", seed=4)

"""Real NGSIM files drive the same pipeline: the raw layout under an I-80 or US-101 path and
the combined open-data CSV become scenes on each location's own road, and episodes run."""

import numpy as np
import pandas as pd
import pytest

from traffic_sim.evaluate import run_episodes
from traffic_sim.generator import GeneratorConfig, TrafficGenerator
from traffic_sim.loading import load_scene
from traffic_sim.ngsim import CSV_COLUMNS, RAW_COLUMNS, write_raw
from traffic_sim.roads import i80_road, us101_road


@pytest.fixture(scope="module")
def i80_files(tmp_path_factory):
    """Traffic on the I-80 road written as a raw per-location file and as the combined CSV."""
    table = TrafficGenerator(GeneratorConfig(minutes=2.0, seed=5, warmup_s=300), i80_road()).run()
    root = tmp_path_factory.mktemp("ngsim")
    raw = root / "i80" / "trajectories-0400-0415.txt"
    raw.parent.mkdir()
    write_raw(table, raw)
    # The combined export: header, BOM, 25 columns, quoted thousands, Location last, shuffled.
    frame = pd.read_csv(raw, sep=r"\s+", header=None, names=list(RAW_COLUMNS), dtype=str)
    for col in CSV_COLUMNS:
        if col not in frame.columns and col != "Location":
            frame[col] = ""
    frame["Location"] = "i-80"
    frame["Total_Frames"] = frame["Total_Frames"].map(lambda v: f"{int(v):,}")
    frame = frame[list(CSV_COLUMNS)].sample(frac=1.0, random_state=0)
    csv = root / "export.csv"
    with open(csv, "w", encoding="utf-8-sig", newline="") as fh:
        frame.to_csv(fh, index=False, lineterminator="\r\n")
    return raw, csv


def test_raw_i80_file_takes_the_i80_road_and_is_smoothed(i80_files):
    raw, _ = i80_files
    scene = load_scene(raw)
    assert scene.location == "i-80" and scene.road.name == "i-80"
    assert scene.road.lane(7).kind == "on-ramp"
    outcome = run_episodes(scene, scene.episodes["all"], "human")
    assert len(outcome["success"]) > 100
    assert outcome["success"].mean() >= 0.98
    # the on-ramp ends: car following drives off its end, follow-merge merges into lane 6
    tracks = scene.episodes["all"]
    rows = scene.ep_row[tracks]
    ramp = tracks[scene.road.lane_at(scene.tr_x[rows], scene.tr_y[rows]) == 7]
    assert len(ramp) >= 3
    follow, merge = (run_episodes(scene, ramp, p) for p in ("follow", "follow-merge"))
    assert follow["off_road"].mean() > 0.9
    assert not merge["off_road"].any() and merge["success"].sum() > len(ramp) // 2 > follow["success"].sum()


def test_csv_export_gives_the_same_scene(i80_files):
    raw, csv = i80_files
    a, b = load_scene(raw), load_scene(csv)
    assert b.location == "i-80"
    for name in ("frame", "x", "y", "length", "width"):
        assert np.allclose(getattr(a, name), getattr(b, name))
    assert all(np.array_equal(a.episodes[k], b.episodes[k]) for k in ("train", "val", "test"))


def test_us101_file_takes_the_us101_road(tmp_path):
    table = TrafficGenerator(GeneratorConfig(minutes=2.0, seed=2, warmup_s=300), us101_road()).run()
    path = tmp_path / "us-101" / "trajectories-0750am-0805am.txt"
    path.parent.mkdir()
    write_raw(table, path)
    scene = load_scene(path)
    assert scene.location == "us-101" and scene.road.name == "us-101"
    assert {lane.lane_id for lane in scene.road.lanes} == {1, 2, 3, 4, 5, 6, 7, 8}
    outcome = run_episodes(scene, scene.episodes["all"], "human")
    assert outcome["success"].mean() >= 0.98
    # its on-ramp goes on as the auxiliary lane: nothing to merge from, follow-merge is follow
    follow, merge = (run_episodes(scene, scene.episodes["all"], p) for p in ("follow", "follow-merge"))
    assert np.array_equal(follow["success"], merge["success"]) and np.array_equal(follow["hit"], merge["hit"])


def test_unknown_location_asks_for_it(tmp_path):
    from traffic_sim.cli_util import UserError

    table = TrafficGenerator(GeneratorConfig(minutes=0.5, seed=2, warmup_s=60), i80_road()).run()
    path = tmp_path / "trajectories.txt"
    write_raw(table, path)
    with pytest.raises(UserError, match="--location"):
        load_scene(path)
    assert load_scene(path, location="i-80").road.name == "i-80"

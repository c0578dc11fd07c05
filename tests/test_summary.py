"""Tests of the trajectory file summary (traffic_sim.summary)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from traffic_sim.ngsim import FT, read_trajectories
from traffic_sim.summary import format_summary, summarize

# three vehicles: 1 (auto, lane 1, frames 1-5, 30 ft/s, 15.0 x 6.0 ft),
# 2 (truck, lane 2, frames 3-6, 20 ft/s, 40.0 x 8.0 ft),
# 3 (motorcycle, lane 1, frames 6-7, 50 ft/s, 7.0 x 3.0 ft)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "i80" / "summary-three-vehicles.txt"


@pytest.fixture(scope="module")
def summary():
    return summarize(read_trajectories(FIXTURE))


def test_counts(summary):
    s = summary
    assert s["locations"] == ["i-80"]
    assert s["rows"] == 11
    assert s["vehicles"] == 3
    assert s["vehicle_ids"] == 3
    assert s["frames"] == 7
    assert (s["first_frame"], s["last_frame"]) == (1, 7)
    assert s["duration_s"] == pytest.approx(0.7)
    assert s["lanes"] == {1: 7, 2: 4}
    assert s["classes"] == {1: 1, 2: 1, 3: 1}


def test_vehicles_in_view(summary):
    # per frame: 1, 1, 2, 2, 2, 2, 1
    assert summary["in_view"]["min"] == 1
    assert summary["in_view"]["max"] == 2
    assert summary["in_view"]["mean"] == pytest.approx(11 / 7)


def test_speed_percentiles(summary):
    # speeds in ft/s: 20 x4, 30 x5, 50 x2
    mps = summary["speed_mps"]
    assert list(mps) == [5, 25, 50, 75, 95]
    assert mps[5] == pytest.approx(20 * FT)
    assert mps[25] == pytest.approx(20 * FT)
    assert mps[50] == pytest.approx(30 * FT)
    assert mps[75] == pytest.approx(30 * FT)
    assert mps[95] == pytest.approx(50 * FT)
    assert summary["speed_kmh"][50] == pytest.approx(30 * FT * 3.6)


def test_sizes_by_class(summary):
    sizes = summary["size_by_class"]
    assert sizes[3]["length"] == pytest.approx(40 * FT)
    assert sizes[3]["width"] == pytest.approx(8 * FT)
    assert sizes[1]["length"] == pytest.approx(7 * FT)
    assert sizes[2]["width"] == pytest.approx(6 * FT)


def test_format_summary(summary):
    text = format_summary(summary, FIXTURE)
    lines = text.splitlines()
    assert str(FIXTURE) in lines[0]
    assert any("i-80" in line for line in lines)
    assert any(line.split()[:2] == ["rows", "11"] for line in lines)
    assert "0.7 s" in text
    assert "min 1  mean 1.6  max 2" in text
    assert any(line.split() == ["3", "truck", "1", "12.19", "2.44"] for line in lines), text
    assert any(line.split()[:1] == ["km/h"] for line in lines)


def test_mean_sizes_are_per_vehicle_not_per_row():
    # a long-lived car and a short-lived truck: row weighting would skew the mean
    df = read_trajectories(FIXTURE)
    df = df.assign(v_class=np.int8(2))
    s = summarize(df)
    assert s["classes"] == {2: 3}
    assert s["size_by_class"][2]["length"] == pytest.approx((15 + 40 + 7) / 3 * FT)


def test_empty_table():
    df = read_trajectories(FIXTURE).iloc[:0]
    s = summarize(df)
    assert s["rows"] == 0 and s["vehicles"] == 0
    assert "rows" in format_summary(s, "empty")


def test_large_table():
    n = 1_500_000
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "vehicle_id": rng.integers(1, 3000, n),
            "frame": np.sort(rng.integers(0, 9000, n)),
            "lane": rng.integers(1, 8, n).astype(np.int16),
            "v_class": rng.integers(1, 4, n).astype(np.int8),
            "speed": rng.uniform(0, 30, n),
            "length": rng.uniform(3, 15, n),
            "width": rng.uniform(1, 2.6, n),
            "location": pd.Categorical(np.repeat(["i-80"], n)),
            "track_id": rng.integers(0, 3000, n),
        }
    )
    s = summarize(df)
    assert s["rows"] == n

"""Throughput of the NGSIM reader and writer.

    python benchmarks/bench_read.py [--rows N] [--repeat K]

Synthesises N rows of I-80-like traffic (6 lanes, vehicles crossing a 1,650 ft
section at 15-65 ft/s), writes them with ``write_raw`` into a temporary folder,
then reports the best of K timings of ``write_raw``, ``read_trajectories`` and,
as a peer, ``pandas.read_csv(sep=r"\\s+")`` of the same file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from traffic_sim.ngsim import FT, read_trajectories, write_raw  # noqa: E402

ROAD_LENGTH = 1650.0 * FT  # [m]
LANE_WIDTH = 12.0 * FT  # [m]
N_LANES = 6
START_MS = 1113433136100  # [ms] Global_Time of frame 0 (13 Apr 2005, I-80)


def synthesize(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """A canonical table of ``n_rows`` plausible vehicle rows."""
    rng = np.random.default_rng(seed)
    speeds, lengths = [], []
    total = 0
    while total < n_rows:  # draw vehicles in batches until enough rows
        v = rng.uniform(15.0, 65.0, 4096) * FT  # [m/s]
        frames = np.ceil(ROAD_LENGTH / (v * 0.1)).astype(np.int64)
        speeds.append(v)
        lengths.append(frames)
        total += int(frames.sum())
    v = np.concatenate(speeds)
    frames = np.concatenate(lengths)
    last = int(np.searchsorted(np.cumsum(frames), n_rows)) + 1
    v, frames = v[:last], frames[:last]
    n_veh = len(v)
    # entries spread so that about 150 vehicles are in view at once
    enter = np.sort(rng.integers(0, max(1, int(frames.sum() // 150)), n_veh))
    vid = np.arange(1, n_veh + 1)
    cls = rng.choice([1, 2, 3], n_veh, p=[0.01, 0.95, 0.04])
    length = np.where(cls == 3, rng.uniform(30, 70, n_veh), np.where(cls == 1, 7.0, rng.uniform(12, 19, n_veh)))
    length = np.round(length, 1) * FT
    width = np.round(np.where(cls == 3, 8.5, np.where(cls == 1, 3.0, rng.uniform(5.5, 7.0, n_veh))), 1) * FT
    lane = rng.integers(1, N_LANES + 1, n_veh)

    row_veh = np.repeat(np.arange(n_veh), frames)[:n_rows]
    start = np.repeat(np.cumsum(frames) - frames, frames)[:n_rows]
    k = np.arange(len(row_veh)) - start  # frame index within the track
    jitter = rng.normal(0.0, 0.3, len(row_veh))  # [m/s]
    speed = np.maximum(v[row_veh] + jitter, 0.0)
    frame = enter[row_veh] + k
    x = (lane[row_veh] - 0.5) * LANE_WIDTH + rng.normal(0.0, 0.15, len(row_veh))
    y = v[row_veh] * 0.1 * k
    heading = np.deg2rad(-30.0)
    headway = rng.uniform(8.0, 120.0, len(row_veh))
    return pd.DataFrame(
        {
            "vehicle_id": vid[row_veh],
            "frame": frame,
            "total_frames": frames[row_veh],
            "global_time": START_MS + 100 * frame,
            "x": x,
            "y": y,
            "global_x": 1841950.0 + np.cos(heading) * y - np.sin(heading) * x,
            "global_y": 650230.0 + np.sin(heading) * y + np.cos(heading) * x,
            "length": length[row_veh],
            "width": width[row_veh],
            "v_class": cls[row_veh].astype(np.int8),
            "speed": speed,
            "acc": rng.normal(0.0, 0.6, len(row_veh)),
            "lane": lane[row_veh].astype(np.int16),
            "preceding": np.where(rng.random(len(row_veh)) < 0.8, np.maximum(vid[row_veh] - 6, 0), 0),
            "following": np.where(rng.random(len(row_veh)) < 0.8, vid[row_veh] + 6, 0),
            "space_headway": headway,
            "time_headway": np.where(speed > 0, np.minimum(headway / np.maximum(speed, 1e-9), 9999.99), 9999.99),
        }
    )


def raw_to_combined_csv(raw_path: str, csv_path: str, location: str = "i-80") -> None:
    """Rewrite a raw file in the combined open-data CSV layout (header, 25
    columns, UTF-8 BOM, CRLF, quoted numbers with thousands separators)."""
    from traffic_sim.ngsim import CSV_COLUMNS

    extras = [b"0"] * 6
    loc = location.encode()
    out = [("\ufeff" + ",".join(CSV_COLUMNS)).encode("utf-8")]
    with open(raw_path, "rb") as fh:
        for line in fh:
            f = line.split()
            if len(f[2]) > 3:  # Total_Frames >= 1000
                f[2] = b'"%s,%s"' % (f[2][:-3], f[2][-3:])
            if f[17] == b"9999.99":
                f[17] = b'"9,999.99"'
            out.append(b",".join(f[:14] + extras + f[14:] + [loc]))
    with open(csv_path, "wb") as fh:
        fh.write(b"\r\n".join(out) + b"\r\n")


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows to synthesise (default 1,000,000)")
    ap.add_argument("--repeat", type=int, default=3, help="timings per measurement; the best is kept")
    ap.add_argument("--csv", action="store_true", help="also time the combined open-data CSV layout")
    args = ap.parse_args(argv)

    table = synthesize(args.rows)
    n = len(table)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "i80-trajectories-bench.txt")
        t_write = best_of(lambda: write_raw(table, path), args.repeat)
        size_mb = os.path.getsize(path) / 1e6
        t_read = best_of(lambda: read_trajectories(path), args.repeat)
        t_pandas = best_of(lambda: pd.read_csv(path, sep=r"\s+", header=None), args.repeat)
        check = read_trajectories(path)
        assert len(check) == n, (len(check), n)
        if args.csv:
            csv_path = os.path.join(tmp, "combined.csv")
            raw_to_combined_csv(path, csv_path)
            t_csv = best_of(lambda: read_trajectories(csv_path), args.repeat)
            t_csv_pandas = best_of(lambda: pd.read_csv(csv_path, thousands=","), args.repeat)
            assert len(read_trajectories(csv_path)) == n

    print(f"rows: {n:,}  file: {size_mb:.1f} MB  cpus: {os.cpu_count()}  best of {args.repeat}")
    print(f"write_raw          {t_write:7.3f} s  {n / t_write:12,.0f} rows/s")
    print(f"read_trajectories  {t_read:7.3f} s  {n / t_read:12,.0f} rows/s")
    print(f"pandas.read_csv    {t_pandas:7.3f} s  {n / t_pandas:12,.0f} rows/s  (sep=r'\\s+', parse only)")
    print(f"read_trajectories / pandas.read_csv speed ratio: {t_pandas / t_read:.2f}x")
    if args.csv:
        print("combined CSV layout (25 columns, BOM, CRLF, quoted thousands):")
        print(f"read_trajectories  {t_csv:7.3f} s  {n / t_csv:12,.0f} rows/s")
        print(f"pandas.read_csv    {t_csv_pandas:7.3f} s  {n / t_csv_pandas:12,.0f} rows/s  (thousands=',', parse only)")
        print(f"read_trajectories / pandas.read_csv speed ratio: {t_csv_pandas / t_csv:.2f}x")


if __name__ == "__main__":
    main()

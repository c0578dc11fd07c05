"""A short summary of a trajectory table, as printed by ``run.py inspect``.

:func:`summarize` computes the figures from a canonical table (see
:mod:`traffic_sim.ngsim`) with vectorised numpy/pandas operations only, and
:func:`format_summary` lays them out as a plain-text report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .ngsim import FRAME_RATE

__all__ = ["PERCENTILES", "CLASS_NAMES", "summarize", "format_summary"]

PERCENTILES = (5, 25, 50, 75, 95)  # [%] speed percentiles reported
MS_TO_KMH = 3.6  # [(km/h)/(m/s)]
CLASS_NAMES = {1: "motorcycle", 2: "auto", 3: "truck"}


def _track_key(df: pd.DataFrame) -> np.ndarray:
    """One integer per row identifying its vehicle track."""
    if "track_id" in df.columns:
        return df["track_id"].to_numpy()
    # tables without track ids: one vehicle per (location, vehicle_id)
    vid = df["vehicle_id"].to_numpy().astype(np.int64)
    if "location" in df.columns:
        loc = pd.factorize(df["location"])[0].astype(np.int64)
        return loc * (int(vid.max()) - int(vid.min()) + 1) + (vid - vid.min())
    return vid


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Figures describing a canonical trajectory table.

    Keys: ``locations`` (sorted list), ``rows``, ``vehicles`` (distinct
    tracks), ``vehicle_ids`` (distinct location and vehicle_id pairs; an id
    may cover several tracks), ``frames`` (distinct frame numbers), ``first_frame``,
    ``last_frame``, ``duration_s`` (frames spanned, last - first + 1, at
    10 Hz), ``lanes`` ({lane: rows}), ``classes`` ({v_class: vehicles}),
    ``speed_mps`` and ``speed_kmh`` ({percentile: value}),
    ``in_view`` ({"min", "mean", "max"} vehicles present per frame and
    location) and ``size_by_class`` ({v_class: {"length": mean m,
    "width": mean m}}, averaged over vehicles).
    """
    n = len(df)
    out: dict[str, Any] = {"rows": n}
    if "location" in df.columns:
        out["locations"] = sorted(str(x) for x in pd.unique(df["location"]))
    else:
        out["locations"] = []
    if n == 0:
        out.update(
            vehicles=0, vehicle_ids=0, frames=0, first_frame=None, last_frame=None, duration_s=0.0,
            lanes={}, classes={}, speed_mps={}, speed_kmh={},
            in_view={"min": 0, "mean": 0.0, "max": 0}, size_by_class={},
        )
        return out

    track = _track_key(df)
    frame = df["frame"].to_numpy().astype(np.int64)
    first, last = int(frame.min()), int(frame.max())
    out["vehicles"] = int(len(pd.unique(track)))
    ids = df[["location", "vehicle_id"]] if "location" in df.columns else df[["vehicle_id"]]
    out["vehicle_ids"] = int(len(ids.drop_duplicates()))
    out["frames"] = int(len(pd.unique(frame)))
    out["first_frame"], out["last_frame"] = first, last
    out["duration_s"] = (last - first + 1) / FRAME_RATE

    lane = df["lane"].to_numpy().astype(np.int64)
    lane_vals, lane_counts = np.unique(lane, return_counts=True)
    out["lanes"] = {int(k): int(c) for k, c in zip(lane_vals, lane_counts)}

    speed = df["speed"].to_numpy(dtype=np.float64)
    pct = np.percentile(speed, PERCENTILES)
    out["speed_mps"] = {p: float(v) for p, v in zip(PERCENTILES, pct)}
    out["speed_kmh"] = {p: float(v) * MS_TO_KMH for p, v in zip(PERCENTILES, pct)}

    # vehicles in view: rows per (location, frame)
    if "location" in df.columns:
        loc = pd.factorize(df["location"])[0].astype(np.int64)
    else:
        loc = np.zeros(n, dtype=np.int64)
    # Rows per distinct (location, frame): sorting, not a table over the frame span, which a
    # file's frame numbers could make arbitrarily large.
    _, per_frame = np.unique(loc * (frame.max() - first + 1) + (frame - first), return_counts=True)
    out["in_view"] = {
        "min": int(per_frame.min()),
        "mean": float(per_frame.mean()),
        "max": int(per_frame.max()),
    }

    # one row per vehicle for class counts and sizes
    firsts = pd.DataFrame(
        {
            "track": track,
            "v_class": df["v_class"].to_numpy(),
            "length": df["length"].to_numpy(),
            "width": df["width"].to_numpy(),
        }
    ).drop_duplicates("track")
    grouped = firsts.groupby("v_class", sort=True)
    sizes = grouped[["length", "width"]].mean()
    counts = grouped.size()
    out["classes"] = {int(k): int(v) for k, v in counts.items()}
    out["size_by_class"] = {
        int(k): {"length": float(r["length"]), "width": float(r["width"])}
        for k, r in sizes.iterrows()
    }
    return out


def _n(value: int) -> str:
    return f"{value:,}"


def format_summary(summary: dict[str, Any], path) -> str:
    """A readable multi-line text report of :func:`summarize`'s result."""
    s = summary
    lines = [f"NGSIM trajectories: {path}"]

    def row(label: str, text: str) -> None:
        lines.append(f"  {label:<22}{text}")

    row("location(s)", ", ".join(s["locations"]) or "-")
    row("rows", _n(s["rows"]))
    row("vehicles (tracks)", f"{_n(s['vehicles'])} ({_n(s['vehicle_ids'])} distinct vehicle ids)")
    if s["first_frame"] is None:
        row("frames", "0")
        return "\n".join(lines)
    row("frames", f"{_n(s['frames'])} distinct, {s['first_frame']} .. {s['last_frame']}")
    row("duration", f"{s['duration_s']:.1f} s ({s['duration_s'] / 60:.1f} min) at {FRAME_RATE:g} Hz")
    v = s["in_view"]
    row("vehicles in view", f"min {v['min']}  mean {v['mean']:.1f}  max {v['max']}")

    lines.append("")
    lines.append(f"  {'lane':>6}  {'rows':>12}  {'share':>7}")
    total = max(s["rows"], 1)
    for lane, count in s["lanes"].items():
        lines.append(f"  {lane:>6}  {_n(count):>12}  {100.0 * count / total:6.1f}%")

    lines.append("")
    lines.append(f"  {'class':<14}  {'vehicles':>9}  {'length [m]':>10}  {'width [m]':>9}")
    for cls, count in s["classes"].items():
        size = s["size_by_class"].get(cls, {"length": float("nan"), "width": float("nan")})
        name = f"{cls} {CLASS_NAMES.get(cls, '?')}"
        lines.append(
            f"  {name:<14}  {_n(count):>9}  {size['length']:>10.2f}  {size['width']:>9.2f}"
        )

    lines.append("")
    head = "".join(f"{'p' + str(p):>8}" for p in s["speed_mps"])
    lines.append(f"  {'speed':<14}{head}")
    lines.append(f"  {'m/s':<14}" + "".join(f"{x:8.2f}" for x in s["speed_mps"].values()))
    lines.append(f"  {'km/h':<14}" + "".join(f"{x:8.1f}" for x in s["speed_kmh"].values()))
    return "\n".join(lines)

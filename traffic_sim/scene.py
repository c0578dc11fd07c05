"""A recorded traffic scene indexed by frame, as a struct of arrays.

All vehicles at frame ``f`` are the slice ``rows_of_frame(f)`` of the row arrays, sorted by
longitudinal position, so replay, rendering and collision checks are vectorised slices and
searches, never scans. Tracks (one recorded vehicle each) are also kept in time order with
their kinematic state (heading, speed) and the actions that reproduce them.

Coordinates are those of the NGSIM local frame in metres: ``x`` lateral (to the right),
``y`` longitudinal (direction of travel); positions are front centres, as in the files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .ngsim import DT, FRAME_RATE, MS_PER_FRAME
from .roads import Road, road_for

HISTORY = 20  # [frames] conditioning history of an episode (2 s)
MAX_SCENE_FRAMES = 7 * 24 * 3600 * 10  # [frames] a week at 10 Hz: longer is not one recording
SMOOTH_FRAMES_REAL = 15  # [frames] rolling-mean window for noisy real NGSIM positions
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / val / test, by vehicle
SPLITS = ("train", "val", "test")


def _directions(x, y, track_start, n):
    """Unit heading of each row from the displacement to the next row of its track.

    Rows where the car does not move (and each track's last row) take the heading of the
    next movement, or the last one when none follows, so a stopped car keeps the heading it
    will leave with: the kinematic model cannot turn on the spot.
    """
    dx = np.zeros(n)
    dy = np.zeros(n)
    dx[:-1] = x[1:] - x[:-1]
    dy[:-1] = y[1:] - y[:-1]
    last = np.append(track_start[1:] - 1, n - 1)
    dx[last] = 0.0
    dy[last] = 0.0
    dist = np.hypot(dx, dy)
    moving = dist > 1e-6
    track_of_row = np.repeat(np.arange(len(track_start)), np.diff(np.append(track_start, n)))
    ux = pd.Series(np.where(moving, dx / np.where(moving, dist, 1.0), np.nan))
    uy = pd.Series(np.where(moving, dy / np.where(moving, dist, 1.0), np.nan))
    ux = ux.groupby(track_of_row).bfill().groupby(track_of_row).ffill()
    uy = uy.groupby(track_of_row).bfill().groupby(track_of_row).ffill()
    ux = ux.fillna(0.0).to_numpy()
    uy = uy.fillna(1.0).to_numpy()  # a track that never moves faces down the road
    speed = dist / DT  # [m/s] forward-difference speed
    # A track's last row has no next position: it keeps the speed it arrived with, so that no
    # spurious stop is inferred into it.
    has_previous = last > track_start
    speed[last[has_previous]] = speed[last[has_previous] - 1]
    return ux, uy, speed


def infer_actions(x, y, ux, uy, speed, track_start, n):
    """Actions (acceleration [m/s^2], steering [1/m]) that move each row's state to the next
    row's through the kinematic model of :func:`traffic_sim.kinematics.step`; zero on each
    track's last row."""
    acc = np.zeros(n)
    steer = np.zeros(n)
    acc[:-1] = (speed[1:] - speed[:-1]) / DT
    # Heading change expressed as tan(angle) along the right-hand normal (uy, -ux).
    along = ux[:-1] * ux[1:] + uy[:-1] * uy[1:]
    across = uy[:-1] * ux[1:] - ux[:-1] * uy[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        k = across / along
        steer[:-1] = np.where(speed[:-1] > 1e-9, k / (speed[:-1] * DT), 0.0)
    last = np.append(track_start[1:] - 1, n - 1)
    acc[last] = 0.0
    steer[last] = 0.0
    return acc, steer


def _fill_gaps(df: pd.DataFrame) -> pd.DataFrame:
    """Linearly interpolate the missing frames inside each track (gaps of a few frames)."""
    span = df.groupby("track_id")["frame"].agg(["min", "max", "size"])
    gappy = span.index[(span["max"] - span["min"] + 1) != span["size"]]
    if len(gappy) == 0:
        return df
    parts = [df[~df["track_id"].isin(gappy)]]
    for track in gappy:
        rows = df[df["track_id"] == track].set_index("frame")
        full = rows.reindex(np.arange(rows.index.min(), rows.index.max() + 1))
        numeric = full.select_dtypes("number").columns
        full[numeric] = full[numeric].interpolate(method="index")
        full = full.ffill()
        parts.append(full.rename_axis("frame").reset_index())
    out = pd.concat(parts, ignore_index=True)
    for col in df.columns:
        if col in out and out[col].dtype != df[col].dtype:
            out[col] = out[col].astype(df[col].dtype)
    return out


@dataclass
class Scene:
    """One location's recorded traffic, frame-indexed. Build it with :meth:`from_table`."""

    road: Road
    location: str
    n_frames: int
    frame_start: np.ndarray  # (F+1,) row range of each frame in the row arrays
    # Row arrays, sorted by (frame, y).
    frame: np.ndarray
    track: np.ndarray
    x: np.ndarray  # [m] front centre, lateral
    y: np.ndarray  # [m] front centre, longitudinal
    ux: np.ndarray  # heading unit vector, lateral component
    uy: np.ndarray  # heading unit vector, longitudinal component
    length: np.ndarray  # [m]
    width: np.ndarray  # [m]
    key: np.ndarray  # frame * KEY_STRIDE + y, for window searches
    # Track arrays: rows of each track in time order are tr_* [tr_start[k]:tr_start[k+1]].
    tr_start: np.ndarray
    tr_frame: np.ndarray
    tr_x: np.ndarray
    tr_y: np.ndarray
    tr_ux: np.ndarray
    tr_uy: np.ndarray
    tr_speed: np.ndarray  # [m/s] forward-difference speed
    tr_acc: np.ndarray  # [m/s^2] inferred action
    tr_steer: np.ndarray  # [1/m] inferred action
    track_length: np.ndarray  # (K,) [m] vehicle length
    track_width: np.ndarray  # (K,) [m]
    track_vehicle_id: np.ndarray  # (K,) NGSIM Vehicle_ID
    episodes: dict  # split name -> array of track indices usable as episodes
    ep_row: np.ndarray | None = None  # (K,) handover row of each track's episode, -1 if none

    KEY_STRIDE = 10000.0  # [m] larger than any road

    @property
    def n_tracks(self) -> int:
        return len(self.track_length)

    def rows_of_frame(self, f: int) -> slice:
        return slice(self.frame_start[f], self.frame_start[f + 1])

    @property
    def success_y(self) -> float:
        """[m] front position that counts as arriving at the end of the road: a state image's
        look-ahead before the end of the evaluation stretch."""
        from .raster import LOOK_AHEAD

        return min(self.road.eval_end, self.road.length) - LOOK_AHEAD

    @property
    def start_y(self) -> float:
        """[m] rear position from which a car can be handed over to a policy: a state
        image's look-behind inside the evaluation stretch."""
        from .raster import LOOK_AHEAD

        return self.road.eval_start + LOOK_AHEAD

    @classmethod
    def from_table(cls, table: pd.DataFrame, location: str | None = None, road: Road | None = None,
                   smooth: int | None = None, split_seed: int = 0) -> "Scene":
        """Build the scene of one location from a canonical trajectory table.

        ``smooth``: rolling-mean window [frames] for positions; default 15 for real NGSIM
        locations and none for synthetic traffic.
        """
        locations = sorted(map(str, pd.unique(table["location"])))
        if location is None:
            if len(locations) != 1:
                raise ValueError(f"the table holds several locations {locations}: choose one")
            location = locations[0]
        df = table[table["location"].astype(str) == location]
        if df.empty:
            raise ValueError(f"no rows for location {location!r} (have {locations})")
        road = road or road_for(location)
        if smooth is None:
            smooth = 0 if location.startswith("synthetic") else SMOOTH_FRAMES_REAL
        cols = ["track_id", "vehicle_id", "frame", "global_time", "x", "y", "length", "width"]
        df = df[cols].copy()
        # One time axis for the whole location, also across files: Global_Time.
        t0 = df["global_time"].min()
        df["frame"] = ((df["global_time"] - t0 + MS_PER_FRAME // 2) // MS_PER_FRAME).astype(np.int64)
        span = int(df["frame"].max())
        if span > MAX_SCENE_FRAMES:
            raise ValueError(f"the {location} rows span {span / FRAME_RATE / 86400:.1f} days of "
                             "Global_Time: not one recording (check the Global_Time column)")
        df = df.drop(columns="global_time").sort_values(["track_id", "frame"], kind="stable")
        df = df.drop_duplicates(["track_id", "frame"])
        df = _fill_gaps(df)
        df = df.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
        if smooth and smooth > 1:
            g = df.groupby("track_id")[["x", "y"]]
            sm = g.rolling(smooth, center=True, min_periods=1).mean().reset_index(level=0, drop=True)
            df[["x", "y"]] = sm.sort_index()
        # Renumber tracks 0..K-1 in order of appearance.
        codes, uniques = pd.factorize(df["track_id"], sort=True)
        df["track_id"] = codes
        n = len(df)
        tr = df["track_id"].to_numpy()
        tr_start = np.flatnonzero(np.r_[True, tr[1:] != tr[:-1]])
        x = df["x"].to_numpy(float)
        y = df["y"].to_numpy(float)
        ux, uy, speed = _directions(x, y, tr_start, n)
        acc, steer = infer_actions(x, y, ux, uy, speed, tr_start, n)
        firsts = df.iloc[tr_start]
        track_length = firsts["length"].to_numpy(float)
        track_width = firsts["width"].to_numpy(float)
        track_vehicle_id = firsts["vehicle_id"].to_numpy()
        tr_frame = df["frame"].to_numpy()
        tr_start_full = np.append(tr_start, n)

        # Frame-major copy.
        order = np.lexsort((y, tr_frame))
        frame = tr_frame[order]
        n_frames = int(frame.max()) + 1
        frame_start = np.searchsorted(frame, np.arange(n_frames + 1))
        scene = cls(
            road=road, location=location, n_frames=n_frames, frame_start=frame_start,
            frame=frame, track=tr[order], x=x[order], y=y[order], ux=ux[order], uy=uy[order],
            length=df["length"].to_numpy(float)[order], width=df["width"].to_numpy(float)[order],
            key=frame * cls.KEY_STRIDE + y[order],
            tr_start=tr_start_full, tr_frame=tr_frame, tr_x=x, tr_y=y, tr_ux=ux, tr_uy=uy,
            tr_speed=speed, tr_acc=acc, tr_steer=steer, track_length=track_length,
            track_width=track_width, track_vehicle_id=track_vehicle_id, episodes={},
        )
        scene.episodes = scene._split_episodes(split_seed)
        return scene

    def _split_episodes(self, seed: int) -> dict:
        """Tracks usable as episodes (20 frames of history, then reaching the success line),
        in the train/val/test split of :func:`track_split` (by vehicle, seeded): the dataset
        builder splits with the same function, so the held-out vehicles are the same."""
        self.ep_row = self._handover_rows()
        last_y = self.tr_y[self.tr_start[1:] - 1]
        usable = np.flatnonzero((self.ep_row >= 0) & (last_y >= self.success_y))
        usable = usable[self.tr_y[self.ep_row[usable]] < self.success_y]
        split = track_split(len(self.track_length), seed)[usable]
        episodes = {name: usable[split == i] for i, name in enumerate(SPLITS)}
        episodes["all"] = usable
        return episodes

    def _handover_rows(self) -> np.ndarray:
        """(K,) row (in track order) where each track's episode hands over to the policy:
        the first row with 20 frames of history whose rear is past ``start_y``; -1 if none."""
        n = len(self.tr_y)
        tr_of_row = np.repeat(np.arange(self.n_tracks), np.diff(self.tr_start))
        index_in_track = np.arange(n) - self.tr_start[tr_of_row]
        rear = self.tr_y - self.track_length[tr_of_row]
        ok = (index_in_track >= HISTORY - 1) & (rear >= self.start_y)
        first = np.full(self.n_tracks, n, dtype=np.int64)
        np.minimum.at(first, tr_of_row[ok], np.flatnonzero(ok))
        return np.where(first < n, first, -1)


def track_split(n_tracks: int, seed: int = 0) -> np.ndarray:
    """(K,) split of tracks 0..K-1 (sorted by vehicle id, then time): 0 train, 1 val, 2 test,
    80/10/10 by a seeded permutation. It depends only on the number of tracks and the seed."""
    perm = np.random.default_rng(seed).permutation(n_tracks)
    n_train = int(round(SPLIT_FRACTIONS[0] * n_tracks))
    n_val = int(round(SPLIT_FRACTIONS[1] * n_tracks))
    split = np.full(n_tracks, 2, dtype=np.int8)
    split[perm[:n_train]] = 0
    split[perm[n_train:n_train + n_val]] = 1
    return split


_ARRAY_FIELDS = ("frame_start", "frame", "track", "x", "y", "ux", "uy", "length", "width", "key",
                 "tr_start", "tr_frame", "tr_x", "tr_y", "tr_ux", "tr_uy", "tr_speed", "tr_acc",
                 "tr_steer", "track_length", "track_width", "track_vehicle_id", "ep_row")
CACHE_VERSION = 3  # bump when the scene's content or layout changes


def save_scene(scene: Scene, path) -> None:
    """Write a scene to an ``.npz`` file atomically (temporary name, then rename)."""
    from .paths import atomic_output

    arrays = {name: getattr(scene, name) for name in _ARRAY_FIELDS}
    arrays.update({f"episodes_{k}": v for k, v in scene.episodes.items()})
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, location=np.array(scene.location), n_frames=np.array(scene.n_frames),
                 version=np.array(CACHE_VERSION), **arrays)


def load_saved_scene(path) -> Scene | None:
    """Read a scene written by :func:`save_scene`; None if it is from another version."""
    with np.load(path, allow_pickle=False) as z:
        if int(z["version"]) != CACHE_VERSION:
            return None
        location = str(z["location"])
        episodes = {k[len("episodes_"):]: z[k] for k in z.files if k.startswith("episodes_")}
        arrays = {name: z[name] for name in _ARRAY_FIELDS}
        return Scene(road=road_for(location), location=location, n_frames=int(z["n_frames"]),
                     episodes=episodes, **arrays)

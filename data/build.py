"""Build a dataset of episodes from trajectory files (``run.py build-dataset``).

One episode per recorded vehicle: for each of its frames the state image rendered around the
car by the simulator's rasteriser (the same function the environment observes with), the
state vector (x, y, vx, vy) and the action (acceleration, steering) that moves this state to
the next one. Episodes are split 80/10/10 by vehicle with a seeded permutation of the sorted
track list (``traffic_sim.scene.track_split``), so the split depends only on the data and the
seed, and for seed 0 it is the simulator's: the vehicles held out for evaluation are held out
here too. Normalisation statistics come
from the training split.

A track's last recorded row is not stored: it has no next position, hence no measured
forward-difference speed and no action of its own. Every stored state therefore has a true
forward-difference speed, and every stored action but the last of each episode moves one
stored state exactly to the next.

The arrays are streamed to disk chunk by chunk (bounded memory) inside a temporary folder
beside the target, which is renamed into place only once complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from traffic_sim.cli_util import UserError, doc
from traffic_sim.paths import artifacts_dir
from traffic_sim.scene import DT, SPLITS, track_split

from .dataset import ACTIONS_FILE, FORMAT_VERSION, IMAGE_SHAPE, IMAGES_FILE, MANIFEST, STATES_FILE

CHUNK_FRAMES = 4096  # car-frames rendered and written per rasteriser call


def default_dataset_dir() -> Path:
    """Folder of the default dataset (built from the embedded default traffic)."""
    return artifacts_dir() / "datasets" / "default"


@dataclass(frozen=True)
class BuildConfig:
    """Build a dataset of episodes (state images, states, actions, splits, stats)."""

    trajectories: Optional[str] = doc(
        "trajectory file(s), comma-separated (default: the embedded synthetic traffic)", None)
    location: Optional[str] = doc("location to use when the files hold several or cannot tell", None)
    out: Optional[str] = doc("output dataset folder (default: <artifacts>/datasets/default)", None)
    seed: int = doc("seed of the train/val/test split by vehicle", 0)
    min_frames: int = doc("shortest episode kept [frames]", 40)
    max_episodes: Optional[int] = doc("keep only the first N episodes in sorted order", None)
    quiet: bool = doc("no progress bar", False)


# ---------------------------------------------------------------- episodes
@dataclass
class _Episodes:
    """The tracks kept as episodes, in episode order, and their stored rows of the scene."""

    track: np.ndarray  # (E,) scene track index
    vehicle_id: np.ndarray  # (E,)
    first_frame: np.ndarray  # (E,)
    rows: np.ndarray  # (F,) scene track-order rows, episodes back to back
    start: np.ndarray  # (E+1,) offsets into rows


def select_episodes(scene, min_frames: int, max_episodes: Optional[int]) -> _Episodes:
    """Tracks with at least ``min_frames`` stored frames (all rows but the last), sorted by
    (vehicle id, first frame); optionally only the first ``max_episodes``."""
    n_rows = np.diff(scene.tr_start)
    stored = n_rows - 1
    tracks = np.flatnonzero(stored >= max(min_frames, 1))
    vid = scene.track_vehicle_id[tracks]
    first = scene.tr_frame[scene.tr_start[tracks]]
    order = np.lexsort((first, vid))
    tracks = tracks[order]
    if max_episodes is not None:
        tracks = tracks[:max_episodes]
    lengths = stored[tracks]
    start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # rows: tr_start[k] + 0 .. lengths-1 for each kept track, vectorised
    offset = np.arange(start[-1]) - np.repeat(start[:-1], lengths)
    rows = np.repeat(scene.tr_start[tracks], lengths) + offset
    return _Episodes(track=tracks, vehicle_id=scene.track_vehicle_id[tracks],
                     first_frame=scene.tr_frame[scene.tr_start[tracks]], rows=rows, start=start)


def split_episodes(tracks: np.ndarray, n_tracks: int, seed: int) -> dict:
    """Episode ids by split: an episode is in its track's split (:func:`track_split`, the
    simulator's split for the same seed); each split sorted."""
    split = track_split(n_tracks, seed)[tracks]
    return {name: np.flatnonzero(split == i) for i, name in enumerate(SPLITS)}


ACTION_TAIL = 0.001  # fraction cut from each tail of the actions before their mean and std


def train_stats(states: np.ndarray, actions: np.ndarray, start: np.ndarray, train: np.ndarray) -> dict:
    """Mean and std (population) of the states of the train episodes, and of their actions
    except each episode's last (which is 0 by convention, not a real action). A zero std
    becomes 1 so that normalising never divides by zero.

    The actions' mean and std are taken after clipping each component to its 0.1% and 99.9%
    quantiles: steering is a curvature [1/m], ill-defined at walking speed, where a car
    creeping forward in a jam yields values 10-100x those of a lane change. Those few frames
    alone would set the steering scale (std 0.44 1/m against 0.015 1/m at the 99th
    percentile), and a normalised steering of 0.1 would already be a sharp turn."""
    lengths = np.diff(start)[train]
    offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = np.repeat(start[train], lengths) + offset
    is_last = offset == np.repeat(lengths - 1, lengths)
    s = states[rows].astype(np.float64)
    a = actions[rows[~is_last]].astype(np.float64)
    if len(a):
        lo, hi = np.quantile(a, [ACTION_TAIL, 1.0 - ACTION_TAIL], axis=0)
        a = np.clip(a, lo, hi)

    def std(x):
        sd = x.std(axis=0)
        return np.where(sd > 1e-12, sd, 1.0)

    return {"state_mean": s.mean(axis=0).tolist(), "state_std": std(s).tolist(),
            "action_mean": a.mean(axis=0).tolist(), "action_std": std(a).tolist()}


# ---------------------------------------------------------------- output folder
def _check_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out} exists and is not a folder")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise UserError(f"--out {out} exists and is not a dataset folder (no {MANIFEST}); "
                            "choose another folder or remove it")


def _install(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing a previous dataset there."""
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "d")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _parse_paths(trajectories: Optional[str]):
    if trajectories is None:
        return None
    paths = [Path(p.strip()) for p in str(trajectories).split(",") if p.strip()]
    if not paths:
        raise UserError("--trajectories is empty")
    for p in paths:
        if not p.is_file():
            raise UserError(f"{p}: no such trajectory file")
    return paths


# ---------------------------------------------------------------- build
def build_dataset(cfg: BuildConfig) -> Path:
    """Build the dataset described by ``cfg``; return its folder."""
    from traffic_sim.loading import load_scene
    from traffic_sim.sim import ReplaySimulator

    if cfg.min_frames < 1:
        raise UserError(f"--min-frames must be at least 1, got {cfg.min_frames}")
    if cfg.max_episodes is not None and cfg.max_episodes < 1:
        raise UserError(f"--max-episodes must be at least 1, got {cfg.max_episodes}")
    out = Path(cfg.out) if cfg.out else default_dataset_dir()
    _check_out(out)
    paths = _parse_paths(cfg.trajectories)
    t0 = time.perf_counter()
    scene = load_scene(paths, location=cfg.location, quiet=cfg.quiet)
    if paths is None:
        from traffic_sim.commands import default_traffic

        paths = [default_traffic(quiet=True)]
    eps = select_episodes(scene, cfg.min_frames, cfg.max_episodes)
    n_ep, n = len(eps.track), int(eps.start[-1])
    if n_ep == 0:
        raise UserError(f"no usable tracks: none of the {scene.n_tracks} tracks has "
                        f"{cfg.min_frames} frames (lower --min-frames?)")
    splits = split_episodes(eps.track, len(scene.track_length), cfg.seed)

    # States and actions are small (24 bytes a frame): computed whole.
    r = eps.rows
    speed = scene.tr_speed[r]
    states = np.stack([scene.tr_x[r], scene.tr_y[r], speed * scene.tr_ux[r], speed * scene.tr_uy[r]],
                      axis=1).astype(np.float32)  # (F, 4)
    actions = np.stack([scene.tr_acc[r], scene.tr_steer[r]], axis=1)  # (F, 2)
    actions[eps.start[1:] - 1] = 0.0  # no action out of an episode's last stored frame
    actions = actions.astype(np.float32)
    stats = train_stats(states, actions, eps.start, splits["train"])

    track_of_frame = np.repeat(eps.track, np.diff(eps.start))  # (F,)
    length = scene.track_length[track_of_frame]
    cx = scene.tr_x[r] - 0.5 * length * scene.tr_ux[r]  # [m] car centre
    cy = scene.tr_y[r] - 0.5 * length * scene.tr_uy[r]
    frame = scene.tr_frame[r]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.building-"))
    bar = None
    try:
        sim = ReplaySimulator(scene)
        states.tofile(tmp / STATES_FILE)
        actions.tofile(tmp / ACTIONS_FILE)
        if not cfg.quiet:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="rendering", unit="frame", unit_scale=True)
        t_render = time.perf_counter()
        with open(tmp / IMAGES_FILE, "wb") as fh:
            for s in range(0, n, CHUNK_FRAMES):
                e = min(s + CHUNK_FRAMES, n)
                img = sim.images_at(frame[s:e], cx[s:e], cy[s:e], track_of_frame[s:e])
                fh.write(memoryview(np.ascontiguousarray(img, dtype=np.uint8)))
                if bar is not None:
                    bar.update(e - s)
        if bar is not None:
            bar.close()
            bar = None
        seconds = time.perf_counter() - t0
        manifest = {
            "version": FORMAT_VERSION,
            "sources": [str(p.resolve()) for p in paths],
            "locations": [scene.location],
            "n_episodes": n_ep,
            "n_frames": n,
            "image_shape": list(IMAGE_SHAPE),
            "dt": DT,
            "splits": {k: v.tolist() for k, v in splits.items()},
            "stats": stats,
            "episodes": {
                "start": eps.start.tolist(),
                "track": eps.track.tolist(),
                "vehicle_id": [int(v) for v in eps.vehicle_id],
                "length": [round(float(v), 4) for v in scene.track_length[eps.track]],
                "width": [round(float(v), 4) for v in scene.track_width[eps.track]],
                "location": [scene.location] * n_ep,
            },
            "build": {
                **asdict(cfg),
                "seconds": round(seconds, 3),
                "render_seconds": round(time.perf_counter() - t_render, 3),
                "frames_per_second": round(n / seconds, 1),
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest) + "\n")
        for name in (MANIFEST, IMAGES_FILE, STATES_FILE, ACTIONS_FILE):
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
        _check_out(out)  # still safe to replace?
        _install(tmp, out)
    except BaseException:
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not cfg.quiet:
        print(f"dataset: {n_ep} episodes, {n} frames in {out} "
              f"({manifest['build']['frames_per_second']:.0f} frames/s)")
    return out


def ensure_dataset(path=None, quiet: bool = False) -> Path:
    """The dataset at ``path`` (default: the default dataset), built from the default traffic
    on first use."""
    from .dataset import Dataset

    out = Path(path) if path is not None else default_dataset_dir()
    if (out / MANIFEST).is_file():
        try:
            Dataset.open(out)
            return out
        except (ValueError, KeyError, json.JSONDecodeError):
            if not quiet:
                print(f"dataset at {out} is outdated or damaged: rebuilding")
    elif not quiet:
        print(f"building the default dataset into {out} (first use)")
    return build_dataset(BuildConfig(out=str(out), quiet=quiet))

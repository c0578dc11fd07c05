"""Reading a built dataset: memory-mapped episodes, normalisation and window sampling.

A dataset is a folder (see :mod:`data` for the format) of three raw memory-mapped arrays
(``images.u8``, ``states.f32``, ``actions.f32``) with one row per car-frame, episodes stored
back to back in time order, and a ``manifest.json`` with the episode offsets, the splits and
the normalisation statistics of the training split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

FORMAT_VERSION = 2  # 2: car sizes per episode
IMAGE_SHAPE = (3, 117, 24)  # (C, H, W): channels lane markings, other vehicles, off-road
STATE_DIM = 4  # (x, y, vx, vy) [m, m, m/s, m/s]
ACTION_DIM = 2  # (acceleration [m/s^2], steering [1/m])
MANIFEST = "manifest.json"
IMAGES_FILE = "images.u8"
STATES_FILE = "states.f32"
ACTIONS_FILE = "actions.f32"
STAT_KEYS = ("state_mean", "state_std", "action_mean", "action_std")
BATCH_KEYS = ("images", "states", "actions", "car_size")


# ---------------------------------------------------------------- normalisation
def _like(stat, x):
    """``stat`` as an array or tensor matching ``x`` (dtype, device)."""
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(np.asarray(stat), dtype=x.dtype, device=x.device)
    dtype = getattr(x, "dtype", None)
    return np.asarray(stat, dtype=dtype if dtype in (np.float32, np.float64) else np.float64)


def normalise_states(x, stats):
    """(..., 4) raw states -> zero-mean, unit-variance states (numpy or torch)."""
    return (x - _like(stats["state_mean"], x)) / _like(stats["state_std"], x)


def denormalise_states(x, stats):
    """Inverse of :func:`normalise_states`."""
    return x * _like(stats["state_std"], x) + _like(stats["state_mean"], x)


def normalise_actions(x, stats):
    """(..., 2) raw actions -> zero-mean, unit-variance actions (numpy or torch)."""
    return (x - _like(stats["action_mean"], x)) / _like(stats["action_std"], x)


def denormalise_actions(x, stats):
    """Inverse of :func:`normalise_actions`."""
    return x * _like(stats["action_std"], x) + _like(stats["action_mean"], x)


# ---------------------------------------------------------------- dataset
class Dataset:
    """A built dataset, memory-mapped read-only. Open it with :meth:`open`.

    ``images`` (F, 3, 117, 24) uint8, ``states`` (F, 4) float32 and ``actions`` (F, 2) float32
    are raw (un-normalised); episode ``e`` owns rows ``episode_start[e]:episode_start[e+1]``.
    """

    def __init__(self, path: Path, manifest: dict, images: np.memmap, states: np.memmap,
                 actions: np.memmap):
        self.path = path
        self.manifest = manifest
        self.images = images
        self.states = states
        self.actions = actions
        self.episode_start = np.asarray(manifest["episodes"]["start"], dtype=np.int64)
        self.stats = {k: np.asarray(manifest["stats"][k], dtype=np.float32) for k in STAT_KEYS}
        eps = manifest["episodes"]
        self.car_size = np.stack([eps["length"], eps["width"]], 1).astype(np.float32)  # (E, 2) [m]

    @classmethod
    def open(cls, path) -> "Dataset":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{path}: not a dataset folder (no {MANIFEST})")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: dataset format version {manifest.get('version')}, "
                             f"expected {FORMAT_VERSION}: rebuild it")
        n = int(manifest["n_frames"])
        shape = tuple(manifest["image_shape"])
        arrays = {}
        for name, dtype, row in ((IMAGES_FILE, np.uint8, shape), (STATES_FILE, np.float32, (STATE_DIM,)),
                                 (ACTIONS_FILE, np.float32, (ACTION_DIM,))):
            file = path / name
            expected = n * int(np.prod(row)) * np.dtype(dtype).itemsize
            if not file.is_file() or file.stat().st_size != expected:
                raise ValueError(f"{file}: missing or not {expected} bytes: rebuild the dataset")
            arrays[name] = np.memmap(file, dtype=dtype, mode="r", shape=(n, *row))
        return cls(path, manifest, arrays[IMAGES_FILE], arrays[STATES_FILE], arrays[ACTIONS_FILE])

    @property
    def n_episodes(self) -> int:
        return len(self.episode_start) - 1

    @property
    def n_frames(self) -> int:
        return int(self.episode_start[-1])

    @property
    def episode_length(self) -> np.ndarray:
        """(E,) number of frames of each episode."""
        return np.diff(self.episode_start)

    def split(self, name: str) -> np.ndarray:
        """Episode ids of split ``name`` ("train", "val" or "test"), sorted."""
        splits = self.manifest["splits"]
        if name not in splits:
            raise KeyError(f"no split {name!r} (have {', '.join(splits)})")
        return np.asarray(splits[name], dtype=np.int64)

    def episode(self, e: int) -> slice:
        """Rows of episode ``e`` in the frame arrays."""
        return slice(int(self.episode_start[e]), int(self.episode_start[e + 1]))

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, episodes={self.n_episodes}, frames={self.n_frames})"


# ---------------------------------------------------------------- sampling
class WindowSampler:
    """Random windows of ``n_cond + n_pred`` consecutive frames inside the episodes of a split,
    uniform over all valid window starts.

    ``sample()`` returns a dict of tensors on ``device``: ``images`` (B, T, 3, 117, 24) uint8,
    ``states`` (B, T, 4) and ``actions`` (B, T, 2) float32 normalised with the train stats,
    T = n_cond + n_pred, and ``car_size`` (B, 2) float32: length and width of the car [m]. Iterating yields batches forever.
    """

    def __init__(self, dataset: Dataset, split: str, n_cond: int = 20, n_pred: int = 20,
                 batch_size: int = 64, seed: int = 0, device="cpu"):
        self.dataset = dataset
        self.split_name = split
        self.n_cond = int(n_cond)
        self.n_pred = int(n_pred)
        self.window = self.n_cond + self.n_pred
        self.batch_size = int(batch_size)
        if self.window < 1 or self.batch_size < 1:
            raise ValueError("n_cond + n_pred and batch_size must be positive")
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        episodes = dataset.split(split)
        counts = np.maximum(dataset.episode_length[episodes] - self.window + 1, 0)
        keep = counts > 0
        self.episodes = episodes[keep]
        self._first_start = dataset.episode_start[self.episodes]  # (E',) first window start row
        self._cum = np.concatenate([[0], np.cumsum(counts[keep])])  # (E'+1,) window offsets
        if self._cum[-1] == 0:
            raise ValueError(f"split {split!r} has no episode of at least {self.window} frames")
        self._stats = dataset.stats
        self._pin = self.device.type == "cuda"
        self._ring = []  # pinned host buffers and the events of their last copy (cuda only)
        self._ring_next = 0
        self._focus = []  # (global indices of windows, share of each batch drawn among them)
        self._focus_total = 0.0

    @property
    def n_windows(self) -> int:
        """Number of distinct windows in the split."""
        return int(self._cum[-1])

    def window_starts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n,) first rows of n windows drawn uniformly."""
        return self._first_rows(rng.integers(0, self.n_windows, size=n))

    def _first_rows(self, k: np.ndarray) -> np.ndarray:
        """First rows of the windows of global indices ``k``."""
        ep = np.searchsorted(self._cum, k, side="right") - 1  # index into self.episodes
        return self._first_start[ep] + (k - self._cum[ep])

    def set_focus(self, present: np.ndarray, share: float) -> int:
        """Draw each window of :meth:`sample`'s batches, with probability ``share``, among the
        windows whose present frame (the last conditioning one) is marked in ``present``
        ((n_frames,) bool over the dataset's rows) instead of among all; returns how many such
        windows the split has (none: sampling stays uniform). Each call adds one such group; the
        groups' shares are drawn in turn, and must add up to less than 1."""
        if not 0.0 <= share < 1.0 or self._focus_total + share >= 1.0:
            raise ValueError(f"the focus shares must add up to less than 1, got {self._focus_total} + {share}")
        k = np.arange(self.n_windows)
        marked = k[np.asarray(present, dtype=bool)[self._first_rows(k) + self.n_cond - 1]]
        if len(marked):
            self._focus.append((marked, float(share)))
            self._focus_total += float(share)
        return len(marked)

    def batch_at(self, starts: np.ndarray) -> dict:
        """The batch of the windows starting at rows ``starts`` (B,)."""
        rows = (np.asarray(starts, dtype=np.int64)[:, None] + np.arange(self.window)).ravel()  # (B*T,)
        b, t = len(starts), self.window
        ds = self.dataset
        host = self._host_buffers(b)
        np.take(ds.images, rows, axis=0, out=host["images"].numpy().reshape(b * t, *IMAGE_SHAPE))
        states = normalise_states(np.take(ds.states, rows, axis=0), self._stats)
        actions = normalise_actions(np.take(ds.actions, rows, axis=0), self._stats)
        host["states"].numpy()[...] = states.reshape(b, t, STATE_DIM)
        host["actions"].numpy()[...] = actions.reshape(b, t, ACTION_DIM)
        episode = np.searchsorted(ds.episode_start, starts, side="right") - 1  # (B,)
        host["car_size"].numpy()[...] = ds.car_size[episode]
        if not self._pin:
            return host if self.device.type == "cpu" else {k: v.to(self.device) for k, v in host.items()}
        batch = {k: host[k].to(self.device, non_blocking=True) for k in BATCH_KEYS}
        host["_event"].record()  # the buffer may be reused once this copy has finished
        return batch

    def _host_buffers(self, b: int) -> dict:
        t = self.window
        shapes = {"images": ((b, t, *IMAGE_SHAPE), torch.uint8),
                  "states": ((b, t, STATE_DIM), torch.float32),
                  "actions": ((b, t, ACTION_DIM), torch.float32),
                  "car_size": ((b, 2), torch.float32)}
        if not self._pin:  # fresh tensors: the caller owns them
            return {k: torch.empty(s, dtype=d) for k, (s, d) in shapes.items()}
        # A small ring of pinned buffers so non-blocking copies can overlap the next gather.
        for host in self._ring:
            if host["images"].shape[0] != b:
                self._ring = []
                break
        if len(self._ring) < 3:
            host = {k: torch.empty(s, dtype=d, pin_memory=True) for k, (s, d) in shapes.items()}
            host["_event"] = torch.cuda.Event()
            self._ring.append(host)
            return host
        host = self._ring[self._ring_next]
        self._ring_next = (self._ring_next + 1) % len(self._ring)
        host["_event"].synchronize()
        return host

    def sample(self) -> dict:
        """One random batch."""
        starts = self.window_starts(self.rng, self.batch_size)
        if self._focus:
            u = self.rng.random(self.batch_size)
            low = 0.0
            for marked, share in self._focus:
                pick = (u >= low) & (u < low + share)
                starts[pick] = self._first_rows(marked[self.rng.integers(0, len(marked), size=int(pick.sum()))])
                low += share
        return self.batch_at(starts)

    def __iter__(self):
        while True:
            yield self.sample()

    def fixed_batches(self, n: int, seed: int = 0) -> list:
        """``n`` batches drawn with their own generator: the same every call (validation)."""
        rng = np.random.default_rng(seed)
        starts = self.window_starts(rng, n * self.batch_size).reshape(n, self.batch_size)
        out = []
        for s in starts:
            out.append(self.batch_at(s))
        return out

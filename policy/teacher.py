"""Imitation of a privileged driver in the states the policy drives into itself.

``python run.py train-policy --method teach`` teaches the network of ``--separate-ego`` to
copy the actions of a driver that reads the true state (``follow``, ``follow-merge``,
``follow-evade``, ``follow-yield``, ``follow-wait``: :mod:`traffic_sim.follow`), in the states the network's own driving
reaches: DAgger (Ross, Gordon and Bagnell 2011) with a privileged teacher (Chen et al.
2019, "Learning by Cheating"). ``--teacher NAME`` adds the same imitation to the
other methods' costs, weighted by ``--teacher-weight``.

Every ``collect_every`` optimizer steps the policy drives ``episodes`` training episodes in
the replay simulator (the first time the teacher drives and the policy only watches), the
teacher says at every step what it would have done, and every step's window (20 frames,
the states, the teacher's action) is kept for training: each collection adds to the
ones before. ``follow-evade`` evades (a vehicle closing in from behind or from the side) in
about 0.5% of the windows; a share of each batch (``evade_share``) is drawn from those. The
windows whose car drives in a lane that ends (an on-ramp: the teacher merges out of it) are
a few percent of them; ``merge_share`` of each batch is drawn from those. The teacher brakes
harder than :data:`HARD_BRAKE` in a few percent of the windows too, where the network brakes
least like it (``benchmarks/probe_imitation_fit.py``); ``brake_share`` draws from those.

A collection is kept in the checkpoint as the tracks it drove and the actions that drove
them (float32, the precision the cars were driven with), not as images: on ``--resume``
the simulator replays those actions, which gives back the same frames and labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from data.dataset import normalise_actions
from traffic_sim.follow import FOLLOWERS, follower_actions

from .driver import Driver

TEACHERS = tuple(FOLLOWERS)
DEFAULT_TEACHER = "follow-evade"  # of --method teach: the best of them (README)
HARD_BRAKE = -2.0  # [m/s^2] a teacher's acceleration below this is braking hard (brake_share)


@dataclass(frozen=True)
class TeacherSettings:
    """The privileged teacher's settings in a preset (``train-policy --method teach`` and
    ``--teacher``)."""

    teacher: Optional[str] = None  # the driver imitated (None: none; --method teach: DEFAULT_TEACHER)
    episodes: int = 192  # training episodes driven per collection
    collect_every: int = 1500  # optimizer steps of --method teach between collections
    steps: int = 12_000  # optimizer steps of --method teach
    batch_size: int = 32  # imitation windows per step
    weight: float = 1.0  # weight of the imitation loss beside another method's costs
    evade_share: float = 0.25  # share of each imitation batch drawn from the windows where the teacher evades
    merge_share: float = 0.0  # share drawn from the windows whose car drives in a lane that ends
    brake_share: float = 0.0  # share drawn from the windows where the teacher brakes harder than HARD_BRAKE


class TeacherData:
    """The windows collected so far, with the teacher's normalised actions as labels."""

    def __init__(self, scene, stats: dict, n_cond: int, teacher: str, seed: int, device="cpu",
                 evade_share: float = 0.0, merge_share: float = 0.0, brake_share: float = 0.0):
        if teacher not in TEACHERS:
            raise ValueError(f"unknown teacher {teacher!r} (have {', '.join(TEACHERS)})")
        shares = (evade_share, merge_share, brake_share)
        if not (all(0.0 <= v <= 1.0 for v in shares) and sum(shares) <= 1.0):
            raise ValueError(f"the shares of evasions, merges and hard braking in a batch must be within [0, 1] "
                             f"and add up to at most 1, got {', '.join(map(str, shares))}")
        self.scene, self.stats, self.n_cond, self.teacher = scene, stats, n_cond, teacher
        self.seed, self.device = seed, torch.device(device)
        self.evade_share, self.merge_share, self.brake_share = shares
        self.frames, self.states, self.labels = [], [], []
        self.index = np.zeros((0, 2), dtype=np.int64)  # (episode, step) of every window
        self.evading = np.zeros(0, dtype=bool)  # per window: the teacher's evasion changed its action
        self.merging = np.zeros(0, dtype=bool)  # per window: its car drives in a lane that ends
        self.marked = np.zeros(0, dtype=np.int64)  # the windows where the teacher evades
        self.merges = np.zeros(0, dtype=np.int64)  # the windows in a lane that ends
        self.braking = np.zeros(0, dtype=bool)  # per window: the teacher brakes harder than HARD_BRAKE
        self.brakes = np.zeros(0, dtype=np.int64)  # those windows
        self.records = []  # per collection: {"tracks", "teacher_drives", "actions"} (tensors)
        self.inherited = 0  # how many of the records came from another run (inherit)
        self.rng = np.random.default_rng([seed, 1])  # the windows of each imitation batch

    def __len__(self) -> int:
        return len(self.index)

    def tracks_for(self, collection: int, n_episodes: int) -> np.ndarray:
        """The training episodes of the ``collection``-th collection (sorted; by the seed)."""
        train = self.scene.episodes["train"]
        pick = np.random.default_rng([self.seed, 2, collection]).choice(
            len(train), min(n_episodes, len(train)), replace=False)
        return np.sort(train[pick])

    def collect(self, n_episodes: int, act: Optional[Callable]) -> dict:
        """Drive the next collection's episodes with ``act`` (a policy's ``(images, states,
        car_size) -> normalised actions``), or with the teacher when ``act`` is None; keep
        its windows; return the drive's success and collision rates."""
        return self.drive(self.tracks_for(len(self.records), n_episodes), act)

    def drive(self, tracks, act: Optional[Callable]) -> dict:
        """Drive the episodes of ``tracks`` as :meth:`collect` does (a collection of chosen
        episodes, e.g. of another split, to measure a network against its teacher)."""
        return self._drive(np.asarray(tracks), act, None)

    def replay(self, record: dict) -> None:
        """Keep again the windows of a collection from a checkpoint, replaying its actions."""
        self._drive(record["tracks"].numpy(), None, record["actions"].numpy(), bool(record["teacher_drives"]))
        self.records.append(record)

    def state(self) -> dict:
        return {"records": self.records, "rng": json.dumps(self.rng.bit_generator.state),
                "inherited": self.inherited}

    def load_state(self, state: dict) -> None:
        for record in state["records"]:
            self.replay(record)
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.inherited = int(state.get("inherited", 0))

    def inherit(self, state: dict) -> None:
        """Start from the windows another run collected (its :meth:`state`), replayed in the
        simulator and labelled by this teacher; this run's own collections come after them
        (:attr:`own`), on episodes of their own."""
        if self.records:
            raise ValueError("inherit before any collection")
        for record in state["records"]:
            self.replay(record)
        self.inherited = len(self.records)

    @property
    def own(self) -> int:
        """The collections this run drove itself."""
        return len(self.records) - self.inherited

    @torch.no_grad()
    def _drive(self, tracks, act, replayed: Optional[np.ndarray], teacher_drives: Optional[bool] = None) -> dict:
        from traffic_sim.sim import ReplaySimulator, builtin_actions

        if teacher_drives is None:
            teacher_drives = act is None
        sim = ReplaySimulator(self.scene)
        if act is None:  # the driver then only keeps the histories
            def act(images, states, size):
                return torch.zeros(len(images), 2)
        driver = Driver(self.scene, act, self.stats, self.n_cond, self.device)
        cars = sim.start(tracks)
        driver.reset(cars.track)
        obs = sim.observe(cars)
        # copies: the driver updates its histories in place
        frames, states, labels, driven = [driver.images.cpu().clone()], [driver.states.cpu().clone()], [], []
        evading, merging = [], []
        while not cars.done.all():
            student = driver(obs, cars.state_vector(), cars)
            if labels:  # the driver appended what the cars see now (a copy: a view would
                frames.append(driver.images[:, -1:].cpu().clone())  # keep all 20 frames alive)
                states.append(driver.states[:, -1:].cpu().clone())
            expert = builtin_actions(sim, cars, self.teacher).astype(np.float32)
            labels.append(torch.from_numpy(normalise_actions(expert, self.stats)))
            evading.append(self._evading(sim, cars, expert))
            merging.append(np.isfinite(self.scene.road.to_lane_end(cars.center_x, cars.center_y)))
            if replayed is not None:
                actions = replayed[:, len(driven)]
            else:
                actions = expert if teacher_drives else student.astype(np.float32)
            driven.append(actions)
            obs = sim.step(cars, actions, observe=True)
        if replayed is None:
            self.records.append({"tracks": torch.from_numpy(np.asarray(tracks, dtype=np.int64)),
                                 "teacher_drives": torch.tensor(teacher_drives),
                                 "actions": torch.from_numpy(np.stack(driven, 1))})
        self._add(torch.cat(frames, 1), torch.cat(states, 1), torch.stack(labels, 1), np.stack(evading, 1),
                  np.stack(merging, 1), cars.steps)
        return {"success": float(cars.success.mean()), "collision": float(cars.collision.mean())}

    def _evading(self, sim, cars, expert: np.ndarray) -> np.ndarray:
        """(N,) whether the teacher's evasion made its acceleration differ from its car
        following (the followers with an ``evade`` setting in :data:`FOLLOWERS`; the yielding
        of ``follow-yield`` to a vehicle cutting in counts too)."""
        if FOLLOWERS[self.teacher].get("evade") is None:
            return np.zeros(len(expert), dtype=bool)
        plain = follower_actions(sim, cars, self.teacher, evade=False).astype(np.float32)
        return np.abs(expert[:, 0] - plain[:, 0]) > 1e-4

    def _add(self, frames, states, labels, evading, merging, steps) -> None:
        """Per car: its 20 + steps frames and states and its labels at every step."""
        index, marks, ends, hard = [self.index], [self.evading], [self.merging], [self.braking]
        brake = float(normalise_actions(np.array([HARD_BRAKE, 0.0], dtype=np.float32), self.stats)[0])
        for f, s, a, e, m, n in zip(frames, states, labels, evading, merging, steps):
            index.append(np.stack([np.full(n, len(self.frames)), np.arange(n)], 1))
            marks.append(e[:n])
            ends.append(m[:n])
            hard.append(a[:n, 0].numpy() < brake)
            extra = f.shape[0] - a.shape[0]  # the frames before the first step (the history)
            self.frames.append(f[:extra + n].clone())
            self.states.append(s[:extra + n].clone())
            self.labels.append(a[:n].clone())
        self.index, self.evading, self.merging = np.concatenate(index), np.concatenate(marks), np.concatenate(ends)
        self.braking = np.concatenate(hard)
        self.marked, self.merges = np.flatnonzero(self.evading), np.flatnonzero(self.merging)
        self.brakes = np.flatnonzero(self.braking)

    def batch(self, size: int):
        """``size`` windows: images (B, n_cond, 3, H, W) uint8, normalised states (B, n_cond,
        4) and the teacher's normalised actions (B, 2), on the device. They are drawn
        uniformly, except that ``evade_share`` of them (rounded) are drawn from the windows
        where the teacher evades, ``merge_share`` from those in a lane that ends and
        ``brake_share`` from those where it brakes hard, when there are any."""
        n = self.n_cond
        pick = self.index[self.rows(size)]
        images = torch.stack([self.frames[e][t:t + n] for e, t in pick])
        states = torch.stack([self.states[e][t:t + n] for e, t in pick])
        labels = torch.stack([self.labels[e][t] for e, t in pick])
        return images.to(self.device), states.to(self.device), labels.to(self.device)

    def rows(self, size: int) -> np.ndarray:
        """The windows of a batch of ``size`` (see :meth:`batch`): first those drawn among the
        evasions, then among the merges, then among the hard braking, then the uniform ones."""
        marks = [(int(round(share * size)) if len(among) else 0, among)
                 for share, among in ((self.evade_share, self.marked), (self.merge_share, self.merges),
                                      (self.brake_share, self.brakes))]
        uniform = self.rng.integers(len(self.index), size=size - sum(k for k, _ in marks))
        return np.concatenate([among[self.rng.integers(len(among), size=k)] for k, among in marks if k] + [uniform])

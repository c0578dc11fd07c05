"""How far the privileged teacher gets with only the actions a policy network can output.

    python benchmarks/probe_teacher_bounds.py [--split test] [--episodes N] [--dataset DIR]
                                              [--teacher follow-evade|follow-yield|follow-wait]

Drives ``follow-evade`` (or ``--teacher``; ``traffic_sim/follow.py``) with its actions clipped, at every step,
to the soft bounds of the network that ``train-policy --method teach`` teaches it to (the
separated preset's: acceleration 3 standard deviations of the recorded accelerations,
braking 8, steering 3), and to those bounds with one option changed: a wider braking or
steering bound, or the steering bounded by a lateral acceleration (``--lateral-acc``).
The clipping is the one the imitation targets go through (``policy.train.within_bounds``),
so each row is what a network that copied its teacher perfectly would do. It prints the
success, collision and off-road rates, then the same split by the lane each episode starts
in (main lanes and on-ramp). About 10 s per setting on the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.probe_failures import outcomes_by_start_lane  # noqa: E402
from data.dataset import (Dataset, denormalise_actions, normalise_actions,  # noqa: E402
                          normalise_states)
from policy.net import PolicyConfig  # noqa: E402
from policy.train import PRESETS, dataset_scene, with_separated, within_bounds  # noqa: E402
from traffic_sim.evaluate import run_episodes, summarise  # noqa: E402
from traffic_sim.paths import artifacts_dir  # noqa: E402
from traffic_sim.sim import ReplaySimulator, builtin_actions  # noqa: E402


TEACHERS = ("follow-evade", "follow-yield", "follow-wait")


class BoundedTeacher:
    """``follow-evade`` (or ``teacher``) whose actions are clipped to what a network of
    ``config`` can output (None: not clipped); reads the simulator."""

    observes = False  # run_episodes renders no images for it

    def __init__(self, scene, config: Optional[PolicyConfig], stats: dict, teacher: str = "follow-evade"):
        self.sim = ReplaySimulator(scene)  # for its neighbour queries (stateless)
        self.config, self.stats, self.teacher = config, stats, teacher

    def __call__(self, obs, states, cars) -> np.ndarray:
        actions = builtin_actions(self.sim, cars, self.teacher)
        if self.config is None:
            return actions
        target = torch.from_numpy(normalise_actions(actions.astype(np.float32), self.stats))
        now = torch.from_numpy(normalise_states(np.asarray(states, dtype=np.float32), self.stats))[:, None]
        return denormalise_actions(within_bounds(target, self.config, now).numpy(), self.stats)


def settings(stats: dict, teacher: str = "follow-evade") -> dict:
    """{label: network config (None: unclipped)}: the separated preset's bounds, and each
    with one option changed."""
    base = with_separated(PRESETS["default"]).policy
    out = {f"{teacher}, unclipped": None, "the network's bounds (teach's default)": base}
    out["  --brake-bound 12"] = dataclasses.replace(base, brake_bound=12.0)
    out["  --action-bound 4.5"] = dataclasses.replace(base, action_bound=4.5, steer_bound=base.steer_bound or 3.0)
    out["  --steer-bound 30"] = dataclasses.replace(base, steer_bound=30.0)
    for acc in (1.0, 2.0, 4.0):
        out[f"  --lateral-acc {acc:g}"] = dataclasses.replace(base, lateral_acc=acc).with_units(stats)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=None, help="dataset folder (default: <artifacts>/datasets/default)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--episodes", type=int, default=None, help="the first N episodes of the split")
    ap.add_argument("--teacher", default="follow-evade", choices=TEACHERS, help="the driver (default: follow-evade)")
    args = ap.parse_args(argv)
    path = Path(args.dataset) if args.dataset else artifacts_dir() / "datasets" / "default"
    if not (path / "manifest.json").is_file():
        sys.exit(f"error: no dataset at {path}: run `python run.py build-dataset` first")
    dataset = Dataset.open(path)
    stats = {k: np.asarray(v, dtype=np.float32) for k, v in dataset.stats.items()}
    scene = dataset_scene(dataset)
    tracks = np.asarray(scene.episodes[args.split][:args.episodes])
    outcomes = {}
    print(f"{len(tracks)} {args.split} episodes")
    print(f"{'setting':40s} {'success':>8s} {'collision':>10s} {'off-road':>9s}")
    for label, config in settings(stats, args.teacher).items():
        out = run_episodes(scene, tracks, BoundedTeacher(scene, config, stats, args.teacher))
        row = summarise(label, out)
        print(f"{label:40s} {row['success_rate']:8.1%} {row['collision_rate']:10.1%} {row['offroad_rate']:9.1%}")
        outcomes[label.strip()[:24]] = out
    print()
    outcomes_by_start_lane(scene, tracks, outcomes)


if __name__ == "__main__":
    main()

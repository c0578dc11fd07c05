"""Which half of a policy's action makes it fail: its acceleration or its steering.

    python benchmarks/probe_policy_parts.py POLICY [POLICY ...] [--split val] [--episodes N]

Drives the episodes of a split in the simulator with each policy checkpoint five ways: as it
is; with its steering replaced by none (straight ahead) or by the steering of ``follow``
(the privileged car-following reference, which steers to its lane's centre); with its
acceleration replaced by none or by ``follow``'s. A policy whose acceleration carries the
car-following skill does better with ``follow``'s steering than as it is and loses much of
that with no acceleration; one whose acceleration does nothing is as good without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data.dataset import Dataset  # noqa: E402
from policy.driver import load_policy, policy_driver  # noqa: E402
from policy.train import dataset_scene  # noqa: E402
from traffic_sim.evaluate import run_episodes  # noqa: E402
from traffic_sim.sim import ReplaySimulator, builtin_actions  # noqa: E402

VARIANTS = ("as it is", "no steering", "follow's steering", "no acceleration", "follow's acceleration")


class Mixed:
    """The policy's actions with one column replaced (0: acceleration, 1: steering)."""

    def __init__(self, driver, sim, column=None, source=None):
        self.driver, self.sim, self.column, self.source = driver, sim, column, source

    def reset(self, tracks):
        self.driver.reset(tracks)

    def __call__(self, obs, states, cars):
        actions = np.array(self.driver(obs, states, cars), dtype=float)
        if self.source == "none":
            actions[:, self.column] = 0.0
        elif self.source == "follow":
            actions[:, self.column] = builtin_actions(self.sim, cars, "follow")[:, self.column]
        return actions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policies", nargs="+", help="policy checkpoints (files or training folders)")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"],
                    help="split of the policy's dataset (default: val)")
    ap.add_argument("--episodes", type=int, default=None, help="first N episodes of the split (default: all)")
    args = ap.parse_args()
    _, ckpt = load_policy(args.policies[0])
    scene = dataset_scene(Dataset.open(ckpt["dataset"]))
    tracks = scene.episodes[args.split][:args.episodes]
    sim = ReplaySimulator(scene)
    print(f"{len(tracks)} {args.split} episodes; success / collision / off-road %")
    print("| policy | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    for path in args.policies:
        driver = policy_driver(path, scene)
        driver.probe = None  # the uncertainty is not needed here
        cells = []
        for column, source in ((None, None), (1, "none"), (1, "follow"), (0, "none"), (0, "follow")):
            out = run_episodes(scene, tracks, Mixed(driver, sim, column, source))
            cells.append(" / ".join(f"{100 * out[k].mean():.1f}" for k in ("success", "collision", "off_road")))
        print(f"| {path} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()

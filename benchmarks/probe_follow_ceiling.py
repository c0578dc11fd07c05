"""How far driving with the true gaps gets on a recording: the privileged reference over its
parameters, and with evasive reactions.

    python benchmarks/probe_follow_ceiling.py [--split val] [--headways 0.5,0.8,1.0,1.5]
                                              [--acc-max 1,2,3] [--episodes N]

Drives ``follow-merge`` (``traffic_sim/follow.py``: the Intelligent Driver Model behind the
nearest vehicle ahead with the true gaps, merging from a lane that ends) with every pair of
IDM time headway and maximum acceleration given, each without and with evasion, and prints
success, collision (front / rear / side) and off-road rates. With evasion the driver also
reads the threats that car following ignores, with the true positions and speeds
(``traffic_sim.follow.Evasion``): a vehicle closing in from behind in its lane
within ``--rear-time`` seconds, and one alongside moving into it within ``--side-time``.
The setting that does best on the validation split is ``--policy follow-evade``.

The vehicles of a recording do not react to the car, and a car that drives anywhere but
where the recorded one did can be run into. What no setting here avoids bounds what any
driver that reads only the present (not the recorded future) can expect to avoid by car
following; a learned policy, which sees only images of it, is measured against that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data.dataset import Dataset  # noqa: E402
from policy.train import dataset_scene  # noqa: E402
from traffic_sim.evaluate import run_episodes, summarise  # noqa: E402
from traffic_sim.follow import IDM, Evasion, follow_actions  # noqa: E402
from traffic_sim.cli_util import UserError, run_script  # noqa: E402
from traffic_sim.paths import artifacts_dir  # noqa: E402
from traffic_sim.sim import ReplaySimulator  # noqa: E402


class PrivilegedDriver:
    """``follow-merge`` with given IDM parameters, optionally evasive; reads the simulator."""

    observes = False  # run_episodes renders no images for it

    def __init__(self, scene, idm: IDM, evade: Optional[Evasion]):
        self.sim = ReplaySimulator(scene)  # for its neighbour queries (stateless)
        self.idm, self.evade = idm, evade

    def __call__(self, obs, states, cars) -> np.ndarray:
        return follow_actions(self.sim, cars, merge=True, idm=self.idm, evade=self.evade)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=None, help="dataset folder (default: <artifacts>/datasets/default)")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--episodes", type=int, default=None, help="the first N episodes of the split")
    ap.add_argument("--headways", default="0.5,0.8,1.0,1.5", help="IDM time headways [s], comma-separated")
    ap.add_argument("--acc-max", default="1,2,3", help="IDM maximum accelerations [m/s^2], comma-separated")
    ap.add_argument("--rear-time", type=float, default=2.0, help="[s] evasion: time to reach it from behind")
    ap.add_argument("--side-time", type=float, default=1.5, help="[s] evasion: time to touch it from the side")
    args = ap.parse_args(argv)
    try:
        headways = [float(h) for h in args.headways.split(",")]
        acc_max = [float(a) for a in args.acc_max.split(",")]
    except ValueError:
        raise UserError("--headways and --acc-max take numbers, comma-separated") from None
    if min(headways + acc_max) <= 0 or (args.episodes is not None and args.episodes < 1):
        raise UserError("--headways and --acc-max must be positive, --episodes at least 1")
    folder = Path(args.dataset) if args.dataset else artifacts_dir() / "datasets" / "default"
    if not folder.is_dir():
        raise UserError(f"no dataset at {folder} (python run.py build-dataset)")
    scene = dataset_scene(Dataset.open(folder))
    tracks = scene.episodes[args.split][:args.episodes]
    print(f"follow-merge, {args.split} split, {len(tracks)} episodes (rates in %)")
    print("| IDM headway [s] | IDM max. acceleration [m/s^2] | evasive | success | collision (front / rear / side) | off-road |")
    print("|---|---|---|---|---|---|")
    for h in headways:
        for a in acc_max:
            for evade in (None, Evasion(args.rear_time, args.side_time)):
                driver = PrivilegedDriver(scene, IDM(headway=h, acc_max=a), evade)
                r = summarise("follow-merge", run_episodes(scene, tracks, driver))
                kinds = " / ".join(f"{100 * r[f'collision_{k}_rate']:.1f}" for k in ("front", "rear", "side"))
                print(f"| {h:g} | {a:g} | {'yes' if evade else 'no'} | {100 * r['success_rate']:.1f} | "
                      f"{100 * r['collision_rate']:.1f} ({kinds}) | {100 * r['offroad_rate']:.1f} |", flush=True)


if __name__ == "__main__":
    run_script(main)

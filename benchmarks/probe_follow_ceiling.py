"""How far driving with the true gaps gets on a recording: the privileged reference over its
parameters, and with evasive reactions.

    python benchmarks/probe_follow_ceiling.py [--split val] [--headways 0.5,0.8,1.0,1.5]
                                              [--acc-max 1,2,3] [--episodes N]

Drives ``follow-merge`` (``traffic_sim/follow.py``: the Intelligent Driver Model behind the
nearest vehicle ahead with the true gaps, merging from a lane that ends) with every pair of
IDM time headway and maximum acceleration given, each without and with evasion, and prints
success, collision (front / rear / side) and off-road rates. With evasion the driver also
reads the threats that car following ignores, with the true positions and speeds:

- a vehicle behind in its lane that would reach it within ``--rear-time`` seconds at the
  present speeds: it accelerates at the limit, unless it is braking for the vehicle ahead;
- a vehicle alongside (within 3 m of overlapping it along the road) moving sideways towards
  it that would touch it within ``--side-time`` seconds: if that vehicle is ahead of its
  centre it brakes at half the limit, if behind it accelerates as above.

The vehicles of a recording do not react to the car, and a car that drives anywhere but
where the recorded one did can be run into. What no setting here avoids bounds what any
driver that reads only the present (not the recorded future) can expect to avoid by car
following; a learned policy, which sees only images of it, is measured against that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data.dataset import Dataset  # noqa: E402
from policy.train import dataset_scene  # noqa: E402
from traffic_sim.evaluate import run_episodes, summarise  # noqa: E402
from traffic_sim.follow import ACC_LIMITS, IDM, LANE_MARGIN, _speeds, follow_actions  # noqa: E402
from traffic_sim.paths import artifacts_dir  # noqa: E402
from traffic_sim.sim import ReplaySimulator  # noqa: E402

ALONGSIDE = 3.0  # [m] beyond overlapping along the road, a vehicle still counts as alongside
FREE = -1.0  # [m/s^2] evasion accelerates only when car following commands more than this


class PrivilegedDriver:
    """``follow-merge`` with given IDM parameters, optionally evasive; reads the simulator."""

    observes = False  # run_episodes renders no images for it

    def __init__(self, scene, idm: IDM, evade: bool, rear_time: float, side_time: float):
        self.sim = ReplaySimulator(scene)  # for its neighbour queries (stateless)
        self.idm, self.evade, self.rear_time, self.side_time = idm, evade, rear_time, side_time

    def __call__(self, obs, states, cars) -> np.ndarray:
        actions = follow_actions(self.sim, cars, merge=True, idm=self.idm)
        if self.evade:
            actions[:, 0] = self.evasive(cars, actions[:, 0])
        return actions

    def evasive(self, cars, acc: np.ndarray) -> np.ndarray:
        sc, sim = self.sim.scene, self.sim
        frame = np.minimum(cars.frame, sc.n_frames - 1)
        rows, valid = sim.neighbours(frame, cars.center_x, cars.center_y, cars.track)
        if rows.shape[1] == 0:
            return acc
        speeds = _speeds(sc, rows, frame)  # (N, K) [m/s]
        other_cx = sc.x[rows] - 0.5 * sc.length[rows] * sc.ux[rows]
        other_cy = sc.y[rows] - 0.5 * sc.length[rows] * sc.uy[rows]
        dx = cars.center_x[:, None] - other_cx  # [m] the car's centre from theirs, across the road
        overlap = 0.5 * (sc.width[rows] + cars.width[:, None]) - np.abs(dx)
        free = acc > FREE
        # from behind, in its lane
        behind = valid & (overlap > LANE_MARGIN) & (other_cy < cars.center_y[:, None])
        gap = (cars.y - cars.length * cars.uy)[:, None] - sc.y[rows]  # [m] its rear to their front
        closing = speeds - cars.v[:, None]
        ttc = np.where(behind & (closing > 0), gap / np.maximum(closing, 1e-3), np.inf).min(1, initial=np.inf)
        out = np.where((ttc < self.rear_time) & free, np.maximum(acc, ACC_LIMITS[1]), acc)
        # from the side
        along = other_cy - cars.center_y[:, None]
        near = valid & (overlap <= LANE_MARGIN) & (
            np.abs(along) < 0.5 * (sc.length[rows] + cars.length[:, None]) + ALONGSIDE)
        towards = np.sign(dx) * speeds * sc.ux[rows]  # [m/s] their sideways speed towards the car
        side_gap = np.abs(dx) - 0.5 * (sc.width[rows] + cars.width[:, None])
        threat = near & (towards > 0.1) & (side_gap < self.side_time * towards)
        from_ahead, from_behind = (threat & (along >= 0)).any(1), (threat & (along < 0)).any(1)
        out = np.where(from_behind & ~from_ahead & free, np.maximum(out, ACC_LIMITS[1]), out)
        return np.where(from_ahead, 0.5 * ACC_LIMITS[0], out)


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
        sys.exit("probe_follow_ceiling: --headways and --acc-max take numbers, comma-separated")
    folder = Path(args.dataset) if args.dataset else artifacts_dir() / "datasets" / "default"
    if not folder.is_dir():
        sys.exit(f"probe_follow_ceiling: no dataset at {folder} (python run.py build-dataset)")
    scene = dataset_scene(Dataset.open(folder))
    tracks = scene.episodes[args.split][:args.episodes]
    print(f"follow-merge, {args.split} split, {len(tracks)} episodes (rates in %)")
    print("| IDM headway [s] | IDM max. acceleration [m/s^2] | evasive | success | collision (front / rear / side) | off-road |")
    print("|---|---|---|---|---|---|")
    for h in headways:
        for a in acc_max:
            for evade in (False, True):
                driver = PrivilegedDriver(scene, IDM(headway=h, acc_max=a), evade, args.rear_time, args.side_time)
                r = summarise("follow-merge", run_episodes(scene, tracks, driver))
                kinds = " / ".join(f"{100 * r[f'collision_{k}_rate']:.1f}" for k in ("front", "rear", "side"))
                print(f"| {h:g} | {a:g} | {'yes' if evade else 'no'} | {100 * r['success_rate']:.1f} | "
                      f"{100 * r['collision_rate']:.1f} ({kinds}) | {100 * r['offroad_rate']:.1f} |", flush=True)


if __name__ == "__main__":
    main()

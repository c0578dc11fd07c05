"""What a taught network does where it must merge out of a lane that ends, against its teacher.

    python benchmarks/probe_ramp.py POLICY [--split test] [--teacher follow-evade] [--trace]

Drives the episodes of a split whose car starts in a lane that ends (the on-ramp,
:meth:`~traffic_sim.roads.Road.to_lane_end`) with a policy checkpoint, as ``train-policy
--method teach`` collects (``policy.teacher.TeacherData``): at every step the teacher says
what it would have done. Per episode it prints how it ended, where the car first stood
(below 0.5 m/s) and how far that is from the lane's end (the teacher waits
``STOP_MARGIN`` = 10 m short of it and needs room to turn out), the hardest braking of the
network and of its teacher on the way there, and the mean steering [1/m] of each while the
car stands in the lane that ends (positive: towards the right, away from the lane it merges
into). ``--trace`` also prints every second of every episode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.dataset import Dataset, denormalise_actions, denormalise_states  # noqa: E402
from policy.driver import load_policy  # noqa: E402
from policy.teacher import TEACHERS, TeacherData  # noqa: E402
from policy.train import dataset_scene  # noqa: E402
from traffic_sim.follow import STILL  # noqa: E402
from traffic_sim.sim import ReplaySimulator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("policy", help="a policy checkpoint (file or train-policy folder)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--teacher", default="follow-evade", choices=TEACHERS)
    ap.add_argument("--trace", action="store_true", help="also print every second of every episode")
    args = ap.parse_args()
    torch.manual_seed(0)
    net, ckpt = load_policy(args.policy)
    dataset = Dataset.open(ckpt["dataset"])
    scene = dataset_scene(dataset)
    road = scene.road
    stats = {k: np.asarray(v, dtype=np.float32) for k, v in ckpt["stats"].items()}
    tracks = np.asarray(scene.episodes[args.split])
    start = ReplaySimulator(scene).history_states(tracks)[:, -1]
    tracks = tracks[np.isfinite(road.to_lane_end(start[:, 0], start[:, 1]))]
    if len(tracks) == 0:
        sys.exit(f"no episode of the {args.split} split starts in a lane that ends")
    data = TeacherData(scene, stats, net.config.n_cond, args.teacher, seed=0)
    outcome = data.drive(tracks, lambda images, states, size: net(images, states))
    n = net.config.n_cond
    print(f"{Path(args.policy).name}: {len(tracks)} {args.split} episodes starting in a lane that ends, "
          f"{outcome['success']:.0%} success, {outcome['collision']:.0%} collisions; teacher {args.teacher}")
    print(f"{'episode':>7s} {'steps':>5s} {'first stands [m to end]':>24s} {'hardest braking: net / teacher':>31s} "
          f"{'standing steering: net / teacher':>33s}")
    standing_net, standing_teacher = [], []
    for e, track in enumerate(tracks):
        states = denormalise_states(data.states[e].numpy(), stats)[n - 1:]  # the state at each step
        labels = denormalise_actions(data.labels[e].numpy(), stats)
        with torch.no_grad():
            windows = torch.stack([data.frames[e][t:t + n] for t in range(len(labels))])
            steps = torch.stack([data.states[e][t:t + n] for t in range(len(labels))])
            actions = denormalise_actions(net(windows, steps).numpy(), stats)
        speed = np.hypot(states[:len(labels), 2], states[:len(labels), 3])
        to_end = road.to_lane_end(states[:len(labels), 0], states[:len(labels), 1])
        stands = (speed < STILL) & np.isfinite(to_end)
        first = int(np.argmax(stands)) if stands.any() else None
        before = slice(0, first if first is not None else len(labels))
        where = f"{to_end[first]:.1f}" if first is not None else "never"
        net_steer = actions[stands, 1].mean() if stands.any() else np.nan
        teacher_steer = labels[stands, 1].mean() if stands.any() else np.nan
        if stands.any():
            standing_net.append(actions[stands, 1])
            standing_teacher.append(labels[stands, 1])
        print(f"{track:7d} {len(labels):5d} {where:>24s} {actions[before, 0].min():15.2f} / {labels[before, 0].min():5.2f} "
              f"{net_steer:+17.3f} / {teacher_steer:+6.3f}")
        if args.trace:
            for t in range(0, len(labels), 10):
                x, y = states[t, :2]
                print(f"    t={t * 0.1:4.1f} s  lane {road.lane_at(np.array([x]), np.array([y]))[0]}  y={y:6.1f} m  "
                      f"to end {to_end[t]:6.1f} m  v={speed[t]:4.1f} m/s  teacher {labels[t, 0]:+5.2f} m/s^2 "
                      f"{labels[t, 1]:+.4f} 1/m  network {actions[t, 0]:+5.2f} {actions[t, 1]:+.4f}")
    if standing_net:
        net_all, teacher_all = np.concatenate(standing_net), np.concatenate(standing_teacher)
        print(f"standing in the lane that ends ({len(net_all)} steps): mean steering net {net_all.mean():+.3f} 1/m, "
              f"teacher {teacher_all.mean():+.3f} 1/m; towards the right in {np.mean(net_all > 0.05):.0%} / "
              f"{np.mean(teacher_all > 0.05):.0%} of them")


if __name__ == "__main__":
    main()

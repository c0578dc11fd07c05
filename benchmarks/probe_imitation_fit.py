"""How closely a taught network copies its teacher in the states it drives into itself.

    python benchmarks/probe_imitation_fit.py POLICY [--split val] [--episodes N] [--teacher NAME]
                                             [--teacher-drives]

Drives the episodes of a split (not the training episodes the network learned from) with a
policy checkpoint, as ``train-policy --method teach`` collects (``policy.teacher.TeacherData``):
at every step the teacher (``follow-evade`` by default) says what it would have done. Then
it compares the network's actions with the teacher's, both in normalised units and with the
teacher's clipped to what the network can output (``policy.train.within_bounds``): the
squared error and the share of the teacher's variance explained (R^2 = 1 - error / variance)
of the acceleration and of the steering, over all the windows and over those where the
teacher evades, those in a lane that ends and those where it brakes harder than 2 m/s^2.
A network that copied its teacher perfectly would explain all of it (R^2 = 1); the
simulator's outcomes of the copy are those of ``benchmarks/probe_teacher_bounds.py``.
With ``--teacher-drives`` the teacher drives and the network is only asked: its fit in the
states its teacher drives into, apart from those its own errors lead it into.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.dataset import Dataset, normalise_actions  # noqa: E402
from policy.driver import load_policy  # noqa: E402
from policy.teacher import HARD_BRAKE, TEACHERS, TeacherData  # noqa: E402
from policy.train import dataset_scene, within_bounds  # noqa: E402

CHUNK = 512  # windows per forward pass


def fit_table(net, data: TeacherData, stats: dict) -> list[tuple]:
    """[(group, windows, (mse, r2) of the acceleration, (mse, r2) of the steering)] of the
    network's actions against the teacher's clipped labels, per group of windows."""
    n = net.config.n_cond
    preds, targets = [], []
    with torch.no_grad():
        for lo in range(0, len(data.index), CHUNK):
            pick = data.index[lo:lo + CHUNK]
            images = torch.stack([data.frames[e][t:t + n] for e, t in pick])
            states = torch.stack([data.states[e][t:t + n] for e, t in pick])
            labels = torch.stack([data.labels[e][t] for e, t in pick])
            preds.append(net(images, states).numpy())
            targets.append(within_bounds(labels, net.config, states).numpy())
    pred, target = np.concatenate(preds), np.concatenate(targets)
    hard = normalise_actions(np.array([HARD_BRAKE, 0.0], dtype=np.float32), stats)[0]
    groups = {"all windows": np.ones(len(target), dtype=bool), "teacher evades": data.evading,
              "in a lane that ends": data.merging, f"teacher brakes below {HARD_BRAKE:g} m/s^2": target[:, 0] < hard}
    rows = []
    for name, mask in groups.items():
        if not mask.any():
            rows.append((name, 0, (np.nan, np.nan), (np.nan, np.nan)))
            continue
        err = ((pred[mask] - target[mask]) ** 2).mean(0)
        var = target[mask].var(0)
        rows.append((name, int(mask.sum()), *((float(err[k]), float(1.0 - err[k] / max(var[k], 1e-12))) for k in (0, 1))))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("policy", help="a policy checkpoint (file or train-policy folder)")
    ap.add_argument("--split", default="val", choices=["train", "val", "test"])
    ap.add_argument("--episodes", type=int, default=100, help="the first N episodes of the split (default: 100)")
    ap.add_argument("--teacher", default="follow-evade", choices=TEACHERS)
    ap.add_argument("--teacher-drives", action="store_true", help="the teacher drives, the network is only asked")
    args = ap.parse_args()
    torch.manual_seed(0)
    net, ckpt = load_policy(args.policy)
    dataset = Dataset.open(ckpt["dataset"])
    scene = dataset_scene(dataset)
    stats = {k: np.asarray(v, dtype=np.float32) for k, v in ckpt["stats"].items()}
    data = TeacherData(scene, stats, net.config.n_cond, args.teacher, seed=0)
    tracks = np.asarray(scene.episodes[args.split][:args.episodes])
    outcome = data.drive(tracks, None if args.teacher_drives else (lambda images, states, size: net(images, states)))
    driver = "the teacher" if args.teacher_drives else "the network"
    print(f"{Path(args.policy).name}: {len(tracks)} {args.split} episodes driven by {driver} "
          f"({outcome['success']:.0%} success), {len(data):,} windows labelled by {args.teacher}")
    print(f"{'windows':34s} {'n':>7s} {'acc. error':>11s} {'acc. R^2':>9s} {'steer error':>12s} {'steer R^2':>10s}")
    for name, count, (acc_err, acc_r2), (steer_err, steer_r2) in fit_table(net, data, stats):
        print(f"{name:34s} {count:7d} {acc_err:11.3f} {acc_r2:9.2f} {steer_err:12.3f} {steer_r2:10.2f}")


if __name__ == "__main__":
    main()

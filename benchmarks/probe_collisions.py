"""Where a policy's car is, and what it does, when it collides.

    python benchmarks/probe_collisions.py POLICY [POLICY ...] [--split test] [--episodes N]

Drives the episodes of a split in the simulator with each policy checkpoint and records, at
every step, the car's offset from the recorded car it replaced (along the road: ahead
positive), its speed against the recorded car's, and its acceleration. Per outcome (success,
and each kind of collision) it prints the median time of the end, the offset and the speed
difference at the end; then, for the collisions with a vehicle ahead, the share of their last
3 s spent braking at the policy's own braking bound. A car that ends far ahead of the recorded
car and faster than it did not slow down when the traffic did; one that brakes at its bound
for seconds before the collision could not brake harder. A second table follows the live cars'
offsets over time: how soon and how far they leave the recorded car's place.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data.dataset import Dataset, denormalise_actions  # noqa: E402
from policy.driver import load_policy, policy_driver  # noqa: E402
from policy.train import dataset_scene  # noqa: E402
from traffic_sim.evaluate import run_episodes  # noqa: E402
from traffic_sim.sim import DT, HIT_KINDS  # noqa: E402

LAST_S = 3.0  # [s] window before a collision that is examined
DRIFT_TIMES = (1, 2, 5, 7, 10, 15, 20)  # [s] times at which the live cars' offsets are summarised
AT_BOUND = 0.95  # a braking within this fraction of the bound counts as at the bound


class Recorder:
    """Wraps a driver; keeps per step, per car: offset along the road from the recorded car
    [m], speed difference [m/s], acceleration [m/s^2] (the driver's actions are physical),
    and whether it was live."""

    def __init__(self, driver, scene):
        self.driver, self.scene = driver, scene
        self.rows = []

    def reset(self, tracks):
        if hasattr(self.driver, "reset"):
            self.driver.reset(tracks)

    def __call__(self, obs, states, cars):
        sc = self.scene
        rows = sc.ep_row[cars.track] + cars.steps
        end = sc.tr_start[cars.track + 1]
        known = rows < end
        rows = np.minimum(rows, end - 1)
        actions = np.asarray(self.driver(obs, states, cars), dtype=float)
        nan = np.nan
        self.rows.append({
            "live": ~cars.done,
            "along": np.where(known, cars.y - sc.tr_y[rows], nan),
            "dv": np.where(known, cars.v - sc.tr_speed[rows], nan),
            "acc": actions[:, 0].copy(),
        })
        return actions


def probe(path: str, split: str, episodes) -> None:
    net, ckpt = load_policy(path)
    scene = dataset_scene(Dataset.open(ckpt["dataset"]))
    tracks = scene.episodes[split][:episodes]
    recorder = Recorder(policy_driver(path, scene, name=Path(path).name), scene)
    out = run_episodes(scene, tracks, recorder, batch=len(tracks))
    live = np.stack([r["live"] for r in recorder.rows])  # (T, N)
    series = {k: np.stack([r[k] for r in recorder.rows]) for k in ("along", "dv", "acc")}
    last = live.shape[0] - 1 - np.argmax(live[::-1], axis=0)  # each car's last live step
    at_end = {k: v[last, np.arange(len(last))] for k, v in series.items()}
    cfg = net.config
    brake = cfg.limits()[0][0]
    brake_ms2 = float(denormalise_actions(np.array([brake, 0.0]), ckpt["stats"])[0])
    print(f"\n{Path(path).name}: {len(tracks)} {split} episodes, braking bound {brake_ms2:.1f} m/s^2")
    print(f"{'outcome':10s} {'share':>6s} {'end [s]':>8s} {'ahead of recorded car [m]':>26s} "
          f"{'faster [m/s]':>13s}")
    hit = out["hit"]
    groups = [("success", out["success"])] + [(k, hit == HIT_KINDS.index(k)) for k in HIT_KINDS[1:]]
    groups.append(("off-road", out["off_road"]))
    for name, mask in groups:
        if not mask.any():
            continue
        along = at_end["along"][mask]
        print(f"{name:10s} {mask.mean():6.1%} {np.median(out['time'][mask]):8.1f} "
              f"{np.nanmedian(along):+9.1f} (10-90%: {np.nanpercentile(along, 10):+5.1f}, "
              f"{np.nanpercentile(along, 90):+5.1f}) {np.nanmedian(at_end['dv'][mask]):+13.1f}")
    print(f"{'time [s]':>8s} {'live':>5s} {'ahead of recorded car [m]':>26s} {'faster [m/s]':>13s} "
          f"{'>10 m ahead':>12s} {'>10 m behind':>13s}")
    for t_s in DRIFT_TIMES:
        i = int(round(t_s / DT))
        if i >= live.shape[0]:
            break
        along, dv = series["along"][i], series["dv"][i]
        m = live[i] & np.isfinite(along)
        if not m.any():
            break
        a = along[m]
        print(f"{t_s:8.0f} {m.sum():5d} {np.median(a):+9.1f} (10-90%: {np.percentile(a, 10):+5.1f}, "
              f"{np.percentile(a, 90):+5.1f}) {np.median(dv[m]):+13.1f} {np.mean(a > 10):12.0%} {np.mean(a < -10):13.0%}")
    front = np.flatnonzero(hit == HIT_KINDS.index("front"))
    if len(front):
        n_last = int(round(LAST_S / DT))
        shares = []
        for e in front:
            steps = np.flatnonzero(live[:, e])[-n_last:]
            acc = series["acc"][steps, e]  # the driver's actions are in m/s^2
            shares.append(np.mean(acc <= AT_BOUND * brake_ms2))
        shares = np.array(shares)
        print(f"collisions ahead: in their last {LAST_S:.0f} s, braking at the bound {shares.mean():.0%} of the "
              f"time on average; {np.mean(shares >= 0.5):.0%} of them at the bound half of it or more")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policies", nargs="+", help="policy checkpoints (files or training folders)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"],
                    help="split of the policy's dataset (default: test)")
    ap.add_argument("--episodes", type=int, default=None, help="first N episodes of the split (default: all)")
    args = ap.parse_args()
    for path in args.policies:
        probe(path, args.split, args.episodes)


if __name__ == "__main__":
    main()

"""Where a policy trained with the world separated still fails, and whether its training
objective saw it coming.

    python benchmarks/probe_failures.py POLICY [--before 2.0] [--split test] [--episodes N]
                                        [--lanes-only [--reference follow-evade]]

1. Outcomes by the lane each episode starts in (main lanes, on-ramp, auxiliary lane), for
   the policy and for ``follow`` (car following with the true gaps, which never changes
   lanes): on a road whose on-ramp ends, the cars that start on it must merge. With
   ``--lanes-only`` only this, for any policy (e.g. one taught by ``--method teach``), beside
   ``--reference`` (a built-in driver).
2. For each episode that ends running into a vehicle ahead, the car's closed-loop state
   ``--before`` seconds before the collision is the start of a separated unroll
   (``policy.rollout.rollout_separated``, the policy's own horizon, costs and prox reach):
   the car displaced from the recorded car as it was then, among the traffic the policy's
   forward model predicts and among the recorded traffic. Printed: the mean discounted cost
   in each world and the number of states where its gradient does not ask for less
   acceleration at the first step (d cost / d acceleration <= 0). The same at as many
   states of successful episodes, at the same time into the episode, for comparison. If the
   model's world costs much less than the recorded one before collisions (and not
   elsewhere), the policy learned to drive on into what the model does not show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.dataset import Dataset, WindowSampler  # noqa: E402
from policy.driver import load_policy, policy_driver  # noqa: E402
from policy.rollout import CostWeights, discounted, rollout_separated  # noqa: E402
from policy.train import dataset_scene  # noqa: E402
from traffic_sim.evaluate import run_episodes  # noqa: E402
from traffic_sim.sim import BUILTIN_POLICIES, DT, HIT_KINDS  # noqa: E402
from world_model.train import load_model  # noqa: E402


class StateRecorder:
    """Wraps a driver; keeps each car's position [m], speed [m/s] and step at every step."""

    def __init__(self, driver):
        self.driver, self.rows = driver, []

    def reset(self, tracks):
        if hasattr(self.driver, "reset"):
            self.driver.reset(tracks)

    def __call__(self, obs, states, cars):
        self.rows.append({"live": ~cars.done, "x": cars.x.copy(), "y": cars.y.copy(), "v": cars.v.copy(),
                          "steps": cars.steps.copy()})
        return self.driver(obs, states, cars)


def outcomes_by_start_lane(scene, tracks, outcomes: dict) -> None:
    rows = scene.ep_row[tracks]
    kind_of = {ln.lane_id: ln.kind for ln in scene.road.lanes}
    kinds = np.array([kind_of.get(int(k), "off-road") for k in scene.road.lane_at(scene.tr_x[rows], scene.tr_y[rows])])
    print(f"{'driver':24s} {'start lane':10s} {'n':>4s} {'success':>8s} {'off-road':>9s} "
          + " ".join(f"{k:>6s}" for k in HIT_KINDS[1:]))
    for name, out in outcomes.items():
        for kind in dict.fromkeys(kinds):
            m = kinds == kind
            print(f"{name:24s} {kind:10s} {m.sum():4d} {out['success'][m].mean():8.1%} {out['off_road'][m].mean():9.1%} "
                  + " ".join(f"{np.mean(out['hit'][m] == HIT_KINDS.index(k)):6.1%}" for k in HIT_KINDS[1:]))


class UnrollFrom:
    """Separated unrolls of a policy from closed-loop states of its car."""

    def __init__(self, net, ckpt, dataset, scene):
        self.net, self.ckpt, self.ds, self.scene = net, ckpt, dataset, scene
        self.model, _ = load_model(ckpt["model_path"])
        pre = ckpt["preset"]
        self.horizon, self.reach = pre["horizon"], pre.get("prox_reach")
        self.weights = CostWeights(**pre["weights"])
        n = net.config.n_cond
        self.sampler = WindowSampler(dataset, "train", n_cond=n, n_pred=self.horizon, batch_size=1)
        self.ds_track = np.asarray(dataset.manifest["episodes"]["track"])
        self.states = np.asarray(dataset.states)

    def __call__(self, track: int, step: int, x: float, y: float, v: float):
        """(cost, d cost / d first acceleration) in the model's world and in the recorded one;
        None where the recorded window does not reach that far."""
        n, sc = self.net.config.n_cond, self.scene
        row = sc.ep_row[track] + step  # the recorded car's row at that step
        episode = np.flatnonzero(self.ds_track == track)
        if not len(episode):
            return None
        rows = self.ds.episode(int(episode[0]))
        here = rows.start + int(np.argmin(np.abs(self.states[rows, 1] - sc.tr_y[row])
                                          + np.abs(self.states[rows, 0] - sc.tr_x[row])))
        first = here - n + 1
        if first < rows.start or first + n + self.horizon > rows.stop:
            return None
        batch = self.sampler.batch_at(np.array([first]))
        rec = self.states[here]
        start = torch.tensor([[y - rec[1], x - rec[0], v - float(np.hypot(rec[2], rec[3]))]], dtype=torch.float32)
        out = []
        for world in ("model", "recorded"):
            first_action = {}

            def actor(hist, st, t):
                action = self.net(hist, st)
                if t == 0:  # a leaf, to read the cost's gradient with respect to it
                    first_action["a"] = action.detach().clone().requires_grad_(True)
                    return first_action["a"]
                return action

            r = rollout_separated(
                self.model, actor, batch["images"][:, :n], batch["states"][:, :n], batch["car_size"], self.horizon,
                self.ckpt["stats"], batch["actions"][:, n - 1:n - 1 + self.horizon],
                world=batch["images"][:, n:n + self.horizon] if world == "recorded" else None,
                start=start, prox_reach=self.reach)
            cost = discounted(self.weights.combine(r["costs"]), self.weights.gamma).mean()
            cost.backward()
            out.append((float(cost.detach()), float(first_action["a"].grad[0, 0])))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", help="a policy trained with --separate-ego (file or training folder)")
    ap.add_argument("--before", type=float, default=2.0, help="seconds before a collision ahead (default: 2)")
    ap.add_argument("--split", default="test", choices=["train", "val", "test"],
                    help="split of the policy's dataset (default: test)")
    ap.add_argument("--episodes", type=int, default=None, help="first N episodes of the split (default: all)")
    ap.add_argument("--lanes-only", action="store_true", help="only the outcomes by start lane, for any policy")
    ap.add_argument("--reference", default="follow", choices=BUILTIN_POLICIES[2:],
                    help="the built-in driver beside it (default: follow)")
    args = ap.parse_args()
    torch.manual_seed(0)
    net, ckpt = load_policy(args.policy)
    if not args.lanes_only and not ckpt["preset"].get("separate_ego"):
        sys.exit(f"error: {args.policy} was not trained with --separate-ego")
    dataset = Dataset.open(ckpt["dataset"])
    scene = dataset_scene(dataset)
    tracks = np.asarray(scene.episodes[args.split][:args.episodes])
    recorder = StateRecorder(policy_driver(args.policy, scene, name=Path(args.policy).name))
    out = run_episodes(scene, tracks, recorder, batch=len(tracks))
    follow = run_episodes(scene, tracks, args.reference, batch=len(tracks))
    print(f"\n{Path(args.policy).name}: {len(tracks)} {args.split} episodes")
    outcomes_by_start_lane(scene, tracks, {Path(args.policy).name: out, args.reference: follow})
    if args.lanes_only:
        return

    live = np.stack([r["live"] for r in recorder.rows])  # (T, N)
    last = live.shape[0] - 1 - np.argmax(live[::-1], axis=0)
    back = int(round(args.before / DT))
    front = np.flatnonzero(out["hit"] == HIT_KINDS.index("front"))
    success = np.flatnonzero(out["success"])
    rng = np.random.default_rng(0)
    control = rng.choice(success, size=min(len(front), len(success)), replace=False)
    unroll = UnrollFrom(net, ckpt, dataset, scene)
    print(f"\nseparated unrolls of {ckpt['preset']['horizon'] * DT:.0f} s from the car's closed-loop states "
          f"(discounted cost; states where it does not ask for less acceleration)")
    print(f"{'states':40s} {'n':>3s} {'model world':>12s} {'recorded world':>15s} {'no brake: model':>16s} {'recorded':>9s}")
    for label, episodes, at in ((f"{args.before:.0f} s before a collision ahead", front, last[front] - back),
                                ("successful episodes, same times", control, last[front[:len(control)]] - back)):
        res = []
        for e, t in zip(episodes, at):
            t = int(np.clip(t, 0, last[e]))
            r = recorder.rows[t]
            got = unroll(int(tracks[e]), int(r["steps"][e]), float(r["x"][e]), float(r["y"][e]), float(r["v"][e]))
            if got is not None:
                res.append(got)
        if not res:
            print(f"{label:40s}   0")
            continue
        a = np.array(res)  # (n, world, (cost, grad))
        print(f"{label:40s} {len(a):3d} {a[:, 0, 0].mean():12.3f} {a[:, 1, 0].mean():15.3f} "
              f"{int((a[:, 0, 1] <= 0).sum()):16d} {int((a[:, 1, 1] <= 0).sum()):9d}")


if __name__ == "__main__":
    main()

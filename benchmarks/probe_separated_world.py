"""Is the forward model's world good enough to train a policy in? The costs of the same
actions among the traffic the model predicts and among the recorded traffic.

    python benchmarks/probe_separated_world.py [POLICY ...] [--model CKPT] [--windows 64] [--horizon 40]

On validation windows the car drives ``horizon`` steps with the world separated from it
(``policy.rollout.rollout_separated``): the traffic along the recorded car's path, either
predicted by the forward model (prior z) or recorded, and the car moved among it by its
kinematics, with the expert's actions, with no action, and with each policy given. A model
good enough for policy learning ranks the actions as the recorded world does; where a policy
finds a lower cost than the expert among the predicted traffic but a higher one among the
recorded traffic, it exploits the model's errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.dataset import Dataset, WindowSampler, denormalise_actions  # noqa: E402
from policy.driver import load_policy  # noqa: E402
from policy.rollout import CostWeights, rollout, rollout_separated  # noqa: E402
from traffic_sim.paths import artifacts_dir  # noqa: E402
from world_model.train import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policies", nargs="*", help="policy checkpoints (files or training folders)")
    ap.add_argument("--model", default=str(artifacts_dir() / "models" / "stochastic-default" / "checkpoint.pt"),
                    help="forward-model checkpoint (default: the default stochastic one)")
    ap.add_argument("--windows", type=int, default=64, help="validation windows (default: 64)")
    ap.add_argument("--horizon", type=int, default=40, help="steps of 0.1 s (default: 40)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model, mckpt = load_model(args.model)
    dataset = Dataset.open(mckpt["dataset"])
    stats = {k: v.tolist() for k, v in dataset.stats.items()}
    n, t_max = model.config.n_cond, args.horizon
    batch = WindowSampler(dataset, "val", n, t_max, args.windows, seed=args.seed + 1).sample()
    images, states, size = batch["images"][:, :n], batch["states"][:, :n], batch["car_size"]
    expert = batch["actions"][:, n - 1:n - 1 + t_max]
    z = model.sample_prior(args.windows * t_max, "cpu").view(args.windows, t_max, -1) if model.config.stochastic else None
    with torch.no_grad():
        predicted = rollout(model, lambda h, s, t: expert[:, t], images, states, size, t_max, stats,
                            CostWeights(), z=z)["images"]
    worlds = {"model": predicted, "recorded": batch["images"][:, n:n + t_max]}
    actors = {"expert": lambda h, s, t: expert[:, t], "no action": lambda h, s, t: torch.zeros_like(expert[:, t])}
    for path in args.policies:
        net, _ = load_policy(path)
        actors[Path(path).name] = lambda h, s, t, net=net: net(h, s)
    w = CostWeights()
    print(f"{args.windows} validation windows, {t_max} steps; cost = proximity + {w.lane} lane + {w.offroad} off-road, "
          "mean over windows and steps")
    print(f"{'actions':24s} {'world':9s} {'cost':>6s} {'prox':>6s} {'lane':>6s} {'acc [m/s2]':>11s} {'end offset [m]':>15s}")
    for name, actor in actors.items():
        for world_name, world in worlds.items():
            with torch.no_grad():
                r = rollout_separated(model, actor, images, states, size, t_max, stats, expert, world=world)
            c = r["costs"]
            acc = denormalise_actions(r["actions"], stats)[..., 0]
            print(f"{name:24s} {world_name:9s} {w.combine(c).mean():6.3f} {c[..., 0].mean():6.3f} "
                  f"{c[..., 1].mean():6.3f} {acc.mean():+11.2f} {r['offsets'][:, -1, 0].mean():+15.2f}")


if __name__ == "__main__":
    main()

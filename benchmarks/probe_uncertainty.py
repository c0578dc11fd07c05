"""Which actions does the model's dropout uncertainty prefer? The one-step uncertainty cost of
the expert's action and of actions around it.

    python benchmarks/probe_uncertainty.py [--model CKPT] [--windows 64] [--k 4] [--steps -6,-3,-1,0,1,3,6]

On validation windows, from the recorded history, the model predicts the next frame K times
with dropout on (``policy.rollout.step_variances``, as the uncertainty cost of
``train-policy --method mpur --separate-ego`` does) for the expert's action with its
acceleration moved by each step (in standard deviations of the expert's accelerations), and
for no action. The variances are normalised by the model's expert statistics for the
separated training (the ``uncertainty-k<K>-h40-sep-s8.json`` beside the model, written by
that training; without it, by the expert action's variances on the same windows), and the cost is their positive part above the hinge, as in training. An
uncertainty cost that teaches the policy to stay where the model knows the world is lowest at
the expert's action; one that is lowest at a fixed action (no acceleration) pulls every
action towards it, whatever the traffic asks for.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.dataset import Dataset, WindowSampler, denormalise_actions  # noqa: E402
from policy.rollout import CostWeights, step_variances, uncertainty_cost  # noqa: E402
from traffic_sim.paths import artifacts_dir  # noqa: E402
from world_model.train import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(artifacts_dir() / "models" / "deterministic-default" / "checkpoint.pt"),
                    help="forward-model checkpoint (default: the default deterministic one)")
    ap.add_argument("--windows", type=int, default=64, help="validation windows (default: 64)")
    ap.add_argument("--k", type=int, default=4, help="dropout samples (default: 4, as in training)")
    ap.add_argument("--steps", default="-6,-3,-1,0,1,3,6",
                    help="acceleration moves from the expert's, in expert standard deviations")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model_path = Path(args.model)
    if model_path.is_dir():
        model_path = model_path / "checkpoint.pt"
    stats_path = model_path.parent / f"uncertainty-k{args.k}-h40-sep-s8.json"
    u_stats = json.loads(stats_path.read_text()) if stats_path.is_file() else None
    torch.manual_seed(args.seed)
    model, mckpt = load_model(model_path)
    model.requires_grad_(False)
    dataset = Dataset.open(mckpt["dataset"])
    stats = {k: v.tolist() for k, v in dataset.stats.items()}
    n = model.config.n_cond
    batch = WindowSampler(dataset, "val", n, 1, args.windows, seed=args.seed + 1).sample()
    hist = batch["images"][:, :n].float() / 255.0
    states, size = batch["states"][:, :n], batch["car_size"]
    expert = batch["actions"][:, n - 1]
    moves = sorted({float(v) for v in args.steps.split(",")} | {0.0})  # the expert's own action too
    w = CostWeights()
    variances = {}
    with torch.no_grad():
        for name, action in [(f"{m:+g} std", expert + torch.tensor([m, 0.0])) for m in moves] + \
                [("no action", torch.zeros_like(expert))]:
            variances[name] = step_variances(model, hist, states, action, size, stats, w, args.k)
    if u_stats is None:  # no training wrote them for this K: the expert's variances on these windows
        v = variances["+0 std"].double()
        u_stats = {"mean": v.mean(0).tolist(), "std": v.std(0).tolist()}
        print(f"({stats_path.name} absent: normalised by the expert's variances on these windows)")
    costs = {name: uncertainty_cost(v, u_stats, w.hinge) for name, v in variances.items()}  # (windows,)
    accel = denormalise_actions(expert, stats)[:, 0]
    mean = torch.as_tensor(u_stats["mean"])
    std = torch.as_tensor(u_stats["std"])
    base = costs["+0 std"]
    print(f"{args.windows} validation windows, K = {args.k}; expert acceleration mean {accel.mean():+.2f} m/s^2")
    print(f"{'action':<12} {'uncertainty cost':>16} {'below / above the expert':>25} {'normalised variances':>32}")
    for name, c in costs.items():
        z = ((variances[name].double() - mean) / std).mean(0)  # image, state, cost
        vs = "" if name == "+0 std" else \
            f"{(c < base).float().mean().item():.0%} / {(c > base).float().mean().item():.0%}"
        print(f"{name:<12} {c.mean().item():>16.3f} {vs:>25} {'  '.join(f'{x:+.2f}' for x in z.tolist()):>32}")


if __name__ == "__main__":
    main()

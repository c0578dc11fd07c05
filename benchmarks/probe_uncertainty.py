"""Which actions does the model's dropout uncertainty prefer? The one-step uncertainty cost of
the expert's action and of actions around it.

    python benchmarks/probe_uncertainty.py [--model CKPT] [--windows 64] [--k 4] [--steps -6,-3,-1,0,1,3,6]
        [--displace "3,0,0;0,1.8,0;..."] [--gradients untrained POLICY...]

On validation windows, from the recorded history, the model predicts the next frame K times
with dropout on (``policy.rollout.step_variances``, as the uncertainty cost of
``train-policy --method mpur --separate-ego`` does) for the expert's action with its
acceleration moved by each step (in standard deviations of the expert's accelerations), and
for no action. The variances are normalised by the model's expert statistics for the
separated training (the ``uncertainty-k<K>-h40-sep-s8.json`` beside the model, written by
that training; without it, by the expert action's variances on the same windows), and the
cost is their positive part above the hinge, as in training. An uncertainty cost that
teaches the policy to stay where the model knows the world is lowest at the expert's action;
one that is lowest at a fixed action (no acceleration) pulls every action towards it,
whatever the traffic asks for.

A second table does the same for the expert's action from states the expert did not visit:
the car's history moved ahead, behind, to the side or made faster and slower
(``policy.rollout.displace_start``), which is what the uncertainty's gradient through the
states (``--uncertainty-through-states``) answers to.

With ``--gradients POLICY...`` (policy checkpoints or training folders, or ``untrained``), a
third table compares the scales of what a training step gets: the norm of the gradient, with
respect to the policy's parameters, of the discounted costs and of the discounted
uncertainty cost (through the actions only, and through the states too), on 4 s separated
unrolls of training windows (batch 8, as in training), and the cosine between the costs'
gradient and each uncertainty gradient.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.dataset import Dataset, WindowSampler, denormalise_actions  # noqa: E402
from policy.rollout import (CostWeights, discounted, displace_start, rollout_separated,  # noqa: E402
                            step_variances, uncertainty_cost)
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
    ap.add_argument("--displace", default="3,0,0;6,0,0;10,0,0;-6,0,0;0,0.9,0;0,1.8,0;0,-1.8,0;0,3.7,0;0,0,4;0,0,-4",
                    help="states to measure from: ALONG,ACROSS,SPEED [m, m, m/s] moves of the car's history, "
                         "separated by ';' ('' for none)")
    ap.add_argument("--gradients", nargs="*", default=[], metavar="POLICY",
                    help="policies (or 'untrained') whose gradient scales to compare")
    ap.add_argument("--batches", type=int, default=4, help="training batches for --gradients (default: 4)")
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
    accel = denormalise_actions(expert, stats)[:, 0]
    print(f"{args.windows} validation windows, K = {args.k}; expert acceleration mean {accel.mean():+.2f} m/s^2")
    table(variances, "+0 std", "action", u_stats, w)
    moves = [tuple(float(v) for v in m.split(",")) for m in args.displace.split(";") if m.strip()]
    if moves:
        states_var = {"expert's": variances["+0 std"]}
        with torch.no_grad():
            for m in moves:
                h, s = displace_start(hist, states, torch.tensor(m).expand(len(hist), 3), stats)
                states_var[f"{m[0]:+g} m, {m[1]:+g} m, {m[2]:+g} m/s"] = \
                    step_variances(model, h, s, expert, size, stats, w, args.k)
        print("\nthe expert's action from the car's history moved (along, across, speed):")
        table(states_var, "expert's", "state", u_stats, w)
    if args.gradients:
        gradient_scales(args, model, dataset, stats, u_stats, w)


def table(variances: dict, base_name: str, what: str, u_stats: dict, w: CostWeights) -> None:
    """Print the uncertainty cost of each row, how often it is below / above the base row's,
    and its normalised variances."""
    costs = {name: uncertainty_cost(v, u_stats, w.hinge) for name, v in variances.items()}  # (windows,)
    mean = torch.as_tensor(u_stats["mean"])
    std = torch.as_tensor(u_stats["std"])
    base = costs[base_name]
    width = max(12, *(len(k) for k in costs))
    print(f"{what:<{width}} {'uncertainty cost':>16} {'below / above the expert':>25} {'normalised variances':>32}")
    for name, c in costs.items():
        z = ((variances[name].double() - mean) / std).mean(0)  # image, state, cost
        vs = "" if name == base_name else \
            f"{(c < base).float().mean().item():.0%} / {(c > base).float().mean().item():.0%}"
        print(f"{name:<{width}} {c.mean().item():>16.3f} {vs:>25} {'  '.join(f'{x:+.2f}' for x in z.tolist()):>32}")


def gradient_scales(args, model, dataset, stats: dict, u_stats: dict, w: CostWeights) -> None:
    """Print the norms of the policy gradients of the costs and of the uncertainty cost."""
    from policy.driver import load_policy
    from policy.net import PolicyNet
    from policy.train import PRESETS, with_separated

    preset = with_separated(PRESETS["default"])
    n = model.config.n_cond
    horizon, stride = preset.horizon, preset.u_stride
    print(f"\npolicy gradient norms, {args.batches} training batches of 8, {horizon / 10:g} s separated unrolls, "
          f"uncertainty every {stride} steps (K = {args.k}; lambda not applied)")
    print(f"{'policy':<28} {'costs':>8} {'u, actions':>11} {'u, states':>10} {'cos(costs, u act / st)':>24}")
    for spec in args.gradients:
        torch.manual_seed(args.seed)
        net = PolicyNet(preset.policy) if spec == "untrained" else load_policy(spec)[0]
        sampler = WindowSampler(dataset, "train", n, horizon, 8, seed=args.seed + 2)
        norms, cosines = [], []
        for _ in range(args.batches):
            b = sampler.sample()
            grads = []
            for mode in ("costs", "actions", "states"):
                net.zero_grad()
                torch.manual_seed(args.seed)  # the same dropout masks for both uncertainty gradients
                r = rollout_separated(model, lambda h, s, t: net(h, s), b["images"][:, :n], b["states"][:, :n],
                                      b["car_size"], horizon, stats, b["actions"][:, n - 1:n - 1 + horizon],
                                      k_dropout=args.k, u_stats=u_stats, u_stride=stride, weights=w,
                                      u_through_states=mode == "states")
                loss = discounted(w.combine(r["costs"]), w.gamma) if mode == "costs" else \
                    discounted(r["uncertainty"], w.gamma ** stride)
                loss.backward()
                grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None]))
            norms.append([g.norm().item() for g in grads])
            cosines.append([torch.cosine_similarity(grads[0], g, 0).item() for g in grads[1:]])
        nm = torch.tensor(norms).mean(0).tolist()
        cs = torch.tensor(cosines).mean(0).tolist()
        name = spec if len(spec) <= 28 else "..." + spec[-25:]
        print(f"{name:<28} {nm[0]:>8.3f} {nm[1]:>11.3f} {nm[2]:>10.3f} {cs[0]:>+11.2f} / {cs[1]:+.2f}")


if __name__ == "__main__":
    main()

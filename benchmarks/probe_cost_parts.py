"""Which of MPUR's costs asks a policy to brake, and which to drive on, part by part.

    python benchmarks/probe_cost_parts.py MPUR_POLICY [--actor POLICY] [--windows 96] [--seed 0]

The objective is the one ``MPUR_POLICY`` was trained on (``--separate-ego``: its forward
model, horizon, cost weights, proximity reach, uncertainty statistics and displaced starts);
the actions are those of ``--actor`` (default: the same policy; e.g. the taught network an
MPUR run started from, to see what MPUR's costs asked of it). Training windows are drawn in
three groups: near the end of a lane that ends (the on-ramp, ``ends_mask``), closing in on a
queue (the recorded car slows by 4 m/s or more within 4 s, ``queues_mask``), and the others.

Each window is unrolled among the model's traffic, and the discounted cost is split into its
parts, each weighted as in the loss: the proximity cost of the vehicles ahead (the mask behind
the car set to 0), what the vehicles behind add to it (the full mask less that), the lane
cost, the off-road cost and the uncertainty cost. For each part the total derivative with
respect to the acceleration at every step (through the later steps of the unroll, the
policy's later actions included) is summed over the horizon: positive asks for less
acceleration (to brake), negative for more. Printed per group and part: the mean of that sum
(x 1,000), the share of windows where it asks to brake, and the mean cost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.dataset import Dataset, WindowSampler  # noqa: E402
from policy.driver import load_policy  # noqa: E402
from policy.rollout import CostWeights, discounted, rollout_separated  # noqa: E402
from policy.train import ends_mask, queues_mask  # noqa: E402
from world_model.train import load_model  # noqa: E402

PARTS = ("proximity ahead", "proximity behind", "lane", "off-road", "uncertainty")


def group_starts(sampler: WindowSampler, present: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) first rows of windows whose present frame (the last conditioning one) is marked."""
    firsts = sampler._first_rows(np.arange(sampler.n_windows))  # every window of the split
    marked = firsts[present[firsts + sampler.n_cond - 1]]
    if not len(marked):
        return marked
    return rng.choice(marked, size=min(n, len(marked)), replace=False)


def part_gradients(net, ckpt, model, batch: dict, start: torch.Tensor) -> tuple:
    """((B, parts) summed d part / d acceleration, (B, parts) part's discounted cost)."""
    pre = ckpt["preset"]
    n, horizon = net.config.n_cond, pre["horizon"]
    w = CostWeights(**pre["weights"])
    images, states = batch["images"][:, :n], batch["states"][:, :n]
    b = len(images)
    out = {}
    for rear in (0.0, 1.0):
        leaves = [torch.zeros(b, 2, requires_grad=True) for _ in range(horizon)]

        def actor(hist, st, t, leaves=leaves):
            return net(hist, st) + leaves[t]  # a zero added: its gradient is the action's

        torch.manual_seed(0)  # the same dropout draws in both unrolls
        r = rollout_separated(model, actor, images, states, batch["car_size"], horizon, ckpt["stats"],
                              batch["actions"][:, n - 1:n - 1 + horizon], start=start, rear_weight=rear,
                              k_dropout=pre["k_dropout"] if rear else 1, u_stats=ckpt["u_stats"] if rear else None,
                              u_stride=pre["u_stride"], weights=w, prox_reach=pre.get("prox_reach"),
                              offroad_ahead=pre.get("offroad_ahead"))
        c = r["costs"]
        if rear == 0.0:
            out["ahead"] = (c[..., 0], leaves)
        else:
            out["full"] = (c[..., 0], leaves)
            out["lane"] = (w.lane * c[..., 1], leaves)
            out["off"] = (w.offroad * c[..., 2], leaves)
            if "uncertainty" in r:
                out["u"] = (w.uncertainty * r["uncertainty"], leaves, w.gamma ** pre["u_stride"])

    def grad(per_step, leaves, gamma=w.gamma):
        cost = discounted(per_step, gamma) * b  # a sum over the windows: each its own gradient
        g = torch.autograd.grad(cost, leaves, retain_graph=True, allow_unused=True)
        acc = sum(x[:, 0] for x in g if x is not None)
        weights = gamma ** torch.arange(per_step.shape[1], dtype=per_step.dtype)
        return acc.detach(), ((per_step * weights).sum(1) / per_step.shape[1]).detach()

    g_ahead, c_ahead = grad(*out["ahead"])
    g_full, c_full = grad(*out["full"])
    parts = [(g_ahead, c_ahead), (g_full - g_ahead, c_full - c_ahead), grad(*out["lane"]), grad(*out["off"])]
    parts.append(grad(*out["u"]) if "u" in out else (torch.zeros(b), torch.zeros(b)))
    return torch.stack([p[0] for p in parts], 1), torch.stack([p[1] for p in parts], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", help="a policy trained with mpur --separate-ego: the objective")
    ap.add_argument("--actor", default=None, help="the policy whose actions are unrolled (default: the same)")
    ap.add_argument("--windows", type=int, default=96, help="windows per group (default: 96)")
    ap.add_argument("--batch", type=int, default=16, help="windows per unroll (default: 16)")
    ap.add_argument("--seed", type=int, default=0, help="windows and displaced starts (default: 0)")
    args = ap.parse_args()
    _, ckpt = load_policy(args.policy)
    pre = ckpt["preset"]
    if not pre.get("separate_ego") or not ckpt.get("model_path"):
        sys.exit(f"error: {args.policy} was not trained through a forward model with --separate-ego")
    net, _ = load_policy(args.actor or args.policy)
    model, _ = load_model(ckpt["model_path"])
    model.eval()
    dataset = Dataset.open(ckpt["dataset"])
    sampler = WindowSampler(dataset, "train", n_cond=net.config.n_cond, n_pred=pre["horizon"], batch_size=1)
    rng = np.random.default_rng(args.seed)
    ends, queues = ends_mask(dataset), queues_mask(dataset)
    groups = {"near a lane's end": ends, "closing in on a queue": queues & ~ends, "the others": ~ends & ~queues}
    noise = torch.tensor(pre["start_noise"], dtype=torch.float32)
    torch.manual_seed(args.seed)
    print(f"objective: {Path(args.policy).name}; actions: {Path(args.actor or args.policy).name}")
    print(f"{'group':24s} {'part':18s} {'n':>4s} {'d/d acc x1e3':>13s} {'asks to brake':>14s} {'cost':>7s}")
    for name, present in groups.items():
        starts = group_starts(sampler, present, rng, args.windows)
        grads, costs = [], []
        for i in range(0, len(starts), args.batch):
            batch = sampler.batch_at(starts[i:i + args.batch])
            start = (2.0 * torch.rand(len(batch["images"]), 3) - 1.0) * noise
            g, c = part_gradients(net, ckpt, model, batch, start)
            grads.append(g)
            costs.append(c)
        if not grads:
            print(f"{name:24s} (no windows)")
            continue
        g, c = torch.cat(grads), torch.cat(costs)
        for j, part in enumerate(PARTS + ("all",)):
            gj = g.sum(1) if part == "all" else g[:, j]
            cj = c.sum(1) if part == "all" else c[:, j]
            print(f"{name:24s} {part:18s} {len(g):4d} {1e3 * gj.mean():13.2f} {(gj > 0).float().mean():14.0%} "
                  f"{cj.mean():7.3f}")


if __name__ == "__main__":
    main()

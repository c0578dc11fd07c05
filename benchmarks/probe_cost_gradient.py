"""Which way the cost a policy is trained on tells the car to go, by the gap ahead.

    python benchmarks/probe_cost_gradient.py [--checkpoint CKPT] [--windows 128] [--seed 5]

From validation windows, the forward model is unrolled ``--horizon`` steps with the expert's
current action held; the gradient of the discounted cost (proximity + lane + off-road, the
training weights) with respect to the acceleration, summed over the steps, says "brake"
where it is positive. The windows are grouped by the gap to the nearest vehicle straight
ahead in the last real image, and the cost is also computed on the front half and on the
rear half of every predicted image alone. A cost that teaches car following says "brake"
far more often with a car close ahead than with the road open. Last, it shows where, in the
real images, the pixel lies that sets the proximity cost (a max over pixels): in the car's
own lane, or in another lane ahead of, alongside or behind it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import policy.rollout as rollout_module  # noqa: E402
from data.dataset import Dataset, WindowSampler  # noqa: E402
from policy.costs import image_costs, speed_of  # noqa: E402
from policy.rollout import CostWeights, discounted, rollout  # noqa: E402
from traffic_sim.costs import ACROSS_M, ALONG_M, proximity_mask  # noqa: E402
from traffic_sim.raster import IMAGE_H, IMAGE_W, PX_PER_M, VEHICLES_CHANNEL  # noqa: E402
from world_model.train import default_out, load_model  # noqa: E402

BINS = ((0.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, 36.0), (36.0, float("inf")))  # [m] gap ahead
LANE_HALF_PX = 2  # columns either side of the centre that count as "straight ahead"


def gap_ahead(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8 -> (B,) [m] from the car's front rows to the nearest vehicle pixel
    straight ahead (inf when none is in view)."""
    front = IMAGE_H // 2 - 3  # rows above this lie ahead of a typical car's front
    c = IMAGE_W // 2
    ahead = images[:, VEHICLES_CHANNEL, :front, c - LANE_HALF_PX:c + LANE_HALF_PX].float().amax(2) > 80
    rows = torch.arange(front)
    nearest = torch.where(ahead, rows, torch.full_like(rows, -1)).amax(1)
    return torch.where(nearest >= 0, (front - nearest).float() / PX_PER_M, torch.tensor(float("inf")))


def where_the_max_is(images: torch.Tensor, speed: torch.Tensor, car_size: torch.Tensor) -> list:
    """For real images (B, C, H, W) uint8, speeds (B,) [m/s] and car sizes (B, 2) [m]:
    where the pixel that sets the proximity cost lies: "none" (cost below 0.05), "own lane,
    ahead/behind", or "other lane, ahead/alongside/behind" (alongside: within the car's
    length, where the mask is flat along the road and moving changes nothing)."""
    along = torch.as_tensor(ALONG_M, dtype=torch.float32)
    across = torch.as_tensor(ACROSS_M, dtype=torch.float32)
    half_length, half_width = 0.5 * car_size[:, :1], 0.5 * car_size[:, 1:]
    mask = torch.as_tensor(proximity_mask(speed.numpy(), car_size[:, 0].numpy(), car_size[:, 1].numpy()),
                           dtype=torch.float32)  # (B, H, W)
    product = images[:, VEHICLES_CHANNEL].float() / 255 * mask
    value, index = product.flatten(1).max(1)
    a, c = along[index // IMAGE_W], across[index % IMAGE_W].abs()
    out = []
    for k in range(len(value)):
        if value[k] < 0.05:
            out.append("none")
        elif c[k] <= half_width[k, 0] + 0.5:
            out.append("own lane, " + ("ahead" if a[k] > 0 else "behind"))
        else:
            out.append("other lane, " + ("ahead" if a[k] > half_length[k, 0] else
                                         "behind" if a[k] < -half_length[k, 0] else "alongside"))
    return out


def half_costs(part: str):
    """image_costs on the front or rear half of the images only (vehicles channel)."""
    keep = torch.ones(IMAGE_H)
    if part == "front":
        keep[IMAGE_H // 2:] = 0
    else:
        keep[:IMAGE_H // 2 + 1] = 0
    scale = torch.stack([torch.ones(IMAGE_H), keep, torch.ones(IMAGE_H)]).view(3, IMAGE_H, 1)

    def costs(images, speed, size):
        return image_costs(images * scale, speed, size)
    return costs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(default_out("stochastic", "default")))
    p.add_argument("--windows", type=int, default=128)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--horizon", type=int, default=20)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model, ckpt = load_model(args.checkpoint)
    model.requires_grad_(False)
    ds = Dataset.open(ckpt["dataset"])
    stats = {k: v.tolist() for k, v in ds.stats.items()}
    n, t_max, w = model.config.n_cond, args.horizon, CostWeights()
    sampler = WindowSampler(ds, "val", n, 1, min(args.windows, 32), seed=args.seed)
    batches = [sampler.sample() for _ in range((args.windows + 31) // 32)]
    gaps = torch.cat([gap_ahead(b["images"][:, n - 1]) for b in batches])
    says_brake = {}
    for part in ("all", "front", "rear"):
        rollout_module.image_costs = image_costs if part == "all" else half_costs(part)
        signs = []
        for b in batches:
            a = b["actions"][:, n - 1].clamp(-3, 3)[:, None].repeat(1, t_max, 1).requires_grad_(True)
            z = model.sample_prior(len(a) * t_max).view(len(a), t_max, -1) if model.config.stochastic else None
            r = rollout(model, lambda h, s, t, a=a: a[:, t], b["images"][:, :n], b["states"][:, :n],
                        b["car_size"], t_max, stats, w, z=z)
            discounted(w.combine(r["costs"]), w.gamma).backward()
            signs.append(a.grad[..., 0].sum(1) > 0)
        says_brake[part] = torch.cat(signs).float()
    rollout_module.image_costs = image_costs
    print(f"{args.checkpoint}: {len(gaps)} validation windows, {t_max}-step unrolls with the expert's action")
    print(f"{'gap ahead [m]':>14} {'windows':>8} {'says brake: whole image':>24} {'front half':>11} {'rear half':>10}")
    for lo, hi in BINS:
        m = (gaps >= lo) & (gaps < hi)
        if m.any():
            cells = " ".join(f"{float(says_brake[k][m].mean()):>{width}.2f}"
                             for k, width in (("all", 24), ("front", 11), ("rear", 10)))
            print(f"{f'{lo:.0f}-{hi:.0f}':>14} {int(m.sum()):>8} {cells}")
    places = [p for b in batches for p in where_the_max_is(b["images"][:, n - 1],
                                                          speed_of(b["states"][:, n - 1], stats),
                                                          b["car_size"])]
    print("\nwhere the pixel that sets the proximity cost lies (last real image of each window):")
    for place in dict.fromkeys(sorted(places)):
        print(f"  {place:<24} {places.count(place) / len(places):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

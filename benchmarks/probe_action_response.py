"""How much a forward model's predictions respond to the ego car's action.

    python benchmarks/probe_action_response.py [--checkpoint CKPT] [--windows 8] [--seed 3]

From real training windows, the model is unrolled 2 s twice with constant actions: braking
and accelerating by 2 expert standard deviations (same z, dropout off). Policy learning
needs both futures to differ where physics says they must: the speed (by about 2 x 2 x 0.68
x 2 = 5.5 m/s), and the other vehicles' positions in the ego-centred image, which shift by
the ego car's relative displacement (the gap, in pixels). The shift is measured as the
difference of the vehicles' mean row; as vehicles leave and enter the image that measure
is smaller than the gap, so it is also shown for the accelerating future moved back by the
gap ("geometric"): a model whose images follow the car's motion matches that column. The
printed costs are those a policy would be trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.dataset import Dataset, WindowSampler  # noqa: E402
from policy.rollout import CostWeights, rollout  # noqa: E402
from traffic_sim.raster import IMAGE_H, PX_PER_M, VEHICLES_CHANNEL  # noqa: E402
from world_model.model import translate  # noqa: E402
from world_model.train import default_out, load_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(default_out("stochastic", "default")))
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--horizon", type=int, default=20)
    args = p.parse_args(argv)
    model, ckpt = load_model(args.checkpoint)
    model.requires_grad_(False)
    ds = Dataset.open(ckpt["dataset"])
    stats = {k: v.tolist() for k, v in ds.stats.items()}
    n, t_max = model.config.n_cond, args.horizon
    batch = WindowSampler(ds, "train", n, 1, args.windows, seed=args.seed).sample()
    mean, std = torch.tensor(stats["state_mean"]), torch.tensor(stats["state_std"])
    futures = {}
    for name, accel in (("brake", -2.0), ("accelerate", 2.0)):
        actions = torch.tensor([accel, 0.0]).expand(args.windows, t_max, 2)
        z = torch.zeros(args.windows, t_max, model.config.n_z)
        with torch.no_grad():
            futures[name] = rollout(model, lambda h, s, t, a=actions: a[:, t], batch["images"][:, :n],
                                    batch["states"][:, :n], batch["car_size"], t_max, stats,
                                    CostWeights(), z=z)
    rows = torch.arange(IMAGE_H, dtype=torch.float32).view(1, IMAGE_H, 1)

    def centre_row(images):  # (B, C, H, W) -> (B,) mean row of the vehicles channel
        v = images[:, VEHICLES_CHANNEL]
        return (v * rows).sum((1, 2)) / v.sum((1, 2)).clamp_min(1e-6)

    print(f"{args.checkpoint} (step {ckpt['step']}), {args.windows} training windows")
    print(f"{'t [s]':>6} {'speed brake/accel [m/s]':>24} {'ego gap [m]':>11} {'gap [px]':>9} "
          f"{'geometric shift [px]':>20} {'predicted shift [px]':>20} {'proximity brake/accel':>22}")
    for t in (4, 9, t_max - 1):
        s = {k: f["states"][:, t] * std + mean for k, f in futures.items()}
        gap = float((s["accelerate"][:, 1] - s["brake"][:, 1]).mean())  # [m] along the road
        accel_images = futures["accelerate"]["images"][:, t]
        shift = float((centre_row(futures["brake"]["images"][:, t]) - centre_row(accel_images)).mean())
        # the same measure on the accelerating future moved back by the gap: what geometry
        # alone gives (vehicles leaving and entering the image make it less than the gap)
        gaps = (s["accelerate"][:, 1] - s["brake"][:, 1]) * PX_PER_M  # (B,) [px]
        moved = translate(accel_images, torch.stack([-gaps, torch.zeros_like(gaps)], 1))
        geometric = float((centre_row(moved) - centre_row(accel_images)).mean())
        prox = [float(futures[k]["costs"][:, t, 0].mean()) for k in ("brake", "accelerate")]
        speed = [float(s[k][:, 2:].norm(dim=1).mean()) for k in ("brake", "accelerate")]
        print(f"{0.1 * (t + 1):>6.1f} {speed[0]:>11.2f} / {speed[1]:<10.2f} {gap:>11.2f} "
              f"{-gap * PX_PER_M:>9.2f} {geometric:>20.2f} {shift:>20.2f} {prox[0]:>10.3f} / {prox[1]:<10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput of the forward model: predicted frames per second.

    python benchmarks/bench_model.py [--configs reference,default,tiny] [--model stochastic]
                                     [--precision fp32,bf16] [--iters N] [--threads T]
                                     [--device cpu|cuda]

One training iteration = sample-free forward over a batch of windows (random images, states
and actions: the data pipeline is not measured), backward, gradient clipping and an Adam
step. Predicted frames per second = batch * n_pred / seconds per iteration.

Configurations: ``reference`` is the paper's scale (batch 64, 20 + 20 frames, 256 features,
n_z 32, the stochastic model, without the ego-motion warp, as the original), ``default``, ``tiny`` and ``paper`` are the training presets
of ``world_model/train.py`` (``paper`` has the reference architecture and batch). The
original PPUU implementation of the reference model, measured on the 2-core development
machine with torch 2.13: 14.6 s per iteration, 87 predicted frames/s, 15.6 M parameters.

Each measurement runs ``--warmup`` iterations, then ``--iters`` timed ones; the median and
the best are shown. On a shared machine the best is the closer estimate of the hardware's
rate (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from world_model.model import IMAGE_SHAPE, ForwardModel, ModelConfig  # noqa: E402
from world_model.train import PRESETS, Preset, autocast, cpu_has_fast_bf16  # noqa: E402

REFERENCE = Preset(model=ModelConfig(stochastic=True, ego_warp=False), n_pred=20, batch_size=64, steps=0,
                   lr=1e-4, grad_clip=5.0, val_every=1, val_batches=1, log_every=1)
ORIGINAL = {"seconds_per_iter": 14.6, "frames_per_s": 87.0, "params_m": 15.6}


def measure(preset: Preset, stochastic: bool, dtype: torch.dtype, device: torch.device,
            iters: int, warmup: int) -> dict:
    torch.manual_seed(0)
    mcfg = dataclasses.replace(preset.model, stochastic=stochastic)
    model = ForwardModel(mcfg).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=preset.lr)
    b, t = preset.batch_size, mcfg.n_cond + preset.n_pred
    images = torch.randint(0, 256, (b, t, *IMAGE_SHAPE), dtype=torch.uint8, device=device)
    states = torch.randn(b, t, 4, device=device)
    actions = torch.randn(b, t, 2, device=device)
    times = []
    for i in range(warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast(device, dtype):
            loss, _ = model(images, states, actions)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    frames = b * preset.n_pred
    return {"params": model.n_params(), "median_s": statistics.median(times), "best_s": min(times),
            "fps_median": frames / statistics.median(times), "fps_best": frames / min(times)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="reference,default,tiny",
                   help="comma-separated: reference, or preset names (default: %(default)s)")
    p.add_argument("--model", default="stochastic", choices=["deterministic", "stochastic"])
    p.add_argument("--precision", default=None,
                   help="comma-separated fp32,bf16 (default: fp32,bf16 where bf16 is native)")
    p.add_argument("--iters", type=int, default=3, help="timed iterations (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)

    device = torch.device(args.device)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.precision:
        precisions = args.precision.split(",")
    else:
        precisions = ["fp32", "bf16"] if device.type == "cuda" or cpu_has_fast_bf16() else ["fp32"]
    configs = {"reference": REFERENCE, **PRESETS}
    names = args.configs.split(",")
    for name in names:
        if name not in configs:
            p.error(f"unknown config {name!r} (have {', '.join(configs)})")
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} threads, native bf16: {cpu_has_fast_bf16()}"))
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'config':<10} {'precision':<9} {'params':>9} {'batch':>5} {'n_pred':>6} "
          f"{'s/iter (median, best)':>22} {'frames/s (median, best)':>25} {'vs original':>11}")
    for name in names:
        preset = configs[name]
        for prec in precisions:
            dtype = torch.bfloat16 if prec == "bf16" else torch.float32
            r = measure(preset, args.model == "stochastic", dtype, device, args.iters, args.warmup)
            # the original's figure is for the 2-core CPU: a ratio only means something there
            same_hardware = device.type == "cpu" and name in ("reference", "paper")
            ratio = f"{r['fps_median'] / ORIGINAL['frames_per_s']:.2f}x" if same_hardware else ""
            print(f"{name:<10} {prec:<9} {r['params'] / 1e6:8.3f}M {preset.batch_size:>5} "
                  f"{preset.n_pred:>6} {r['median_s']:>11.3f} {r['best_s']:>10.3f} "
                  f"{r['fps_median']:>12.1f} {r['fps_best']:>12.1f} {ratio:>11}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"original PPUU, reference config on the 2-core machine: {ORIGINAL['seconds_per_iter']} s/iter, "
          f"{ORIGINAL['frames_per_s']:.0f} frames/s, {ORIGINAL['params_m']} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the dataset builder and of the window sampler.

    python benchmarks/bench_dataset.py [--minutes M] [--seconds S] [--batch B] [--keep DIR]

Generates M minutes (default 2) of synthetic traffic into a temporary folder, builds a
dataset from it and reports the build rate in car-frames/s (scene loading included, and the
rendering + writing part alone). Then draws training batches (B windows of 20 + 20 frames,
default B = 64) for about S seconds (default 5) and reports batches/s and MB/s of batch data.
The first batches read the images from disk; the page cache serves the later ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.build import BuildConfig, build_dataset  # noqa: E402
from data.dataset import Dataset, WindowSampler  # noqa: E402
from traffic_sim.commands import GenerateConfig, generate_command  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="generated traffic [min]")
    ap.add_argument("--seconds", type=float, default=5.0, help="sampling duration [s]")
    ap.add_argument("--batch", type=int, default=64, help="windows per batch")
    ap.add_argument("--keep", default=None, help="build into this folder instead of a temporary one")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        traffic = generate_command(GenerateConfig(out=str(tmp / "traffic"), minutes=args.minutes,
                                                  seed=0, quiet=True))
        print(f"generated {args.minutes:g} min of traffic in {time.perf_counter() - t:.1f} s")
        out = Path(args.keep) if args.keep else tmp / "dataset"
        t = time.perf_counter()
        build_dataset(BuildConfig(trajectories=str(traffic), out=str(out), quiet=True))
        wall = time.perf_counter() - t
        m = json.loads((out / "manifest.json").read_text())
        n = m["n_frames"]
        print(f"build: {m['n_episodes']} episodes, {n:,} car-frames, "
              f"{n * 3 * 117 * 24 / 1e9:.2f} GB of images in {wall:.1f} s")
        print(f"  {n / wall:,.0f} car-frames/s overall (scene loading included), "
              f"{n / m['build']['render_seconds']:,.0f} car-frames/s rendering + writing")

        ds = Dataset.open(out)
        sampler = WindowSampler(ds, "train", n_cond=20, n_pred=20, batch_size=args.batch, seed=0)
        batch = sampler.sample()  # warm-up
        nbytes = sum(v.numel() * v.element_size() for v in batch.values())
        count = 0
        t = time.perf_counter()
        while time.perf_counter() - t < args.seconds:
            sampler.sample()
            count += 1
        dt = time.perf_counter() - t
        print(f"sampler: {sampler.n_windows:,} train windows, batch {args.batch} x 40 frames "
              f"({nbytes / 1e6:.1f} MB): {count / dt:.1f} batches/s, {count * nbytes / dt / 1e6:,.0f} MB/s")


if __name__ == "__main__":
    main()

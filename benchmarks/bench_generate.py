"""Generation speed of the synthetic I-80 traffic.

    python benchmarks/bench_generate.py [--minutes 15] [--seed 0]

Times the simulation (warm-up included) and the writing of the NGSIM file, and prints the
seconds per simulated minute at the default (congested I-80) density, against the target of
15 minutes of traffic in under 60 s.
"""

import argparse
import tempfile
import time
from pathlib import Path

from traffic_sim.generator import GeneratorConfig, generate
from traffic_sim.ngsim import write_raw


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cfg = GeneratorConfig(minutes=args.minutes, seed=args.seed)
    t0 = time.perf_counter()
    table = generate(cfg)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        write_raw(table, Path(d) / "trajectories-synthetic-i80.txt")
    t2 = time.perf_counter()
    in_view = table.groupby("frame").size()
    total = t2 - t0
    print(f"recorded {args.minutes:g} min (+{cfg.warmup_s:g} s warm-up): {len(table):,} rows, "
          f"{table['vehicle_id'].nunique():,} vehicles, {in_view.mean():.0f} in view on average")
    print(f"simulate {t1 - t0:6.2f} s   write {t2 - t1:6.2f} s   total {total:6.2f} s")
    print(f"{total / args.minutes:.2f} s per simulated minute; 15 min would take "
          f"{15 * total / args.minutes:.1f} s (target < 60 s: {60 / (15 * total / args.minutes):.1f}x margin)")


if __name__ == "__main__":
    main()

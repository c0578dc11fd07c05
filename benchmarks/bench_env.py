"""Throughput of the environment and the batched simulator, against highway-env.

    python benchmarks/bench_env.py [--seconds S] [--batch N] [--rounds R]
                                   [--highway-actions idle|random] [--profile]

Measures, in one run and on the same machine:

1. ``traffic_sim/I80-v0`` (default synthetic I-80 traffic): env steps/s with image
   observations for one controlled car, zero actions, resetting on episode end.
2. highway-env's ``highway-fast-v0`` with its default (kinematics) observation, and with a
   4-frame 128x64 grayscale image observation (drawn by pygame with SDL's "offscreen"
   video driver; the script checks the images are not blank), driven by the IDLE
   meta-action (or random actions), resetting on episode end.
3. The batched rasteriser: images/s of ``ReplaySimulator.observe`` for N cars started on
   the "all" episodes.
4. The batched simulator: car-steps/s of ``ReplaySimulator.step`` + ``observe`` for N cars
   (zero actions; finished cars are restarted on their track).

Each measurement runs for about S seconds (default 10) after a warm-up. With ``--rounds R``
the measurements are interleaved R times (S/R seconds each) so that a noisy, shared machine
affects them alike; a rate is total work / total time, and the spread across rounds is shown.
The ratios compare ours with highway-fast-v0 and the figures with the targets
(50x highway-fast-v0 in env steps/s; 20,000 images/s for the rasteriser).

Note that one highway-fast-v0 step is 1 s of simulated time (policy at 1 Hz, 5 Hz physics)
while one I80-v0 step is 0.1 s (NGSIM frame rate); the table also shows simulated seconds
per wall-clock second.

``--profile`` additionally runs the I80-v0 loop under cProfile and prints the top functions
by own time.

highway-env is optional: without it, its rows are reported as unavailable.
"""

from __future__ import annotations

import os

# Offscreen pygame for highway-env's image observation; set before pygame is imported.
# Not "dummy": highway-env disables its viewer under that driver and returns blank images.
os.environ["SDL_VIDEODRIVER"] = "offscreen"
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402

import traffic_sim  # noqa: E402,F401  (registers traffic_sim/I80-v0)
from traffic_sim.loading import load_scene  # noqa: E402
from traffic_sim.scene import DT  # noqa: E402
from traffic_sim.sim import ReplaySimulator  # noqa: E402

ENV_TARGET_RATIO = 50.0  # I80-v0 env steps/s over highway-fast-v0's
RASTER_TARGET = 20_000.0  # images/s of the batched rasteriser
HIGHWAY_IMAGE_CONFIG = {
    "observation": {
        "type": "GrayscaleObservation",
        "observation_shape": (128, 64),
        "stack_size": 4,
        "weights": [0.2989, 0.5870, 0.1140],
    }
}


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------ workloads
class EnvLoop:
    """Steps a Gymnasium env with a fixed action rule, resetting on episode end."""

    def __init__(self, env, action_fn, seed=0):
        self.env = env
        self.action_fn = action_fn
        self.env.reset(seed=seed)
        self.env.action_space.seed(seed)
        self.episodes = 0

    def run(self, seconds: float) -> tuple[int, float]:
        """Steps for about ``seconds``; returns (steps, elapsed seconds)."""
        env, act = self.env, self.action_fn
        steps = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        while True:
            for _ in range(10):  # check the clock every 10 steps
                _, _, terminated, truncated, _ = env.step(act())
                steps += 1
                if terminated or truncated:
                    env.reset()
                    self.episodes += 1
            now = time.perf_counter()
            if now >= deadline:
                return steps, now - t0


class RasterLoop:
    """Images of N cars at their start frame, drawn again and again."""

    def __init__(self, sim: ReplaySimulator, tracks):
        self.sim = sim
        self.cars = sim.start(tracks)
        self.n = len(tracks)

    def run(self, seconds: float) -> tuple[int, float]:
        sim, cars = self.sim, self.cars
        calls = 0
        t0 = time.perf_counter()
        while True:
            sim.observe(cars)
            calls += 1
            now = time.perf_counter()
            if now - t0 >= seconds:
                return calls * self.n, now - t0


class SimLoop:
    """N cars stepped and observed each frame; finished cars restart on their track."""

    def __init__(self, sim: ReplaySimulator, tracks):
        self.sim = sim
        self.tracks = np.asarray(tracks)
        self.cars = sim.start(self.tracks)
        self.actions = np.zeros((len(self.tracks), 2))
        self.n = len(self.tracks)
        self.restarts = 0

    def _restart_done(self):
        done = np.flatnonzero(self.cars.done)
        if len(done) == 0:
            return
        fresh = self.sim.start(self.tracks[done])
        for f in dataclasses.fields(self.cars):
            getattr(self.cars, f.name)[done] = getattr(fresh, f.name)
        self.restarts += len(done)

    def run(self, seconds: float) -> tuple[int, float]:
        sim, cars, actions = self.sim, self.cars, self.actions
        steps = 0
        t0 = time.perf_counter()
        while True:
            sim.step(cars, actions)
            sim.observe(cars)
            self._restart_done()
            steps += self.n
            now = time.perf_counter()
            if now - t0 >= seconds:
                return steps, now - t0


# ------------------------------------------------------------------ setup
def make_ours():
    env = gym.make("traffic_sim/I80-v0")
    zero = np.zeros(2, dtype=np.float32)
    return EnvLoop(env, lambda: zero)


def make_highway(config, action_mode):
    import highway_env  # noqa: F401  (registers highway-fast-v0)

    env = gym.make("highway-fast-v0", config=config) if config else gym.make("highway-fast-v0")
    if action_mode == "random":
        loop = EnvLoop(env, None)
        loop.action_fn = env.action_space.sample
        return loop
    idle = env.unwrapped.action_type.actions_indexes["IDLE"]
    loop = EnvLoop(env, lambda: idle)
    if config:
        obs, *_ = env.step(idle)
        if not np.asarray(obs).any():
            print("WARNING: highway-fast-v0 image observation is blank (nothing was drawn)")
        env.reset()
    return loop


def batch_tracks(scene, n):
    episodes = scene.episodes["all"]
    return np.resize(episodes, n)  # repeats the episodes when n exceeds them


def highway_dt(loop) -> float:
    return 1.0 / float(loop.env.unwrapped.config["policy_frequency"])


# ------------------------------------------------------------------ main
def profile_ours(seconds: float, top: int = 10):
    import cProfile
    import pstats

    loop = make_ours()
    loop.run(0.5)
    prof = cProfile.Profile()
    prof.enable()
    steps, elapsed = loop.run(seconds)
    prof.disable()
    print(f"\ncProfile of traffic_sim/I80-v0: {steps} steps in {elapsed:.2f} s "
          f"(profiled; slower than the table)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    ap.add_argument("--batch", type=int, default=2048, help="cars in the batched measurements")
    ap.add_argument("--rounds", type=int, default=2,
                    help="interleaved rounds the timed seconds are split into")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per workload")
    ap.add_argument("--highway-actions", choices=("idle", "random"), default="idle")
    ap.add_argument("--no-highway-image", action="store_true",
                    help="skip highway-fast-v0 with the grayscale image observation")
    ap.add_argument("--profile", action="store_true",
                    help="also profile the I80-v0 loop with cProfile (top 10 by tottime)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", module="gymnasium")

    print("versions: "
          f"python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {version('torch')}, gymnasium {gym.__version__}, "
          f"highway-env {version('highway-env')}, pygame-ce {version('pygame-ce')}")
    print(f"os.cpu_count(): {os.cpu_count()}; seconds per measurement: {args.seconds:g} "
          f"in {args.rounds} round(s); batch: {args.batch}; "
          f"highway actions: {args.highway_actions}")

    t = time.perf_counter()
    scene = load_scene()
    print(f"default scene loaded in {time.perf_counter() - t:.1f} s "
          f"({len(scene.episodes['all'])} episodes, {scene.n_frames} frames)")

    # name -> (loop, unit, simulated seconds per step or None)
    work = {}
    work["I80-v0 (image obs)"] = (make_ours(), "steps/s", DT)
    highway_ok = version("highway-env") != "not installed"
    if highway_ok:
        loop = make_highway(None, args.highway_actions)
        work["highway-fast-v0 (kinematics obs)"] = (loop, "steps/s", highway_dt(loop))
        if not args.no_highway_image:
            loop = make_highway(HIGHWAY_IMAGE_CONFIG, args.highway_actions)
            work["highway-fast-v0 (grayscale 4x128x64)"] = (loop, "steps/s", highway_dt(loop))
    sim = ReplaySimulator(scene)
    tracks = batch_tracks(scene, args.batch)
    work[f"rasteriser observe, N={args.batch}"] = (RasterLoop(sim, tracks), "images/s", None)
    work[f"batched sim step+observe, N={args.batch}"] = (SimLoop(sim, tracks), "car-steps/s", DT)

    for loop, _, _ in work.values():
        loop.run(args.warmup)

    per_round = args.seconds / max(1, args.rounds)
    totals = {k: [0, 0.0] for k in work}
    rates = {k: [] for k in work}
    for _ in range(max(1, args.rounds)):
        for name, (loop, _, _) in work.items():
            n, dt = loop.run(per_round)
            totals[name][0] += n
            totals[name][1] += dt
            rates[name].append(n / dt)
    rate = {k: n / dt for k, (n, dt) in totals.items()}

    w = max(len(k) for k in work) + 2
    print()
    print(f"{'measurement':<{w}}{'rate':>14}  {'unit':<12}{'round min-max':>22}{'sim s/s':>11}")
    print("-" * (w + 14 + 2 + 12 + 22 + 11))
    for name, (loop, unit, sim_dt) in work.items():
        spread = f"{min(rates[name]):,.0f}-{max(rates[name]):,.0f}"
        simss = f"{rate[name] * sim_dt:,.0f}" if sim_dt is not None else ""
        print(f"{name:<{w}}{rate[name]:>14,.0f}  {unit:<12}{spread:>22}{simss:>11}")
    eps = {k: loop.episodes for k, (loop, _, _) in work.items() if isinstance(loop, EnvLoop)}
    print("episodes ended during the run: " + ", ".join(f"{k}: {v}" for k, v in eps.items()))

    print()
    ours = rate["I80-v0 (image obs)"]
    for peer in ("highway-fast-v0 (kinematics obs)", "highway-fast-v0 (grayscale 4x128x64)"):
        if peer in rate:
            r = ours / rate[peer]
            print(f"ours / {peer:<38} {r:8.2f}x  ({r / ENV_TARGET_RATIO:.1%} of the "
                  f"{ENV_TARGET_RATIO:.0f}x target: {'met' if r >= ENV_TARGET_RATIO else 'not met'})")
        elif not highway_ok:
            print(f"ours / {peer}: highway-env not installed")
    raster = rate[f"rasteriser observe, N={args.batch}"]
    print(f"rasteriser {raster:,.0f} images/s vs {RASTER_TARGET:,.0f} target: "
          f"{raster / RASTER_TARGET:.2f}x ({'met' if raster >= RASTER_TARGET else 'not met'})")
    batched = rate[f"batched sim step+observe, N={args.batch}"]
    print(f"batched sim car-steps/s / single-env steps/s: {batched / ours:.1f}x")

    if args.profile:
        profile_ours(min(args.seconds, 5.0))


if __name__ == "__main__":
    main()

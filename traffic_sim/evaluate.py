"""Closed-loop evaluation: drive many test episodes at once in the replay simulator."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .cli_util import UserError, doc
from .paths import artifacts_dir, atomic_output
from .scene import DT, SPLITS, Scene
from .sim import BUILTIN_POLICIES, HIT_KINDS, ReplaySimulator, builtin_actions

ENSEMBLE = "+"  # joins policy checkpoints into one driver taking their mean action (policy.driver)
CSV_COLUMNS = ("policy", "episodes", "success_rate", "collision_rate", "offroad_rate",
               "mean_distance_m", "mean_time_s")


def run_episodes(scene: Scene, tracks, policy, batch: int = 1024, progress=None) -> dict:
    """Drive the episodes of ``tracks`` with ``policy``, in batches; per-episode outcome
    arrays. ``policy`` is "human", "no-action" or a callable
    ``policy(obs_images, states, cars) -> (N, 2) actions`` taking the (N, 3, 117, 24) state
    images, the (N, 4) states (x, y, vx, vy) and the :class:`~traffic_sim.sim.Cars` (the
    convention of the viewer); its ``reset(tracks)``, if any, is called at each batch's start.
    A callable whose ``observes`` attribute is False is given no images (None), which are
    then not rendered: a privileged driver that reads the simulator instead."""
    sim = ReplaySimulator(scene)
    tracks = np.asarray(tracks, dtype=np.int64)
    out = {k: [] for k in ("track", "success", "collision", "off_road", "truncated", "distance",
                           "time", "hit")}
    for lo in range(0, len(tracks), batch):
        cars = sim.start(tracks[lo:lo + batch])
        learned = not isinstance(policy, str)
        observes = learned and getattr(policy, "observes", True)
        if learned and hasattr(policy, "reset"):
            policy.reset(cars.track.copy())
        obs = sim.observe(cars) if observes else None
        while not cars.done.all():
            if learned:
                actions = np.asarray(policy(obs, cars.state_vector(), cars), dtype=float)
            else:
                actions = builtin_actions(sim, cars, policy)
            obs = sim.step(cars, actions, observe=observes)
        for key, value in (("track", cars.track), ("success", cars.success),
                           ("collision", cars.collision), ("off_road", cars.off_road),
                           ("truncated", cars.truncated), ("distance", cars.distance),
                           ("time", cars.steps * DT), ("hit", cars.hit)):
            out[key].append(np.asarray(value).copy())
        if progress is not None:
            progress(len(cars.track))
    return {k: np.concatenate(v) for k, v in out.items()}


def summarise(name: str, outcome: dict) -> dict:
    n = len(outcome["track"])
    return {
        "policy": name,
        "episodes": n,
        "success_rate": float(outcome["success"].mean()) if n else math.nan,
        "collision_rate": float(outcome["collision"].mean()) if n else math.nan,
        "offroad_rate": float(outcome["off_road"].mean()) if n else math.nan,
        "mean_distance_m": float(outcome["distance"].mean()) if n else math.nan,
        "mean_time_s": float(outcome["time"].mean()) if n else math.nan,
        **{f"collision_{kind}_rate": float((outcome["hit"] == k).mean()) if n else math.nan
           for k, kind in enumerate(HIT_KINDS) if k},
    }


def mean_row(name: str, rows: list[dict]) -> dict:
    """The mean of several rows (seeds of one method), with the std of each rate."""
    out = {"policy": f"{name} (mean of {len(rows)})", "episodes": rows[0]["episodes"]}
    for key in [k for k in rows[0] if k not in ("policy", "episodes") and not k.endswith("_std")]:
        v = np.array([r[key] for r in rows], dtype=float)
        out[key] = float(v.mean())
        if key in CSV_COLUMNS and key.endswith("_rate"):
            out[key + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return out


def format_table(rows: list[dict]) -> str:
    w = max([12] + [len(r["policy"]) for r in rows])
    head = (f"{'policy':<{w}} {'episodes':>8} {'success':>8} {'collision':>9} {'front/rear/side':>15} "
            f"{'off-road':>8} {'distance [m]':>12} {'time [s]':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        kinds = "/".join(f"{100 * r.get(f'collision_{k}_rate', math.nan):.0f}" for k in HIT_KINDS[1:])
        lines.append(f"{r['policy']:<{w}} {r['episodes']:>8d} {100 * r['success_rate']:>7.1f}% "
                     f"{100 * r['collision_rate']:>8.1f}% {kinds:>15} {100 * r['offroad_rate']:>7.1f}% "
                     f"{r['mean_distance_m']:>12.1f} {r['mean_time_s']:>8.1f}"
                     + (f"   (success std {100 * r['success_rate_std']:.1f})" if "success_rate_std" in r else ""))
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in CSV_COLUMNS]
        w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS) + extra, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


@dataclass(frozen=True)
class EvaluateConfig:
    """Closed-loop evaluation of driving policies in the replay simulator."""

    policy: str = doc("policies to evaluate, comma-separated: human, no-action, follow (car "
                      "following with the true gaps, a privileged reference), follow-merge (the "
                      "same, merging out of a lane that ends), follow-evade (that with a shorter "
                      "headway, also evading vehicles closing in from behind and alongside), follow-yield (that "
                      "also yielding to vehicles about to cut in), follow-wait (follow-evade slowing evenly for its "
                      "waiting place before a lane's end), mpc (planning "
                      "with the forward model), a policy checkpoint (file or train-policy folder), or "
                      "checkpoints joined by + (one driver taking their mean action, e.g. the seeds "
                      "of one training)",
                      "human,no-action")
    split: str = doc("episode split: train, val, test or all", "test")
    episodes: Optional[int] = doc("evaluate a random subset of N episodes of the split", None)
    seeds: Optional[str] = doc("training seeds, comma-separated: a policy path containing {seed} "
                               "is evaluated once per seed, and their mean and std are added", None)
    seed: int = doc("seed of that subset", 0)
    trajectories: Optional[str] = doc("trajectory file (default: the embedded synthetic traffic)", None)
    location: Optional[str] = doc("location, for files that do not say it (i-80, us-101)", None)
    out: Optional[str] = doc("CSV file of results (default: artifacts/eval/evaluate-SPLIT.csv); "
                             "a bar chart is written beside it (.png)", None)
    model: Optional[str] = doc("forward model for mpc (default: <artifacts>/models/stochastic-default)", None)
    device: str = doc("device of learned policies: cpu | cuda", "cpu", choices=["cpu", "cuda"])


def evaluate_command(cfg: EvaluateConfig, policies: Optional[dict[str, Callable]] = None) -> tuple[str, Path]:
    """Run the evaluation; returns the printed table and the CSV path."""
    from .loading import load_scene

    names = list(dict.fromkeys(p.strip() for p in cfg.policy.split(",") if p.strip()))
    groups = {}  # pattern -> the names it expands into
    if cfg.seeds is not None:
        try:
            seeds = [int(x) for x in cfg.seeds.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--seeds must be integers, got {cfg.seeds!r}") from None
        if not seeds or not any("{seed}" in n for n in names):
            raise UserError("--seeds needs seeds and a --policy path containing {seed}")
        expanded = []
        for name in names:
            if "{seed}" in name:
                groups[name] = [name.replace("{seed}", str(s)) for s in seeds]
                expanded += groups[name]
            else:
                expanded.append(name)
        names = expanded
    policies = dict(policies or {})
    for name in names:
        if name not in BUILTIN_POLICIES and name not in policies and not _learned(name):
            raise UserError(f"unknown policy {name!r}: choose from {', '.join(BUILTIN_POLICIES)}, "
                            "mpc, the path of a policy checkpoint, or several joined by + (their mean action)")
    if not names:
        raise UserError("--policy names no policy")
    if cfg.episodes is not None and cfg.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {cfg.episodes}")
    if cfg.split not in SPLITS + ("all",):
        raise UserError(f"unknown split {cfg.split!r}: choose from {', '.join(SPLITS + ('all',))}")
    out = Path(cfg.out) if cfg.out else artifacts_dir() / "eval" / f"evaluate-{cfg.split}.csv"
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a file name such as {out / 'results.csv'}")
    scene = load_scene(cfg.trajectories, cfg.location, quiet=False)
    tracks = scene.episodes[cfg.split]
    if cfg.episodes is not None and cfg.episodes < len(tracks):
        # A seeded random subset: the first tracks are the vehicles on the road at the start.
        pick = np.random.default_rng(cfg.seed).choice(len(tracks), cfg.episodes, replace=False)
        tracks = tracks[np.sort(pick)]
    if len(tracks) == 0:
        raise UserError(f"split {cfg.split!r} has no episodes in this data")
    rows = []
    for name in names:
        t0 = time.perf_counter()
        policy, label = policies.get(name, name), name
        if name not in policies and name not in BUILTIN_POLICIES:
            from policy.driver import make_driver

            policy = make_driver(name, scene, cfg.device, cfg.model)
            label = policy.name
        outcome = run_episodes(scene, tracks, policy)
        row = summarise(label, outcome)
        rows.append(row)
        print(f"{label}: {len(tracks)} episodes in {time.perf_counter() - t0:.1f} s")
    labels = dict(zip(names, [r["policy"] for r in rows]))
    for pattern, members in groups.items():
        mine = [r for r in rows if r["policy"] in {labels[m] for m in members}]
        rows.append(mean_row(Path(pattern).name.replace("{seed}", "*"), mine))
    write_csv(rows, out)
    bar_chart(rows, out.with_suffix(".png"), f"{len(tracks)} {cfg.split} episodes")
    return format_table(rows), out


def ensemble_members(name: str) -> list[str]:
    """The checkpoint paths a policy name stands for: itself, or, if it is no existing path,
    the paths it joins by ``+``."""
    return [name] if ENSEMBLE not in name or Path(name).exists() else name.split(ENSEMBLE)


def _learned(name: str) -> bool:
    """mpc, a policy checkpoint or checkpoints joined by ``+`` (an ensemble): needs the
    learning packages (torch)."""
    if name != "mpc" and not all(Path(p).exists() for p in ensemble_members(name)):
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(f"policy {name!r} needs torch: pip install torch") from None
    return True


def bar_chart(rows: list[dict], path: Path, title: str, label_key: str = "policy") -> Path:
    """Success, collision and off-road rates of each row side by side; a row's
    ``<rate>_std``, if present, is drawn as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 3.6))
    for i, (key, label, colour) in enumerate((("success_rate", "success", "#3a923a"),
                                              ("collision_rate", "collision", "#c0392b"),
                                              ("offroad_rate", "off-road", "#7f8c8d"))):
        values = [100 * r[key] for r in rows]
        errors = [100 * r.get(key + "_std", 0.0) for r in rows]
        bars = ax.bar(x + (i - 1) * 0.27, values, 0.27, yerr=errors if any(errors) else None,
                      capsize=2, label=label, color=colour)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(x, [str(r[label_key]) for r in rows], rotation=20, ha="right")
    ax.set_ylabel("% of episodes")
    ax.set_ylim(0, 110)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path

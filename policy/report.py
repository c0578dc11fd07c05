"""``python run.py report``: the whole comparison of methods, from traffic to results table.

For a preset it makes (or reuses, resuming what was interrupted) each piece in turn: the
default traffic and dataset, the deterministic and stochastic forward models, one policy per
method and seed (the paper's methods, and ``mpur-sep`` / ``svg-sep`` / ``vg-sep``: the same
with the world separated from the car, ``train-policy --separate-ego``); then it drives every policy closed
loop on the evaluation split together with the human, no-action and car-following
(``follow``; ``follow-merge``, which also merges from the on-ramp; ``follow-evade``, which
also evades; ``follow-yield``, which also yields to vehicles cutting in; ``follow-wait``, which
slows evenly for the on-ramp's end) references, and writes

- ``results.csv``: one row per policy (method and seed) and baseline,
- ``summary.csv`` and ``report.md``: mean and standard deviation over seeds per method, and
  the wall-clock time of every stage,
- ``report.png``: success, collision and off-road rates per method (error bars: seeds).

Everything already complete is reused, so running it again only evaluates; a stage stopped
with Ctrl-C resumes where it stopped.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from traffic_sim.cli_util import UserError, doc
from traffic_sim.paths import artifacts_dir, atomic_output
from traffic_sim.sim import BUILTIN_POLICIES

from .train import METHOD_MODEL, METHODS, PRESETS

SEPARATED = ("mpur-sep", "svg-sep", "vg-sep")  # mpur / svg / vg with the world separated from the car (--separate-ego)
REPORT_METHODS = METHODS + SEPARATED


def method_parts(name: str) -> tuple:
    """A report's method name -> (train-policy method, separated?)."""
    return (name[:-len("-sep")], True) if name in SEPARATED else (name, False)

RATES = ("success_rate", "collision_rate", "offroad_rate")
KIND_RATES = ("collision_front_rate", "collision_rear_rate", "collision_side_rate")  # how they collided


@dataclass(frozen=True)
class ReportConfig:
    """Train (or reuse) everything for a preset and compare the methods: table and figure."""

    preset: str = doc("tiny | default | paper", "default", choices=list(PRESETS))
    methods: str = doc("methods, comma-separated: " + ", ".join(REPORT_METHODS) + " (mpur-sep, svg-sep, "
                       "vg-sep: mpur, svg, vg with the world separated from the car, train-policy --separate-ego)",
                       ",".join(METHODS + ("vg-sep",)))
    seeds: str = doc("training seeds, comma-separated", "0,1,2")
    split: str = doc("evaluation split: test, val or all", "test")
    episodes: Optional[int] = doc("evaluate a seeded subset of N episodes of the split", None)
    device: str = doc("cpu | cuda (training)", "cpu", choices=["cpu", "cuda"])
    dataset: Optional[str] = doc("dataset folder (default: the default dataset, built on first "
                                 "use); the evaluation drives in its traffic", None)
    model_steps: Optional[int] = doc("train the models this many steps (default: the preset's)", None)
    policy_steps: Optional[int] = doc("train the policies this many steps (default: the preset's)", None)
    out: Optional[str] = doc("report folder (default: <artifacts>/report-<preset>)", None)
    quiet: bool = doc("no progress bars", False)


def _parse_list(text: str, what: str, allowed=None) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"--{what} names nothing")
    if allowed is not None:
        for item in items:
            if item not in allowed:
                raise UserError(f"unknown {what[:-1]} {item!r} (have {', '.join(allowed)})")
    return list(dict.fromkeys(items))


class _Timer:
    def __init__(self, quiet: bool):
        self.rows = []
        self.quiet = quiet

    def __call__(self, name: str, fn):
        if not self.quiet:
            print(f"== {name}")
        from world_model.train import StopFlag

        t0 = time.perf_counter()
        result = fn()
        self.rows.append((name, time.perf_counter() - t0))
        if StopFlag.requested:  # the stage saved its checkpoint and returned: stop here
            print(f"stopped during '{name}': run the same command again to resume")
            raise KeyboardInterrupt
        return result


def report_command(cfg: ReportConfig) -> str:
    from data.build import ensure_dataset
    from traffic_sim.evaluate import bar_chart, run_episodes, summarise
    from data.dataset import Dataset
    from world_model.train import CHECKPOINT, TrainConfig, train_model
    from world_model.train import default_out as model_out

    from .driver import policy_driver
    from .train import dataset_scene
    from .train import TrainPolicyConfig, train_policy
    from .train import default_out as policy_out

    methods = _parse_list(cfg.methods, "methods", REPORT_METHODS)
    try:
        seeds = [int(s) for s in _parse_list(cfg.seeds, "seeds")]
    except ValueError:
        raise UserError(f"--seeds must be integers, got {cfg.seeds!r}") from None
    if cfg.episodes is not None and cfg.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {cfg.episodes}")
    if cfg.split not in ("train", "val", "test", "all"):
        raise UserError(f"unknown split {cfg.split!r}")
    out = Path(cfg.out) if cfg.out else artifacts_dir() / f"report-{cfg.preset}"
    timer = _Timer(cfg.quiet)
    t_start = time.perf_counter()

    for name in ("model_steps", "policy_steps"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be at least 0")
    dataset = timer("traffic and dataset", lambda: ensure_dataset(cfg.dataset, quiet=cfg.quiet))
    kinds = [k for k in ("deterministic", "stochastic") if any(METHOD_MODEL[method_parts(m)[0]] == k for m in methods)]
    for kind in kinds:
        folder = model_out(kind, cfg.preset)
        resume = (folder / CHECKPOINT).is_file()
        timer(f"forward model: {kind}", lambda kind=kind, folder=folder, resume=resume: train_model(
            TrainConfig(model=kind, preset=cfg.preset, device=cfg.device, dataset=str(dataset),
                        out=str(folder), resume=resume, steps=cfg.model_steps, quiet=cfg.quiet)))
    trained = {}
    for method in methods:
        base, separated = method_parts(method)
        for seed in seeds:
            folder = policy_out(base, cfg.preset, seed, separated)
            resume = (folder / CHECKPOINT).is_file()
            timer(f"policy: {method}, seed {seed}", lambda base=base, separated=separated, seed=seed, folder=folder,
                  resume=resume: train_policy(TrainPolicyConfig(
                      method=base, preset=cfg.preset, device=cfg.device, seed=seed, out=str(folder),
                      resume=resume, steps=cfg.policy_steps, dataset=str(dataset), quiet=cfg.quiet,
                      separate_ego=True if separated else None)))
            trained[(method, seed)] = folder

    def evaluate():
        scene = dataset_scene(Dataset.open(dataset))
        tracks = scene.episodes[cfg.split]
        if cfg.episodes is not None and cfg.episodes < len(tracks):
            pick = np.random.default_rng(0).choice(len(tracks), cfg.episodes, replace=False)
            tracks = tracks[np.sort(pick)]
        rows = []
        # the references: recorded, none, car following (merging, evading, yielding) with the true gaps
        for name in BUILTIN_POLICIES:
            rows.append({"method": name, "seed": "", **summarise(name, run_episodes(scene, tracks, name))})
        for (method, seed), folder in trained.items():
            driver = policy_driver(folder, scene, name=f"{method}-seed{seed}")
            rows.append({"method": method, "seed": seed, **summarise(driver.name, run_episodes(scene, tracks, driver))})
        return rows

    rows = timer(f"closed-loop evaluation ({cfg.split})", evaluate)
    total = time.perf_counter() - t_start
    summary = summarise_methods(rows)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "results.csv", rows)
    _write_csv(out / "summary.csv", summary)
    text = format_report(summary, timer.rows, total, cfg, len(seeds))
    with atomic_output(out / "report.md") as tmp:
        Path(tmp).write_text(text)
    bar_chart(summary, out / "report.png", f"{cfg.preset} preset, {cfg.split} split", label_key="method")
    return text + f"\nwrote {out}"


def summarise_methods(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of each method's rates and distance."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        row = {"method": method, "seeds": len(mine), "episodes": mine[0]["episodes"]}
        for key in RATES + KIND_RATES + ("mean_distance_m",):
            v = np.array([r[key] for r in mine], dtype=float)
            row[key] = float(v.mean())
            row[key + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(row)
    return out


def format_report(summary: list[dict], stages: list, total: float, cfg: ReportConfig, n_seeds: int) -> str:
    lines = [f"# Results: {cfg.preset} preset, {cfg.split} split, mean ± std over {n_seeds} seed(s)", "",
             "| method | success % | collision % | off-road % | collisions front / rear / side % | distance [m] |",
             "|---|---|---|---|---|---|"]
    for r in summary:
        cells = [f"{100 * r[k]:.1f} ± {100 * r[k + '_std']:.1f}" if r["seeds"] > 1 else f"{100 * r[k]:.1f}"
                 for k in RATES]
        kinds = " / ".join(f"{100 * r[k]:.1f}" for k in KIND_RATES)
        dist = f"{r['mean_distance_m']:.1f}"
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {kinds} | {dist} |")
    lines += ["", f"{summary[0]['episodes']} episodes per policy.", "", "| stage | wall-clock |", "|---|---|"]
    lines += [f"| {name} | {seconds / 60:.1f} min |" for name, seconds in stages]
    lines += [f"| total (this run) | {total / 60:.1f} min |", ""]
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})

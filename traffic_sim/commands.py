"""The traffic commands of ``run.py``: each is a function of a typed, documented config."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .cli_util import UserError, doc
from .generator import DT, GeneratorConfig, generate
from .paths import atomic_output, default_traffic_dir

TRAFFIC_FILE = "trajectories-synthetic-i80.txt"  # name tells the reader the location


@dataclass(frozen=True)
class GenerateConfig:
    """Write NGSIM-format files of synthetic I-80-like traffic."""

    out: Optional[str] = doc("output folder (default: the embedded default traffic folder)", None)
    minutes: float = doc("recorded duration [min]", 15.0)
    seed: int = doc("random seed: same seed, same bytes", 0)
    quiet: bool = doc("no progress bar", False)


def _write_json_atomic(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def generate_command(cfg: GenerateConfig) -> Path:
    """Simulate the traffic, write ``trajectories-synthetic-i80.txt`` (raw NGSIM layout, feet)
    and a ``.json`` beside it with the generator settings; return the trajectory file."""
    from .ngsim import write_raw

    if not (math.isfinite(cfg.minutes) and cfg.minutes * 60.0 >= DT):
        raise UserError(f"--minutes must be at least one frame ({DT / 60:.4f}), got {cfg.minutes}")
    if cfg.minutes > 24 * 60:
        raise UserError(f"--minutes {cfg.minutes} is more than a day of traffic; use at most 1440")
    if not 0 <= cfg.seed < 2**63:
        raise UserError(f"--seed must be a non-negative integer, got {cfg.seed}")
    out = Path(cfg.out) if cfg.out else default_traffic_dir()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    gen_cfg = GeneratorConfig(minutes=cfg.minutes, seed=cfg.seed)
    steps = int(round(gen_cfg.warmup_s / DT)) + int(round(gen_cfg.minutes * 60.0 / DT))
    if cfg.quiet:
        table = generate(gen_cfg)
    else:
        from tqdm import tqdm

        with tqdm(total=steps, desc="simulating", unit="step", unit_scale=True) as bar:
            table = generate(gen_cfg, progress=bar.update)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TRAFFIC_FILE
    write_raw(table, path)
    meta = {
        "location": "synthetic-i80",
        "generator": dataclasses.asdict(gen_cfg),
        "rows": int(len(table)),
        "vehicles": int(table["vehicle_id"].nunique()),
    }
    _write_json_atomic(meta, path.with_suffix(".json"))
    return path


def default_traffic(quiet: bool = False) -> Path:
    """The embedded default traffic file, generated on first use."""
    path = default_traffic_dir() / TRAFFIC_FILE
    if not path.exists():
        if not quiet:
            print(f"generating the default synthetic I-80 traffic into {path.parent} (first use)")
        generate_command(GenerateConfig(quiet=quiet))
    return path


@dataclass(frozen=True)
class InspectConfig:
    """Summarise a trajectory file (raw NGSIM, the open-data CSV or generated traffic)."""

    path: Optional[str] = doc("trajectory file (default: the embedded default traffic)", None,
                              positional=True)
    location: Optional[str] = doc("the location to summarise in a file of several, or where a "
                                  "file of one was recorded if its name does not say it "
                                  "(i-80, us-101, synthetic-i80)", None)


def inspect_command(cfg: InspectConfig) -> str:
    from .loading import choose_location
    from .ngsim import read_trajectories
    from .summary import format_summary, summarize

    path = Path(cfg.path) if cfg.path else default_traffic()
    table = choose_location(read_trajectories(path), cfg.location, path)
    return format_summary(summarize(table), str(path))

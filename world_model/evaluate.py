"""Evaluate a trained forward model: ``python run.py eval-model --checkpoint CKPT``.

On fixed windows of the test split, the model is unrolled from the 20 (``n_cond``) true
conditioning frames over ``horizon`` steps with the true actions, feeding back its own
predictions. At every horizon step it reports:

- ``image_mse``: mean squared error of the predicted image, pixels in [0, 1];
- ``pos_err_m``: distance between the predicted and the true position [m];
- ``vel_err_ms``: norm of the velocity error [m/s];
- ``proximity_err``: the absolute error of the proximity cost the predicted image gives the
  car at its true place and speed (the costs are what a policy learns from);
- ``vehicles_kept``: the vehicles channel of the predictions summed over all windows, over
  the true one's: below 1 the vehicles fade, above 1 the prediction paints vehicles that
  are not there (a ratio, not an error: best-of-K rows show the first draw's).

Two baselines are scored the same way: ``last frame`` (the last conditioning image and state
are repeated) and ``constant velocity`` (the state moves on at its last velocity; the image
is the last frame). The stochastic model is unrolled K times with z drawn from the prior; for
each window the best of the first K draws is kept (separately for each error, chosen by its
mean over the horizon), for every K of ``k_samples``. Best-of-K falls with K only if the
draws are different futures, not copies of one prediction.

Outputs: a CSV of the per-horizon errors, and a figure of real vs predicted frames (the
deterministic model, or the deterministic model it was warm-started from when available, and
several z draws) with the loss curves of the training log.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from traffic_sim.cli_util import UserError, doc
from traffic_sim.paths import atomic_output

from .train import CHECKPOINT, LOG, autocast, default_out, load_model, resolve_precision


@dataclass(frozen=True)
class EvalModelConfig:
    """Per-horizon prediction errors of a forward model against two baselines, and a figure."""

    checkpoint: Optional[str] = doc(
        "checkpoint file or training folder (default: <artifacts>/models/stochastic-default, "
        "else deterministic-default)", None)
    dataset: Optional[str] = doc("dataset folder (default: the one the model was trained on)", None)
    split: str = doc("episodes to evaluate on: train | val | test", "test",
                     choices=["train", "val", "test"])
    batches: int = doc("number of fixed batches of windows", 4)
    batch_size: int = doc("windows per batch", 32)
    horizon: int = doc("predicted steps [0.1 s]", 20)
    k_samples: str = doc("best-of-K for these K (stochastic model), comma-separated", "1,5,20")
    out: Optional[str] = doc("figure path (.png); the CSV is written beside it "
                             "(default: eval-<split>.png in the checkpoint's folder)", None)
    sharp_canvas: Optional[bool] = doc(
        "unroll with (or without) the sharp canvas, whatever the model was trained with "
        "(default: as trained)", None)
    device: str = doc("cpu | cuda", "cpu", choices=["cpu", "cuda"])
    seed: int = doc("seed of the windows and of the z draws", 0)
    quiet: bool = doc("no progress bar", False)


METHODS_BASELINE = ("last frame", "constant velocity")
CSV_FIELDS = ["method", "k", "step", "time_s", "image_mse", "pos_err_m", "vel_err_ms", "proximity_err",
              "vehicles_kept"]
MASS = ("vehicle_mass", "true_vehicle_mass")  # per-window sums of the vehicles channel, not errors


def _errors(pred_images, pred_states, images, states, stats, car_size=None):
    """Per-window, per-step errors. pred_images/images (B, T, C, H, W) in [0, 1];
    states normalised (B, T, 4) -> dict of (B, T) arrays. With ``car_size`` (B, 2) [m], also
    the error of the proximity cost the predicted image gives the car where it truly is, at
    its true speed (what a policy learns from)."""
    from data.dataset import denormalise_states
    from policy.costs import image_costs  # torch only

    from .model import VEHICLES_CHANNEL

    ps = denormalise_states(pred_states.float(), stats)
    ts = denormalise_states(states.float(), stats)
    out = {
        "image_mse": (pred_images.float() - images.float()).pow(2).mean((2, 3, 4)),
        "pos_err_m": (ps[..., :2] - ts[..., :2]).norm(dim=-1),
        "vel_err_ms": (ps[..., 2:] - ts[..., 2:]).norm(dim=-1),
        MASS[0]: pred_images[:, :, VEHICLES_CHANNEL].float().sum((2, 3)),
        MASS[1]: images[:, :, VEHICLES_CHANNEL].float().sum((2, 3)),
    }
    if car_size is not None:
        speed = ts[..., 2:].norm(dim=-1)  # (B, T) [m/s]
        size = car_size[:, None].expand(-1, speed.shape[1], -1)
        out["proximity_err"] = (image_costs(pred_images.float(), speed, size)[..., 0]
                                - image_costs(images.float(), speed, size)[..., 0]).abs()
    return out


def _baselines(cond_images, cond_states, horizon: int, stats, dt: float):
    """(images, states) of 'last frame' and 'constant velocity', each (B, T, ...)."""
    from data.dataset import denormalise_states, normalise_states

    last_image = cond_images[:, -1:].expand(-1, horizon, -1, -1, -1)  # (B, T, C, H, W)
    last = cond_states[:, -1:]  # (B, 1, 4) normalised
    still = last.expand(-1, horizon, -1)
    raw = denormalise_states(last, stats)  # (B, 1, 4) [m, m/s]
    k = torch.arange(1, horizon + 1, dtype=raw.dtype, device=raw.device)[None, :, None]  # (1, T, 1)
    moved = torch.cat([raw[..., :2] + k * dt * raw[..., 2:], raw[..., 2:].expand(-1, horizon, -1)], -1)
    return {"last frame": (last_image, still),
            "constant velocity": (last_image, normalise_states(moved, stats))}


def eval_model(cfg: EvalModelConfig) -> tuple:
    """Evaluate; return ``(table text, [csv path, figure path])``."""
    from data.dataset import Dataset, WindowSampler

    from .model import as_float_images

    ks = _parse_ks(cfg.k_samples)
    if cfg.batches < 1 or cfg.batch_size < 1:
        raise UserError("--batches and --batch-size must be at least 1")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    ckpt_path = _default_checkpoint() if cfg.checkpoint is None else Path(cfg.checkpoint)
    model, ckpt = load_model(ckpt_path, device)
    if ckpt_path.is_dir():
        ckpt_path = ckpt_path / CHECKPOINT
    mcfg = model.config
    horizon = cfg.horizon
    if horizon < 1:
        raise UserError(f"--horizon must be at least 1, got {horizon}")
    dataset_path = Path(cfg.dataset) if cfg.dataset else Path(ckpt["dataset"])
    if not dataset_path.exists():
        raise UserError(f"dataset {dataset_path} not found: pass --dataset")
    dataset = Dataset.open(dataset_path)
    stats = dataset.stats
    dt = float(dataset.manifest.get("dt", 0.1))
    sampler = WindowSampler(dataset, cfg.split, mcfg.n_cond, horizon, cfg.batch_size,
                            seed=cfg.seed, device=device)
    batches = sampler.fixed_batches(cfg.batches, seed=cfg.seed)
    dtype = resolve_precision("auto", device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    warm = None  # the deterministic model a stochastic one started from, for the figure
    if mcfg.stochastic and ckpt.get("warm_start") and Path(ckpt["warm_start"]).exists():
        warm, _ = load_model(ckpt["warm_start"], device)
        if warm.config.stochastic:  # a fine-tuned stochastic model: no deterministic row
            warm = None

    per_window = {}  # (method, k) -> {error: list of (B, T) tensors}
    figure_data = None

    def add(key, errs):
        d = per_window.setdefault(key, {})
        for name, v in errs.items():
            d.setdefault(name, []).append(v.cpu())

    bar = None
    if not cfg.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(batches), desc="eval-model", unit="batch")
    with torch.no_grad():
        for bi, batch in enumerate(batches):
            images = as_float_images(batch["images"])  # (B, n_cond+T, C, H, W)
            states, actions, size = batch["states"], batch["actions"], batch["car_size"]
            n = mcfg.n_cond
            cond_i, cond_s = images[:, :n], states[:, :n]
            true_i, true_s = images[:, n:], states[:, n:]
            act = actions[:, n - 1:n - 1 + horizon]  # action[t] moves frame t to t+1
            for name, (pi, ps) in _baselines(cond_i, cond_s, horizon, stats, dt).items():
                add((name, 1), _errors(pi, ps, true_i, true_s, stats, size))
            samples = None
            if not mcfg.stochastic:
                with autocast(device, dtype):
                    pi, ps = model.unroll(cond_i, cond_s, act, sharp=cfg.sharp_canvas)
                add(("model", 1), _errors(pi, ps, true_i, true_s, stats, size))
                det = (pi, ps)
            else:
                det = None
                if warm is not None:
                    with autocast(device, dtype):
                        det = warm.unroll(cond_i, cond_s, act, sharp=cfg.sharp_canvas)
                    add(("deterministic (warm start)", 1), _errors(*det, true_i, true_s, stats, size))
                kmax = max(ks)
                errs = []  # kmax x dict of (B, T)
                samples = []
                for k in range(kmax):  # one prior draw of the whole z sequence per pass
                    with autocast(device, dtype):
                        pi, ps = model.unroll(cond_i, cond_s, act, generator=generator, sharp=cfg.sharp_canvas)
                    errs.append(_errors(pi, ps, true_i, true_s, stats, size))
                    if k < 3:
                        samples.append((pi, ps))
                for k in ks:
                    add((f"model, best of {k}", k), _best_of(errs[:k]))
            if bi == 0:
                figure_data = (true_i[0].cpu(), det[0][0].cpu() if det is not None else None,
                               [s[0][0].cpu() for s in samples] if samples else [])
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    rows = []
    for (method, k), d in per_window.items():
        means = {name: torch.cat(v).mean(0) for name, v in d.items()}  # (T,)
        # the vehicles' pixels the prediction keeps: its vehicles channel over the true one
        kept = means.pop(MASS[0]) / means.pop(MASS[1]).clamp_min(1e-9)
        for t in range(horizon):
            rows.append({"method": method, "k": k, "step": t + 1, "time_s": round((t + 1) * dt, 3),
                         **{name: float(means[name][t]) for name in means},
                         "vehicles_kept": float(kept[t])})
    out_png = Path(cfg.out) if cfg.out else ckpt_path.parent / f"eval-{cfg.split}.png"
    out_csv = out_png.with_suffix(".csv")
    with atomic_output(out_csv) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, CSV_FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    label = "stochastic" if mcfg.stochastic else "deterministic"
    title = f"{label} model {ckpt_path} (step {ckpt['step']}), {cfg.split} split, " \
            f"{cfg.batches * cfg.batch_size} windows"
    _figure(out_png, figure_data, ckpt_path.parent / LOG, title, mcfg.stochastic)
    return _table(rows, horizon, title), [out_csv, out_png]


def _parse_ks(text: str) -> list:
    try:
        ks = sorted({int(k) for k in str(text).split(",") if k.strip()})
    except ValueError:
        raise UserError(f"--k-samples must be integers separated by commas, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise UserError(f"--k-samples must be positive integers, got {text!r}")
    return ks


def _default_checkpoint() -> Path:
    for model in ("stochastic", "deterministic"):
        path = default_out(model, "default") / CHECKPOINT
        if path.is_file():
            return path
    raise UserError("no trained model found: run `python run.py train-model` first or pass --checkpoint")


def _best_of(errs: list) -> dict:
    """For each window and each error, the draw with the smallest mean over the horizon (the
    vehicles' mass, not an error, is the first draw's)."""
    out = {name: errs[0][name] for name in MASS}
    for name in errs[0]:
        if name in MASS:
            continue
        stack = torch.stack([e[name] for e in errs])  # (K, B, T)
        best = stack.mean(2).argmin(0)  # (B,)
        out[name] = stack[best, torch.arange(stack.shape[1])]  # (B, T)
    return out


def _table(rows: list, horizon: int, title: str) -> str:
    steps = [s for s in (1, 5, 10, 20, 30, 40) if s <= horizon]
    if horizon not in steps:
        steps.append(horizon)
    by = {}
    for r in rows:
        by.setdefault((r["method"], r["k"]), {})[r["step"]] = r
    lines = [title, ""]
    for err, unit in (("image_mse", ""), ("pos_err_m", " [m]"), ("vel_err_ms", " [m/s]"),
                      ("proximity_err", " (cost)"), ("vehicles_kept", " (ratio)")):
        head = f"{err + unit:<28}" + "".join(f"{f't={s * 0.1:.1f}s':>10}" for s in steps) + f"{'mean':>10}"
        lines.append(head)
        for (name, k), d in by.items():
            vals = [d[s][err] for s in steps]
            mean = float(np.mean([d[s][err] for s in d]))
            fmt = "{:10.5f}" if err in ("image_mse", "proximity_err") else "{:10.3f}"
            lines.append(f"  {name:<26}" + "".join(fmt.format(v) for v in vals) + fmt.format(mean))
        lines.append("")
    return "\n".join(lines).rstrip()


def _figure(path: Path, data, log_path: Path, title: str, stochastic: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    true_i, det, samples = data
    horizon = true_i.shape[0]
    cols = sorted({t for t in (0, 1, 4, 9, 14, 19, 29, 39) if t < horizon} | {horizon - 1})
    rows = [("real", true_i)]
    if det is not None:
        rows.append(("deterministic", det))
    rows += [(f"z draw {i + 1}", s) for i, s in enumerate(samples)]
    n_img_rows = len(rows)
    fig = plt.figure(figsize=(0.9 * len(cols) + 6.0, max(2.4 * n_img_rows, 4.0)))
    grid = fig.add_gridspec(n_img_rows, len(cols) + 2, width_ratios=[1] * len(cols) + [1.2, 6])
    for r, (name, frames) in enumerate(rows):
        for c, t in enumerate(cols):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(frames[t].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"+{(t + 1) * 0.1:.1f} s", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    ax = fig.add_subplot(grid[:, -1])
    if log_path.is_file():
        with open(log_path, newline="") as fh:
            log = list(csv.DictReader(fh))
        for key, label in (("loss", "train loss"), ("val_loss", "validation loss"),
                           ("image_mse", "train image MSE"), ("val_image_mse", "validation image MSE")):
            pts = [(int(r["step"]), float(r[key])) for r in log if r.get(key)]
            if pts:
                ax.plot(*zip(*pts), label=label, marker="." if key.startswith("val") else None)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.set_title("training log", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no training log", ha="center", va="center")
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)

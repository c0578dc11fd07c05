"""Train the forward model: ``python run.py train-model``.

The loop only samples, steps and logs; the model computes its own loss
(:meth:`world_model.model.ForwardModel.forward`). Output folder (``--out``)::

    checkpoint.pt   config + model + optimizer + step + RNG states (written atomically)
    log.csv         step, train loss parts, validation loss parts, seconds

A checkpoint is written at every validation and at the end. Ctrl-C or SIGTERM finishes the
current step, writes a checkpoint and returns; ``--resume`` continues from it and takes
exactly the steps an uninterrupted run would have taken (same batches, same dropout and z
draws). The stochastic model starts from the deterministic model of the same preset when
one has been trained (its posterior and z projection are new).

Presets (measured on a 2-core machine, an AMD EPYC with native bf16;
see ``benchmarks/bench_model.py`` and the README):

- ``tiny``: 0.1 M parameters, 4 + 4 frames, 1000 steps in about a minute; tests and CI.
- ``default``: the model for policy learning on CPU: 64 features (1.3 M parameters, 1.8 M
  stochastic), 20 + 10 frames, batch 32; 2400 deterministic steps, the last 400 of them at
  2e-4 instead of 5e-4 (0.58 s per step on 2 cores with the ego-motion warp: 23.9 min
  measured; see :func:`learning_rate`), then 2000 stochastic ones at a lower
  learning rate (2e-4) and without the gradient through the fed-back frames (at 5e-4 the
  warm-started model diverged after 1,055 steps, the gradient norm growing ~1000x per step
  through that loop once an update had overshot). Its width
  was chosen by measuring the validation error of 3 widths against their cost; see
  :data:`WIDTH_TRADE_OFF`.
- ``paper``: the reference scale (256 features, batch 64, 20 + 20 frames, n_z 32, Adam 1e-4,
  gradient clip 5, 200k steps), for an accelerator (bf16 autocast on cuda).

Fine-tuning: ``--warm-start`` with a model of the kind being trained copies all its weights,
and ``--n-pred``, ``--batch-size``, ``--lr``, ``--cost-weight`` (:func:`cost_matching_loss`)
and ``--sharp-canvas`` change the preset for this run (kept in the checkpoint, so that
``--resume`` keeps them). Measured on the default model (README, "Long unrolls"): longer
windows keep the vehicles' mass over 4 s but as a smear, and neither they nor the
cost-matching term gave a better world for policy learning than the 1 s windows.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from traffic_sim.cli_util import UserError, doc
from traffic_sim.paths import artifacts_dir, atomic_output

from .model import ForwardModel, ModelConfig, as_float_images

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
CHECKPOINT_KIND = "ppuu-forward-model"
CHECKPOINT_VERSION = 1
MAX_SKIPPED = 20  # consecutive batches with a non-finite loss before training stops


@dataclass(frozen=True)
class Preset:
    """Architecture and optimisation of one training scale."""

    model: ModelConfig
    n_pred: int  # predicted (unrolled) frames per training window
    batch_size: int
    steps: int  # optimizer updates
    lr: float  # Adam learning rate
    grad_clip: float  # max gradient norm
    val_every: int  # steps between validations (and checkpoints)
    val_batches: int  # fixed validation batches
    log_every: int  # steps between rows of log.csv
    steps_stochastic: Optional[int] = None  # steps of the (warm-started) stochastic model; None: steps
    lr_stochastic: Optional[float] = None  # Adam learning rate of the stochastic model; None: lr
    feedback_gradient: bool = True  # the loss's gradient flows through the fed-back predicted frames
    feedback_gradient_stochastic: Optional[bool] = None  # the same for the stochastic model; None: as above
    cost_weight: float = 0.0  # weight of the cost-matching term (see cost_matching_loss); 0: none
    cost_offsets: tuple = (-6.0, -3.0, 0.0, 3.0, 6.0)  # [m] along the road: where the car is put
    final_steps: int = 0  # the last steps of a run, taken at final_lr (0: none)
    final_lr: Optional[float] = None  # Adam learning rate of those steps (never above the run's)


PRESETS = {
    "tiny": Preset(
        model=ModelConfig(n_cond=4, n_feature=16, n_hidden=32, n_z=4),
        n_pred=4, batch_size=16, steps=1000, lr=1e-3, grad_clip=5.0,
        val_every=250, val_batches=2, log_every=25),
    "default": Preset(
        model=ModelConfig(n_cond=20, n_feature=64, n_hidden=128, n_z=32),
        n_pred=10, batch_size=32, steps=2400, lr=5e-4, grad_clip=5.0,
        val_every=500, val_batches=8, log_every=50, steps_stochastic=2000,
        lr_stochastic=2e-4, feedback_gradient_stochastic=False, final_steps=400, final_lr=2e-4),
    "paper": Preset(
        model=ModelConfig(n_cond=20, n_feature=256, n_hidden=256, n_z=32),
        n_pred=20, batch_size=64, steps=200_000, lr=1e-4, grad_clip=5.0,
        val_every=2000, val_batches=8, log_every=100),
}

# What each reduction of the width costs: three widths (n_feature, n_hidden = 2 n_feature),
# each trained 1,200 steps (batch 32, 20 + 10 frames) on 2 minutes of synthetic traffic,
# evaluated on its validation split. Wall-clock times were taken while other jobs shared the
# two cores, so only their order of magnitude counts.
WIDTH_TRADE_OFF = """How wide the CPU model should be: 3 widths, deterministic, otherwise the default
preset (20 + 10 frames, batch 32, Adam 5e-4, bf16), 1200 steps each on the default synthetic
dataset; seconds per step on the 2-core machine (quiet).

    n_feature   MLP    params   s/step   val image MSE, 10 steps      val, 20 steps (2 s)
                width                    @600    @1200   @~410 s      mean image MSE @1200
       32        64    0.32 M    0.34    0.0115  0.0090  0.0090       0.0135
       64       128    1.23 M    0.45    0.0095  0.0077  ~0.0086      0.0121
      128       256    4.87 M    0.74    0.0083  0.0071  ~0.0086      0.0114
    repeat the last frame                0.0137                       0.0220

Per step, width helps (128 < 64 < 32). Per second of training, 64 and 128 tie and beat 32
(@~410 s: the error each had reached after the same training time, read off the validation
curves). 128 costs 1.65x more per step than 64, in training and in every unroll of policy
learning (which runs the model many times per update), so the default has 64 features."""


@dataclass(frozen=True)
class TrainConfig:
    """Train the forward model (deterministic, or latent-variable warm-started from it)."""

    model: str = doc("deterministic | stochastic", "deterministic",
                     choices=["deterministic", "stochastic"])
    preset: str = doc("tiny (CI, ~1 min) | default (CPU, <1 h) | paper (reference, accelerator)",
                      "default", choices=list(PRESETS))
    device: str = doc("cpu | cuda", "cpu", choices=["cpu", "cuda"])
    resume: bool = doc("continue from the checkpoint in --out", False)
    dataset: Optional[str] = doc("dataset folder (default: the default dataset, built on first use)", None)
    out: Optional[str] = doc("output folder (default: <artifacts>/models/<model>-<preset>)", None)
    steps: Optional[int] = doc("total optimizer steps (default: the preset's)", None)
    seed: int = doc("random seed (weights, batches, dropout, z)", 0)
    warm_start: Optional[str] = doc(
        "checkpoint to start from: for the stochastic model a deterministic one (default: "
        "<artifacts>/models/deterministic-<preset> if it exists), or a model of the same kind "
        "and architecture to fine-tune (e.g. on longer windows with --n-pred)", None)
    n_pred: Optional[int] = doc("predicted frames per training window (default: the preset's; "
                                "longer windows teach the model to keep the vehicles over "
                                "long unrolls)", None)
    batch_size: Optional[int] = doc("windows per batch (default: the preset's)", None)
    lr: Optional[float] = doc("Adam learning rate (default: the preset's for the model)", None)
    final_steps: Optional[int] = doc(
        "take the last N of the run's steps at --final-lr (default: the preset's; the default "
        "preset's deterministic model: its last 400 of 2,400 steps at 2e-4 instead of 5e-4)", None)
    final_lr: Optional[float] = doc("Adam learning rate of the --final-steps, never above the run's "
                                    "(default: the preset's)", None)
    sharp_canvas: Optional[bool] = doc(
        "move predicted images by whole pixels and carry the fraction, so that they do not blur "
        "from being moved by a fraction of a pixel at every step (default: the preset's, off)", None)
    cost_weight: Optional[float] = doc(
        "weight of the cost-matching term: the proximity costs of the predicted images against "
        "those of the true ones, for the car at several places along the road (default: the "
        "preset's, 0: none)", None)
    precision: str = doc("auto (bf16 on cuda and on CPUs with native bf16) | fp32 | bf16", "auto",
                         choices=["auto", "fp32", "bf16"])
    threads: Optional[int] = doc("CPU threads (default: torch's choice, one per core)", None)
    quiet: bool = doc("no progress bar", False)


def default_out(model: str, preset: str) -> Path:
    return artifacts_dir() / "models" / f"{model}-{preset}"


# ---------------------------------------------------------------------- helpers
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" or cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16 autocast (fp32 weights, bf16 matrix products), or nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path, map_location="cpu", kind: str = CHECKPOINT_KIND,
                    what: str = "forward-model") -> dict:
    """A checkpoint file (or a folder holding ``checkpoint.pt``) of the given kind, loaded
    with weights_only."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        raise UserError(f"{path}: not a {what} checkpoint")
    return ckpt


def load_model(path, device="cpu") -> tuple:
    """``(model in eval mode, checkpoint dict)`` from a checkpoint written by training."""
    ckpt = load_checkpoint(path, map_location=device)
    model = ForwardModel(ModelConfig.from_dict(ckpt["model_config"])).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's weights (names, shapes, dtypes and values): which trained
    model a file of statistics or a policy was made with, whatever its path or step."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def preset_to_dict(p: Preset) -> dict:
    return asdict(p)  # the nested ModelConfig becomes a dict too


def preset_from_dict(d: dict) -> Preset:
    d = dict(d)
    d["model"] = ModelConfig.from_dict(d["model"])
    if "cost_offsets" in d:
        d["cost_offsets"] = tuple(d["cost_offsets"])
    return Preset(**d)


class StopFlag:
    """Ctrl-C / SIGTERM request a stop after the current step; a second Ctrl-C stops now.
    ``StopFlag.requested`` stays set once a stop was asked for in this process, so that a
    caller running several trainings in turn (``report``) stops too."""

    requested = False

    def __init__(self):
        self.stop = False
        self._old = {}

    def _handler(self, signum, frame):
        if self.stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop = True
        StopFlag.requested = True

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no handlers, Ctrl-C raises as usual
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


class GuardedStep:
    """One optimizer update with gradient clipping. A batch whose loss or gradient is not
    finite (a rare bf16 overflow) is skipped, as a loss scaler would; more than
    ``MAX_SKIPPED`` in a row means the training diverged, and it stops with an error."""

    def __init__(self, opt: torch.optim.Optimizer, params, grad_clip: float):
        self.opt = opt
        self.params = list(params)
        self.grad_clip = grad_clip
        self.skipped = 0

    def backward(self, loss) -> torch.Tensor:
        """Set the parameters' gradients from ``loss``; return the loss as one tensor."""
        loss.backward()
        return loss

    def __call__(self, loss, step: int) -> bool:
        """Backward and update; False when the batch was skipped."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.backward(loss)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            self.skipped += 1
            if self.skipped > MAX_SKIPPED:
                raise RuntimeError(f"step {step}: the loss has not been finite for "
                                   f"{self.skipped} batches; lower the learning rate")
            return False
        self.skipped = 0
        self.opt.step()
        return True


@dataclass
class Progress:
    """Where a training run is: optimizer steps taken and seconds spent training."""

    step: int = 0
    seconds: float = 0.0


def run_training(progress: Progress, total_steps: int, compute_loss, update: GuardedStep, *,
                 val_every: int, log_every: int, validate, on_log, on_validated,
                 desc: str, quiet: bool) -> bool:
    """The loop shared by model and policy training. ``compute_loss() -> (loss, metrics)``
    draws a batch; ``update`` applies it (skipping non-finite batches). Metrics are averaged
    between log rows and handed to ``on_log(means, val)``, which returns what the progress
    bar shows; every ``val_every`` steps and at the end ``validate()`` runs and
    ``on_validated(val)`` (checkpoints) follows; only training counts as time. Ctrl-C or
    SIGTERM stops after the current step. Returns True when stopped before ``total_steps``."""
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=progress.step, desc=desc, unit="step", dynamic_ncols=True)
    try:
        return _training_steps(progress, total_steps, compute_loss, update, val_every, log_every,
                               validate, on_log, on_validated, bar)
    finally:
        if bar is not None:
            bar.close()


def _training_steps(progress, total_steps, compute_loss, update, val_every, log_every, validate,
                    on_log, on_validated, bar) -> bool:
    sums, n_sum = {}, 0
    t_last = time.perf_counter()
    with StopFlag() as stop:
        while progress.step < total_steps and not stop.stop:
            loss, metrics = compute_loss()
            if not update(loss, progress.step):
                continue
            progress.step += 1
            step = progress.step
            for k, v in metrics.items():  # detached tensors: no device sync per step
                sums[k] = sums.get(k, 0.0) + v
            n_sum += 1
            now = time.perf_counter()
            progress.seconds += now - t_last
            t_last = now
            val = validate() if step % val_every == 0 or step == total_steps else None
            if step % log_every == 0 or val is not None:
                postfix = on_log({k: float(v) / n_sum for k, v in sums.items()}, val)
                if bar is not None:
                    bar.set_postfix(**postfix)
                sums, n_sum = {}, 0
            if val is not None:
                on_validated(val)
                t_last = time.perf_counter()  # validation and checkpoints are not training
            if bar is not None:
                bar.update(1)
        return stop.stop and progress.step < total_steps


class CsvLog:
    FIELDS = ["step", "loss", "image_mse", "state_mse", "kl", "cost_mse", "val_loss", "val_image_mse",
              "val_state_mse", "val_cost_mse", "seconds"]

    def __init__(self, path: Path, resume_step: Optional[int], fields: Optional[list] = None):
        self.path = path
        self.FIELDS = list(fields or self.FIELDS)
        rows = []
        if resume_step is not None and path.is_file():  # drop rows past the checkpoint
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with atomic_output(path) as tmp:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, self.FIELDS)
                w.writeheader()
                w.writerows(rows)
        self.fh = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, self.FIELDS)

    def write(self, row: dict) -> None:
        self.writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def cost_matching_loss(model: ForwardModel, predicted: torch.Tensor, batch: dict,
                       offsets=Preset.cost_offsets) -> torch.Tensor:
    """Mean squared difference between the proximity costs of the predicted and of the true
    images (B, T, C, H, W), for the car put at each of ``offsets`` [m] along the road from
    where it was, at its true speed. The policy learns from these costs, not from pixels: a
    prediction that hedges by spreading the vehicles thin (what the squared pixel error
    rewards when it cannot tell where they will be) or that paints vehicles where there
    are none lowers or raises the costs of every position, and so misleads the policy, while
    its pixel error may be the lowest. This term asks each predicted image for the costs
    the true future gives at the places the car could be."""
    from policy.costs import image_costs  # torch only: the masks of traffic_sim.costs

    n = model.config.n_cond
    t = predicted.shape[1]
    true = as_float_images(batch["images"][:, n:n + t])  # (B, T, C, H, W)
    velocity = batch["states"][:, n:n + t, 2:].float() * model.state_std[2:] + model.state_mean[2:]
    speed = velocity.norm(dim=-1)  # (B, T) [m/s]
    size = batch["car_size"][:, None].expand(-1, t, -1)  # (B, T, 2) [m]
    sq = 0.0
    for along in offsets:
        offset = torch.zeros(*speed.shape, 2, device=speed.device)
        offset[..., 0] = along
        with torch.no_grad():
            target = image_costs(true, speed, size, offset)[..., 0]
        sq = sq + (image_costs(predicted.float(), speed, size, offset)[..., 0] - target).pow(2).mean()
    return sq / len(offsets)


def model_loss(model: ForwardModel, batch: dict, preset: Preset, feedback_gradient: bool = True):
    """The model's own loss plus, with ``preset.cost_weight``, the cost-matching term."""
    if preset.cost_weight <= 0:
        return model(batch["images"], batch["states"], batch["actions"], feedback_gradient=feedback_gradient)
    loss, metrics, predicted = model(batch["images"], batch["states"], batch["actions"],
                                     feedback_gradient=feedback_gradient, return_images=True)
    cost = cost_matching_loss(model, predicted, batch, preset.cost_offsets)
    metrics["cost_mse"] = cost.detach()
    metrics["loss"] = (loss + preset.cost_weight * cost).detach()
    return loss + preset.cost_weight * cost, metrics


@torch.no_grad()
def validate(model: ForwardModel, batches: list, device, dtype, preset: Preset) -> dict:
    """Mean loss parts over fixed batches, dropout off (for the stochastic model, z from the
    posterior: a reconstruction score)."""
    was_training = model.training
    model.eval()
    sums = {}
    for batch in batches:
        with autocast(device, dtype):
            _, metrics = model_loss(model, batch, preset)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    model.train(was_training)
    return {k: v / len(batches) for k, v in sums.items()}


# ---------------------------------------------------------------------- training
def train_model(cfg: TrainConfig, preset: Optional[Preset] = None) -> Path:
    """Train (or resume) as ``cfg`` says; return the checkpoint path. ``preset`` replaces the
    named preset (experiments, tests)."""
    from data.build import ensure_dataset
    from data.dataset import Dataset, WindowSampler

    if preset is None:
        if cfg.preset not in PRESETS:
            raise UserError(f"unknown preset {cfg.preset!r} (have {', '.join(PRESETS)})")
        preset = PRESETS[cfg.preset]
    if cfg.model not in ("deterministic", "stochastic"):
        raise UserError(f"--model must be deterministic or stochastic, got {cfg.model!r}")
    if cfg.steps is not None and cfg.steps < 0:
        raise UserError(f"--steps must be at least 0, got {cfg.steps}")
    for name in ("n_pred", "batch_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if cfg.cost_weight is not None and not cfg.cost_weight >= 0:
        raise UserError(f"--cost-weight must be at least 0, got {cfg.cost_weight}")
    if cfg.final_steps is not None and cfg.final_steps < 0:
        raise UserError(f"--final-steps must be at least 0, got {cfg.final_steps}")
    if cfg.final_lr is not None and not cfg.final_lr > 0:
        raise UserError(f"--final-lr must be positive, got {cfg.final_lr}")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    out = Path(cfg.out) if cfg.out else default_out(cfg.model, cfg.preset)
    ckpt_path = out / CHECKPOINT
    resume_ckpt = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise UserError(f"--resume: no checkpoint in {out}")
        resume_ckpt = load_checkpoint(ckpt_path, map_location=device)
        preset = preset_from_dict(resume_ckpt["preset"])
    elif ckpt_path.is_file():
        raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or another --out")
    else:  # the overrides are stored in the checkpoint's preset, so --resume keeps them
        preset = _override(preset, cfg)
    preset_steps = preset.steps
    if cfg.model == "stochastic" and preset.steps_stochastic is not None:
        preset_steps = preset.steps_stochastic
    total_steps = cfg.steps if cfg.steps is not None else preset_steps
    if resume_ckpt is not None:
        dataset_path = Path(cfg.dataset or resume_ckpt["dataset"])
    else:
        dataset_path = Path(cfg.dataset) if cfg.dataset else ensure_dataset(quiet=cfg.quiet)
    dataset = Dataset.open(dataset_path)
    dt = float(dataset.manifest.get("dt", 0.1))
    model_cfg = dataclasses.replace(preset.model, stochastic=cfg.model == "stochastic", dt=dt)
    if resume_ckpt is not None:
        model_cfg = ModelConfig.from_dict(resume_ckpt["model_config"])
    dtype = resolve_precision(cfg.precision, device)

    torch.manual_seed(cfg.seed)
    model = ForwardModel(model_cfg).to(device)
    model.set_state_stats(dataset.stats["state_mean"], dataset.stats["state_std"])
    lr, feedback_gradient = preset.lr, preset.feedback_gradient
    if model_cfg.stochastic and preset.lr_stochastic is not None:
        lr = preset.lr_stochastic
    if model_cfg.stochastic and preset.feedback_gradient_stochastic is not None:
        feedback_gradient = preset.feedback_gradient_stochastic
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    train_sampler = WindowSampler(dataset, "train", model_cfg.n_cond, preset.n_pred,
                                  preset.batch_size, seed=cfg.seed, device=device)
    val_sampler = WindowSampler(dataset, "val", model_cfg.n_cond, preset.n_pred,
                                preset.batch_size, seed=0, device=device)
    val_batches = val_sampler.fixed_batches(preset.val_batches, seed=0)

    progress, warm_from = Progress(), None
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        opt.load_state_dict(resume_ckpt["optimizer"])
        progress = Progress(int(resume_ckpt["step"]), float(resume_ckpt["seconds"]))
        warm_from = resume_ckpt.get("warm_start")
        set_rng_state(resume_ckpt["rng"], train_sampler, device)
    elif model_cfg.stochastic or cfg.warm_start:
        warm_from = _warm_start(model, cfg, model_cfg, device)

    def checkpoint(val: Optional[dict] = None) -> None:
        save_checkpoint(ckpt_path, {
            "kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION,
            "model_config": model_cfg.to_dict(), "preset": preset_to_dict(preset),
            "train_config": asdict(cfg), "dataset": str(dataset_path.resolve()),
            "stats": {k: v.tolist() for k, v in dataset.stats.items()},
            "warm_start": warm_from, "step": progress.step, "seconds": progress.seconds, "val": val,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": get_rng_state(train_sampler, device),
        })

    out.mkdir(parents=True, exist_ok=True)
    log = CsvLog(out / LOG, resume_step=progress.step if resume_ckpt is not None else None)
    if resume_ckpt is None:
        checkpoint()  # step 0: --resume works from the very start

    def compute_loss():
        for group in opt.param_groups:  # by the step, so that --resume takes the same rates
            group["lr"] = learning_rate(preset, lr, progress.step, total_steps)
        batch = train_sampler.sample()
        with autocast(device, dtype):
            return model_loss(model, batch, preset, feedback_gradient)

    def on_log(means: dict, val: Optional[dict]) -> dict:
        row = {"step": progress.step, "seconds": round(progress.seconds, 2)}
        row.update({k: v for k, v in means.items() if k in CsvLog.FIELDS})
        if val is not None:
            row.update({f"val_{k}": v for k, v in val.items() if f"val_{k}" in CsvLog.FIELDS})
        log.write(row)
        if not math.isfinite(row["loss"]):
            raise RuntimeError(f"step {progress.step}: the loss is {row['loss']}; lower the learning rate")
        return {"loss": f"{row['loss']:.4g}", **({"val": f"{val['loss']:.4g}"} if val else {})}

    model.train()
    try:
        interrupted = run_training(
            progress, total_steps, compute_loss, GuardedStep(opt, model.parameters(), preset.grad_clip),
            val_every=preset.val_every, log_every=preset.log_every,
            validate=lambda: validate(model, val_batches, device, dtype, preset), on_log=on_log,
            on_validated=checkpoint, desc=f"train {cfg.model}-{cfg.preset}", quiet=cfg.quiet)
        if interrupted:
            checkpoint()
    finally:
        log.close()
    if interrupted and not cfg.quiet:
        print(f"stopped at step {progress.step}: checkpoint saved; continue with --resume")
    return ckpt_path


def learning_rate(preset: Preset, lr: float, step: int, total_steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of a run of ``total_steps``: ``lr``, or in
    the last ``preset.final_steps`` the lower of it and ``preset.final_lr``. Measured on the
    ``default`` deterministic model (README, "A lower learning rate to end the model's
    training"): 400 more steps at 2e-4 after 2,000 at 5e-4 lower its image error by about a
    tenth and make the policies trained among its traffic better and far less dependent on
    which training of the model they get."""
    if preset.final_lr is not None and step >= total_steps - preset.final_steps:
        return min(lr, preset.final_lr)
    return lr


def _override(preset: Preset, cfg: TrainConfig) -> Preset:
    """The preset with what the command line overrides: window length, batch size, learning
    rate (and its final phase), cost-matching weight, sharp canvas."""
    if cfg.n_pred is not None:
        preset = dataclasses.replace(preset, n_pred=cfg.n_pred)
    if cfg.batch_size is not None:
        preset = dataclasses.replace(preset, batch_size=cfg.batch_size)
    if cfg.lr is not None:
        preset = dataclasses.replace(preset, lr=cfg.lr, lr_stochastic=cfg.lr)
    if cfg.final_steps is not None:
        preset = dataclasses.replace(preset, final_steps=cfg.final_steps)
    if cfg.final_lr is not None:
        preset = dataclasses.replace(preset, final_lr=cfg.final_lr)
    if cfg.cost_weight is not None:
        preset = dataclasses.replace(preset, cost_weight=cfg.cost_weight)
    if cfg.sharp_canvas is not None:
        preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, sharp_canvas=cfg.sharp_canvas))
    return preset


def _warm_start(model: ForwardModel, cfg: TrainConfig, model_cfg: ModelConfig, device) -> Optional[str]:
    """Load the weights of another checkpoint into the fresh model; return its path. A
    deterministic one starts the stochastic model (its posterior and z projection are new);
    one of the model's own kind is fine-tuned (every weight copied)."""
    path = Path(cfg.warm_start) if cfg.warm_start else default_out("deterministic", cfg.preset) / CHECKPOINT
    if not path.exists():
        if cfg.warm_start:
            raise UserError(f"--warm-start {path}: no such checkpoint")
        if not cfg.quiet:
            print(f"no deterministic model at {path}: the stochastic model starts from scratch")
        return None
    ckpt = load_checkpoint(path, map_location=device)
    theirs = ModelConfig.from_dict(ckpt["model_config"])
    if theirs.stochastic and not model_cfg.stochastic:
        raise UserError(f"--warm-start {path}: a stochastic model cannot start a deterministic one")
    if theirs.stochastic != model_cfg.stochastic:  # deterministic -> stochastic: z is new
        theirs = dataclasses.replace(theirs, stochastic=True, n_z=model_cfg.n_z, beta=model_cfg.beta,
                                     z_dropout=model_cfg.z_dropout)
    # how the predicted image is carried from step to step is not a weight: either way loads
    if dataclasses.replace(theirs, sharp_canvas=model_cfg.sharp_canvas) != model_cfg:
        raise UserError(f"--warm-start {path}: its architecture differs from the preset's")
    missing = model.load_deterministic(ckpt["model"])
    if not cfg.quiet:
        print(f"warm start from {path} (step {ckpt['step']}); new: "
              f"{', '.join(sorted({m.split('.')[0] for m in missing})) or 'none'}")
    return str(path)


def get_rng_state(sampler, device) -> dict:
    state = {"torch": torch.get_rng_state(),
             "sampler": json.dumps(sampler.rng.bit_generator.state)}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, sampler, device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    sampler.rng.bit_generator.state = json.loads(state["sampler"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)

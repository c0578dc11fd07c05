"""Training policies through the forward model: ``python run.py train-policy``.

Methods (method.md, section 5):

- ``mpur``: unroll the stochastic model ``horizon`` steps from real starts with prior draws
  of z and the policy's actions; minimise the discounted proximity + lane + off-road costs
  plus the uncertainty cost (variance of K dropout samples, see :mod:`policy.rollout`).
- ``svg`` / ``vg``: the same without the uncertainty cost, on the stochastic /
  deterministic model.
- ``mper``: unroll the deterministic model with the policy's actions and match the
  recorded future (states and images): imitation through the model.
- ``il``: one-step imitation of the recorded action (no model).
- ``teach``: imitation of a privileged driver's actions in the states the policy drives
  into itself (no model; see :mod:`policy.teacher`). ``--teacher`` adds the same imitation
  to the other methods' costs.

Every ``val_every`` steps the policy drives validation episodes closed loop in the
simulator (not in the model); the checkpoint that did best there is kept as ``best.pt``
beside the resumable ``checkpoint.pt``. Checkpoints, the CSV log, the progress bar and
Ctrl-C / SIGTERM behave as in the model's training.

Presets (see the README for measured times): ``tiny`` for tests; ``default`` for 2 CPU
cores; ``paper`` is the reference scale (horizon 30, batch 6, K = 10, Adam 1e-4, gradient
clip 50, 100k updates) for an accelerator.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from traffic_sim.cli_util import UserError, doc
from traffic_sim.paths import artifacts_dir, atomic_output
from world_model.train import (CHECKPOINT, LOG, CsvLog, GuardedStep, Progress, autocast,
                               get_rng_state, load_checkpoint, load_model, resolve_precision,
                               run_training, save_checkpoint, set_rng_state, weights_digest)

from .driver import BEST, POLICY_KIND, Driver, dataset_road
from .net import PolicyConfig, PolicyNet
from .rollout import (CostWeights, discounted, expert_uncertainty_stats, predicted_world, rollout,
                      rollout_separated)
from .teacher import DEFAULT_TEACHER, TEACHERS, TeacherData, TeacherSettings

METHODS = ("mpur", "svg", "vg", "mper", "il", "teach")
METHOD_MODEL = {"mpur": "stochastic", "svg": "stochastic", "vg": "deterministic",
                "mper": "deterministic", "il": None, "teach": None}
CHECKPOINT_VERSION = 1
TRACK_SCALE = 10.0  # [m] the offset from the recorded car's place that costs track_weight per step
LOG_FIELDS = ["step", "loss", "proximity", "lane", "offroad", "uncertainty", "imitation", "track",
              "u_grad_ratio", "u_grad_cos", "val_success", "val_collision", "val_offroad", "val_distance",
              "collect_success", "windows", "seconds"]


@dataclass(frozen=True)
class SeparatedSettings:
    """What ``--separate-ego`` changes in a preset: the settings that trained best with the
    world separated from the car (README, "The world separated from the car" and "Displaced
    starts and a braking bound")."""

    horizon: int = 40  # unrolled steps [0.1 s]
    n_states: int = 1  # recent states the policy sees (1: it cannot copy its past speed)
    grad_clip: float = 1.0  # gradient-norm clip (normal steps' norms are 0.1-0.3)
    steps: Optional[int] = None  # optimizer steps (None: the preset's)
    start_noise: tuple = (0.0, 0.0, 0.0)  # see PolicyPreset.start_noise
    rear_weight: float = 1.0  # see PolicyPreset.rear_weight
    action_bound: Optional[float] = None  # the policy's soft action bound (None: the preset's)
    brake_bound: Optional[float] = None  # its soft bound of braking (None: the action bound)
    steer_bound: Optional[float] = None  # its soft bound of the steering (None: the action bound)
    lr_decay: bool = False  # see PolicyPreset.lr_decay
    prox_reach: Optional[float] = None  # [m] see PolicyPreset.prox_reach (None: the preset's)


@dataclass(frozen=True)
class PolicyPreset:
    policy: PolicyConfig
    horizon: int  # unrolled steps [0.1 s]
    batch_size: int
    steps: int  # optimizer steps
    lr: float
    grad_clip: float
    k_dropout: int  # dropout samples of the uncertainty cost
    weights: CostWeights = field(default_factory=CostWeights)
    # the costs' gradient with respect to the actions: through the predicted pixels
    # (False) or through the car's own kinematics (True; see policy.rollout)
    kinematic_gradient: bool = False
    # the world separated from the car: the model predicts the traffic along the recorded
    # car's path, the policy's car moves by its kinematics among it (see rollout_separated)
    separate_ego: bool = False
    # with separate_ego: the traffic predicted by the model, "recorded", "mixed" or "worst" (both)
    world: str = "model"
    # with separate_ego: half-widths of uniform perturbations of the car's start from the
    # recorded car's, along [m], across [m], speed [m/s] (see rollout_separated's start)
    start_noise: tuple = (0.0, 0.0, 0.0)
    rear_weight: float = 1.0  # with separate_ego: scale of the proximity mask behind the car
    # how far beyond half the car's width the proximity mask reaches sideways [m] (None: a
    # lane, PROX_REACH, as method.md says; see policy.costs.image_costs)
    prox_reach: Optional[float] = None
    # [s] the off-road cost also looks this far ahead (plus policy.costs.ROAD_END_REACH) for a
    # road that ends (None: under the car only, as method.md says; see policy.costs.image_costs)
    offroad_ahead: Optional[float] = None
    # share of each batch's windows drawn among those whose car is within FOCUS_ENDS_M of the
    # end of a lane that ends (an on-ramp; see ends_mask), instead of among all (0: uniform)
    focus_ends: float = 0.0
    # share of each batch's windows drawn among those whose recorded car slows by QUEUE_DROP
    # within the next QUEUE_WITHIN (traffic closing in ahead; see queues_mask) (0: uniform)
    focus_queues: float = 0.0
    # with separate_ego: weight of a cost per step on the car's distance along the road from
    # the recorded car's place, (offset / TRACK_SCALE)^2 (0: none): the costs alone do not say
    # where to be in a long gap, and a car that leaves the recorded car's place meets vehicles
    # whose recorded paths do not make room for it
    track_weight: float = 0.0
    u_stride: int = 8  # with separate_ego, mpur: the uncertainty is measured every u_stride steps
    # with separate_ego, mpur: the uncertainty's gradient also goes through the car's states
    u_through_states: bool = False
    # mpur: the uncertainty cost's gradient rescaled at every step to this multiple of the
    # norm of the costs' gradient, instead of weighted by weights.uncertainty (None: weighted)
    u_grad_ratio: Optional[float] = None
    # with u_grad_ratio: the part of the uncertainty's gradient that points against the
    # costs' is removed first (it may then only act in directions that leave the costs alone)
    u_grad_project: bool = False
    lr_decay: bool = False  # cosine decay of the learning rate to 0 at the last step
    # decay per step of an exponential moving average of the policy's weights, which then
    # validates and drives (0: none; 0.99 averages over about the last 100 steps)
    ema: float = 0.0
    separated: SeparatedSettings = field(default_factory=SeparatedSettings)
    # the privileged teacher: --method teach, and --teacher beside another method's costs
    # (teacher None: no imitation beside the costs)
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    u_stats_batches: int = 8  # expert batches that set the uncertainty scale
    log_every: int = 25
    val_every: int = 250
    val_episodes: int = 100  # closed-loop validation episodes (0: none)


PRESETS = {
    "tiny": PolicyPreset(policy=PolicyConfig(n_cond=4, n_feature=16, n_hidden=64), horizon=4,
                         batch_size=4, steps=40, lr=1e-3, grad_clip=50.0, k_dropout=2,
                         u_stats_batches=2, u_stride=2, log_every=10, val_every=20, val_episodes=6,
                         separated=SeparatedSettings(horizon=4, start_noise=(1.0, 0.3, 1.0), brake_bound=6.0,
                                                     prox_reach=2.75),
                         teacher=TeacherSettings(episodes=6, collect_every=10, steps=30,
                                                 batch_size=4)),
    "default": PolicyPreset(policy=PolicyConfig(n_feature=32, n_hidden=256), horizon=20,
                            batch_size=8, steps=1200, lr=5e-4, grad_clip=50.0, k_dropout=4,
                            val_every=200, val_episodes=100,
                            separated=SeparatedSettings(horizon=40, steps=1000, start_noise=(4.0, 0.6, 2.0),
                                                        brake_bound=8.0, prox_reach=2.75)),
    "paper": PolicyPreset(policy=PolicyConfig(n_feature=64, n_hidden=256), horizon=30,
                          batch_size=6, steps=100_000, lr=1e-4, grad_clip=50.0, k_dropout=10,
                          weights=CostWeights(uncertainty=0.5), u_stats_batches=32,
                          log_every=100, val_every=5000, val_episodes=200,
                          separated=SeparatedSettings(horizon=40, start_noise=(4.0, 0.6, 2.0), brake_bound=8.0,
                                                      prox_reach=2.75)),
}


@dataclass(frozen=True)
class TrainPolicyConfig:
    """Train a driving policy through the forward model (or by imitation)."""

    method: str = doc("mpur | svg | vg | mper | il | teach (teach: imitate a privileged driver, --teacher, in "
                      "the states the policy drives into itself; no model)", "mpur", choices=list(METHODS))
    model: Optional[str] = doc(
        "forward-model checkpoint (default: <artifacts>/models/stochastic-<preset> for mpur "
        "and svg, deterministic-<preset> for vg and mper; il needs none); several, "
        "comma-separated, take turns step by step (the car among each one's traffic)", None)
    preset: str = doc("tiny (tests) | default (CPU) | paper (reference, accelerator)", "default",
                      choices=list(PRESETS))
    device: str = doc("cpu | cuda", "cpu", choices=["cpu", "cuda"])
    seed: int = doc("random seed (weights, batches, z)", 0)
    resume: bool = doc("continue from the checkpoint in --out", False)
    init: Optional[str] = doc("start from the weights of this policy checkpoint (file or training "
                              "folder, e.g. an il policy) instead of the untrained network", None)
    dataset: Optional[str] = doc("dataset folder (default: the model's)", None)
    out: Optional[str] = doc("output folder (default: <artifacts>/policies/<method>-<preset>-seed<S>)", None)
    steps: Optional[int] = doc("total optimizer steps (default: the preset's)", None)
    horizon: Optional[int] = doc("unrolled steps of 0.1 s (default: the preset's)", None)
    batch_size: Optional[int] = doc("training windows per step (default: the preset's)", None)
    grad_clip: Optional[float] = doc("gradient-norm clip (default: the preset's)", None)
    lr: Optional[float] = doc("Adam learning rate (default: the preset's)", None)
    lr_decay: Optional[bool] = doc("cosine decay of the learning rate to 0 at the last step (default: the "
                                   "preset's)", None)
    lambda_u: Optional[float] = doc("weight of the uncertainty cost (mpur; default: the preset's)", None)
    n_states: Optional[int] = doc("how many of the most recent states the policy sees, 1-20 (default: "
                                  "the preset's, 20; 1 keeps it from copying its past speed)", None)
    n_feature: Optional[int] = doc(
        "channels of the last map of the policy's image encoder, whose convolutions are F/4, F/2 and F wide (default: "
        "the preset's, 32; give it again to an --init from a policy trained with it)", None)
    kinematic_gradient: Optional[bool] = doc(
        "take the costs' gradient through the car's kinematics instead of through the predicted "
        "pixels (default: the preset's, off)", None)
    separate_ego: Optional[bool] = doc(
        "separate the world from the car (mpur, svg, vg): the model predicts the traffic along the "
        "recorded car's path, which does not react to the policy, and the policy's car moves among "
        "it by its kinematics; mpur's uncertainty cost is then the model's about the car's own path "
        "(one-step dropout predictions from what the car saw, every 8th step). It also sets the preset's separated "
        "settings (default preset: one state, horizon 40, gradient clip 1, starts displaced by up to 4 m "
        "along, 0.6 m across and 2 m/s, braking bound 8, the proximity mask reaching three quarters of a lane "
        "sideways, 1,000 steps), which the options below still "
        "override (default: off)", None)
    world: Optional[str] = doc(
        "with --separate-ego, the traffic the car drives among: 'model' (predicted by the forward "
        "model) or 'recorded' (the recorded future: the replay simulator made differentiable, what a "
        "perfect model would give) or 'mixed' (each training window among one or the other, at random, "
        "half each) or 'worst' (each window among both, each step costing what it costs in the worse of "
        "the two; default: the preset's, model)", None, choices=["model", "recorded", "mixed", "worst"])
    start_noise: Optional[str] = doc(
        "with --separate-ego: ALONG,ACROSS,SPEED, half-widths [m, m, m/s] of uniform perturbations of "
        "the car's start from the recorded car's, so that it learns to recover from states the expert "
        "never visited (default: the preset's)", None)
    action_bound: Optional[float] = doc(
        "the policy's soft action bound, in standard deviations of the expert's actions (default: the "
        "preset's, 3; through the model's pixels it keeps the actions within what the model saw)", None)
    brake_bound: Optional[float] = doc(
        "the soft bound of a negative acceleration (braking), in standard deviations of the expert's "
        "accelerations (default: the preset's; none: the action bound)", None)
    steer_bound: Optional[float] = doc(
        "the soft bound of the steering (a curvature), in standard deviations of the expert's steering "
        "(default: the preset's; none: the action bound; 3 is an 83 m turning radius, so a car that "
        "creeps needs more than 30 m to change lanes)", None)
    lane_end_input: Optional[bool] = doc(
        "also give the policy what a map tells a driver: whether its lane ends ahead (an on-ramp it must "
        "merge out of) and how far away that end is, which its images show only within 35.7 m (default: "
        "off; give it again to an --init from a policy trained with it)", None)
    lateral_acc: Optional[float] = doc(
        "[m/s^2] where it allows more, bound the steering by this lateral acceleration instead: a "
        "curvature of A / speed^2, up to a 5 m turning radius, so that a car that creeps can change "
        "lanes within a few metres while at highway speeds the steering's bound holds (default: none; "
        "give it again to an --init from a policy trained with it)", None)
    rear_weight: Optional[float] = doc(
        "with --separate-ego: scale of the proximity cost's mask behind the car, 0-1 (the vehicles behind "
        "do not react; default: the preset's)", None)
    prox_reach: Optional[float] = doc(
        "how far beyond half the car's width the proximity cost's mask reaches sideways [m] (default: a "
        "lane, 3.66 m, as the method says: vehicles in the next lanes count; with --separate-ego the "
        "preset's separated setting, three quarters of a lane, 2.75 m; about half a lane (1.83-1.85) counts "
        "only those in the car's own lane, so that the vehicle ahead sets the cost)", None)
    offroad_ahead: Optional[float] = doc(
        "the off-road cost also looks ahead, this many seconds at the car's speed plus 10 m, at the share of "
        "its lane's width where the road ends, so that an on-ramp's end costs before the car reaches it and "
        "the cost's gradient slows the car and steers it into the lane beside (default: the preset's, none: "
        "the method's cost, under the car only)", None)
    focus_ends: Optional[float] = doc(
        "share of each batch's training windows drawn among those whose car is within 60 m of the end of a "
        "lane that ends (an on-ramp that must be merged from; few windows otherwise: 1.7%% on the default "
        "road), 0-1 (default: the preset's, 0: all windows alike)", None)
    focus_queues: Optional[float] = doc(
        "share of each batch's training windows drawn among those whose recorded car slows by 4 m/s or more "
        "within the next 4 s (traffic closing in ahead, a queue forming: 10%% of the windows on the default "
        "traffic), 0-1, with --focus-ends less than 1 in all (default: the preset's, 0: all windows alike)",
        None)
    track_weight: Optional[float] = doc(
        "with --separate-ego: weight of a cost per step on the car's distance along the road from where the "
        "recorded car was, (distance / 10 m)^2, added to the costs: keep the place the recorded driver kept "
        "in the traffic, which the replayed vehicles around it made room for (default: the preset's, 0: none)",
        None)
    uncertainty_through_states: Optional[bool] = doc(
        "with mpur --separate-ego: the uncertainty cost's gradient goes through the car's position and "
        "speed as well as its actions, back to every earlier action, so that the policy keeps out of states "
        "where the model is unsure (default: the preset's, off: the actions only)", None)
    u_gradient_ratio: Optional[float] = doc(
        "with mpur: rescale the uncertainty cost's gradient at every step to this multiple of the norm of "
        "the costs' gradient (its direction kept), instead of weighting the cost by lambda_u; the two "
        "gradients' scales differ by tens of times and change during training (default: off)", None)
    u_gradient_project: Optional[bool] = doc(
        "with --u-gradient-ratio: first remove the part of the uncertainty's gradient that points against "
        "the costs' gradient, so that it acts only in directions that leave the costs alone (default: off)",
        None)
    ema: Optional[float] = doc(
        "keep an exponential moving average of the policy's weights with this decay per step (0.99: about "
        "the last 100 steps), and validate, keep and drive the average instead of the last weights, which "
        "swing from step to step (default: the preset's, 0: off)", None)
    teacher: Optional[str] = doc(
        "a privileged driver that reads the true state (" + ", ".join(TEACHERS) + "): imitated by --method "
        "teach (default: follow-evade), or, with the other methods, imitated beside their costs, weighted by "
        "--teacher-weight, in the states the policy drives into itself (default: none)", None, choices=list(TEACHERS))
    teacher_weight: Optional[float] = doc(
        "with --teacher and a method other than teach: weight of the imitation loss (mean squared error of the "
        "normalised actions) beside the costs (default: the preset's, 1)", None)
    teacher_episodes: Optional[int] = doc(
        "with teach or --teacher: training episodes the policy drives at each collection (default: the "
        "preset's, 192)", None)
    collect_every: Optional[int] = doc(
        "with teach or --teacher: optimizer steps between collections; the first, at step 0, is driven by the "
        "teacher (default: teach 1,500, the others every validation)", None)
    evade_share: Optional[float] = doc(
        "with teach or --teacher follow-evade: share of each imitation batch drawn from the windows where the "
        "teacher evades (its acceleration differs from its car following: a vehicle closing in from behind or "
        "from the side), about 0.5%% of them (default: the preset's, 0.25; 0: uniform)", None)
    merge_share: Optional[float] = doc(
        "with teach or --teacher: share of each imitation batch drawn from the windows whose car drives in a "
        "lane that ends (an on-ramp, which the teacher merges out of; default: the preset's, 0: uniform)", None)
    brake_share: Optional[float] = doc(
        "with teach or --teacher: share of each imitation batch drawn from the windows where the teacher brakes "
        "harder than 2 m/s^2 (default: the preset's, 0: uniform)", None)
    teacher_windows: Optional[bool] = doc(
        "with --teacher beside another method's costs and an --init trained with a teacher (e.g. teach): "
        "start the imitation from the windows that training collected (its collections replayed in the "
        "simulator, labelled by --teacher) instead of a first collection driven by the teacher; this run's "
        "own collections, driven by the policy, add to them (default: off)", None)
    val_episodes: Optional[int] = doc("closed-loop validation episodes (default: the preset's; 0: none)", None)
    precision: str = doc("auto | fp32 | bf16 (auto: bf16 on cuda and on CPUs with native bf16)",
                         "auto", choices=["auto", "fp32", "bf16"])
    threads: Optional[int] = doc("CPU threads (default: one per core)", None)
    quiet: bool = doc("no progress bar", False)


def with_separated(preset: PolicyPreset) -> PolicyPreset:
    """The preset with the world separated from the car and its separated settings."""
    s = preset.separated
    return dataclasses.replace(preset, separate_ego=True, horizon=s.horizon, grad_clip=s.grad_clip,
                               start_noise=tuple(s.start_noise), rear_weight=s.rear_weight, lr_decay=s.lr_decay,
                               prox_reach=s.prox_reach if s.prox_reach is not None else preset.prox_reach,
                               steps=s.steps if s.steps is not None else preset.steps,
                               policy=dataclasses.replace(preset.policy, n_states=s.n_states,
                                                          action_bound=s.action_bound or preset.policy.action_bound,
                                                          brake_bound=s.brake_bound, steer_bound=s.steer_bound))


def for_teaching(preset: PolicyPreset) -> PolicyPreset:
    """The preset of ``--method teach``: the network of ``--separate-ego``, the teacher's
    steps and batch, and validation before every collection."""
    t = preset.teacher
    return dataclasses.replace(preset, policy=with_separated(preset).policy, steps=t.steps, batch_size=t.batch_size,
                               val_every=t.collect_every,
                               teacher=dataclasses.replace(t, teacher=t.teacher or DEFAULT_TEACHER))


def learning_rate(base: float, step: int, total: int) -> float:
    """Cosine decay from ``base`` at step 0 to 0 at step ``total``."""
    return 0.5 * base * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def parse_start_noise(text: str) -> tuple:
    """'ALONG,ACROSS,SPEED' -> three non-negative floats."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v >= 0 and math.isfinite(v) for v in values):
        raise UserError(f"--start-noise takes ALONG,ACROSS,SPEED, three numbers >= 0 [m, m, m/s], got {text!r}")
    return values


def default_out(method: str, preset: str, seed: int, separated: bool = False) -> Path:
    sep = "-sep" if separated else ""
    return artifacts_dir() / "policies" / f"{method}{sep}-{preset}-seed{seed}"


def default_model(kind: str, preset: str) -> Path:
    return artifacts_dir() / "models" / f"{kind}-{preset}" / CHECKPOINT


def preset_to_dict(p: PolicyPreset) -> dict:
    return asdict(p)


def preset_from_dict(d: dict) -> PolicyPreset:
    d = dict(d)
    d["policy"] = PolicyConfig.from_dict(d["policy"])
    d["weights"] = CostWeights(**d["weights"])
    d["separated"] = SeparatedSettings(**d.get("separated", {}))  # absent from older checkpoints
    d["teacher"] = TeacherSettings(**d.get("teacher", {}))  # absent from older checkpoints
    d["start_noise"] = tuple(d.get("start_noise", (0.0, 0.0, 0.0)))
    return PolicyPreset(**d)


# ---------------------------------------------------------------------- uncertainty scale
def uncertainty_stats_for(model, model_path: Path, model_step: int, digest: str, sampler_factory,
                          stats: dict, preset: PolicyPreset, quiet: bool) -> dict:
    """The expert uncertainty statistics of this model for this K and horizon (and, with
    the world separated from the car, this stride): read from the file beside the model if it
    was computed for these weights (``digest``, :func:`weights_digest`), else computed on
    training windows with the recorded actions and written there."""
    stride = preset.u_stride if preset.separate_ego else None
    sep = f"-sep-s{stride}" if stride else ""
    path = model_path.parent / f"uncertainty-k{preset.k_dropout}-h{preset.horizon}{sep}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("model_digest") == digest:
            return saved
    if not quiet:
        print(f"measuring the model's uncertainty on expert actions ({preset.u_stats_batches} batches)")
    sampler = sampler_factory(n_pred=preset.horizon, seed=12345)
    batches = [sampler.sample() for _ in range(preset.u_stats_batches)]
    # on a random stream of its own: the training that follows draws the same numbers whether
    # the statistics were measured now or read from the file
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(12345)
        u = expert_uncertainty_stats(model, batches, stats, preset.weights, preset.k_dropout, preset.horizon, stride)
    u["model_step"], u["model_digest"] = model_step, digest
    try:
        with atomic_output(path) as tmp:
            Path(tmp).write_text(json.dumps(u, indent=1) + "\n")
    except OSError:  # a read-only model folder: the statistics still go into the policy
        pass
    return u


FOCUS_ENDS_M = 60.0  # [m] how near the end of a lane that ends a window's car is for --focus-ends


def ends_mask(dataset) -> np.ndarray:
    """(n_frames,) bool: the dataset's rows whose car is within FOCUS_ENDS_M before the end of
    a lane that ends (:meth:`traffic_sim.roads.Road.to_lane_end`), by each episode's location."""
    from traffic_sim.roads import road_for

    states = np.asarray(dataset.states)
    locations = np.repeat(np.asarray(dataset.manifest["episodes"]["location"], dtype=object),
                          dataset.episode_length)
    out = np.zeros(len(states), dtype=bool)
    for location in dict.fromkeys(locations):
        rows = np.flatnonzero(locations == location)
        out[rows] = road_for(location).to_lane_end(states[rows, 0], states[rows, 1]) <= FOCUS_ENDS_M
    return out


QUEUE_DROP = 4.0  # [m/s] how much a window's recorded car slows for --focus-queues
QUEUE_WITHIN = 40  # [frames of 0.1 s] within how long after the present frame


def queues_mask(dataset) -> np.ndarray:
    """(n_frames,) bool: the dataset's rows whose car's speed falls by QUEUE_DROP or more within
    the next QUEUE_WITHIN frames of its episode (the recorded driver braked for traffic closing
    in ahead)."""
    from numpy.lib.stride_tricks import sliding_window_view

    states = np.asarray(dataset.states)
    speed = np.hypot(states[:, 2], states[:, 3])
    out = np.zeros(len(states), dtype=bool)
    for start, length in zip(dataset.episode_start, dataset.episode_length):
        v = speed[start:start + length]
        later = np.concatenate([v[1:], np.full(QUEUE_WITHIN, np.inf)])  # the frames after each one
        out[start:start + length] = v - sliding_window_view(later, QUEUE_WITHIN)[:length].min(axis=1) >= QUEUE_DROP
    return out


# ---------------------------------------------------------------------- validation
def dataset_scene(dataset):
    """The simulator scene of the traffic a dataset was built from."""
    from traffic_sim.loading import load_scene

    sources = dataset.manifest["sources"]
    locations = dataset.manifest.get("locations") or [None]
    return load_scene(sources if len(sources) > 1 else sources[0],
                      locations[0] if len(set(locations)) == 1 else None, quiet=True)


class ClosedLoopValidation:
    """Drives a fixed set of validation episodes of the dataset's traffic in the simulator."""

    def __init__(self, dataset, n_episodes: int, net: PolicyNet, stats: dict, device):
        self.scene = dataset_scene(dataset)
        tracks = self.scene.episodes["val"]
        if len(tracks) > n_episodes:
            pick = np.random.default_rng(0).choice(len(tracks), n_episodes, replace=False)
            tracks = tracks[np.sort(pick)]
        self.tracks = tracks
        self.net = net
        self.driver = Driver(self.scene, lambda images, states, car_size: net(images, states),
                             stats, net.config.n_cond, device)

    def __call__(self) -> dict:
        from traffic_sim.evaluate import run_episodes

        was_training = self.net.training
        self.net.eval()
        out = run_episodes(self.scene, self.tracks, self.driver)
        self.net.train(was_training)
        return {"val_success": float(out["success"].mean()),
                "val_collision": float(out["collision"].mean()),
                "val_offroad": float(out["off_road"].mean()),
                "val_distance": float(out["distance"].mean())}


# ---------------------------------------------------------------------- losses
def within_bounds(actions: torch.Tensor, config, states: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Normalised target actions (B, 2) clipped to what a policy of ``config`` can output
    from the normalised windows ``states`` (B, T, 4), for imitation: recorded actions include
    curvature outliers (a car creeping at walking speed) hundreds of standard deviations out,
    which would otherwise dominate the squared error. The states are needed only where the
    steering's bound depends on the speed (``lateral_acc``)."""
    low, high = (torch.tensor(v, device=actions.device, dtype=actions.dtype) for v in config.limits())
    out = torch.maximum(torch.minimum(actions, high), low)
    if config.lateral_acc is not None:
        if states is None:
            raise ValueError("within_bounds needs the states for a steering bound set by lateral_acc")
        turn = config.turn_limit(states[:, -1].to(actions.dtype))
        out = torch.stack([out[:, 0], torch.maximum(torch.minimum(actions[:, 1], turn), -turn)], 1)
    return out


def policy_loss(method: str, net: PolicyNet, model, batch: dict, preset: PolicyPreset,
                stats: dict, u_stats: Optional[dict]) -> tuple:
    """The method's loss on one batch of windows; (loss, metrics of detached scalars)."""
    n = net.config.n_cond
    images, states = batch["images"][:, :n], batch["states"][:, :n]
    if method == "il":
        loss = F.mse_loss(net(images, states), within_bounds(batch["actions"][:, n - 1], net.config, states))
        return loss, {"loss": loss.detach(), "imitation": loss.detach()}

    def actor(hist, st, t):
        return net(hist, st)

    w = preset.weights
    k = preset.k_dropout if method == "mpur" else 1  # dropout samples of the uncertainty cost
    if preset.separate_ego:
        recorded = batch["images"][:, n:n + preset.horizon] if preset.world != "model" else None
        if preset.world == "mixed":  # each window among the recorded or the predicted traffic
            among_recorded = torch.rand(len(images)) < 0.5  # drawn on the CPU: the same on every device
            predicted = predicted_world(model, images, states, batch["car_size"], preset.horizon, stats,
                                        batch["actions"][:, n - 1:n - 1 + preset.horizon])
            if recorded.dtype == torch.uint8:
                recorded = recorded.float() / 255.0
            recorded = torch.where(among_recorded.to(images.device)[:, None, None, None, None],
                                   recorded.to(predicted.dtype), predicted)
        # --world worst: each window among both; each step costs what the worse one does
        worlds = [None, recorded] if preset.world == "worst" else [recorded]
        start = None
        if any(preset.start_noise):  # drawn on the CPU: the same starts on every device
            start = (2.0 * torch.rand(len(images), 3) - 1.0) * torch.tensor(preset.start_noise, dtype=torch.float32)
        r, *others = [rollout_separated(model, actor, images, states, batch["car_size"], preset.horizon, stats,
                                        batch["actions"][:, n - 1:n - 1 + preset.horizon], world=world,
                                        start=start, rear_weight=preset.rear_weight, k_dropout=k if i == 0 else 1,
                                        u_stats=u_stats if i == 0 else None, u_stride=preset.u_stride, weights=w,
                                        u_through_states=preset.u_through_states, prox_reach=preset.prox_reach,
                                        offroad_ahead=preset.offroad_ahead)
                      for i, world in enumerate(worlds)]
    else:
        r = rollout(model, actor, images, states, batch["car_size"], preset.horizon, stats, w,
                    k_dropout=k, u_stats=u_stats if method == "mpur" else None,
                    kinematic_gradient=preset.kinematic_gradient and method != "mper", prox_reach=preset.prox_reach,
                    offroad_ahead=preset.offroad_ahead)
        others = []
    costs = r["costs"]  # (B, T, 3)
    metrics = {name: costs[..., i].mean().detach() for i, name in enumerate(("proximity", "lane", "offroad"))}
    if method == "mper":
        target_images = batch["images"][:, n:n + preset.horizon].float() / 255.0
        target_states = batch["states"][:, n:n + preset.horizon]
        loss = F.mse_loss(r["states"], target_states) + F.mse_loss(r["images"], target_images)
        metrics["imitation"] = loss.detach()
    else:
        per_step = w.combine(costs)  # (B, T)
        if preset.track_weight > 0:  # the distance from the recorded car's place
            track = (r["offsets"][..., 0] / TRACK_SCALE) ** 2
            per_step = per_step + preset.track_weight * track
            metrics["track"] = track.mean().detach()
        for other in others:  # --world worst: the worse of the two worlds at every step
            other_step = w.combine(other["costs"])
            if preset.track_weight > 0:
                other_step = other_step + preset.track_weight * (other["offsets"][..., 0] / TRACK_SCALE) ** 2
            per_step = torch.maximum(per_step, other_step)
        loss = discounted(per_step, w.gamma)
        if "uncertainty" in r:
            u = r["uncertainty"]  # (B, T), or (B, T / u_stride) with the world separated
            stride = preset.u_stride if preset.separate_ego else 1
            u_loss = discounted(u, w.gamma ** stride)
            metrics["uncertainty"] = u.mean().detach()
            if preset.u_grad_ratio is not None:  # BalancedStep combines the two gradients
                metrics["loss"] = loss.detach()
                return (loss, u_loss), metrics
            loss = loss + w.uncertainty * u_loss
    metrics["loss"] = loss.detach()
    return loss, metrics


class BalancedStep(GuardedStep):
    """An update whose loss is a pair (costs, uncertainty): the parameters' gradient is the
    costs' gradient plus the uncertainty's, rescaled to ``ratio`` times the norm of the costs'
    (``--u-gradient-ratio``); with ``project``, the uncertainty's component against the
    costs' gradient is removed before the rescaling (``--u-gradient-project``). The
    uncertainty's raw norm over the costs' and the cosine between them are kept for the log.
    A plain loss is applied as :class:`GuardedStep` does."""

    def __init__(self, opt, params, grad_clip: float, ratio: float, project: bool = False):
        super().__init__(opt, params, grad_clip)
        self.ratio, self.project = ratio, project
        self.kept = []  # (raw norm ratio, cosine) per step since the last log row

    def backward(self, loss):
        if not isinstance(loss, tuple):
            return super().backward(loss)
        cost_loss, u_loss = loss
        g_cost = flat_grad(cost_loss, self.params, retain_graph=True)
        g_u = flat_grad(u_loss, self.params)
        n_cost, n_u = g_cost.norm(), g_u.norm()
        dot = torch.dot(g_cost, g_u)
        self.kept.append(torch.stack([n_u / n_cost.clamp_min(1e-30), dot / (n_cost * n_u).clamp_min(1e-30)]))
        if self.project:  # only the part that does not point against the costs
            g_u = g_u - dot.clamp(max=0.0) / (n_cost ** 2).clamp_min(1e-30) * g_cost
            n_u = g_u.norm()
        scale = torch.where(n_u > 0, self.ratio * n_cost / n_u.clamp_min(1e-30), torch.zeros_like(n_u))
        combined = g_cost + scale * g_u
        offset = 0
        for p in self.params:
            p.grad = combined[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        return cost_loss.detach() + u_loss.detach()  # finite when both are

    def pop_means(self) -> dict:
        """Mean raw norm ratio and cosine since the last call (empty: no step)."""
        if not self.kept:
            return {}
        ratio, cos = torch.stack(self.kept).mean(0).tolist()
        self.kept = []
        return {"u_grad_ratio": ratio, "u_grad_cos": cos}


def flat_grad(loss: torch.Tensor, params: list, retain_graph: bool = False) -> torch.Tensor:
    """The gradient of ``loss`` with respect to ``params`` as one float32 vector (zeros for
    parameters it does not reach)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for p, g in zip(params, grads)])


# ---------------------------------------------------------------------- training
@torch.no_grad()
def average_weights(average: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """One step of an exponential moving average: ``average``'s parameters and buffers move
    ``1 - decay`` of the way to ``net``'s."""
    for a, p in zip(list(average.parameters()) + list(average.buffers()), list(net.parameters()) + list(net.buffers())):
        if a.is_floating_point():
            a.lerp_(p.detach(), 1.0 - decay)
        else:
            a.copy_(p)


def init_weights(net: PolicyNet, path, device) -> dict:
    """Load the weights of the policy checkpoint at ``path`` into ``net`` (same network);
    return the checkpoint."""
    from .driver import load_policy

    path = Path(path)
    if not path.exists():
        raise UserError(f"--init: {path} does not exist")
    source, ckpt = load_policy(path, device)
    if source.config != net.config:
        raise UserError(f"--init: {path} holds a different network ({source.config}); "
                        f"this preset trains {net.config}")
    net.load_state_dict(source.state_dict())
    return ckpt


def _with_teacher_options(cfg: TrainPolicyConfig, preset: PolicyPreset) -> PolicyPreset:
    """``preset`` with the privileged teacher's options of ``cfg`` applied."""
    t = preset.teacher
    if cfg.teacher is not None:
        t = dataclasses.replace(t, teacher=cfg.teacher)
    given = [f"--{name.replace('_', '-')}" for name in ("teacher_weight", "teacher_episodes", "collect_every",
                                                          "evade_share", "merge_share", "brake_share")
             if getattr(cfg, name) is not None]
    if given and t.teacher is None:
        raise UserError(f"{', '.join(given)} applies with --teacher or --method teach")
    for name in ("teacher_episodes", "collect_every"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.teacher_weight is not None:
        if cfg.method == "teach":
            raise UserError("--teacher-weight applies beside another method's costs, not to teach")
        if not (cfg.teacher_weight >= 0 and math.isfinite(cfg.teacher_weight)):
            raise UserError(f"--teacher-weight must be at least 0, got {cfg.teacher_weight}")
        t = dataclasses.replace(t, weight=cfg.teacher_weight)
    if cfg.teacher_episodes is not None:
        t = dataclasses.replace(t, episodes=cfg.teacher_episodes)
    shares = ("evade_share", "merge_share", "brake_share")
    for name in shares:
        value = getattr(cfg, name)
        if value is not None:
            if not 0.0 <= value <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} must be within [0, 1], got {value}")
            t = dataclasses.replace(t, **{name: value})
    if sum(getattr(t, name) for name in shares) > 1.0:
        raise UserError("--evade-share, --merge-share and --brake-share must add up to at most 1, got "
                        + ", ".join(str(getattr(t, name)) for name in shares))
    if cfg.teacher_windows:
        if cfg.method == "teach" or t.teacher is None:
            raise UserError("--teacher-windows applies with --teacher beside another method's costs")
        if not cfg.init:
            raise UserError("--teacher-windows takes the windows of the --init policy's training: give --init")
    if cfg.method == "teach":
        t = dataclasses.replace(t, collect_every=cfg.collect_every or t.collect_every)
        return dataclasses.replace(preset, teacher=t, val_every=t.collect_every)
    if t.teacher is not None:  # beside the costs: a collection at every validation unless told
        t = dataclasses.replace(t, collect_every=cfg.collect_every or preset.val_every)
    return dataclasses.replace(preset, teacher=t)


def train_policy(cfg: TrainPolicyConfig, preset: Optional[PolicyPreset] = None) -> Path:
    """Train (or resume) as ``cfg`` says; return the folder holding ``checkpoint.pt``,
    ``best.pt`` and ``log.csv``. ``preset`` replaces the named preset (tests)."""
    from data.build import ensure_dataset
    from data.dataset import Dataset, WindowSampler

    if cfg.method not in METHODS:
        raise UserError(f"unknown method {cfg.method!r} (have {', '.join(METHODS)})")
    if preset is None:
        if cfg.preset not in PRESETS:
            raise UserError(f"unknown preset {cfg.preset!r} (have {', '.join(PRESETS)})")
        preset = PRESETS[cfg.preset]
    if cfg.separate_ego and not preset.separate_ego:  # before the overrides below
        preset = with_separated(preset)
    elif cfg.separate_ego is False:
        preset = dataclasses.replace(preset, separate_ego=False)
    if cfg.method == "teach":
        if preset.separate_ego:
            raise UserError("--separate-ego applies to mpur, svg and vg; teach trains its network without a model")
        preset = for_teaching(preset)
    for name in ("steps", "val_episodes"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(cfg, name)}")
    if cfg.lambda_u is not None:
        if not cfg.lambda_u >= 0:
            raise UserError(f"--lambda-u must be at least 0, got {cfg.lambda_u}")
        preset = dataclasses.replace(preset, weights=dataclasses.replace(preset.weights, uncertainty=cfg.lambda_u))
    if cfg.val_episodes is not None:
        preset = dataclasses.replace(preset, val_episodes=cfg.val_episodes)
    if cfg.n_states is not None:
        if not 1 <= cfg.n_states <= preset.policy.n_cond:
            raise UserError(f"--n-states must be between 1 and {preset.policy.n_cond}, got {cfg.n_states}")
        preset = dataclasses.replace(preset, policy=dataclasses.replace(preset.policy, n_states=cfg.n_states))
    if cfg.n_feature is not None:
        if not (cfg.n_feature >= 4 and cfg.n_feature % 4 == 0):
            raise UserError(f"--n-feature must be a positive multiple of 4, got {cfg.n_feature}")
        preset = dataclasses.replace(preset, policy=dataclasses.replace(preset.policy, n_feature=cfg.n_feature))
    for name in ("action_bound", "brake_bound", "steer_bound", "lateral_acc"):  # the policy's soft bounds
        value = getattr(cfg, name)
        if value is not None:
            if not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
            preset = dataclasses.replace(preset, policy=dataclasses.replace(preset.policy, **{name: value}))
    if cfg.lane_end_input is not None:
        preset = dataclasses.replace(preset, policy=dataclasses.replace(preset.policy,
                                                                        lane_end_input=cfg.lane_end_input))
    if cfg.horizon is not None:
        if cfg.horizon < 1:
            raise UserError(f"--horizon must be at least 1, got {cfg.horizon}")
        preset = dataclasses.replace(preset, horizon=cfg.horizon)
    if cfg.batch_size is not None:
        if cfg.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
        preset = dataclasses.replace(preset, batch_size=cfg.batch_size)
    if cfg.grad_clip is not None:
        if not cfg.grad_clip > 0:
            raise UserError(f"--grad-clip must be positive, got {cfg.grad_clip}")
        preset = dataclasses.replace(preset, grad_clip=cfg.grad_clip)
    if cfg.lr is not None:
        if not cfg.lr > 0:
            raise UserError(f"--lr must be positive, got {cfg.lr}")
        preset = dataclasses.replace(preset, lr=cfg.lr)
    if cfg.lr_decay is not None:
        preset = dataclasses.replace(preset, lr_decay=cfg.lr_decay)
    if cfg.kinematic_gradient is not None:
        preset = dataclasses.replace(preset, kinematic_gradient=cfg.kinematic_gradient)
    if cfg.world is not None:
        preset = dataclasses.replace(preset, world=cfg.world)
    if cfg.start_noise is not None:
        preset = dataclasses.replace(preset, start_noise=parse_start_noise(cfg.start_noise))
    if any(preset.start_noise) and not preset.separate_ego:
        raise UserError("--start-noise applies with --separate-ego")
    if cfg.rear_weight is not None:
        if not 0.0 <= cfg.rear_weight <= 1.0:
            raise UserError(f"--rear-weight must be between 0 and 1, got {cfg.rear_weight}")
        if not preset.separate_ego:
            raise UserError("--rear-weight applies with --separate-ego")
        preset = dataclasses.replace(preset, rear_weight=cfg.rear_weight)
    if cfg.prox_reach is not None:
        if not (cfg.prox_reach > 0 and math.isfinite(cfg.prox_reach)):
            raise UserError(f"--prox-reach must be a positive distance [m], got {cfg.prox_reach}")
        preset = dataclasses.replace(preset, prox_reach=cfg.prox_reach)
    if cfg.focus_ends is not None:
        if not 0.0 <= cfg.focus_ends < 1.0:
            raise UserError(f"--focus-ends must be a share in [0, 1), got {cfg.focus_ends}")
        preset = dataclasses.replace(preset, focus_ends=cfg.focus_ends)
    if cfg.focus_queues is not None:
        if not 0.0 <= cfg.focus_queues < 1.0:
            raise UserError(f"--focus-queues must be a share in [0, 1), got {cfg.focus_queues}")
        preset = dataclasses.replace(preset, focus_queues=cfg.focus_queues)
    if preset.focus_ends + preset.focus_queues >= 1.0:
        raise UserError(f"--focus-ends and --focus-queues must add up to less than 1, "
                        f"got {preset.focus_ends} + {preset.focus_queues}")
    if cfg.offroad_ahead is not None:
        if not (cfg.offroad_ahead > 0 and math.isfinite(cfg.offroad_ahead)):
            raise UserError(f"--offroad-ahead must be a positive time [s], got {cfg.offroad_ahead}")
        preset = dataclasses.replace(preset, offroad_ahead=cfg.offroad_ahead)
    if cfg.track_weight is not None:
        if not (cfg.track_weight >= 0 and math.isfinite(cfg.track_weight)):
            raise UserError(f"--track-weight must be at least 0, got {cfg.track_weight}")
        if cfg.track_weight > 0 and not preset.separate_ego:
            raise UserError("--track-weight applies with --separate-ego")
        preset = dataclasses.replace(preset, track_weight=cfg.track_weight)
    if cfg.ema is not None:
        if not 0.0 <= cfg.ema < 1.0:
            raise UserError(f"--ema must be at least 0 and below 1, got {cfg.ema}")
        preset = dataclasses.replace(preset, ema=cfg.ema)
    if cfg.uncertainty_through_states is not None:
        if cfg.uncertainty_through_states and not (preset.separate_ego and cfg.method == "mpur"):
            raise UserError("--uncertainty-through-states applies to mpur with --separate-ego")
        preset = dataclasses.replace(preset, u_through_states=cfg.uncertainty_through_states)
    if cfg.u_gradient_ratio is not None:
        if cfg.method != "mpur":
            raise UserError("--u-gradient-ratio applies to mpur")
        if not cfg.u_gradient_ratio >= 0:
            raise UserError(f"--u-gradient-ratio must be at least 0, got {cfg.u_gradient_ratio}")
        preset = dataclasses.replace(preset, u_grad_ratio=cfg.u_gradient_ratio)
    if cfg.u_gradient_project is not None:
        if cfg.u_gradient_project and preset.u_grad_ratio is None:
            raise UserError("--u-gradient-project applies with --u-gradient-ratio")
        preset = dataclasses.replace(preset, u_grad_project=cfg.u_gradient_project)
    preset = _with_teacher_options(cfg, preset)
    if preset.world != "model" and not preset.separate_ego:
        raise UserError("--world applies with --separate-ego")
    if preset.separate_ego and cfg.method in ("mper", "il"):
        raise UserError(f"--separate-ego applies to mpur, svg and vg, not {cfg.method}")
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out) if cfg.out else default_out(cfg.method, cfg.preset, cfg.seed, preset.separate_ego)
    ckpt_path = out / CHECKPOINT
    resume_ckpt = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise UserError(f"--resume: no checkpoint in {out}")
        resume_ckpt = load_checkpoint(ckpt_path, map_location=device, kind=POLICY_KIND, what="policy")
        preset = preset_from_dict(resume_ckpt["preset"])
    elif ckpt_path.is_file():
        raise UserError(f"{ckpt_path} exists: pass --resume to continue it, or another --out")
    total_steps = cfg.steps if cfg.steps is not None else preset.steps

    # the forward model(s): with several, the training steps take turns among them
    kind = METHOD_MODEL[cfg.method]
    models, model_paths, model_steps = [], [], []
    default_dataset = None
    if kind is not None:
        if resume_ckpt:
            model_paths = [Path(p) for p in resume_ckpt.get("model_paths") or [resume_ckpt["model_path"]]]
        elif cfg.model:
            model_paths = [Path(p.strip()) for p in cfg.model.split(",") if p.strip()]
        if not model_paths:
            model_paths = [default_model(kind, cfg.preset)]
        model_paths = [p / CHECKPOINT if p.is_dir() else p for p in model_paths]
        if len(set(model_paths)) < len(model_paths):
            raise UserError(f"--model names a checkpoint twice: {cfg.model}")

        def sees(m):  # what the policy's unroll takes from a model: history, image size, kind
            return m.config.n_cond, m.config.image_height, m.config.image_width, m.config.stochastic

        for path in model_paths:
            if not path.is_file():
                raise UserError(f"{path}: no forward model; train one first: "
                                f"python run.py train-model --model {kind} --preset {cfg.preset}")
            model, mckpt = load_model(path, device)
            if model.config.stochastic != (kind == "stochastic") and not (
                    cfg.method == "mpur" and (cfg.model or resume_ckpt)):
                # (MPUR on a deterministic model is the paper's "MPUR deterministic": asked for by
                # --model, and kept on --resume)
                raise UserError(f"--method {cfg.method} needs a {kind} model; {path} is not one")
            if models and sees(model) != sees(models[0]):
                raise UserError(f"--model: {path} does not see what {model_paths[0]} does "
                                f"(history, image size or kind differ)")
            models.append(model.requires_grad_(False))
            model_steps.append(int(mckpt["step"]))
            default_dataset = default_dataset or mckpt["dataset"]
    model_digests = [weights_digest(m) for m in models]  # which models these were, in the checkpoint
    if resume_ckpt and resume_ckpt.get("model_digests") not in (None, model_digests):
        changed = [str(p) for p, was, now in zip(model_paths, resume_ckpt["model_digests"], model_digests)
                   if was != now]
        raise UserError(f"--resume: not the forward model(s) this policy was trained with (other weights): "
                        f"{', '.join(changed)}")
    model = models[0] if models else None
    model_path = model_paths[0] if model_paths else None
    model_step = model_steps[0] if model_steps else None
    if resume_ckpt is not None:
        dataset_path = Path(resume_ckpt["dataset"])
    elif cfg.dataset:
        dataset_path = Path(cfg.dataset)
    elif default_dataset:
        dataset_path = Path(default_dataset)
    else:
        dataset_path = ensure_dataset(quiet=cfg.quiet)
    dataset = Dataset.open(dataset_path)
    stats = {k: v.tolist() for k, v in dataset.stats.items()}
    if model is not None and model.config.n_cond != preset.policy.n_cond:
        # the policy sees the history the model predicts from
        preset = dataclasses.replace(preset, policy=dataclasses.replace(preset.policy, n_cond=model.config.n_cond))
    n_cond = preset.policy.n_cond
    dtype = resolve_precision(cfg.precision, device)

    def sampler_factory(n_pred: int, seed: int, split: str = "train"):
        return WindowSampler(dataset, split, n_cond, n_pred, preset.batch_size, seed=seed, device=device)

    if preset.policy.lateral_acc is not None:  # the steering's bound reads the car's speed
        preset = dataclasses.replace(preset, policy=preset.policy.with_units(stats))
    torch.manual_seed(cfg.seed)
    net = PolicyNet(preset.policy).to(device)
    if preset.policy.lane_end_input:
        net.use_road(dataset_road(dataset.manifest), stats)
    init_ckpt = init_weights(net, cfg.init, device) if cfg.init and resume_ckpt is None else None
    if cfg.teacher_windows and init_ckpt is not None and not (init_ckpt.get("teacher") or {}).get("records"):
        raise UserError(f"--teacher-windows: {cfg.init} was not trained with a teacher (no collections kept)")
    opt = torch.optim.Adam(net.parameters(), lr=preset.lr)
    n_pred = 1 if cfg.method in ("il", "teach") else preset.horizon
    sampler = sampler_factory(n_pred, cfg.seed)
    for share, mask, option, what in ((preset.focus_ends, ends_mask, "--focus-ends", "near a lane's end"),
                                      (preset.focus_queues, queues_mask, "--focus-queues", "closing in on a queue")):
        if share > 0:
            n_focus = sampler.set_focus(mask(dataset), share)
            if not cfg.quiet:
                print(f"{option}: {n_focus:,} of {sampler.n_windows:,} training windows {what}"
                      + ("" if n_focus else " (none: all windows alike)"))
    u_stats_all = [None] * len(models)  # each model's own scale of the uncertainty
    if cfg.method == "mpur":
        u_stats_all = (resume_ckpt.get("u_stats_all") or [resume_ckpt["u_stats"]]) if resume_ckpt else [
            uncertainty_stats_for(m, p, st, dg, sampler_factory, stats, preset, cfg.quiet)
            for m, p, st, dg in zip(models, model_paths, model_steps, model_digests)]
    u_stats = u_stats_all[0] if u_stats_all else None
    # the weights that validate and drive: the network itself, or the moving average of its weights
    driven = copy.deepcopy(net).requires_grad_(False) if preset.ema > 0 else net
    validation = None
    if preset.val_episodes > 0:
        try:
            validation = ClosedLoopValidation(dataset, preset.val_episodes, driven, stats, device)
        except ImportError as e:  # a machine without the simulator's packages
            if not cfg.quiet:
                print(f"no closed-loop validation ({e}); best.pt is the last checkpoint")

    teacher = preset.teacher
    teacher_data = None  # the windows the privileged teacher labelled
    if teacher.teacher is not None:
        scene = validation.scene if validation is not None else dataset_scene(dataset)
        teacher_data = TeacherData(scene, stats, n_cond, teacher.teacher, cfg.seed, device, teacher.evade_share,
                                   teacher.merge_share, teacher.brake_share)
    collected = {}  # the last collection's outcome, for the next log row

    progress, best = Progress(), None
    if resume_ckpt is not None:
        net.load_state_dict(resume_ckpt.get("policy_raw") or resume_ckpt["policy"])
        driven.load_state_dict(resume_ckpt["policy"])
        opt.load_state_dict(resume_ckpt["optimizer"])
        progress = Progress(int(resume_ckpt["step"]), float(resume_ckpt["seconds"]))
        best = resume_ckpt.get("best")
        set_rng_state(resume_ckpt["rng"], sampler, device)
        if teacher_data is not None:
            if not cfg.quiet:
                print(f"replaying the {len(resume_ckpt['teacher']['records'])} collection(s) of {teacher.teacher}'s "
                      f"labels", flush=True)
            teacher_data.load_state(resume_ckpt["teacher"])
    elif cfg.teacher_windows:
        if not cfg.quiet:
            print(f"replaying the {len(init_ckpt['teacher']['records'])} collection(s) of {cfg.init}'s training, "
                  f"labelled by {teacher.teacher}", flush=True)
        teacher_data.inherit(init_ckpt["teacher"])
    init_ckpt = None  # (its collections are kept in teacher_data)

    def payload(val=None) -> dict:
        return {
            "kind": POLICY_KIND, "version": CHECKPOINT_VERSION, "method": cfg.method,
            "policy_config": preset.policy.to_dict(), "preset": preset_to_dict(preset),
            "train_config": asdict(cfg), "dataset": str(dataset_path.resolve()),
            "model_path": str(model_path.resolve()) if model_path else None, "model_step": model_step,
            "model_paths": [str(p.resolve()) for p in model_paths], "model_steps": model_steps,
            "model_digests": model_digests,
            "stats": stats, "u_stats": u_stats, "u_stats_all": u_stats_all,
            "step": progress.step, "seconds": progress.seconds, "val": val,
            "best": best, "policy": driven.state_dict(), "optimizer": opt.state_dict(),
            "rng": get_rng_state(sampler, device),
            "teacher": teacher_data.state() if teacher_data is not None else None,
            **({"policy_raw": net.state_dict()} if driven is not net else {}),
        }

    out.mkdir(parents=True, exist_ok=True)
    log = CsvLog(out / LOG, resume_step=progress.step if resume_ckpt is not None else None, fields=LOG_FIELDS)
    if resume_ckpt is None:
        save_checkpoint(ckpt_path, payload())

    def collect():
        """The next collection: the teacher drives the first, the policy the others."""
        first, was_training = not teacher_data.records, driven.training
        driven.eval()
        outcome = teacher_data.collect(teacher.episodes, None if first else (lambda im, st, size: driven(im, st)))
        driven.train(was_training)
        collected.update({"collect_success": outcome["success"], "windows": len(teacher_data)})
        if not cfg.quiet:
            from tqdm import tqdm

            tqdm.write(f"step {progress.step}: {'the teacher' if first else 'the policy'} drove {teacher.episodes} "
                       f"episodes ({outcome['success']:.0%} success); {len(teacher_data):,} windows labelled "
                       f"by {teacher.teacher}, {len(teacher_data.marked):,} of them evading, "
                       f"{len(teacher_data.merges):,} in a lane that ends, {len(teacher_data.brakes):,} braking hard")

    def imitation_loss():
        size = preset.batch_size if cfg.method == "teach" else teacher.batch_size
        images, st, target = teacher_data.batch(size)
        return F.mse_loss(net(images, st), within_bounds(target, net.config, st))

    def compute_loss():
        if preset.lr_decay:
            for group in opt.param_groups:
                group["lr"] = learning_rate(preset.lr, progress.step, total_steps)
        if teacher_data is not None and teacher_data.own <= progress.step // teacher.collect_every:
            collect()
        if cfg.method == "teach":
            with autocast(device, dtype):
                loss = imitation_loss()
            return loss, {"loss": loss.detach(), "imitation": loss.detach()}
        batch = sampler.sample()
        turn = progress.step % len(models) if models else 0  # by the step: the same turns on --resume
        with autocast(device, dtype):
            loss, metrics = policy_loss(cfg.method, net, models[turn] if models else None, batch, preset, stats,
                                        u_stats_all[turn] if models else None)
            if teacher_data is not None:  # the teacher's actions beside the costs
                imitation = imitation_loss()
                metrics["imitation"] = imitation.detach()
                if isinstance(loss, tuple):  # BalancedStep: (costs, uncertainty)
                    loss = (loss[0] + teacher.weight * imitation, loss[1])
                else:
                    loss = loss + teacher.weight * imitation
                    metrics["loss"] = loss.detach()
        return loss, metrics

    update = (BalancedStep(opt, net.parameters(), preset.grad_clip, preset.u_grad_ratio, preset.u_grad_project)
              if preset.u_grad_ratio is not None else GuardedStep(opt, net.parameters(), preset.grad_clip))

    def apply_update(loss, at: int) -> bool:
        applied = update(loss, at)
        if applied and driven is not net:
            average_weights(driven, net, preset.ema)
        return applied

    def on_log(means: dict, val: Optional[dict]) -> dict:
        row = {"step": progress.step, "seconds": round(progress.seconds, 2)}
        row.update({k: v for k, v in means.items() if k in LOG_FIELDS})
        if isinstance(update, BalancedStep):
            row.update(update.pop_means())
        row.update(val or {})
        row.update(collected)
        collected.clear()
        log.write(row)
        post = {"loss": f"{row.get('loss', math.nan):.4g}"}
        if val:
            post["val_success"] = f"{val['val_success']:.0%}"
        return post

    def on_validated(val: dict) -> None:
        nonlocal best
        score = (val.get("val_success", 0.0), val.get("val_distance", 0.0), progress.step)
        if best is None or score[:2] > tuple(best[:2]) or not val:
            best = list(score)
            save_checkpoint(out / BEST, payload(val))
        save_checkpoint(ckpt_path, payload(val))

    net.train()
    try:
        interrupted = run_training(
            progress, total_steps, compute_loss, apply_update,
            val_every=preset.val_every, log_every=preset.log_every,
            validate=validation if validation is not None else dict,
            on_log=on_log, on_validated=on_validated,
            desc=f"train-policy {cfg.method}-{cfg.preset}", quiet=cfg.quiet)
        if interrupted:
            save_checkpoint(ckpt_path, payload())
    finally:
        log.close()
    if interrupted and not cfg.quiet:
        print(f"stopped at step {progress.step}: checkpoint saved; continue with --resume")
    if not (out / BEST).is_file():  # no validation step was reached
        save_checkpoint(out / BEST, payload())
    return out

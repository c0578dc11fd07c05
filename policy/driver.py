"""Closed-loop driving with a learned policy (or MPC) in the replay simulator.

A :class:`Driver` is the callable that :func:`traffic_sim.evaluate.run_episodes` and the
viewer take: ``driver(obs_images, states, cars) -> (N, 2) actions`` in SI units, with
``reset(tracks)`` at each episode's start. It keeps each car's last 20 frames: at the start
the recorded history before the takeover, then what the simulator shows the car. The
network works in normalised units (the dataset's statistics, stored in the checkpoint);
the driver converts in both directions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from data.dataset import MANIFEST, denormalise_actions, normalise_states
from traffic_sim.evaluate import ENSEMBLE, ensemble_members

POLICY_KIND = "ppuu-policy"
BEST = "best.pt"  # in a training folder: the checkpoint that did best in validation


class Driver:
    """Feeds an ``act(images (N, n, C, H, W) uint8, states (N, n, 4) normalised, car_size
    (N, 2)) -> normalised actions (N, 2)`` function with the cars' histories."""

    def __init__(self, scene, act: Callable, stats: dict, n_cond: int = 20, device="cpu",
                 name: str = "policy"):
        from traffic_sim.sim import ReplaySimulator

        self.sim = ReplaySimulator(scene)
        self.act = act
        self.stats = {k: np.asarray(v, dtype=np.float32) for k, v in stats.items()}
        self.n_cond = n_cond
        self.device = torch.device(device)
        self.name = name
        self.images = self.states = None
        self.last_normalised = None  # (N, 2) the last normalised actions
        self.last_size = None  # (N, 2) car sizes [m]
        self.probe = None  # optional: (images, states, actions, car_size) -> uncertainty (N,)

    def reset(self, tracks) -> None:
        tracks = np.asarray(tracks, dtype=np.int64)
        n = self.n_cond
        self.images = torch.from_numpy(self.sim.history_images(tracks)[:, -n:]).to(self.device).contiguous()
        self.states = torch.from_numpy(
            normalise_states(self.sim.history_states(tracks)[:, -n:], self.stats)).to(self.device).contiguous()
        self._live_images = torch.empty_like(self.images)  # the live cars' histories, when some are done
        self._fresh = True

    @torch.no_grad()
    def __call__(self, obs_images, states, cars) -> np.ndarray:
        if self.images is None:
            self.reset(cars.track)
        if not self._fresh:  # append what the cars see now, in place: a new history at every
            # step would split the C allocator's heap, and the process would grow at every step
            obs = torch.from_numpy(np.asarray(obs_images)).to(self.device)
            st = torch.from_numpy(normalise_states(np.asarray(states, dtype=np.float32),
                                                   self.stats)).to(self.device)
            for history, now in ((self.images, obs), (self.states, st)):
                for k in range(history.shape[1] - 1):
                    history[:, k].copy_(history[:, k + 1])
                history[:, -1].copy_(now)
        self._fresh = False
        self.last_size = torch.from_numpy(np.stack([cars.length, cars.width], 1).astype(np.float32))
        live = np.flatnonzero(~np.asarray(cars.done))
        actions = np.zeros((len(cars.done), 2))
        normalised = np.zeros((len(cars.done), 2), dtype=np.float32)
        if len(live):
            idx = torch.from_numpy(live).to(self.device)
            size = torch.from_numpy(np.stack([cars.length[live], cars.width[live]], 1).astype(np.float32))
            if len(live) == len(cars.done):
                images = self.images
            else:
                images = torch.index_select(self.images, 0, idx, out=self._live_images[:len(live)])
            a = self.act(images, self.states[idx], size.to(self.device))
            normalised[live] = a.float().cpu().numpy()
            actions[live] = denormalise_actions(normalised[live], self.stats)
        self.last_normalised = normalised
        return actions

    @torch.no_grad()
    def uncertainty(self) -> Optional[np.ndarray]:
        """(N,) the model's uncertainty cost of the last actions taken from the current
        histories (None without a model to ask)."""
        if self.probe is None or self.last_normalised is None:
            return None
        a = torch.from_numpy(self.last_normalised).to(self.device)
        return self.probe(self.images, self.states, a, self.last_size.to(self.device)).cpu().numpy()


def dataset_road(manifest: dict):
    """The road (:class:`~traffic_sim.roads.Road`) of a dataset's traffic, from its manifest."""
    from traffic_sim.cli_util import UserError
    from traffic_sim.roads import road_for

    locations = set(manifest.get("locations") or [])
    if len(locations) != 1:
        raise UserError(f"a policy that reads its lane's end needs a dataset of one location, "
                        f"not {sorted(locations) or 'none named'}")
    return road_for(locations.pop())


def load_policy(path, device="cpu", road=None):
    """``(PolicyNet in eval mode, checkpoint dict)`` from a policy checkpoint (file or folder).
    A policy that reads its lane's end (``lane_end_input``) drives on ``road`` (default: the
    road of the dataset it was trained on)."""
    from world_model.train import load_checkpoint

    from .net import PolicyConfig, PolicyNet

    path = Path(path)
    if path.is_dir() and (path / BEST).is_file():  # a training folder: its best checkpoint
        path = path / BEST
    ckpt = load_checkpoint(path, map_location=device, kind=POLICY_KIND, what="policy")
    net = PolicyNet(PolicyConfig.from_dict(ckpt["policy_config"])).to(device)
    net.load_state_dict(ckpt["policy"])
    net.eval()
    if net.config.lane_end_input:
        if road is None:
            manifest = json.loads((Path(ckpt["dataset"]) / MANIFEST).read_text())
            road = dataset_road(manifest)
        net.use_road(road, ckpt["stats"])
    return net, ckpt


def policy_driver(path, scene, device="cpu", name: Optional[str] = None) -> Driver:
    """A driver for the policy checkpoint at ``path``."""
    net, ckpt = load_policy(path, device, road=scene.road)

    def act(images, states, car_size):
        return net(images, states)

    driver = Driver(scene, act, ckpt["stats"], net.config.n_cond, device,
                    name=name or Path(path).stem)
    model_path = ckpt.get("model_path")
    if model_path and Path(model_path).is_file():
        driver.probe = uncertainty_probe(model_path, ckpt, device)
    return driver


def ensemble_driver(paths, scene, device="cpu", name: Optional[str] = None) -> Driver:
    """One driver whose action is the mean of the normalised actions of several policy
    checkpoints (e.g. the seeds of one training), each given the same history. They must
    have been trained on the same dataset (same normalisation) and see as many frames."""
    from traffic_sim.cli_util import UserError

    loaded = [load_policy(p, device, road=scene.road) for p in paths]
    first = loaded[0][1]
    for path, (net, ckpt) in zip(paths[1:], loaded[1:]):
        if net.config.n_cond != loaded[0][0].config.n_cond:
            raise UserError(f"ensemble: {path} sees {net.config.n_cond} frames, "
                            f"{paths[0]} {loaded[0][0].config.n_cond}")
        if any(not np.allclose(np.asarray(ckpt["stats"][k]), np.asarray(v))
               for k, v in first["stats"].items()):
            raise UserError(f"ensemble: {path} and {paths[0]} were trained on different datasets")
    nets = [net for net, _ in loaded]

    def act(images, states, car_size):
        return torch.stack([net(images, states) for net in nets]).mean(0)

    return Driver(scene, act, first["stats"], nets[0].config.n_cond, device,
                  name=name or ENSEMBLE.join(_label(Path(p)) for p in paths))


def uncertainty_probe(model_path, policy_ckpt: dict, device="cpu"):
    """(images, states, actions, car_size) -> the uncertainty cost of one step, with the
    K and expert statistics the policy was trained with (or K = 10 and no normalisation:
    then the summed raw variances)."""
    from world_model.train import load_model

    from .rollout import CostWeights, rollout, uncertainty_cost

    model, _ = load_model(model_path, device)
    preset = policy_ckpt.get("preset") or {}
    weights = CostWeights(**preset["weights"]) if "weights" in preset else CostWeights()
    u_stats = policy_ckpt.get("u_stats")
    k = int(u_stats["k_dropout"]) if u_stats else 10

    def probe(images, states, actions, car_size):
        r = rollout(model, lambda h, s, t: actions, images, states, car_size, 1,
                    policy_ckpt["stats"], weights, k_dropout=max(k, 2))
        v = r["variances"][:, 0]
        return uncertainty_cost(v, u_stats, weights.hinge) if u_stats else v.sum(-1)

    return probe


def mpc_driver(scene, model_path=None, device="cpu", config=None) -> Driver:
    """A driver that plans with the forward model at every step (see :mod:`policy.mpc`)."""
    from world_model.train import CHECKPOINT, load_model

    from traffic_sim.paths import artifacts_dir

    from .mpc import MPC, MPCConfig

    if model_path is None:
        for kind in ("stochastic", "deterministic"):
            model_path = artifacts_dir() / "models" / f"{kind}-default" / CHECKPOINT
            if model_path.is_file():
                break
    model, ckpt = load_model(model_path, device)
    mpc = MPC(model, ckpt["stats"], config or MPCConfig())
    return Driver(scene, mpc.act, ckpt["stats"], model.config.n_cond, device, name="mpc")


def _label(path: Path) -> str:
    return path.name if path.is_dir() else (path.parent.name if path.stem in ("best", "checkpoint") else path.stem)


def make_driver(name: str, scene, device="cpu", model_path=None) -> Driver:
    """The driver for ``name``: ``mpc``, a policy checkpoint path, or several joined by ``+``
    (their mean action)."""
    if name == "mpc":
        return mpc_driver(scene, model_path, device)
    members = ensemble_members(name)
    if len(members) > 1:
        return ensemble_driver(members, scene, device)
    path = Path(name)
    return policy_driver(path, scene, device, name=_label(path))

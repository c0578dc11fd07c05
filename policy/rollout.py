"""Unrolling the forward model under a policy, with costs and the dropout uncertainty.

One function, :func:`rollout`, serves every method that goes through the model: MPUR, VG,
SVG and MPER (training) and MPC (acting). From real conditioning frames it asks the actor
for an action, predicts the next frame and state, scores the predicted image with the costs
of :mod:`policy.costs`, appends the prediction to the history and goes on.

The uncertainty cost (method.md, section 4): with ``k_dropout = K > 1`` every step is
predicted K times with dropout on and the same z, in one batched pass of K x B samples. The
variance over the K predictions of the image (mean over pixels), the state (mean over its 4
components) and the cost (proximity + lane and off-road weights) gives 3 numbers per sample
and step; each is normalised by its mean and standard deviation measured on expert data
(:func:`expert_uncertainty_stats`), and the positive part above a hinge (0.5) is the cost.
The unroll goes on with the mean of the K predictions. With the world separated from the car
(:func:`rollout_separated`) the uncertainty is that of one-step predictions along the car's
own path, measured after the unroll in one batched pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from data.dataset import denormalise_actions, denormalise_states, normalise_states
from traffic_sim.raster import PX_PER_M
from traffic_sim.sim import DT, kinematic_step

from .costs import image_costs, speed_of

U_NAMES = ("image", "state", "cost")  # the variances the uncertainty cost is made of


@dataclass(frozen=True)
class CostWeights:
    lane: float = 0.2  # lambda_l
    offroad: float = 1.0  # lambda_o
    uncertainty: float = 0.5  # lambda_u
    hinge: float = 0.5  # of the normalised variances
    gamma: float = 0.99  # discount per step

    def combine(self, costs: torch.Tensor) -> torch.Tensor:
        """(..., 3) proximity, lane, off-road -> (...) weighted sum."""
        return costs[..., 0] + self.lane * costs[..., 1] + self.offroad * costs[..., 2]


def _repeat(x: Optional[torch.Tensor], k: int) -> Optional[torch.Tensor]:
    """(B, ...) -> (K*B, ...), the K copies one after the other."""
    if x is None or k == 1:
        return x
    return x.repeat(k, *([1] * (x.dim() - 1)))


class EgoKinematics:
    """The car's own motion under the actions, by the simulator's kinematic model, from its
    last real state: :meth:`step` returns its displacement (along, across the road) [m] as
    a tensor that is zero in value and carries the exact gradient of the car's position
    with respect to every action so far."""

    def __init__(self, state: torch.Tensor, stats: dict):
        s = denormalise_states(state.float(), stats)  # (B, 4) x, y, vx, vy
        self.x, self.y = s[:, 0], s[:, 1]
        self.v = s[:, 2:].norm(dim=1)
        heading = torch.where(self.v[:, None] > 1e-3, s[:, 2:] / self.v[:, None].clamp_min(1e-3),
                              torch.tensor([0.0, 1.0], device=s.device))
        self.ux, self.uy = heading[:, 0], heading[:, 1]
        self.stats = stats

    def step(self, action: torch.Tensor) -> torch.Tensor:
        """Apply (B, 2) normalised actions; (B, 2) displacement (along, across) [m]."""
        a = denormalise_actions(action.float(), self.stats)
        self.x, self.y, self.ux, self.uy, self.v = kinematic_step(
            self.x, self.y, self.ux, self.uy, self.v, a[:, 0], a[:, 1], DT)
        return torch.stack([self.y - self.y.detach(), self.x - self.x.detach()], 1)

    def state(self) -> torch.Tensor:
        """(B, 4) the car's state x, y, vx, vy, normalised as the model's states are."""
        s = torch.stack([self.x, self.y, self.v * self.ux, self.v * self.uy], 1)
        return normalise_states(s, self.stats)


def shift_images(images: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) state images re-centred on a car displaced by ``offset`` (N, 2) [m]
    (along the road, ahead positive; across it, right positive) from the image centre, by
    bilinear resampling; what lay outside the image is empty."""
    n, _, h, w = images.shape
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = offset[:, 1].to(images.dtype) * (2.0 * PX_PER_M / w)  # columns: right
    theta[:, 1, 2] = -offset[:, 0].to(images.dtype) * (2.0 * PX_PER_M / h)  # rows: ahead is up
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def rollout(model, actor: Callable, images: torch.Tensor, states: torch.Tensor,
            car_size: torch.Tensor, horizon: int, stats: dict, weights: CostWeights,
            z: Optional[torch.Tensor] = None, k_dropout: int = 1,
            u_stats: Optional[dict] = None, kinematic_gradient: bool = False,
            prox_reach: Optional[float] = None, offroad_ahead: Optional[float] = None) -> dict:
    """Unroll ``horizon`` steps.

    model: a ForwardModel (its parameters need no gradient; its train/eval mode is set here:
    dropout on only when ``k_dropout > 1``). actor(frames (B, n, C, H, W) float, states
    (B, n, 4), t) -> normalised action (B, 2). images (B, n, C, H, W) uint8 or float,
    states (B, n, 4) normalised, car_size (B, 2) [m]. z (B, T, n_z) for a stochastic model
    (default: prior draws). ``u_stats`` (see :func:`expert_uncertainty_stats`) turns the
    variances into the uncertainty cost; without it only the raw variances are returned.

    Returns a dict of tensors: ``images`` (B, T, C, H, W), ``states`` (B, T, 4), ``actions``
    (B, T, 2), ``costs`` (B, T, 3) proximity/lane/off-road, and with K > 1 ``variances``
    (B, T, 3) and, given ``u_stats``, ``uncertainty`` (B, T).

    ``kinematic_gradient``: the costs keep their values (the predicted images) but their
    gradient with respect to the actions is taken through the car's own kinematics
    (:class:`EgoKinematics`: the masks move with the car over the predicted image, which
    is detached for the costs) instead of through the predicted pixels. The uncertainty
    cost and the policy's inputs still go through the model. ``prox_reach`` [m]: the
    proximity mask's sideways reach (:func:`policy.costs.image_costs`'s ``reach``);
    ``offroad_ahead`` [s]: the off-road cost's look-ahead (same function).
    """
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    b, n = images.shape[:2]
    cfg = model.config
    if cfg.stochastic and z is None:
        z = model.sample_prior(b * horizon, images.device).view(b, horizon, -1)
    k = max(int(k_dropout), 1)
    model.train(k > 1)
    frames = list(images.unbind(1))
    size_k = _repeat(car_size, k)
    ego = EgoKinematics(states[:, -1], stats) if kinematic_gradient else None
    sharp = cfg.ego_warp and cfg.sharp_canvas  # see ForwardModel.decode_sharp
    canvas, carry = frames[-1], images.new_zeros(b, 2)
    out = {"images": [], "states": [], "actions": [], "costs": [], "variances": []}
    for t in range(horizon):
        hist = torch.stack(frames[-n:], 1)  # (B, n, C, H, W)
        action = actor(hist, states, t)  # (B, 2)
        zt = _repeat(z[:, t], k) if cfg.stochastic else None
        if sharp:
            image, state, canvas, carry = model.predict_sharp(
                _repeat(hist, k), _repeat(states, k), _repeat(action, k), _repeat(canvas, k), _repeat(carry, k), zt)
            if k > 1:  # go on from the mean, as the image does
                canvas, carry = (x.view(k, b, *x.shape[1:]).mean(0) for x in (canvas, carry))
        else:
            image, state = model.predict(_repeat(hist, k), _repeat(states, k), _repeat(action, k), zt)
        if ego is None:
            costs = image_costs(image, speed_of(state, stats), size_k, reach=prox_reach,
                                offroad_ahead=offroad_ahead)  # (K*B, 3)
        else:
            costs = image_costs(image.detach(), speed_of(state, stats), size_k, _repeat(ego.step(action), k),
                                reach=prox_reach, offroad_ahead=offroad_ahead)
        if k > 1:
            (image, state, costs), var = _dropout_moments(image, state, costs, weights, k)
            out["variances"].append(var)
        out["images"].append(image)
        out["states"].append(state)
        out["actions"].append(action)
        out["costs"].append(costs)
        frames.append(image)
        states = torch.cat([states[:, 1:], state[:, None]], 1)
    result = {key: torch.stack(v, 1) for key, v in out.items() if v}
    if k > 1 and u_stats is not None:
        result["uncertainty"] = uncertainty_cost(result["variances"], u_stats, weights.hinge)
    return result


def _dropout_moments(image: torch.Tensor, state: torch.Tensor, costs: torch.Tensor,
                     weights: CostWeights, k: int) -> tuple:
    """K x B dropout predictions (the K copies one after the other) -> their means (image,
    state, costs of B) and the (B, 3) variances of the image (mean over pixels), the state
    (mean over its components) and the weighted cost."""
    b = image.shape[0] // k
    image, state, costs = (x.view(k, b, *x.shape[1:]) for x in (image, state, costs))
    var = torch.stack([image.var(0).flatten(1).mean(1), state.var(0).mean(1),
                       weights.combine(costs).var(0)], 1)
    return (image.mean(0), state.mean(0), costs.mean(0)), var


def step_variances(model, hist: torch.Tensor, states: torch.Tensor, action: torch.Tensor,
                   car_size: torch.Tensor, stats: dict, weights: CostWeights, k: int) -> torch.Tensor:
    """The dropout variances (N, 3) of one-step predictions: K predictions of the next
    frame from each of N histories (N, n, C, H, W) float, states (N, n, 4) and actions (N, 2),
    with dropout on and, for a stochastic model, one prior draw of z shared by the K, in one
    batched pass (differentiable with respect to the states and actions)."""
    z = model.sample_prior(len(hist), hist.device) if model.config.stochastic else None
    model.train(True)
    image, state = model.predict(_repeat(hist, k), _repeat(states, k), _repeat(action, k), _repeat(z, k))
    costs = image_costs(image, speed_of(state, stats), _repeat(car_size, k))
    return _dropout_moments(image, state, costs, weights, k)[1]


def rollout_separated(model, actor: Callable, images: torch.Tensor, states: torch.Tensor,
                      car_size: torch.Tensor, horizon: int, stats: dict,
                      expert_actions: torch.Tensor, z: Optional[torch.Tensor] = None,
                      world: Optional[torch.Tensor] = None, start: Optional[torch.Tensor] = None,
                      rear_weight: float = 1.0, k_dropout: int = 1, u_stats: Optional[dict] = None,
                      u_stride: int = 8, weights: CostWeights = CostWeights(),
                      u_through_states: bool = False, prox_reach: Optional[float] = None,
                      offroad_ahead: Optional[float] = None) -> dict:
    """Unroll with the world separated from the car (Sobal et al. 2022): the model predicts
    the traffic along the recorded car's path (``expert_actions`` (B, >= horizon, 2),
    normalised), without gradient, as the replay simulator's vehicles, which do not react to
    the controlled car; the policy's car moves by the kinematic model from the same start,
    and its offset from the recorded car's kinematic path places the cost masks over the
    predicted images (value and gradient) and re-centres the images the policy sees
    (:func:`shift_images`). The states the policy sees are its car's own (with gradient).

    Same arguments and result as :func:`rollout` (``images``: what the policy saw), plus
    ``offsets`` (B, T, 2) [m]. The predicted world does not depend on the policy's actions;
    the uncertainty (``k_dropout`` K > 1) is the model's about the car's own path: at every
    ``u_stride``-th step, K dropout predictions of the next frame from what the car saw, its
    states and its action (:func:`step_variances`, all these steps in one batched pass;
    gradient with respect to the actions, not the states), whose variances (``variances``
    (B, T / u_stride, 3)) become, given ``u_stats`` (measured the same way on the expert's
    actions, :func:`expert_uncertainty_stats`), the cost ``uncertainty`` (B, T / u_stride):
    actions and states the model has not seen cost more. ``u_through_states``: its gradient
    goes through the car's position and velocity too (the frame it sees now, placed by its
    offset, and its states), i.e. back to every earlier action, so that the policy learns to
    keep out of states where the model is unsure (too close to a vehicle, between lanes), not
    only to avoid unusual actions. The safe distance behind the car is
    set by the faster of the car and the recorded car (the speed of the traffic it drove in),
    not by the car alone (see :func:`policy.costs.image_costs`). ``world`` (B, >= horizon, C,
    H, W): images of the traffic along the recorded car's path to use instead of the model's
    predictions (e.g. the recorded ones: the replay simulator itself, made differentiable).
    ``start`` (B, 3): the car starts displaced from the recorded car by (along [m], across
    [m], speed [m/s]), its history images and states shifted with it: states the expert
    never visited, from which the policy learns to recover. ``rear_weight`` scales the
    proximity mask behind the car, ``prox_reach`` [m] sets its reach sideways and
    ``offroad_ahead`` [s] the off-road cost's look-ahead (:func:`policy.costs.image_costs`).
    """
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    b, n = images.shape[:2]
    expert_actions = expert_actions[:, :horizon].detach()
    if world is None:
        world = predicted_world(model, images, states, car_size, horizon, stats, expert_actions, z)
    elif world.dtype == torch.uint8:
        world = world.float() / 255.0
    path = EgoKinematics(states[:, -1], stats)  # the recorded car, which the images follow
    if start is not None:
        images, states = displace_start(images, states, start, stats)
    ego = EgoKinematics(states[:, -1], stats)
    frames = list(images.unbind(1))
    out = {"images": [], "states": [], "actions": [], "costs": [], "offsets": []}
    k = max(int(k_dropout), 1)
    measured = []  # (history, states, action) where the uncertainty is measured
    offset = None
    for t in range(horizon):
        hist = torch.stack(frames[-n:], 1)
        action = actor(hist, states, t)  # (B, 2)
        if k > 1 and t % u_stride == 0:
            if u_through_states and offset is not None:  # the last frame, placed with gradient
                hist = torch.cat([hist[:, :-1], shift_images(world[:, t - 1], offset)[:, None]], 1)
            measured.append((hist, states, action))
        ego.step(action)
        with torch.no_grad():
            path.step(expert_actions[:, t])
        offset = torch.stack([ego.y - path.y, ego.x - path.x], 1)  # (B, 2) along, across [m]
        costs = image_costs(world[:, t], ego.v, car_size, offset, rear_speed=torch.maximum(ego.v, path.v),
                            rear_weight=rear_weight, reach=prox_reach, offroad_ahead=offroad_ahead)
        view = shift_images(world[:, t], offset.detach())
        state = ego.state()
        for key, value in (("images", view), ("states", state), ("actions", action),
                           ("costs", costs), ("offsets", offset)):
            out[key].append(value)
        frames.append(view)
        states = torch.cat([states[:, 1:], state[:, None]], 1)
    result = {key: torch.stack(v, 1) for key, v in out.items()}
    if measured:
        # step-major: (T' * B, ...). By default the gradient goes through the actions alone:
        # through the states it runs back through the model's move of every past frame
        hist, past, action = (torch.cat(x) for x in zip(*measured))
        var = step_variances(model, hist, past if u_through_states else past.detach(), action,
                             car_size.repeat(len(measured), 1), stats, weights, k)
        result["variances"] = var.view(len(measured), b, -1).transpose(0, 1)  # (B, T', 3)
        if u_stats is not None:
            result["uncertainty"] = uncertainty_cost(result["variances"], u_stats, weights.hinge)
    return result


def predicted_world(model, images: torch.Tensor, states: torch.Tensor, car_size: torch.Tensor, horizon: int,
                    stats: dict, expert_actions: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, T, C, H, W) the traffic the model predicts along the recorded car's path (its
    normalised actions ``expert_actions`` (B, >= horizon, 2)), without gradient."""
    with torch.no_grad():  # rollout takes uint8 or float images
        return rollout(model, lambda hist, st, t: expert_actions[:, t], images, states, car_size,
                       horizon, stats, CostWeights(), z=z)["images"]


def displace_start(images: torch.Tensor, states: torch.Tensor, start: torch.Tensor, stats: dict) -> tuple:
    """History images (B, n, C, H, W) float and normalised states (B, n, 4) of a car displaced
    from the recorded one by ``start`` (B, 3): along [m], across [m], speed [m/s] (its
    velocities scaled so that the current speed changes by that much, at least 0)."""
    b, n = images.shape[:2]
    start = start.to(images.device, torch.float32)
    offset = start[:, :2].repeat_interleave(n, 0)
    images = shift_images(images.flatten(0, 1), offset).unflatten(0, (b, n))
    s = denormalise_states(states.float(), stats)
    speed = s[:, -1, 2:].norm(dim=1)
    scale = torch.where(speed > 1e-3, (speed + start[:, 2]).clamp_min(0) / speed.clamp_min(1e-3),
                        torch.ones_like(speed))
    s = torch.cat([s[..., :1] + start[:, None, 1:2], s[..., 1:2] + start[:, None, :1],
                   s[..., 2:] * scale[:, None, None]], -1)
    return images, normalise_states(s, stats).to(states.dtype)


def uncertainty_cost(variances: torch.Tensor, u_stats: dict, hinge: float) -> torch.Tensor:
    """(..., 3) variances -> (...) sum of the positive parts above ``hinge`` of the
    variances normalised by the expert statistics."""
    mean = torch.as_tensor(u_stats["mean"], dtype=variances.dtype, device=variances.device)
    std = torch.as_tensor(u_stats["std"], dtype=variances.dtype, device=variances.device)
    return F.relu((variances - mean) / std - hinge).sum(-1)


def discounted(per_step: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T) -> scalar: mean over the batch of sum_t gamma^t x_t / T."""
    t = per_step.shape[1]
    w = gamma ** torch.arange(t, dtype=per_step.dtype, device=per_step.device)
    return (per_step * w).sum(1).mean() / t


@torch.no_grad()
def expert_uncertainty_stats(model, batches, stats: dict, weights: CostWeights, k_dropout: int,
                             horizon: int, u_stride: Optional[int] = None) -> dict:
    """Mean and standard deviation of the 3 variances over unrolls that follow the expert's
    recorded actions (what the model saw in training): the scale the uncertainty cost
    measures against. ``batches`` from a WindowSampler with n_pred >= horizon. With
    ``u_stride``, the unrolls are those of :func:`rollout_separated` (the car on the recorded
    car's path, the variances of one-step predictions every ``u_stride`` steps)."""
    n = model.config.n_cond
    values = []
    for batch in batches:
        actions = batch["actions"][:, n - 1:n - 1 + horizon]

        def expert(hist, states, t, actions=actions):
            return actions[:, t]

        images, states = batch["images"][:, :n], batch["states"][:, :n]
        if u_stride is None:
            r = rollout(model, expert, images, states, batch["car_size"], horizon, stats, weights,
                        k_dropout=k_dropout)
        else:
            r = rollout_separated(model, expert, images, states, batch["car_size"], horizon, stats, actions,
                                  k_dropout=k_dropout, u_stride=u_stride, weights=weights)
        values.append(r["variances"].reshape(-1, len(U_NAMES)))
    v = torch.cat(values).double()
    return {"mean": v.mean(0).tolist(), "std": v.std(0).clamp_min(1e-12).tolist(),
            "k_dropout": int(k_dropout), "horizon": int(horizon), "u_stride": u_stride, "samples": int(len(v))}

"""Model-predictive control: the forward model used at run time instead of a trained policy.

At every step, for every car, an action sequence of ``horizon`` steps is optimised by
gradient descent through the unrolled model on the same costs a policy is trained on
(proximity, lane, off-road, and with expert statistics the uncertainty cost); the first
action is applied and the rest, shifted by one step, starts the next optimisation. No
training: the comparison shows what the model alone can do, at a much higher cost per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .rollout import CostWeights, discounted, rollout


@dataclass(frozen=True)
class MPCConfig:
    horizon: int = 10  # planned steps [0.1 s]
    iterations: int = 5  # gradient steps per control step
    lr: float = 0.2  # Adam step on the normalised actions
    action_bound: float = 3.0  # normalised actions are clamped to +-this
    k_dropout: int = 1  # > 1: add the uncertainty cost (needs expert statistics)


class MPC:
    """``act(images, states, car_size) -> normalised actions``, the signature a
    :class:`~policy.driver.Driver` takes; the plans of the cars persist between steps while
    the set of cars driven stays the same."""

    def __init__(self, model, stats: dict, config: MPCConfig = MPCConfig(),
                 weights: CostWeights = CostWeights(), u_stats: Optional[dict] = None,
                 seed: int = 0):
        self.model = model.requires_grad_(False)
        self.stats = stats
        self.config = config
        self.weights = weights
        self.u_stats = u_stats if config.k_dropout > 1 else None
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._plan = None

    def act(self, images, states, car_size) -> torch.Tensor:
        cfg = self.config
        b = images.shape[0]
        device = states.device
        if self._plan is not None and self._plan.shape[0] == b:  # shift last step's plan
            init = torch.cat([self._plan[:, 1:], self._plan[:, -1:]], 1)
        else:
            init = torch.zeros(b, cfg.horizon, 2, device=device)
        plan = init.clone().requires_grad_(True)
        opt = torch.optim.Adam([plan], lr=cfg.lr)
        z = None
        if self.model.config.stochastic:  # one draw of the future per control step
            z = torch.randn(b, cfg.horizon, self.model.config.n_z, generator=self.generator).to(device)
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images
        with torch.enable_grad():
            for _ in range(cfg.iterations):
                r = rollout(self.model, lambda h, s, t: plan[:, t], images, states, car_size,
                            cfg.horizon, self.stats, self.weights, z=z, k_dropout=cfg.k_dropout,
                            u_stats=self.u_stats)
                per_step = self.weights.combine(r["costs"])
                if "uncertainty" in r:
                    per_step = per_step + self.weights.uncertainty * r["uncertainty"]
                loss = discounted(per_step, self.weights.gamma) * b  # per-car sums: same step size for any b
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    plan.clamp_(-cfg.action_bound, cfg.action_bound)
        self._plan = plan.detach()
        return self._plan[:, 0]

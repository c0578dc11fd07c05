"""The forward model: what the surroundings of a car look like one step (0.1 s) later.

Given the last ``n_cond`` state images and state vectors of a car, the action it takes now
and (stochastic version) a latent vector z, predict its next state image and state vector.
Feeding predictions back in unrolls it over any horizon.

Shapes use B = batch, T = time steps, C = 3 image channels, H x W = 117 x 24 pixels,
F = ``n_feature``, and (h, w) = (14, 3), the size of the hidden map::

    frames (B, n_cond*C, H, W) --conv x3--> (B, F, h, w) --+
    states (B, n_cond*4)       --MLP------> (B, F, h, w) --+-- sum = hidden map
    action (B, 2)              --MLP------> (B, F, h, w) --+
    z      (B, n_z)            --linear---> (B, F, h, w) --+
    hidden map --residual block--> --deconv x3--> residual over the last frame
                                                  -> moved by the car's own displacement
                                                                              -> next image
                                   --MLP-------> change of velocity; position
                                                 += velocity x dt             -> next state

Ego motion is geometry, not something to learn (``ego_warp``, on by default). The images are
centred on the car, so when it moves d metres along the road everything else in its image
moves d x 1.64 px the other way. The model therefore (1) sees its past frames moved into the
view from the car's current position (the road stands still in them and every other vehicle
moves at its own speed), (2) predicts the next frame in that same view, and (3) moves the
prediction by the displacement that the state head's velocity gives (``translate``:
bilinear, differentiable). Learned from expert driving alone, where the car's speed can be
read off its images, a model without this barely moved the other vehicles when it was made to
brake or accelerate (2.3 px instead of ~5.5 px after 2 s), so a policy trained through it had
no gradient to keep its distance; with it, an action changes the predicted images exactly as
much as the car's displacement changes.

With ``ego_warp`` the image pathway is also blind to the car itself: the residual that moves
the other vehicles is decoded from the (moved) frames and z only, not from the car's states
or action, which only the state head reads. In expert driving the car's speed is close to
its neighbours', and a decoder that could read it learned "the others move with me": made to
accelerate, the predicted car ahead accelerated too (half the relative shift that geometry
gives), and a policy trained through that model accelerated into the car ahead. The replayed
traffic a policy is evaluated in does not react to it either.

The stochastic model adds a posterior network that also sees the true next frame and state
and returns (mu, logvar) of z. Training draws z from the posterior; prediction without a
target draws it from the N(0, I) prior. With probability ``z_dropout`` (per sample and step)
a training sample uses a prior draw instead, so the action, not z, has to explain the motion.

Images enter as uint8 (0..255) or float in [0, 1]; states and actions are normalised with
the dataset's training statistics. ``action[t]`` is the one that moves frame ``t`` to
``t + 1``: the first prediction after conditioning frames ``0..n_cond-1`` uses
``action[n_cond - 1]``.

Training loss (:meth:`ForwardModel.forward`): the model is unrolled over all target steps
feeding back its own predictions (not the true frames), conditioned on the true actions, as
in the reference; the loss is MSE(image) + MSE(state) + beta * KL, averaged over the steps.

Choices where the method leaves room (see docs/method.md, section 3):

- the posterior adds an encoding of the true next frame (a 3-channel copy of the frame
  encoder; with ``ego_warp`` seen from the current position) to the hidden map of the past
  and sees the true next state; it does not encode the 20 past frames a second time;
- the residual block is a 3x3 bottleneck (F -> F/2 -> F) on the 14 x 3 map;
- the predicted image is the last frame plus a decoded residual, clamped to [0, 1], with a
  straight-through gradient in the training loss only (see :meth:`ForwardModel.decode`);
  the last layers of both heads start at zero, so an untrained model predicts "nothing
  changes" (the last frame and state, moved with the car) rather than noise;
- the state head predicts the change of the (normalised) velocity; the position moves on by
  velocity x dt. A state's velocity is the forward difference of its position (see
  data/__init__.py), so this step is exact, not a modelling assumption. A head that had to
  predict the position change itself did worse than constant velocity (2.1 m vs 1.0 m off
  after 2 s): the states are normalised by the spread of absolute positions over the road
  (std ~145 m along it), so a 1 m position error weighs ~5e-5 in the loss and the head was
  never pushed to get it right. The normalisation statistics are buffers of the model;
- dropout (``Dropout2d`` on feature maps, ``Dropout`` in MLPs) after every hidden layer; it is
  what the policy's MC-dropout uncertainty samples, so it stays in the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_SHAPE = (3, 117, 24)  # (C, H, W) of a state image
STATE_DIM = 4  # (x, y, vx, vy), normalised
ACTION_DIM = 2  # (acceleration, steering), normalised
# The rasteriser's geometry (traffic_sim.raster, checked by a test; this package does not
# import the simulator, so that it runs where only torch is installed):
PX_PER_M = 6.0 / 3.6576  # [px/m] 6 px per 12 ft lane
VEHICLES_CHANNEL = 1  # the channel of the other vehicles


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the forward model. The defaults are the reference scale."""

    stochastic: bool = False  # latent-variable model (posterior network and z) or not
    n_cond: int = 20  # conditioning frames [0.1 s each]
    n_feature: int = 256  # channels of the hidden map; encoder convs are F/4, F/2, F wide
    n_hidden: int = 256  # width of the MLPs (states, action, state head, posterior)
    n_z: int = 32  # latent dimension (stochastic model)
    dropout: float = 0.1  # dropout after every hidden layer (also MC-dropout uncertainty)
    beta: float = 1e-6  # weight of the KL term of the loss
    z_dropout: float = 0.5  # probability that a training sample uses a prior z
    dt: float = 0.1  # [s] time step (10 Hz)
    image_height: int = IMAGE_SHAPE[1]  # [px] along the road
    image_width: int = IMAGE_SHAPE[2]  # [px] across the road
    # Ego motion applied geometrically (see the module docstring); models saved before this
    # option existed load with it off.
    ego_warp: bool = True
    px_per_m: float = PX_PER_M  # [px/m] scale of the state images
    # With ego_warp, move predicted images by whole pixels only and carry the fraction
    # (ForwardModel.decode_sharp), in training and in unrolls; models saved before this
    # option existed load with it off.
    sharp_canvas: bool = False

    @staticmethod
    def from_dict(d: dict) -> "ModelConfig":
        return ModelConfig(**{"ego_warp": False, "sharp_canvas": False, **d})

    def to_dict(self) -> dict:
        return asdict(self)


def conv_out(n: int) -> int:
    """Output size of a 4x4, stride 2, padding 1 convolution on n pixels."""
    return (n + 2 - 4) // 2 + 1


class _ClampBackIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # a descent step moves x by -grad: out of range, pass only what moves it back in
        outward = ((x > ctx.hi) & (grad < 0)) | ((x < ctx.lo) & (grad > 0))
        return grad.masked_fill(outward, 0.0), None, None


def clamp_st(x: torch.Tensor, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Clamp in the forward pass; in the backward pass the identity (straight-through) for
    the gradients that bring an out-of-range pixel back into range, and zero for those that
    push it further out. A pixel pushed out of range is never stuck there (a plain clamp
    passes it no gradient at all); and a loss that asks for more than the range allows (a
    cost wants a vehicle brighter than 1 where the mask is weaker) does not drive it, and
    the weights behind it, without bound: with a plain straight-through clamp, a
    cost-matching term made the training diverge within 200 steps."""
    return _ClampBackIn.apply(x, lo, hi)


def translate(images: torch.Tensor, shift: torch.Tensor, zero_channels=(VEHICLES_CHANNEL,)) -> torch.Tensor:
    """Move each image's content by a (fractional) number of pixels, bilinearly.

    images (N, C, H, W); shift (N, 2) [px] = (down, right): ``out[r, c] = in[r - s_r, c - s_c]``.
    Differentiable in the images and in the shift. Pixels that come from outside the image
    repeat the edge (road markings and off-road go on), except in ``zero_channels`` (other
    vehicles: nothing is known there). One gather does the whole-pixel part; the fraction is a
    linear interpolation between neighbours, which carries the gradient of the shift. (As
    fast as ``grid_sample`` forward, 3-4x faster forward + backward on a CPU.)
    """
    n, c, h, w = images.shape
    s = shift.float()
    k = s.detach().floor()  # (N, 2) whole pixels
    f = (s - k).to(images.dtype)  # (N, 2) fraction in [0, 1)
    k = k.long()
    # sources of output rows/columns -1..H-1 / -1..W-1: each output pixel mixes its own source
    # pixel and the one before it, so one gather of an (H+1) x (W+1) window serves both
    rows = torch.arange(-1, h, device=images.device).view(1, h + 1, 1) - k[:, :1, None]  # (N, H+1, 1)
    cols = torch.arange(-1, w, device=images.device).view(1, 1, w + 1) - k[:, 1:, None]  # (N, 1, W+1)
    index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, -1)  # (N, 1, (H+1)(W+1))
    out = images.flatten(2).gather(2, index.expand(n, c, -1)).view(n, c, h + 1, w + 1)
    rows_in = ((rows >= 0) & (rows < h)).to(out.dtype)  # (N, H+1, 1)
    cols_in = ((cols >= 0) & (cols < w)).to(out.dtype)  # (N, 1, W+1)
    if out.requires_grad:
        # a repeated edge pixel passes no gradient back: with it, k pixels repeating one edge
        # multiplied that pixel's gradient by k at every step of an unroll, and training
        # diverged within a few hundred steps
        inside = (rows_in * cols_in)[:, None]  # (N, 1, H+1, W+1)
        out = out * inside + out.detach() * (1.0 - inside)
    for ch in zero_channels:
        out[:, ch].mul_(rows_in).mul_(cols_in)
    # the fraction: out[r] = (1 - f) src[r - k] + f src[r - k - 1], and likewise across
    out = torch.lerp(out[:, :, 1:], out[:, :, :-1], f[:, 0].view(n, 1, 1, 1))  # (N, C, H, W+1)
    return torch.lerp(out[..., 1:], out[..., :-1], f[:, 1].view(n, 1, 1, 1))


class ConvEncoder(nn.Module):
    """3 convolutions (4x4, stride 2): (B, c_in, H, W) -> (B, F, h, w)."""

    def __init__(self, c_in: int, n_feature: int, dropout: float):
        super().__init__()
        w1, w2 = n_feature // 4, n_feature // 2
        self.net = nn.Sequential(
            nn.Conv2d(c_in, w1, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(dropout),
            nn.Conv2d(w1, w2, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(dropout),
            nn.Conv2d(w2, n_feature, 4, 2, 1),
        )

    def forward(self, x):
        return self.net(x)


class ImageDecoder(nn.Module):
    """3 transposed convolutions (stride 2): (B, F, h, w) -> (B, 3, H, W). The first two
    double the map (14 x 3 -> 28 x 6 -> 56 x 12); the last one's kernel is taller so that it
    lands on the image size (56 -> 117 with a 9 x 4 kernel). Exact doubling keeps the fast
    oneDNN path: an ``output_padding`` makes bf16 transposed convolutions 3x slower."""

    def __init__(self, n_feature: int, map_hw: tuple, image_hw: tuple, dropout: float):
        super().__init__()
        h, w = map_hw
        kh, kw = 4 + image_hw[0] - 8 * h, 4 + image_hw[1] - 8 * w  # (9, 4) for 117 x 24
        if kh < 2 or kw < 2:
            raise ValueError(f"cannot decode a {h}x{w} map to a {image_hw} image")
        self.net = nn.Sequential(
            nn.ConvTranspose2d(n_feature, n_feature // 2, 4, 2, 1),  # (B, F/2, 2h, 2w)
            nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(dropout),
            nn.ConvTranspose2d(n_feature // 2, n_feature // 4, 4, 2, 1),  # (B, F/4, 4h, 4w)
            nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(dropout),
            nn.ConvTranspose2d(n_feature // 4, IMAGE_SHAPE[0], (kh, kw), 2, 1),  # (B, C, H, W)
        )

    def forward(self, h):
        return self.net(h)


def mlp(n_in: int, n_hidden: int, n_out: int, dropout: float) -> nn.Sequential:
    """Linear -> LeakyReLU -> Dropout -> Linear -> LeakyReLU -> Dropout -> Linear."""
    return nn.Sequential(
        nn.Linear(n_in, n_hidden), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout),
        nn.Linear(n_hidden, n_hidden), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout),
        nn.Linear(n_hidden, n_out),
    )


def bottleneck(n_feature: int, dropout: float) -> nn.Sequential:
    """The residual block's body: 3x3 convolutions F -> F/2 -> F on the hidden map."""
    return nn.Sequential(
        nn.Conv2d(n_feature, n_feature // 2, 3, 1, 1),
        nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(dropout),
        nn.Conv2d(n_feature // 2, n_feature, 3, 1, 1),
    )


LOGVAR_LIMIT = 8.0  # bound on |log variance| of the posterior
ACTION_LIMIT = 10.0  # bound on |normalised action| seen by the model [expert std]


class ForwardModel(nn.Module):
    """The deterministic (``stochastic=False``) or latent-variable forward model.

    Call :meth:`set_state_stats` with the dataset's state statistics before training (the
    training script does): the position update needs the states in metres.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.n_feature % 4:
            raise ValueError(f"n_feature must be a multiple of 4, got {cfg.n_feature}")
        c = IMAGE_SHAPE[0]
        sizes = [(cfg.image_height, cfg.image_width)]
        for _ in range(3):
            sizes.append((conv_out(sizes[-1][0]), conv_out(sizes[-1][1])))
        self.map_shape = (cfg.n_feature, *sizes[-1])  # (F, h, w) = (256, 14, 3)
        n_map = cfg.n_feature * sizes[-1][0] * sizes[-1][1]  # F*h*w

        # encoder of the past: frames and states summed into the hidden map
        self.frame_encoder = ConvEncoder(cfg.n_cond * c, cfg.n_feature, cfg.dropout)
        self.state_encoder = mlp(cfg.n_cond * STATE_DIM, cfg.n_hidden, n_map, cfg.dropout)
        # what is added to the map: the action, and z
        self.action_encoder = mlp(ACTION_DIM, cfg.n_hidden, n_map, cfg.dropout)
        # a bottleneck residual block on the map
        self.residual = bottleneck(cfg.n_feature, cfg.dropout)
        if cfg.ego_warp:  # the image pathway's own block (see the module docstring)
            self.image_residual = bottleneck(cfg.n_feature, cfg.dropout)
        # heads: next image (residual over the last frame) and change of the state
        self.image_decoder = ImageDecoder(cfg.n_feature, sizes[-1], sizes[0], cfg.dropout)
        self.state_head = mlp(n_map, cfg.n_hidden, STATE_DIM // 2, cfg.dropout)  # change of velocity
        # statistics of the state normalisation: set from the dataset with set_state_stats()
        self.register_buffer("state_mean", torch.zeros(STATE_DIM))
        self.register_buffer("state_std", torch.ones(STATE_DIM))

        if cfg.stochastic:
            self.z_proj = nn.Linear(cfg.n_z, n_map)
            # posterior q(z | past, next frame, next state): the next frame gets its own small
            # encoder (3 channels) whose map is added to the past's map
            self.target_encoder = ConvEncoder(c, cfg.n_feature, cfg.dropout)
            self.posterior = mlp(n_map + STATE_DIM, cfg.n_hidden, 2 * cfg.n_z, cfg.dropout)
        self._init_weights()

    def _init_weights(self):
        # Start as "repeat the last frame, keep the velocity": zero last layers of both heads.
        for last in (self.image_decoder.net[-1], self.state_head[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def set_state_stats(self, mean, std) -> None:
        """The mean and std (4,) that normalise states [m, m, m/s, m/s] (dataset.stats)."""
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def advance(self, state: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
        """Next normalised state (B, 4) from the current one (B, 4) and the change of the
        normalised velocity dv (B, 2): the position moves on by velocity x dt."""
        velocity = state[:, 2:] * self.state_std[2:] + self.state_mean[2:]  # (B, 2) [m/s]
        position = state[:, :2] + velocity * self.config.dt / self.state_std[:2]  # (B, 2)
        return torch.cat([position, state[:, 2:] + dv], 1)

    # ------------------------------------------------------------------ one step
    def ego_shift(self, state_from: torch.Tensor, state_to: torch.Tensor) -> torch.Tensor:
        """(..., 2) [px] (down, right) shift that moves an image seen from the car's position
        in ``state_from`` (..., 4) to the view from ``state_to`` (..., 4): the car moving on
        by d metres along the road moves everything else d x px_per_m pixels down."""
        d = (state_to[..., :2] - state_from[..., :2]).float() * self.state_std[:2]  # [m] (across, along)
        return torch.stack([d[..., 1], -d[..., 0]], -1) * self.config.px_per_m

    def encode(self, frames: torch.Tensor, states: torch.Tensor,
               positions: Optional[torch.Tensor] = None) -> tuple:
        """frames (B, n_cond, C, H, W) in [0, 1], states (B, n_cond, 4) -> the maps (B, F,
        h, w) of the frames and of the states, a pair (what :meth:`decode` takes).
        ``positions`` (B, n_cond, 4): the states whose positions place the frames (default:
        ``states``; training passes the true ones, see :meth:`forward`).

        With ``ego_warp`` every past frame is first moved into the view from the car's
        current position, so the road stands still and the others move at their own speed.
        The past frames pass no gradient to their pixels (moving n_cond frames with that
        gradient at every step doubled the cost of a training step on a CPU); they pass one to
        the car's current position, through the shift. Without that one the gradient saw the
        current frame move against a history that stood still, and said that accelerating
        brings the car ahead no closer."""
        b, n = frames.shape[:2]
        if self.config.ego_warp and n > 1:
            where = states if positions is None else positions
            # Frame k seen from now is the world as it was then, moved by where the car is
            # now: it depends on the current position only (the car's earlier positions
            # cancel out), and that is the one gradient it passes on.
            shift = self.ego_shift(where[:, :-1].detach(), where[:, -1:])  # (B, n-1, 2)
            past = translate(frames[:, :-1].detach().flatten(0, 1), shift.flatten(0, 1))  # (B*(n-1), C, H, W)
            frames = torch.cat([past.view(b, n - 1, *frames.shape[2:]), frames[:, -1:]], 1)
        h = self.frame_encoder(frames.flatten(1, 2))  # (B, F, h, w)
        return h, self.state_encoder(states.reshape(b, -1)).view(b, *self.map_shape)

    def posterior_params(self, h: tuple, next_image: torch.Tensor,
                         next_state: torch.Tensor, last_state: torch.Tensor):
        """maps of the past (the pair from :meth:`encode`), true next image (B, C, H, W) in
        [0, 1] and state (B, 4), current state (B, 4) -> mu, logvar (B, n_z) of q(z | ...). With ``ego_warp``
        the next image is seen from the current position: z has the others' motion to explain,
        not the car's own."""
        b = h[0].shape[0]
        if self.config.ego_warp:
            next_image = translate(next_image, self.ego_shift(next_state, last_state))
        hy = h[0] + h[1] + self.target_encoder(next_image)  # (B, F, h, w)
        out = self.posterior(torch.cat([hy.reshape(b, -1), next_state], 1))  # (B, 2*n_z)
        mu, logvar = out.float().chunk(2, dim=1)
        # soft limit: with beta ~1e-6 the KL hardly bounds logvar, and exp() of a drifting
        # logvar overflows (std within [e^-4, e^4])
        logvar = LOGVAR_LIMIT * torch.tanh(logvar / LOGVAR_LIMIT)
        return mu, logvar

    def decode(self, h: tuple, last_image: torch.Tensor, last_state: torch.Tensor,
               action: torch.Tensor, z: Optional[torch.Tensor], shift: Optional[torch.Tensor] = None,
               straight_through: bool = False):
        """maps of the past (the pair from :meth:`encode`, each (B, F, h, w)) + action (B, 2)
        + z (B, n_z) -> next image (B, C, H, W) in [0, 1] and next state (B, 4). ``shift`` (B, 2) [px]: the image's move with the car (default:
        from the predicted displacement; training passes the true one).

        ``straight_through``: the clamp of the image to [0, 1] passes gradients as if it were
        not there. The training loss uses it (a pixel pushed out of range is never stuck);
        prediction for a policy does not: there the gradient must be the true one. Measured
        on the default model, the straight-through gradient of a 2 s unroll's cost with
        respect to the actions was 250x too large and pointed uphill (a step against it
        raised the cost), while the true gradient agrees with finite differences."""
        residual, state = self._heads(h, last_state, action, z)
        image = last_image + residual  # (B, C, H, W)
        image = clamp_st(image) if straight_through else image.clamp(0.0, 1.0)
        if self.config.ego_warp:  # the image was predicted where the car is: move on with it
            image = translate(image, self.ego_shift(last_state, state) if shift is None else shift)
        return image, state

    def _heads(self, h: tuple, last_state: torch.Tensor, action: torch.Tensor, z: Optional[torch.Tensor]):
        """maps of the past, current state (B, 4), action (B, 2), z -> the image's change
        (B, C, H, W) float, in the view of the encoded frames, and the next state (B, 4)."""
        h_frames, h_states = h
        b = h_frames.shape[0]
        # recorded actions include curvature outliers of cars at walking speed (hundreds of
        # standard deviations); beyond ACTION_LIMIT nothing is learned from them
        action = action.clamp(-ACTION_LIMIT, ACTION_LIMIT)
        z_map = 0.0 if z is None else self.z_proj(z).view(b, *self.map_shape)
        h = h_frames + h_states + self.action_encoder(action).view(b, *self.map_shape) + z_map
        h = h + self.residual(h)
        if self.config.ego_warp:  # the others' motion, from the frames (and z) alone
            h_image = h_frames + z_map
            h_image = h_image + self.image_residual(h_image)
        else:
            h_image = h
        state = self.advance(last_state, self.state_head(h.reshape(b, -1)).float())  # (B, 4)
        return self.image_decoder(h_image).float(), state

    def decode_sharp(self, h: tuple, canvas: torch.Tensor, carry: torch.Tensor, last_state: torch.Tensor,
                     action: torch.Tensor, z: Optional[torch.Tensor], shift: Optional[torch.Tensor] = None,
                     straight_through: bool = False):
        """:meth:`decode` for many steps (``ego_warp`` models), without the blur of moving the
        image by a fraction of a pixel at every step: a bilinear move by a fraction f mixes
        neighbouring pixels in proportions f and 1 - f, and 40 such moves spread a car over
        ~3 px along the road (its peak falls to ~0.8) even when nothing is uncertain.

        ``canvas`` (B, C, H, W) is the view from ``last_state`` moved by ``-carry`` (B, 2)
        [px], |carry| <= 0.5: it only ever moves by whole pixels, which is exact, and the
        fraction is carried to the next step. Returns the next image (the canvas moved by
        the new carry: one interpolation, however many steps), the next state, and the next
        canvas and carry. Start with the last real frame and a zero carry. The gradient
        with respect to the car's displacement flows through the carry."""
        residual, state = self._heads(h, last_state, action, z)
        canvas = canvas + translate(residual, -carry)
        canvas = clamp_st(canvas) if straight_through else canvas.clamp(0.0, 1.0)
        total = carry + (self.ego_shift(last_state, state) if shift is None else shift)  # (B, 2) [px]
        whole = total.detach().round()
        canvas = translate(canvas, whole)  # whole pixels: exact
        carry = total - whole
        return translate(canvas, carry), state, canvas, carry

    def sample_prior(self, b: int, device=None, generator=None) -> torch.Tensor:
        """(B, n_z) draws of z ~ N(0, I)."""
        return torch.randn(b, self.config.n_z, device=device, generator=generator)

    def predict(self, images: torch.Tensor, states: torch.Tensor, action: torch.Tensor,
                z: Optional[torch.Tensor] = None, generator=None):
        """One step. images (B, n_cond, C, H, W) uint8 or [0, 1] float, states (B, n_cond, 4),
        action (B, 2), z (B, n_z) (stochastic; default: a prior draw) -> next image
        (B, C, H, W) float in [0, 1], next state (B, 4)."""
        images, h, z = self._step_inputs(images, states, z, generator)
        return self.decode(h, images[:, -1], states[:, -1], action, z)

    def _step_inputs(self, images, states, z, generator):
        """Float images, the maps of the past and z (a prior draw if none; None for the
        deterministic model) for one step of :meth:`predict`."""
        images = as_float_images(images)
        if not self.config.stochastic:
            return images, self.encode(images, states), None
        if z is None:
            z = self.sample_prior(images.shape[0], images.device, generator)
        return images, self.encode(images, states), z

    def predict_sharp(self, images: torch.Tensor, states: torch.Tensor, action: torch.Tensor,
                      canvas: torch.Tensor, carry: torch.Tensor, z: Optional[torch.Tensor] = None,
                      generator=None):
        """:meth:`predict` with the canvas and carry of :meth:`decode_sharp` (start with the
        last frame and zeros (B, 2)); returns the next image, state, canvas and carry."""
        _, h, z = self._step_inputs(images, states, z, generator)
        return self.decode_sharp(h, canvas, carry, states[:, -1], action, z)

    # ------------------------------------------------------------------ many steps
    # The frame history is a list stacked anew at each step: the gradient of a stack is a set
    # of views, whereas slicing a stacked history would allocate and zero a full
    # (B, n_cond, C, H, W) gradient per step. Under autocast the history is kept in
    # the autocast dtype (bf16) so it is not cast again at every step; the last frame, the
    # base of the predicted residual, stays float32.

    def unroll(self, images: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
               z: Optional[torch.Tensor] = None, generator=None, sharp: Optional[bool] = None):
        """Predict T steps feeding predictions back.

        images (B, n_cond, C, H, W) and states (B, n_cond, 4): the conditioning frames;
        actions (B, T, 2): ``actions[:, 0]`` moves the last conditioning frame to the first
        prediction; z (B, T, n_z) for the stochastic model (default: prior draws).
        Returns predicted images (B, T, C, H, W) float in [0, 1] and states (B, T, 4).
        """
        images = as_float_images(images)
        b, t_pred = actions.shape[:2]
        if self.config.stochastic and z is None:
            z = torch.randn(b, t_pred, self.config.n_z, device=images.device, generator=generator)
        n = self.config.n_cond
        hist = _history_dtype(images.device)
        frames = list(images.to(hist).unbind(1))  # n_cond x (B, C, H, W)
        last = images[:, -1]  # (B, C, H, W)
        sharp = self.config.ego_warp and (self.config.sharp_canvas if sharp is None else sharp)
        canvas, carry = last, images.new_zeros(b, 2)
        pred_images, pred_states = [], []
        for t in range(t_pred):
            h = self.encode(torch.stack(frames[-n:], 1), states)  # frames (B, n_cond, C, H, W)
            zt = z[:, t] if self.config.stochastic else None
            if sharp:
                last, state, canvas, carry = self.decode_sharp(h, canvas, carry, states[:, -1], actions[:, t], zt)
            else:
                last, state = self.decode(h, last, states[:, -1], actions[:, t], zt)
            frames.append(last.to(hist))
            pred_images.append(last)
            pred_states.append(state)
            states = torch.cat([states[:, 1:], state[:, None]], 1)  # (B, n_cond, 4)
        return torch.stack(pred_images, 1), torch.stack(pred_states, 1)

    def forward(self, images: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                feedback_gradient: bool = True, return_images: bool = False):
        """Training loss on windows of n_cond + T frames.

        images (B, n_cond+T, C, H, W) uint8, states (B, n_cond+T, 4), actions (B, n_cond+T, 2).
        Predicted frames are fed back as inputs of the later steps; with
        ``feedback_gradient=False`` the loss's gradient does not flow back through them (the
        model still learns from its own predictions as inputs). The gradient through that
        loop can explode: once an update had raised the loop's gain, the gradient norm grew
        ~1000x per step (1 -> 1e3 -> 5e6 -> 4e10) where with the fed-back frames detached
        it stayed at 8 -> 29 -> 66 on the same weights and batches.
        Returns ``(loss, metrics)``: metrics are detached scalars (loss, image_mse, state_mse,
        kl; z_prior_fraction for the stochastic model). In eval mode (no dropout) the
        stochastic model uses the posterior mean and no z-dropout: nothing is random.

        With ``ego_warp`` the frames are placed and moved by the true positions of the car
        (its predicted states still feed the state encoder and are scored by the state loss):
        the image pathway learns the others' motion only. Moved by the predicted positions,
        every spike of the state error misplaced the whole image and the decoder learned to
        compensate: the image error rose from 0.0076 to 0.0125 over 700 steps.
        """
        cfg = self.config
        n = cfg.n_cond
        images = as_float_images(images)
        b, t_all = images.shape[:2]
        t_pred = t_all - n
        if t_pred < 1:
            raise ValueError(f"windows of {t_all} frames leave nothing to predict after {n}")
        hist = _history_dtype(images.device)
        frames = list(images[:, :n].to(hist).unbind(1))  # n_cond x (B, C, H, W)
        last = images[:, n - 1]  # (B, C, H, W)
        sharp = cfg.ego_warp and cfg.sharp_canvas
        canvas, carry = last, last.new_zeros(b, 2)
        past = states[:, :n]  # (B, n_cond, 4)
        predicted = []
        image_mse = state_mse = kl = prior_used = 0.0
        for t in range(n, t_all):
            target_image, target_state = images[:, t], states[:, t]
            h = self.encode(torch.stack(frames[-n:], 1), past, states[:, t - n:t])  # (B, F, h, w)
            z = None
            if cfg.stochastic:
                mu, logvar = self.posterior_params(h, target_image, target_state, states[:, t - 1])
                if self.training:
                    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()  # (B, n_z)
                else:  # evaluation: the posterior mean, no random draw
                    z = mu
                kl = kl + 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()
                if self.training and cfg.z_dropout > 0:
                    use_prior = torch.rand(b, 1, device=z.device) < cfg.z_dropout  # (B, 1)
                    z = torch.where(use_prior, torch.randn_like(z), z)
                    prior_used = prior_used + use_prior.float().mean()
            shift = self.ego_shift(states[:, t - 1], target_state) if cfg.ego_warp else None
            if sharp:
                last, state, canvas, carry = self.decode_sharp(h, canvas, carry, past[:, -1], actions[:, t - 1],
                                                               z, shift, straight_through=True)
            else:
                last, state = self.decode(h, last, past[:, -1], actions[:, t - 1], z, shift,
                                          straight_through=True)
            image_mse = image_mse + F.mse_loss(last, target_image)
            if return_images:
                predicted.append(last)
            state_mse = state_mse + F.mse_loss(state, target_state)
            frames.append((last if feedback_gradient else last.detach()).to(hist))
            past = torch.cat([past[:, 1:], state[:, None]], 1)
        image_mse, state_mse, kl = image_mse / t_pred, state_mse / t_pred, kl / t_pred
        loss = image_mse + state_mse + cfg.beta * kl
        metrics = {"loss": loss, "image_mse": image_mse, "state_mse": state_mse}
        if cfg.stochastic:
            metrics["kl"] = kl
            metrics["z_prior_fraction"] = torch.as_tensor(prior_used / t_pred)
        metrics = {k: v.detach() for k, v in metrics.items()}
        if return_images:  # the predicted images (B, T, C, H, W), for a loss on them
            return loss, metrics, torch.stack(predicted, 1)
        return loss, metrics

    # ------------------------------------------------------------------ checkpoints
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def load_deterministic(self, state_dict: dict) -> list:
        """Warm start from a deterministic model: copy every weight it has (all but the
        posterior and the z projection). Returns the names left at their initialisation."""
        own = self.state_dict()
        shared = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
        self.load_state_dict(shared, strict=False)
        return sorted(set(own) - set(shared))


def _history_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype when autocast is on for ``device``, else float32."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except (TypeError, AttributeError):  # torch < 2.4: no per-device query
        pass
    return torch.float32


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float32 in [0, 1]; float images pass through."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images

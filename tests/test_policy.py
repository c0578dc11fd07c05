"""Policy learning: costs with known answers, gradients through the unroll, the uncertainty
cost, tiny end-to-end training of every method, evaluation and the viewer with a policy."""

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.costs import image_costs, speed_of
from policy.net import PolicyConfig, PolicyNet
from policy.rollout import CostWeights, discounted, rollout
from traffic_sim import costs as sim_costs
from traffic_sim.costs import ALONG_M, SAFE_MARGIN, SAFE_TIME
from traffic_sim.raster import IMAGE_H, IMAGE_W, LANES_CHANNEL, OFFROAD_CHANNEL, PX_PER_M, VEHICLES_CHANNEL
from world_model.model import ForwardModel, ModelConfig

TINY = ModelConfig(n_cond=4, n_feature=16, n_hidden=32, n_z=4)
LENGTH, WIDTH = 4.0, 1.8  # [m] the car of the hand-built images


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def blank():
    return torch.zeros(1, 3, IMAGE_H, IMAGE_W)


def row_at(distance_ahead: float) -> int:
    """The pixel row whose centre is nearest ``distance_ahead`` metres ahead of the car."""
    return int(np.argmin(np.abs(ALONG_M - distance_ahead)))


def costs_of(img, speed):
    size = torch.tensor([[LENGTH, WIDTH]])
    c = image_costs(img, torch.tensor([speed]), size)[0]
    # the simulator's numpy costs agree on the same image
    ref = sim_costs.image_costs((img.numpy() * 255).round().astype(np.uint8), [speed], [LENGTH], [WIDTH])
    np.testing.assert_allclose(c.numpy(), [ref["proximity_cost"][0], ref["lane_cost"][0],
                                           ref["offroad_cost"][0]], atol=2e-3)
    return c


# ---------------------------------------------------------------------- costs
def test_empty_road_costs_nothing():
    assert costs_of(blank(), 10.0).tolist() == [0.0, 0.0, 0.0]


def test_car_overlapping_costs_one():
    img = blank()
    img[0, VEHICLES_CHANNEL, row_at(1.0), IMAGE_W // 2] = 1.0  # inside the car's footprint
    assert costs_of(img, 10.0)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("speed", [0.0, 5.0, 12.0])
def test_car_at_the_safe_distance_costs_nothing_and_half_way_half(speed):
    safe = SAFE_TIME * speed + SAFE_MARGIN
    for ahead, expected in ((0.5 * LENGTH + safe + 0.5, 0.0), (0.5 * LENGTH + 0.5 * safe, 0.5)):
        img = blank()
        r = row_at(ahead)
        img[0, VEHICLES_CHANNEL, r, IMAGE_W // 2] = 1.0
        exact = 1.0 - (abs(ALONG_M[r]) - 0.5 * LENGTH) / safe  # at the pixel's centre
        assert costs_of(img, speed)[0] == pytest.approx(max(min(exact, 1.0), 0.0), abs=1e-5)
        assert abs(max(min(exact, 1.0), 0.0) - expected) < 0.5 / 1.64 / safe + 1e-6
    # behind the car counts the same
    img = blank()
    img[0, VEHICLES_CHANNEL, row_at(-(0.5 * LENGTH + 0.5 * safe)), IMAGE_W // 2] = 1.0
    assert 0.3 < float(costs_of(img, speed)[0]) < 0.7


def test_cosine_learning_rate():
    from policy.train import learning_rate

    assert [learning_rate(2.0, s, 4) for s in (0, 2, 4, 9)] == pytest.approx([2.0, 1.0, 0.0, 0.0])
    assert learning_rate(2.0, 1, 4) == pytest.approx(1.0 + 2 ** -0.5)


def test_rear_weight_scales_the_mask_behind_the_car_only():
    size = torch.tensor([[LENGTH, WIDTH]])
    speed = torch.tensor([10.0])
    behind, ahead = blank(), blank()
    behind[0, VEHICLES_CHANNEL, row_at(-5.0), IMAGE_W // 2] = 1.0
    ahead[0, VEHICLES_CHANNEL, row_at(5.0), IMAGE_W // 2] = 1.0
    for img in (behind, ahead):
        full = image_costs(img, speed, size)[0, 0]
        half = image_costs(img, speed, size, rear_weight=0.5)[0, 0]
        assert 0.2 < float(full) < 1.0
        assert float(half) == pytest.approx(float(full) * (0.5 if img is behind else 1.0), rel=1e-6)


def test_prox_reach_sets_how_far_sideways_the_mask_counts():
    from traffic_sim.costs import PROX_REACH
    from traffic_sim.roads import LANE_WIDTH

    size = torch.tensor([[LENGTH, WIDTH]])
    speed = torch.tensor([10.0])
    beside, ahead = blank(), blank()
    col = int(np.argmin(np.abs((np.arange(IMAGE_W) + 0.5 - 0.5 * IMAGE_W) / PX_PER_M - LANE_WIDTH)))
    lateral = (col + 0.5 - 0.5 * IMAGE_W) / PX_PER_M  # [m] a pixel alongside, one lane to the right
    beside[0, VEHICLES_CHANNEL, row_at(0.0), col] = 1.0
    ahead[0, VEHICLES_CHANNEL, row_at(5.0), IMAGE_W // 2] = 1.0
    full = image_costs(beside, speed, size)[0, 0]
    assert float(full) == pytest.approx(1.0 - (lateral - 0.5 * WIDTH) / PROX_REACH, abs=1e-5)
    assert float(image_costs(beside, speed, size, reach=PROX_REACH)[0, 0]) == pytest.approx(float(full))
    # half a lane: the next lane's vehicle is out of reach, the one ahead in the car's lane is not
    assert float(image_costs(beside, speed, size, reach=0.5 * LANE_WIDTH)[0, 0]) == 0.0
    assert float(image_costs(ahead, speed, size, reach=0.5 * LANE_WIDTH)[0, 0]) == \
        pytest.approx(float(image_costs(ahead, speed, size)[0, 0]))


def test_offroad_ahead_costs_a_road_that_ends_and_steers_towards_the_lane_that_goes_on():
    from policy.costs import ROAD_END_REACH
    from traffic_sim.costs import ACROSS_M
    from traffic_sim.roads import LANE_WIDTH

    size = torch.tensor([[LENGTH, WIDTH]])
    first = row_at(8.0)  # the road ends here (rows run from ahead to behind)
    a = float(ALONG_M[first])  # [m] ahead of the car's centre
    gone, ramp_end, edge = blank(), blank(), blank()
    gone[0, OFFROAD_CHANNEL, :first + 1] = 1.0  # every lane ends
    ramp_end[0, OFFROAD_CHANNEL, :first + 1, ACROSS_M > -0.5 * LANE_WIDTH] = 1.0  # the lane on the left goes on
    edge[0, OFFROAD_CHANNEL, :, ACROSS_M > 0.5 * LANE_WIDTH] = 1.0  # a road's edge alongside, all the way

    def offroad(img, speed, **kw):
        offset = torch.zeros(1, 2, requires_grad=True)
        c = image_costs(img, torch.tensor([speed]), size, offset, **kw)[0, 2]
        c.backward()
        return float(c.detach()), offset.grad[0].tolist()

    for img in (gone, ramp_end, edge):  # the method's cost: nothing under the car
        assert offroad(img, 10.0)[0] == 0.0
    # 1 s at 10 m/s + the reach at a standstill: the end's ramp, with all of the triangle off the road
    cost, (d_along, d_across) = offroad(gone, 10.0, offroad_ahead=1.0)
    assert cost == pytest.approx(1.0 - (a - 0.5 * LENGTH) / (10.0 + ROAD_END_REACH), abs=1e-5)
    assert d_along == pytest.approx(1.0 / (10.0 + ROAD_END_REACH), rel=1e-4)  # nearer costs more
    assert d_across == 0.0  # the whole road ends: nowhere to steer
    assert offroad(gone, 0.0, offroad_ahead=1.0)[0] == pytest.approx(1.0 - (a - 0.5 * LENGTH) / ROAD_END_REACH,
                                                                     abs=1e-5)  # standing still
    assert offroad(edge, 10.0, offroad_ahead=1.0) == (0.0, [0.0, 0.0])  # an edge that goes on costs nothing
    cost, (d_along, d_across) = offroad(ramp_end, 10.0, offroad_ahead=1.0)
    assert 0.0 < cost < offroad(gone, 10.0, offroad_ahead=1.0)[0]
    assert d_along > 0.0 and d_across > 0.0  # moving left, towards the lane that goes on, costs less


def test_lane_and_offroad_costs():
    img = blank()
    img[0, LANES_CHANNEL, :, IMAGE_W // 2] = 1.0  # a marking under the car's centre line
    assert costs_of(img, 10.0)[1] > 0.7
    img = blank()
    img[0, LANES_CHANNEL, :, 0] = 1.0  # the marking two lanes away
    img[0, OFFROAD_CHANNEL, :, -1] = 1.0
    assert costs_of(img, 10.0).tolist() == [0.0, 0.0, 0.0]
    img[0, OFFROAD_CHANNEL, :, IMAGE_W // 2] = 1.0
    assert costs_of(img, 10.0)[2] > 0.7


def test_speed_is_detached_and_read_from_normalised_states():
    stats = {"state_mean": [0.0, 100.0, 0.0, 10.0], "state_std": [2.0, 50.0, 1.0, 4.0]}
    states = torch.tensor([[0.0, 0.0, 3.0, 0.0]], requires_grad=True)  # vx = 3, vy = 10 m/s
    speed = speed_of(states, stats)
    assert float(speed.detach()) == pytest.approx(np.hypot(3.0, 10.0))
    img = blank()
    img[0, VEHICLES_CHANNEL, row_at(6.0), IMAGE_W // 2] = 1.0
    c = image_costs(img, speed, torch.tensor([[LENGTH, WIDTH]]))
    assert not c.requires_grad  # the image is a constant; the speed is detached


def test_moving_the_mask_is_moving_the_car():
    """A car 8 m ahead, seen from a car moved 2 m forward, costs what a car 6 m ahead costs;
    moved sideways towards a car in the next lane, the cost rises."""
    speed, size = torch.tensor([5.0]), torch.tensor([[LENGTH, WIDTH]])
    far, near = blank(), blank()
    far[0, VEHICLES_CHANNEL, row_at(8.0), IMAGE_W // 2] = 1.0
    near[0, VEHICLES_CHANNEL, row_at(8.0) + 3, IMAGE_W // 2] = 1.0  # 3 px nearer
    shift = 3 / PX_PER_M  # [m] 3 px
    moved = image_costs(far, speed, size, torch.tensor([[shift, 0.0]]))
    assert float(moved[0, 0]) == pytest.approx(float(image_costs(near, speed, size)[0, 0]), abs=1e-4)
    offset = torch.zeros(1, 2, requires_grad=True)
    image_costs(far, speed, size, offset)[0, 0].backward()
    assert offset.grad[0, 0] == pytest.approx(1.0 / (SAFE_TIME * 5.0 + SAFE_MARGIN))  # the ramp's slope
    right = blank()
    right[0, VEHICLES_CHANNEL, row_at(0.0), IMAGE_W // 2 + 5] = 1.0  # a car in the next lane, to the right
    offset = torch.zeros(1, 2, requires_grad=True)
    image_costs(right, speed, size, offset)[0, 0].backward()
    assert offset.grad[0, 1] > 0 and offset.grad[0, 0] == 0  # alongside: only moving sideways matters
    lane = blank()
    lane[0, LANES_CHANNEL, :, IMAGE_W // 2 + 2] = 1.0  # a marking to the right
    offset = torch.zeros(1, 2, requires_grad=True)
    image_costs(lane, speed, size, offset)[0, 1].backward()
    assert offset.grad[0, 1] > 0


def test_rear_speed_sets_the_safe_distance_behind_only():
    """A stopped car with a vehicle 6 m behind and one 6 m ahead: by its own speed both are
    beyond its safe distance (1 m); with the traffic behind at 5 m/s, the one behind costs
    1 - (6 - L/2) / (1.5 s x 5 m/s + 1 m) and the one ahead still nothing."""
    size = torch.tensor([[LENGTH, WIDTH]])
    for d in (-6.0, 6.0):
        img = blank()
        img[0, VEHICLES_CHANNEL, row_at(d), IMAGE_W // 2] = 1.0
        d_px = abs(ALONG_M[row_at(d)])
        own = image_costs(img, torch.tensor([0.0]), size)[0, 0]
        rear = image_costs(img, torch.tensor([0.0]), size, rear_speed=torch.tensor([5.0]))[0, 0]
        assert own == 0.0
        expected = 1.0 - (d_px - 0.5 * LENGTH) / (SAFE_TIME * 5.0 + SAFE_MARGIN) if d < 0 else 0.0
        assert rear.item() == pytest.approx(expected, abs=1e-6)


def test_kinematic_step_is_the_same_in_torch():
    from traffic_sim.sim import kinematic_step

    args = [np.array([1.0, 2.0]), np.array([5.0, 6.0]), np.array([0.1, 0.0]), np.array([0.995, 1.0]),
            np.array([3.0, 0.1]), np.array([1.0, -2.0]), np.array([0.01, -0.02])]
    ref = kinematic_step(*args)
    out = kinematic_step(*[torch.tensor(a) for a in args])
    for r, o in zip(ref, out):
        np.testing.assert_allclose(o.numpy(), r, rtol=1e-12)


class _StillModel:
    """A stand-in forward model that always predicts the same image: a car ahead."""

    def __init__(self, image, state):
        self.config = dataclasses.replace(TINY, stochastic=False)
        self.image, self.state = image, state

    def train(self, mode=True):
        return self

    def predict(self, hist, states, action, z):
        b = len(hist)
        return self.image.expand(b, -1, -1, -1), self.state.expand(b, -1)


def _car_ahead_at_8m():
    """A model that always predicts a car 8 m ahead, a car at 5 m/s straight along the road,
    and statistics that leave states and actions as they are."""
    img = blank()
    img[0, VEHICLES_CHANNEL, row_at(8.0), IMAGE_W // 2] = 1.0
    stats = {"state_mean": [0.0, 0.0, 0.0, 0.0], "state_std": [1.0, 1.0, 1.0, 1.0],
             "action_mean": [0.0, 0.0], "action_std": [1.0, 1.0]}
    state = torch.tensor([[0.0, 0.0, 0.0, 5.0]])
    return _StillModel(img, state), state, stats


def test_kinematic_gradient_of_the_cost_has_its_closed_form():
    """Straight ahead at 5 m/s with a car 8 m ahead in every predicted image: the cost after
    step t moves with the car's position, which the acceleration at step 0 changes by
    dt^2 t (explicit Euler); so d cost / d a_0 = slope x sum_t gamma^t dt^2 t / T."""
    from policy.rollout import CostWeights, discounted, rollout
    from traffic_sim.sim import DT

    model, state, stats = _car_ahead_at_8m()
    actions = torch.zeros(1, 6, 2, requires_grad=True)
    w = CostWeights(lane=0.0, offroad=0.0)
    hist = torch.zeros(1, TINY.n_cond, 3, IMAGE_H, IMAGE_W)
    r = rollout(model, lambda h, s, t: actions[:, t], hist, state.expand(1, TINY.n_cond, 4).clone(),
                torch.tensor([[LENGTH, WIDTH]]), 6, stats, w, kinematic_gradient=True)
    discounted(w.combine(r["costs"]), w.gamma).backward()
    slope = 1.0 / (SAFE_TIME * 5.0 + SAFE_MARGIN)
    expected = sum(w.gamma ** t * slope * DT ** 2 * t for t in range(6)) / 6
    assert actions.grad[0, 0, 0] == pytest.approx(expected, rel=1e-4)
    assert actions.grad[0, -1, 0] == 0  # the last action moves the car only after the last image
    assert actions.grad[0, :, 1].abs().max() < 1e-6  # the car ahead is straight ahead
    # through the pixels, an image that does not answer the actions gives no gradient at all
    actions.grad = None
    r = rollout(model, lambda h, s, t: actions[:, t], hist, state.expand(1, TINY.n_cond, 4).clone(),
                torch.tensor([[LENGTH, WIDTH]]), 6, stats, w)
    assert not r["costs"].requires_grad


def test_shift_images_by_whole_pixels_is_a_roll_with_an_empty_edge():
    from policy.rollout import shift_images

    img = torch.rand(2, 3, IMAGE_H, IMAGE_W)
    # car 1: 3 px ahead and 2 px to the right of the centre; car 2: 1 px behind, 1 px left
    out = shift_images(img, torch.tensor([[3.0, 2.0], [-1.0, -1.0]]) / PX_PER_M)
    ref0 = torch.zeros_like(img[0])
    ref0[:, 3:, :-2] = img[0, :, :-3, 2:]  # what was 3 rows up and 2 columns right
    ref1 = torch.zeros_like(img[1])
    ref1[:, :-1, 1:] = img[1, :, 1:, :-1]
    torch.testing.assert_close(out[0], ref0, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], ref1, atol=1e-5, rtol=0)


def test_separated_rollout_places_the_car_among_a_world_that_does_not_react():
    """A car 8 m ahead in every predicted image (the world along the recorded car's path,
    which keeps its speed: expert action 0); the policy's car accelerates at 1 m/s^2. After
    step t it is sum_{s<t} s dt^2 = dt^2 t(t+1)/2 m ahead of the recorded car: the cost is the
    mask at 8 m minus that, and its gradient with respect to the first action is that of the
    offset; the images the policy sees are the predictions moved back by the offset."""
    from policy.rollout import rollout_separated
    from traffic_sim.sim import DT

    model, state, stats = _car_ahead_at_8m()
    actions = torch.tensor([[[1.0, 0.0]] * 6], requires_grad=True)
    seen = []

    def actor(hist, states, t):
        seen.append(states[:, -1].detach())
        return actions[:, t]

    hist = torch.zeros(1, TINY.n_cond, 3, IMAGE_H, IMAGE_W)
    r = rollout_separated(model, actor, hist, state.expand(1, TINY.n_cond, 4).clone(),
                          torch.tensor([[LENGTH, WIDTH]]), 6, stats, torch.zeros(1, 6, 2))
    ahead = np.array([DT ** 2 * t * (t + 1) / 2 for t in range(6)])
    np.testing.assert_allclose(r["offsets"][0, :, 0].detach().numpy(), ahead, atol=1e-6)
    assert r["offsets"][0, :, 1].abs().max() < 1e-9
    speed = 5.0 + DT * np.arange(1, 7)  # after each action
    pixel = ALONG_M[row_at(8.0)]
    expected = 1.0 - (pixel - ahead - 0.5 * LENGTH) / (SAFE_TIME * speed + SAFE_MARGIN)
    np.testing.assert_allclose(r["costs"][0, :, 0].detach().numpy(), expected, rtol=1e-5)
    r["costs"][0, -1, 0].backward()
    # d cost_5 / d a_0 = d offset_5 / d a_0 / safe distance = 5 dt^2 / safe distance
    assert actions.grad[0, 0, 0] == pytest.approx(5 * DT ** 2 / (SAFE_TIME * speed[-1] + SAFE_MARGIN), rel=1e-4)
    # the policy sees its own speed, and the car ahead closer by the offset
    assert seen[-1][0, 3] == pytest.approx(speed[-2])
    row = torch.argmax(r["images"][0, -1, VEHICLES_CHANNEL, :, IMAGE_W // 2]).item()
    assert ALONG_M[row] == pytest.approx(pixel - ahead[-1], abs=0.5 / PX_PER_M)


def test_separated_rollout_from_a_displaced_start():
    """The same world; the car starts 2 m ahead of the recorded car, 0.5 m to its right and
    1 m/s faster, and does not accelerate: after step t it is 2 + (t + 1) dt m ahead; the
    history it sees shows the car ahead 2 m closer and half a metre to the left, and its own
    speed is 6 m/s."""
    from policy.rollout import rollout_separated
    from traffic_sim.sim import DT

    model, state, stats = _car_ahead_at_8m()
    seen = []

    def actor(hist, states, t):
        seen.append((hist[:, -1].detach(), states[:, -1].detach()))
        return torch.zeros(1, 2)

    hist = model.image.expand(1, TINY.n_cond, 3, IMAGE_H, IMAGE_W).clone()
    r = rollout_separated(model, actor, hist, state.expand(1, TINY.n_cond, 4).clone(),
                          torch.tensor([[LENGTH, WIDTH]]), 6, stats, torch.zeros(1, 6, 2),
                          start=torch.tensor([[2.0, 0.5, 1.0]]))
    ahead = 2.0 + DT * np.arange(1, 7)
    np.testing.assert_allclose(r["offsets"][0, :, 0].numpy(), ahead, atol=1e-5)
    np.testing.assert_allclose(r["offsets"][0, :, 1].numpy(), 0.5, atol=1e-6)
    first_image, first_state = seen[0]
    assert first_state[0].tolist() == pytest.approx([0.5, 2.0, 0.0, 6.0])
    vehicles = first_image[0, VEHICLES_CHANNEL]
    rows, cols = torch.nonzero(vehicles > 0, as_tuple=True)
    weights = vehicles[rows, cols]
    centre_row = float((rows.float() * weights).sum() / weights.sum())
    centre_col = float((cols.float() * weights).sum() / weights.sum())
    assert centre_row == pytest.approx(row_at(8.0) + 2.0 * PX_PER_M, abs=0.05)  # closer: lower in the image
    assert centre_col == pytest.approx(IMAGE_W // 2 - 0.5 * PX_PER_M, abs=0.05)  # to the left
    speed = 6.0
    pixel = ALONG_M[row_at(8.0)]
    costs = r["costs"][0, :, 0].numpy()
    assert costs[0] == pytest.approx(1.0 - (pixel - ahead[0] - 0.5 * LENGTH) / (SAFE_TIME * speed + SAFE_MARGIN),
                                     rel=1e-4)


# ---------------------------------------------------------------------- unrolling
def randomised(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def start(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (b, TINY.n_cond, 3, IMAGE_H, IMAGE_W), dtype=torch.uint8, generator=g),
            torch.randn(b, TINY.n_cond, 4, generator=g), torch.tensor([[4.5, 1.9]] * b))


STATS = {"state_mean": [0.0, 0.0, 0.0, 10.0], "state_std": [3.0, 100.0, 0.5, 4.0],
         "action_mean": [0.0, 0.0], "action_std": [1.0, 0.01]}


@pytest.mark.parametrize("stochastic", [False, True])
def test_gradients_reach_the_policy_through_a_multi_step_unroll(stochastic):
    model = randomised(ForwardModel(dataclasses.replace(TINY, stochastic=stochastic))).requires_grad_(False)
    net = randomised(PolicyNet(PolicyConfig(n_cond=4, n_feature=16, n_hidden=32)), seed=2)
    images, states, size = start()
    r = rollout(model, lambda h, s, t: net(h, s), images, states, size, 4, STATS, CostWeights())
    assert r["images"].shape == (3, 4, 3, IMAGE_H, IMAGE_W) and r["costs"].shape == (3, 4, 3)
    # only the last step's predicted image: its gradient must cross 3 earlier predictions
    loss = r["images"][:, -1].mean() + r["states"][:, -1].pow(2).mean()
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in model.parameters())  # the model stays fixed


@pytest.mark.parametrize("ego_warp, sharp", [(True, False), (False, False), (True, True)])
def test_policy_gradient_of_the_cost_agrees_with_finite_differences(ego_warp, sharp):
    """The gradient a policy is trained on is the true one: along it, the cost of a 4-step
    unroll changes as much as it predicts (a model whose image clamp passed gradients
    straight through gave gradients hundreds of times too large, some uphill)."""
    model = randomised(ForwardModel(dataclasses.replace(TINY, ego_warp=ego_warp, sharp_canvas=sharp)))
    model.requires_grad_(False).eval()
    images, states, size = start()
    images = images // 200 * 255  # sparse, saturated pixels, as in real state images
    states[..., 2:] = 0.0  # at the mean velocity (10 m/s)
    weights = CostWeights()

    def cost(actions):
        r = rollout(model, lambda h, s, t: actions[:, t], images, states, size, 4, STATS, weights)
        return discounted(weights.combine(r["costs"]), 0.99)

    for seed in range(3):
        base = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(seed))
        actions = base.clone().requires_grad_(True)
        cost(actions).backward()
        g = actions.grad
        assert g.norm() > 0
        eps = 1e-2
        with torch.no_grad():
            fd = (cost(base + eps * g / g.norm()) - cost(base - eps * g / g.norm())) / (2 * eps)
        assert float(fd) == pytest.approx(float(g.norm()), rel=0.2), seed


def test_rollout_of_a_sharp_canvas_model_is_its_unroll():
    """The policy's rollout carries the model's canvas from step to step as its unroll does."""
    model = randomised(ForwardModel(dataclasses.replace(TINY, sharp_canvas=True))).requires_grad_(False).eval()
    images, states, size = start()
    actions = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(3))
    r = rollout(model, lambda h, s, t: actions[:, t], images, states, size, 5, STATS, CostWeights())
    pi, ps = model.unroll(images, states, actions)
    assert torch.allclose(r["images"], pi, atol=1e-6) and torch.allclose(r["states"], ps, atol=1e-6)
    blurred, _ = model.unroll(images, states, actions, sharp=False)
    assert not torch.allclose(blurred, pi, atol=1e-3)


def test_uncertainty_pass_is_batched_and_its_mean_drives_the_unroll():
    model = randomised(ForwardModel(dataclasses.replace(TINY, dropout=0.3))).requires_grad_(False)
    images, states, size = start(b=2)
    calls = []
    orig = model.predict

    def counting(*args, **kw):
        calls.append(args[0].shape[0])
        return orig(*args, **kw)

    model.predict = counting
    u_stats = {"mean": [0.0, 0.0, 0.0], "std": [1e-9, 1e-9, 1e-9]}
    r = rollout(model, lambda h, s, t: torch.zeros(2, 2), images, states, size, 3, STATS,
                CostWeights(), k_dropout=5, u_stats=u_stats)
    assert calls == [10, 10, 10]  # K x B samples in one pass per step, not K unrolls
    assert r["variances"].shape == (2, 3, 3) and (r["variances"] > 0).all()
    assert (r["uncertainty"] > 0).all()
    assert discounted(r["uncertainty"], 0.99).ndim == 0


@pytest.mark.parametrize("stochastic", [False, True])
def test_separated_uncertainty_is_one_batched_pass_of_one_step_predictions(stochastic):
    """With the world separated from the car, the uncertainty is measured every u_stride steps
    (here 0, 2, 4 of 6) from what the car saw: one batched pass of K x B x 3 one-step
    predictions after the unroll (the world's unroll predicts B at a time, no dropout); its
    cost has a gradient with respect to the actions at the measured steps, and only them."""
    from policy.rollout import rollout_separated

    cfg = dataclasses.replace(TINY, dropout=0.3, stochastic=stochastic)
    model = randomised(ForwardModel(cfg)).requires_grad_(False)
    images, states, size = start(b=2)
    actions = torch.zeros(2, 6, 2, requires_grad=True)
    calls = []
    orig = model.predict

    def counting(*args, **kw):
        calls.append((args[0].shape[0], model.training))
        return orig(*args, **kw)

    model.predict = counting
    u_stats = {"mean": [0.0, 0.0, 0.0], "std": [1e-9, 1e-9, 1e-9]}
    r = rollout_separated(model, lambda h, st, t: actions[:, t], images, states, size, 6, STATS,
                          torch.zeros(2, 6, 2), k_dropout=5, u_stats=u_stats, u_stride=2)
    assert calls == [(2, False)] * 6 + [(5 * 2 * 3, True)]
    assert r["variances"].shape == (2, 3, 3) and (r["variances"] > 0).all()
    assert r["uncertainty"].shape == (2, 3) and (r["uncertainty"] > 0).all()
    r["uncertainty"].sum().backward()
    grad = actions.grad.abs().sum(-1)[0]  # per step
    assert (grad[[0, 2, 4]] > 0).all()  # through the measured actions only, not the states
    assert (grad[[1, 3, 5]] == 0).all()
    # through the states as well: every action before the last measured step counts (it moved the
    # car), the last one measures nothing
    actions.grad = None
    r = rollout_separated(model, lambda h, st, t: actions[:, t], images, states, size, 6, STATS,
                          torch.zeros(2, 6, 2), k_dropout=5, u_stats=u_stats, u_stride=2, u_through_states=True)
    r["uncertainty"].sum().backward()
    grad = actions.grad.abs().sum(-1)[0]
    assert (grad[:5] > 0).all() and grad[5] == 0
    # without K, no variances and no dropout pass
    calls.clear()
    r = rollout_separated(model, lambda h, st, t: actions[:, t].detach(), images, states, size, 6, STATS,
                          torch.zeros(2, 6, 2))
    assert "variances" not in r and len(calls) == 6


# ---------------------------------------------------------------------- trained tiny models
def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small dataset from one minute of generated traffic, and tiny deterministic and
    stochastic models trained on it, under a private artifacts folder."""
    from data.build import BuildConfig, build_dataset
    from traffic_sim.commands import GenerateConfig, generate_command
    from world_model.train import TrainConfig, train_model

    root = tmp_path_factory.mktemp("policy")
    traffic = generate_command(GenerateConfig(out=str(root / "traffic"), minutes=1.0, seed=2, quiet=True))
    dataset = build_dataset(BuildConfig(trajectories=str(traffic), out=str(root / "dataset"),
                                        max_episodes=80, quiet=True))
    models = {}
    for kind in ("deterministic", "stochastic"):
        out = root / "artifacts" / "models" / f"{kind}-tiny"
        models[kind] = train_model(TrainConfig(model=kind, preset="tiny", dataset=str(dataset),
                                               out=str(out), steps=150, quiet=True,
                                               warm_start=str(models.get("deterministic")) if kind == "stochastic" else None))
    return {"root": root, "traffic": traffic, "dataset": dataset, **models}


def test_uncertainty_is_higher_for_unusual_actions_than_for_the_expert(trained):
    from data.dataset import Dataset, WindowSampler
    from policy.rollout import rollout_separated
    from world_model.train import load_model

    model, ckpt = load_model(trained["deterministic"])
    ds = Dataset.open(trained["dataset"])
    batch = WindowSampler(ds, "train", 4, 3, batch_size=32, seed=5).sample()
    n = model.config.n_cond
    images, states, size = batch["images"][:, :n], batch["states"][:, :n], batch["car_size"]
    expert = batch["actions"][:, n - 1:n + 2]
    swerve = torch.tensor([-3.0, 3.0]).expand(32, 3, 2)  # hard braking and steering
    torch.manual_seed(0)
    var = {}
    for name, actions in (("expert", expert), ("unusual", swerve)):
        r = rollout(model, lambda h, s, t, a=actions: a[:, t], images, states, size, 3,
                    ckpt["stats"], CostWeights(), k_dropout=10)
        var[name] = r["variances"].mean((0, 1))  # (3,) image, state, cost variances
    assert var["unusual"][1] > 2 * var["expert"][1], var  # the state prediction
    assert var["unusual"].sum() > var["expert"].sum(), var
    # the same along the car's own path with the world separated from it
    for name, actions in (("expert", expert), ("unusual", swerve)):
        r = rollout_separated(model, lambda h, s, t, a=actions: a[:, t], images, states, size, 3,
                              ckpt["stats"], expert, k_dropout=10, u_stride=1)
        var[name] = r["variances"].mean((0, 1))
    assert var["unusual"][1] > 2 * var["expert"][1], var
    assert var["unusual"].sum() > var["expert"].sum(), var


def test_uncertainty_is_higher_between_lanes_than_on_the_expert_path(trained):
    """The model is less sure of what comes next when the car stands where no recorded car
    stood, half a lane to the side (on the lane marking), than where the expert was: the
    uncertainty that ``--uncertainty-through-states`` teaches the policy to keep out of (here
    in the variance of the predicted cost: the image's own variance is not higher on a model this
    small)."""
    from data.dataset import Dataset, WindowSampler
    from policy.rollout import displace_start, step_variances
    from world_model.train import load_model

    model, ckpt = load_model(trained["deterministic"])
    ds = Dataset.open(trained["dataset"])
    batch = WindowSampler(ds, "train", 4, 1, batch_size=64, seed=6).sample()
    n = model.config.n_cond
    images, states, size = batch["images"][:, :n].float() / 255.0, batch["states"][:, :n], batch["car_size"]
    action = batch["actions"][:, n - 1]
    torch.manual_seed(0)
    var = {}
    for name, across in (("expert", 0.0), ("between lanes", 1.8)):
        h, s = displace_start(images, states, torch.tensor([0.0, across, 0.0]).expand(64, 3), ckpt["stats"])
        with torch.no_grad():
            var[name] = step_variances(model, h, s, action, size, ckpt["stats"], CostWeights(), 10).mean(0)
    assert var["between lanes"][2] > 1.5 * var["expert"][2], var  # the cost
    assert var["between lanes"].sum() > var["expert"].sum(), var


@pytest.mark.parametrize("method", ["il", "mper", "vg", "svg", "mpur", "teach"])
def test_every_method_trains_and_keeps_its_best_checkpoint(trained, method, monkeypatch):
    import csv

    from policy.driver import load_policy
    from policy.train import TrainPolicyConfig, train_policy

    monkeypatch.setenv("PPUU_ARTIFACTS", str(trained["root"] / "artifacts"))
    out = train_policy(TrainPolicyConfig(method=method, preset="tiny", steps=8, quiet=True,
                                         dataset=str(trained["dataset"]), val_episodes=3))
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert int(rows[-1]["step"]) == 8 and rows[-1]["val_success"] != ""
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    net, ckpt = load_policy(out)  # best.pt
    assert ckpt["method"] == method and (out / "checkpoint.pt").is_file()
    assert (ckpt["model_path"] is None) == (method in ("il", "teach"))
    if method == "mpur":
        assert ckpt["u_stats"]["k_dropout"] == 2 and float(rows[-1]["uncertainty"]) >= 0
        assert list(trained["stochastic"].parent.glob("uncertainty-k2-h4.json"))


@pytest.mark.parametrize("ema", [None, 0.5])
def test_resume_continues_exactly(trained, tmp_path, ema):
    from policy.driver import load_policy
    from policy.train import TrainPolicyConfig, train_policy

    common = dict(method="svg", preset="tiny", quiet=True, model=str(trained["stochastic"]),
                  val_episodes=0, ema=ema)
    full = train_policy(TrainPolicyConfig(out=str(tmp_path / "full"), steps=6, **common))
    part = train_policy(TrainPolicyConfig(out=str(tmp_path / "part"), steps=3, **common))
    train_policy(TrainPolicyConfig(out=str(tmp_path / "part"), steps=6, resume=True, **common))
    a, ca = load_policy(full / "checkpoint.pt")
    b, cb = load_policy(part / "checkpoint.pt")
    assert_same_weights(a, b)
    if ema is None:
        assert "policy_raw" not in ca
    else:  # the average drives; the last weights are kept to go on training from
        for k, x in cb["policy_raw"].items():
            assert torch.equal(x, ca["policy_raw"][k]), k
        assert any(not torch.equal(x, ca["policy_raw"][k]) for k, x in ca["policy"].items())


def test_several_models_take_turns_step_by_step(trained, tmp_path, monkeypatch):
    """--model a,b: step k trains among model (k mod 2)'s traffic, each with its own
    uncertainty scale; the checkpoint keeps both, and --resume goes on with the same turns."""
    from policy import train as tr
    from policy.train import TrainPolicyConfig, train_policy
    from traffic_sim.cli_util import UserError
    from world_model.train import load_checkpoint, save_checkpoint

    def fingerprint(weights: dict) -> float:
        return round(sum(float(v.double().sum()) for v in weights.values() if v.is_floating_point()), 3)

    first = trained["deterministic"]
    ckpt = load_checkpoint(first)
    ckpt["model"] = {k: v * 1.5 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    second = tmp_path / "other" / "checkpoint.pt"
    second.parent.mkdir()
    save_checkpoint(second, ckpt)

    seen = []  # (fingerprint of the model's weights, the uncertainty scale it came with)
    real = tr.policy_loss

    def spy(method, net, model, batch, preset, stats, u_stats):
        seen.append((fingerprint(model.state_dict()), id(u_stats)))
        return real(method, net, model, batch, preset, stats, u_stats)

    monkeypatch.setattr(tr, "policy_loss", spy)
    common = dict(method="mpur", preset="tiny", quiet=True, val_episodes=0, model=f"{first},{second.parent}")
    out = train_policy(TrainPolicyConfig(out=str(tmp_path / "full"), steps=5, **common))
    a, b = (fingerprint(load_checkpoint(f)["model"]) for f in (first, second))
    assert a != b
    assert [x[0] for x in seen] == [a, b, a, b, a]
    assert len({x[1] for x in seen}) == 2  # each model's own statistics
    assert (second.parent / "uncertainty-k2-h4.json").is_file()
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert [Path(p) for p in saved["model_paths"]] == [first.resolve(), second.resolve()]
    assert saved["model_path"] == saved["model_paths"][0] and len(saved["u_stats_all"]) == 2
    # the statistics beside each model are its own, told apart by the weights, not the step
    files = [json.loads((f.parent / "uncertainty-k2-h4.json").read_text()) for f in (first, second)]
    assert files[0]["model_step"] == files[1]["model_step"] == 150
    assert [f["model_digest"] for f in files] == saved["model_digests"] and files[0] != files[1]
    (second.parent / "uncertainty-k2-h4.json").write_text(json.dumps(files[0]))  # stale: another model's
    train_policy(TrainPolicyConfig(out=str(tmp_path / "again"), steps=0, **{**common, "model": str(second)}))
    assert json.loads((second.parent / "uncertainty-k2-h4.json").read_text()) == files[1]

    seen.clear()
    part = train_policy(TrainPolicyConfig(out=str(tmp_path / "part"), steps=3, **common))
    train_policy(TrainPolicyConfig(out=str(tmp_path / "part"), steps=5, resume=True, method="mpur",
                                   preset="tiny", quiet=True, val_episodes=0))  # the models come from the checkpoint
    assert [x[0] for x in seen] == [a, b, a, b, a]
    resumed = torch.load(part / "checkpoint.pt", weights_only=True)
    for k, x in saved["policy"].items():
        assert torch.equal(x, resumed["policy"][k]), k
    ckpt["model"] = {k: v * 2.0 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(second, ckpt)  # the second model's file now holds other weights
    with pytest.raises(UserError, match=f"not the forward model.* trained with .*: {second}$"):
        train_policy(TrainPolicyConfig(out=str(tmp_path / "part"), steps=6, resume=True, method="mpur",
                                       preset="tiny", quiet=True, val_episodes=0))

    with pytest.raises(UserError, match="twice"):
        train_policy(TrainPolicyConfig(out=str(tmp_path / "x"), steps=1, **{**common, "model": f"{first},{first}"}))
    with pytest.raises(UserError, match="does not see what"):
        train_policy(TrainPolicyConfig(out=str(tmp_path / "y"), steps=1,
                                       **{**common, "model": f"{first},{trained['stochastic']}"}))


def test_average_weights_moves_part_of_the_way():
    from policy.train import average_weights

    avg, net = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        avg.weight.fill_(0.0), avg.bias.fill_(4.0), net.weight.fill_(1.0), net.bias.fill_(0.0)
    average_weights(avg, net, 0.75)
    assert avg.weight.tolist() == [[0.25, 0.25]] and avg.bias.tolist() == [3.0]
    average_weights(avg, net, 0.0)  # no memory: the network's weights
    assert avg.weight.tolist() == [[1.0, 1.0]] and avg.bias.tolist() == [0.0]


def test_cli_train_policy_evaluate_and_watch(trained, tmp_path, monkeypatch):
    import csv
    import subprocess
    import sys

    env = dict(os.environ, PPUU_ARTIFACTS=str(trained["root"] / "artifacts"), SDL_VIDEODRIVER="dummy",
               OMP_NUM_THREADS="1")
    run = [sys.executable, "run.py"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "p"
    r = subprocess.run(run + ["train-policy", "--method", "mpur", "--preset", "tiny", "--steps", "4",
                              "--val-episodes", "2", "--out", str(out), "--quiet"],
                       cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    csv_path = tmp_path / "eval.csv"
    r = subprocess.run(run + ["evaluate", "--policy", f"{out},no-action", "--trajectories", str(trained["traffic"]),
                              "--split", "val", "--episodes", "4", "--out", str(csv_path)],
                       cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(csv_path)))
    assert [row["policy"] for row in rows] == ["p", "no-action"]
    assert all(0.0 <= float(row["success_rate"]) <= 1.0 for row in rows)
    assert csv_path.with_suffix(".png").stat().st_size > 1000  # the bar chart
    frames = tmp_path / "frames"
    r = subprocess.run(run + ["watch", "--policy", str(out), "--trajectories", str(trained["traffic"]),
                              "--split", "val", "--record", str(frames), "--max-steps", "5"],
                       cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(list(frames.glob("*.png"))) == 5
    # bad input: one line, status 2
    r = subprocess.run(run + ["train-policy", "--method", "vg", "--preset", "tiny", "--model", str(tmp_path / "none"),
                              "--out", str(tmp_path / "vg")],
                       cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "train-model" in r.stderr
    r = subprocess.run(run + ["evaluate", "--policy", "nonsense"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown policy" in r.stderr


def test_driver_starts_from_the_recorded_history_then_appends_what_it_sees(trained):
    from policy.driver import Driver
    from traffic_sim.loading import load_scene
    from traffic_sim.sim import ReplaySimulator

    scene = load_scene(trained["traffic"])
    sim = ReplaySimulator(scene)
    tracks = scene.episodes["all"][:3]
    seen = []

    def act(images, states, size):
        seen.append(images.clone())
        return torch.zeros(len(images), 2)

    stats = {"state_mean": [0, 0, 0, 0], "state_std": [1, 1, 1, 1], "action_mean": [0.5, 0.0],
             "action_std": [1.0, 1.0]}
    driver = Driver(scene, act, stats, n_cond=4)
    cars = sim.start(tracks)
    driver.reset(cars.track)
    storage = driver.images.data_ptr(), driver.states.data_ptr()
    obs = sim.observe(cars)
    a = driver(obs, cars.state_vector(), cars)
    np.testing.assert_allclose(a, [[0.5, 0.0]] * 3)  # normalised 0 = the mean action
    np.testing.assert_array_equal(seen[0].numpy(), sim.history_images(tracks)[:, -4:])
    assert np.array_equal(seen[0][:, -1].numpy(), obs)  # the takeover frame is the last of the history
    obs = sim.step(cars, a, observe=True)
    driver(obs, cars.state_vector(), cars)
    np.testing.assert_array_equal(seen[1][:, -1].numpy(), obs)
    np.testing.assert_array_equal(seen[1][:, :-1].numpy(), seen[0][:, 1:].numpy())
    # the histories are updated in place (a new one at every step would let the process grow)
    assert (driver.images.data_ptr(), driver.states.data_ptr()) == storage
    # a car that is done is not asked for an action; the others get their own histories
    cars.done[1] = True
    obs = sim.step(cars, a, observe=True)
    a = driver(obs, cars.state_vector(), cars)
    assert len(seen[2]) == 2 and a[1].tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(seen[2][:, -1].numpy(), obs[[0, 2]])
    np.testing.assert_array_equal(seen[2][:, :-1].numpy(), seen[1][[0, 2], 1:].numpy())


def test_track_weight_adds_the_squared_distance_from_the_recorded_place(trained, monkeypatch):
    """With the car started 3 m behind the recorded car and no action, each step costs
    track_weight x (distance / 10 m)^2 more, exactly (no discount here), and that cost's
    gradient asks it to speed up."""
    from data.dataset import Dataset, WindowSampler
    from policy import rollout as ro
    from policy.train import PRESETS, TRACK_SCALE, policy_loss, with_separated
    from world_model.train import load_model

    model, ckpt = load_model(trained["deterministic"])
    ds = Dataset.open(trained["dataset"])
    batch = WindowSampler(ds, "train", 4, 4, batch_size=6, seed=3).sample()
    behind = torch.tensor([[-3.0, 0.0, 0.0]] * 6)  # along [m], across [m], speed [m/s]
    real = ro.displace_start
    monkeypatch.setattr(ro, "displace_start", lambda images, states, start, stats: real(images, states, behind, stats))
    preset = dataclasses.replace(with_separated(PRESETS["tiny"]), world="recorded", weights=CostWeights(gamma=1.0))
    net = PolicyNet(dataclasses.replace(preset.policy, n_cond=4))
    for p in net.parameters():  # the actions are 0 (the last layer's output), with a gradient
        torch.nn.init.zeros_(p)
    plain, m0 = policy_loss("vg", net, model, batch, preset, ckpt["stats"], None)
    tracked, m1 = policy_loss("vg", net, model, batch, dataclasses.replace(preset, track_weight=0.5),
                              ckpt["stats"], None)
    assert "track" not in m0
    # no action: the car keeps its start speed, so it stays about 3 m behind
    assert float(m1["track"]) == pytest.approx((3.0 / TRACK_SCALE) ** 2, rel=0.3)
    assert float((tracked - plain).detach()) == pytest.approx(0.5 * float(m1["track"]), rel=1e-5)
    net.zero_grad()
    (tracked - plain).backward()
    last = list(net.parameters())[-1]  # the output layer's bias: (acceleration, steering)
    assert last.grad[0] < 0  # descending it accelerates


def test_worst_world_costs_each_step_what_the_worse_of_the_two_worlds_does(trained, monkeypatch):
    """--world worst: the per-step cost is the elementwise max of the same unroll's costs
    among the model's traffic and among the recorded traffic, and its gradient flows."""
    from data.dataset import Dataset, WindowSampler
    from policy import train as tr
    from policy.train import PRESETS, policy_loss, with_separated
    from world_model.train import load_model

    model, ckpt = load_model(trained["deterministic"])
    ds = Dataset.open(trained["dataset"])
    batch = WindowSampler(ds, "train", 4, 4, batch_size=6, seed=3).sample()
    net = PolicyNet(dataclasses.replace(with_separated(PRESETS["tiny"]).policy, n_cond=4))
    seen = []
    real = tr.discounted
    monkeypatch.setattr(tr, "discounted", lambda per_step, gamma: seen.append(per_step) or real(per_step, gamma))
    per_world = {}
    for world in ("model", "recorded", "worst"):
        preset = dataclasses.replace(with_separated(PRESETS["tiny"]), world=world)
        torch.manual_seed(5)  # the same displaced starts in each world
        loss, _ = policy_loss("vg", net, model, batch, preset, ckpt["stats"], None)
        per_world[world] = seen[-1]
    worst, pred, rec = per_world["worst"].detach(), per_world["model"].detach(), per_world["recorded"].detach()
    assert not torch.allclose(pred, rec)  # the two worlds differ
    torch.testing.assert_close(worst, torch.maximum(pred, rec))
    assert (rec > pred).any() and (pred > rec).any()  # each world is the worse one somewhere
    net.zero_grad()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    # --world mixed: each window costs what it costs among one world or the other (starts not
    # displaced, so that the three unrolls start alike), and both occur in the batch
    for world in ("model", "recorded", "mixed"):
        preset = dataclasses.replace(with_separated(PRESETS["tiny"]), world=world, start_noise=(0.0, 0.0, 0.0))
        torch.manual_seed(7)
        policy_loss("vg", net, model, batch, preset, ckpt["stats"], None)
        per_world[world] = seen[-1].detach()
    pred, rec, mixed = per_world["model"], per_world["recorded"], per_world["mixed"]
    among_rec = [torch.allclose(m, r) for m, r in zip(mixed, rec)]
    among_pred = [torch.allclose(m, p) for m, p in zip(mixed, pred)]
    assert all(a or b for a, b in zip(among_rec, among_pred))
    assert any(a and not b for a, b in zip(among_rec, among_pred))
    assert any(b and not a for a, b in zip(among_rec, among_pred))


def test_mpc_lowers_the_planned_cost(trained):
    from data.dataset import Dataset, WindowSampler
    from policy.mpc import MPC, MPCConfig
    from world_model.train import load_model

    model, ckpt = load_model(trained["deterministic"])
    ds = Dataset.open(trained["dataset"])
    batch = WindowSampler(ds, "train", 4, 1, batch_size=8, seed=1).sample()
    images, states, size = batch["images"][:, :4], batch["states"][:, :4], batch["car_size"]

    def planned_cost(plan):
        r = rollout(model, lambda h, s, t: plan[:, t], images, states, size, 5, ckpt["stats"], CostWeights())
        return float(CostWeights().combine(r["costs"]).mean())

    mpc = MPC(model, ckpt["stats"], MPCConfig(horizon=5, iterations=8, lr=0.3))
    first = mpc.act(images, states, size)
    assert first.shape == (8, 2) and first.abs().max() <= 3.0
    assert planned_cost(mpc._plan) <= planned_cost(torch.zeros(8, 5, 2)) + 1e-6


def test_report_trains_what_is_missing_and_tabulates_seeds(trained, tmp_path, monkeypatch):
    import csv

    from policy.driver import load_policy
    from policy.report import ReportConfig, report_command

    monkeypatch.setenv("PPUU_ARTIFACTS", str(trained["root"] / "artifacts"))
    cfg = ReportConfig(preset="tiny", methods="il,svg,vg-sep", seeds="5,6", split="val", episodes=3,
                       dataset=str(trained["dataset"]), model_steps=150, policy_steps=4,
                       out=str(tmp_path / "report"), quiet=True)
    text = report_command(cfg)
    rows = list(csv.DictReader(open(tmp_path / "report" / "results.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("human", ""), ("no-action", ""), ("follow", ""), ("follow-merge", ""), ("follow-evade", ""),
        ("follow-yield", ""), ("follow-wait", ""), ("il", "5"), ("il", "6"), ("svg", "5"), ("svg", "6"), ("vg-sep", "5"), ("vg-sep", "6")]
    assert rows[0]["success_rate"] == "1"  # the recorded drivers
    summary = list(csv.DictReader(open(tmp_path / "report" / "summary.csv")))
    assert [r["method"] for r in summary] == ["human", "no-action", "follow", "follow-merge", "follow-evade", "follow-yield",
                                                "follow-wait", "il", "svg", "vg-sep"]
    il = [float(r["success_rate"]) for r in rows if r["method"] == "il"]
    il_summary = next(r for r in summary if r["method"] == "il")
    assert float(il_summary["success_rate"]) == pytest.approx(np.mean(il), abs=1e-5)
    assert "| svg |" in text and "forward model: stochastic" in text and "| vg-sep |" in text
    sep = load_policy(trained["root"] / "artifacts" / "policies" / "vg-sep-tiny-seed5" / "checkpoint.pt")[1]
    assert sep["method"] == "vg" and sep["preset"]["separate_ego"] and "deterministic" in sep["model_path"]
    assert (tmp_path / "report" / "report.png").is_file()
    # a second run reuses everything: no training stage takes time
    again = report_command(cfg)
    assert "policy: il, seed 5" in again


def test_report_stops_when_a_stage_was_interrupted(trained, tmp_path, monkeypatch):
    """Ctrl-C in a training stage saves its checkpoint and returns; the report must not go
    on to the next stage (two runs would then share folders) but stop, to be resumed."""
    import policy.train
    from policy.report import ReportConfig, report_command
    from world_model.train import StopFlag

    monkeypatch.setattr(StopFlag, "requested", False)
    calls = []

    def interrupted_training(cfg):
        calls.append(cfg.method)
        StopFlag.requested = True  # what the signal handler does
        return Path(cfg.out)

    monkeypatch.setattr(policy.train, "train_policy", interrupted_training)
    cfg = ReportConfig(preset="tiny", methods="il,vg", seeds="0", dataset=str(trained["dataset"]),
                       out=str(tmp_path / "report"), quiet=True)
    with pytest.raises(KeyboardInterrupt):
        report_command(cfg)
    assert calls == ["il"] and not (tmp_path / "report").exists()


def test_evaluate_seeds_expands_a_pattern_and_adds_the_mean(trained, tmp_path, monkeypatch):
    import csv

    from policy.train import TrainPolicyConfig, train_policy
    from traffic_sim.evaluate import EvaluateConfig, evaluate_command

    for seed in (1, 2):
        train_policy(TrainPolicyConfig(method="il", preset="tiny", steps=2, seed=seed, quiet=True, val_episodes=0,
                                       dataset=str(trained["dataset"]), out=str(tmp_path / f"il-s{seed}")))
    out = tmp_path / "e.csv"
    table, _ = evaluate_command(EvaluateConfig(policy=f"{tmp_path}/il-s{{seed}},no-action", seeds="1,2",
                                               trajectories=str(trained["traffic"]), split="val",
                                               episodes=3, out=str(out)))
    rows = list(csv.DictReader(open(out)))
    assert [r["policy"] for r in rows] == ["il-s1", "il-s2", "no-action", "il-s* (mean of 2)"]
    mean = np.mean([float(rows[0]["success_rate"]), float(rows[1]["success_rate"])])
    assert float(rows[3]["success_rate"]) == pytest.approx(mean, abs=1e-5)
    assert "mean of 2" in table


def test_ensemble_drives_with_the_mean_action_of_its_members(trained, tmp_path):
    """``a+b`` is one driver whose action is the mean of a's and b's on the same history;
    members trained on another dataset are refused with a clear error."""
    import shutil

    from policy.driver import make_driver
    from policy.train import TrainPolicyConfig, train_policy
    from traffic_sim.cli_util import UserError
    from traffic_sim.evaluate import EvaluateConfig, evaluate_command
    from traffic_sim.loading import load_scene
    from traffic_sim.sim import ReplaySimulator

    paths = []
    for seed in (1, 2):
        paths.append(str(tmp_path / f"il-s{seed}"))
        train_policy(TrainPolicyConfig(method="il", preset="tiny", steps=3, seed=seed, quiet=True, val_episodes=0,
                                       dataset=str(trained["dataset"]), out=paths[-1]))
    scene = load_scene(trained["traffic"])
    sim = ReplaySimulator(scene)
    tracks = scene.episodes["all"][:4]
    drivers = [make_driver(p, scene) for p in paths] + [make_driver("+".join(paths), scene)]
    assert drivers[2].name == "il-s1+il-s2"
    cars = sim.start(tracks)
    obs = sim.observe(cars)
    for d in drivers:
        d.reset(cars.track)
    actions = [d(obs, cars.state_vector(), cars) for d in drivers]
    assert not np.allclose(actions[0], actions[1])  # the members differ
    np.testing.assert_allclose(actions[2], (actions[0] + actions[1]) / 2, atol=1e-5)

    joined = tmp_path / "a+b"  # an existing path with a + in its name is one checkpoint
    shutil.copytree(paths[0], joined)
    assert make_driver(str(joined), scene).name == "a+b"
    out = tmp_path / "e.csv"
    evaluate_command(EvaluateConfig(policy=str(joined), trajectories=str(trained["traffic"]),
                                    split="val", episodes=2, out=str(tmp_path / "one.csv")))
    evaluate_command(EvaluateConfig(policy="+".join(paths), trajectories=str(trained["traffic"]),
                                    split="val", episodes=2, out=str(out)))
    assert "il-s1+il-s2" in out.read_text()

    ckpt = torch.load(Path(paths[1]) / "best.pt", weights_only=True)
    ckpt["stats"] = {k: (np.asarray(v) * 2).tolist() for k, v in ckpt["stats"].items()}
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(UserError, match="different datasets"):
        make_driver(f"{paths[0]}+{tmp_path / 'other.pt'}", scene)


def test_mpur_on_a_deterministic_model_when_asked_for(trained, tmp_path):
    from policy.driver import load_policy
    from policy.train import TrainPolicyConfig, train_policy

    out = train_policy(TrainPolicyConfig(method="mpur", preset="tiny", steps=3, quiet=True, val_episodes=0,
                                         model=str(trained["deterministic"]), out=str(tmp_path / "m")))
    _, ckpt = load_policy(out)
    assert ckpt["method"] == "mpur" and ckpt["model_path"].endswith("checkpoint.pt")
    assert "deterministic" in ckpt["model_path"] and ckpt["u_stats"]["samples"] > 0
    with pytest.raises(ValueError, match="needs a stochastic model"):  # svg keeps its model kind
        train_policy(TrainPolicyConfig(method="svg", preset="tiny", steps=1, quiet=True, val_episodes=0,
                                       model=str(trained["deterministic"]), out=str(tmp_path / "s")))


def test_braking_and_steering_are_bounded_apart():
    from policy.train import within_bounds

    torch.manual_seed(0)
    cfg = PolicyConfig(n_cond=2, n_feature=8, n_hidden=16, action_bound=3.0, brake_bound=8.0)
    net = PolicyNet(cfg)
    with torch.no_grad():
        net.head[-1].bias.copy_(torch.tensor([-1000.0, -1000.0]))  # every raw output far below 0
    out = net(torch.rand(1, 2, 3, IMAGE_H, IMAGE_W), torch.randn(1, 2, 4))
    assert out[0].tolist() == pytest.approx([-8.0, -3.0])
    with torch.no_grad():
        net.head[-1].bias.copy_(torch.tensor([1000.0, 1000.0]))
    assert net(torch.rand(1, 2, 3, IMAGE_H, IMAGE_W), torch.randn(1, 2, 4))[0].tolist() == pytest.approx([3.0, 3.0])
    with torch.no_grad():  # near 0 both bounds have slope 1: the action is the raw output
        net.head[-1].bias.copy_(torch.tensor([-0.01, 0.01]))
    assert net(torch.rand(1, 2, 3, IMAGE_H, IMAGE_W), torch.randn(1, 2, 4))[0].tolist() == \
        pytest.approx([-0.01, 0.01], abs=1e-6)
    # the steering bounded apart: up to 30 standard deviations either way, the acceleration's bounds kept
    steer = PolicyNet(PolicyConfig(n_cond=2, n_feature=8, n_hidden=16, action_bound=3.0, brake_bound=8.0,
                                   steer_bound=30.0))
    for bias, want in (([-1000.0, -1000.0], [-8.0, -30.0]), ([1000.0, 1000.0], [3.0, 30.0]),
                       ([0.0, 15.0], [0.0, 30.0 * math.tanh(0.5)])):
        with torch.no_grad():
            steer.head[-1].bias.copy_(torch.tensor(bias))
        assert steer(torch.rand(1, 2, 3, IMAGE_H, IMAGE_W), torch.randn(1, 2, 4))[0].tolist() == pytest.approx(want)
    # imitation targets are clipped to what each network can output
    targets = torch.tensor([[-20.0, -270.0], [5.0, 12.0], [-1.0, 2.0]])
    assert within_bounds(targets, cfg).tolist() == [[-8.0, -3.0], [3.0, 3.0], [-1.0, 2.0]]
    assert within_bounds(targets, steer.config).tolist() == [[-8.0, -30.0], [3.0, 12.0], [-1.0, 2.0]]


def test_steering_bound_set_by_a_lateral_acceleration():
    from policy.train import within_bounds

    # normalised velocities are m/s here (mean 0, std 1) and the steering's std is 0.004 1/m
    cfg = PolicyConfig(n_cond=2, n_feature=8, n_hidden=16, action_bound=3.0, brake_bound=8.0, lateral_acc=2.0,
                       units=(0.0, 1.0, 0.0, 1.0, 0.004))
    net = PolicyNet(cfg)
    states = torch.zeros(3, 2, 4)
    states[:, -1, 3] = torch.tensor([20.0, 4.0, 1.0])  # speeds along the road [m/s]
    states[2, -1, 2] = 0.5  # and a sideways one
    # 2 / 20^2 = 0.005 1/m is below 3 std (0.012): the steering's bound holds; 2 / 4^2 = 0.125 1/m
    # is 31.25 std; at 1.1 m/s the curvature is capped at a 5 m radius (0.2 1/m, 50 std)
    want = [3.0, 31.25, 50.0]
    assert cfg.turn_limit(states[:, -1]).tolist() == pytest.approx(want)
    with torch.no_grad():
        net.head[-1].bias.copy_(torch.tensor([1000.0, -1000.0]))
    out = net(torch.rand(3, 2, 3, IMAGE_H, IMAGE_W), states)
    assert out[:, 1].tolist() == pytest.approx([-w for w in want]) and out[:, 0].tolist() == pytest.approx([3.0] * 3)
    targets = torch.tensor([[-20.0, 40.0], [5.0, -40.0], [-1.0, 60.0]])
    assert within_bounds(targets, cfg, states).flatten().tolist() == pytest.approx([-8.0, 3.0, 3.0, -31.25, -1.0, 50.0])
    with pytest.raises(ValueError, match="needs the states"):
        within_bounds(targets, cfg)
    with pytest.raises(ValueError, match="units"):
        PolicyNet(PolicyConfig(n_cond=2, n_feature=8, n_hidden=16, lateral_acc=2.0))(
            torch.rand(1, 2, 3, IMAGE_H, IMAGE_W), states[:1])
    # kept in a checkpoint's dict and read back as the same network
    assert PolicyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_policy_sees_only_its_most_recent_states():
    torch.manual_seed(0)
    cfg = PolicyConfig(n_cond=4, n_feature=8, n_hidden=16, n_states=1)
    net = PolicyNet(cfg)
    torch.nn.init.normal_(net.head[-1].weight)  # the last layer starts at zero
    images = torch.rand(2, 4, 3, IMAGE_H, IMAGE_W)
    states = torch.randn(2, 4, 4)
    older = states.clone()
    older[:, :-1] += 5.0  # change everything but the current state
    newer = states.clone()
    newer[:, -1, 2:] += 1.0  # change the current velocity
    out = net(images, states)
    assert torch.equal(out, net(images, older))
    assert not torch.allclose(out, net(images, newer))
    full = PolicyNet(dataclasses.replace(cfg, n_states=4))
    torch.nn.init.normal_(full.head[-1].weight)
    assert not torch.allclose(full(images, states), full(images, older))


def test_lane_end_inputs_tell_the_on_ramp_from_the_lane_beside_it():
    """On I-80 the on-ramp (lane 7) ends 244 m along the road with no lane in its place; lane
    6 beside it goes on. The inputs say so, with the distance over LANE_END_RANGE."""
    from policy.net import LANE_END_RANGE, lane_end_inputs
    from traffic_sim.roads import i80_road

    road = i80_road()
    ramp, main = (next(ln for ln in road.lanes if ln.lane_id == k) for k in (7, 6))
    end = road.span(ramp)[1]
    x = np.array([ramp.center, ramp.center, main.center, ramp.center])
    y = np.array([end - 150.0, end - 1.0, end - 150.0, end - 0.5 * LANE_END_RANGE])
    got = lane_end_inputs(road, x, y)
    np.testing.assert_allclose(got, [[1, 150.0 / LANE_END_RANGE], [1, 1.0 / LANE_END_RANGE], [0, 1], [1, 0.5]],
                               atol=1e-6)
    assert got.dtype == np.float32


def test_policy_reads_its_lanes_end_from_the_road_it_drives_on():
    """With lane_end_input the same images and states give another action on the on-ramp
    than in the lane beside it, 3.66 m over (the images alone can show the same road there);
    without a road it says what is missing."""
    from policy.net import N_LANE_END
    from traffic_sim.roads import i80_road

    torch.manual_seed(0)
    road = i80_road()
    ramp, main = (next(ln for ln in road.lanes if ln.lane_id == k) for k in (7, 6))
    stats = {"state_mean": [0.0, 0.0, 0.0, 10.0], "state_std": [1.0, 1.0, 1.0, 5.0]}
    cfg = PolicyConfig(n_cond=4, n_feature=8, n_hidden=16, lane_end_input=True)
    net = PolicyNet(cfg)
    assert net.state_encoder[0].in_features == 4 * 4 + N_LANE_END
    torch.nn.init.normal_(net.head[-1].weight)
    images = torch.rand(1, 4, 3, IMAGE_H, IMAGE_W)
    states = torch.zeros(1, 4, 4)
    states[..., 1] = torch.arange(4.0) + 100.0  # along the road [m], 1 m per frame
    with pytest.raises(RuntimeError, match="use_road"):
        net(images, states)
    net.use_road(road, stats)
    on_ramp, beside = states.clone(), states.clone()
    on_ramp[..., 0], beside[..., 0] = ramp.center, main.center
    assert not torch.allclose(net(images, on_ramp), net(images, beside))
    plain = PolicyNet(dataclasses.replace(cfg, lane_end_input=False))
    torch.nn.init.normal_(plain.head[-1].weight)
    assert torch.allclose(plain(images, on_ramp), plain(images, beside))  # it sees relative positions only


def test_teach_and_mpur_with_the_lane_end_input_drive_on_the_datasets_road(trained, tmp_path):
    """--lane-end-input through teach (the network drives a collection and validates), an
    --init into separated mpur (the network unrolled through the model) and a driver on the
    scene's road; an --init without the flag is another network."""
    from data.dataset import Dataset
    from policy.driver import load_policy, policy_driver
    from policy.train import TrainPolicyConfig, dataset_scene, train_policy
    from traffic_sim.cli_util import UserError
    from traffic_sim.roads import i80_road
    from traffic_sim.sim import ReplaySimulator

    taught = train_policy(TrainPolicyConfig(method="teach", preset="tiny", steps=12, quiet=True, val_episodes=2,
                                            lane_end_input=True, dataset=str(trained["dataset"]),
                                            out=str(tmp_path / "teach")))
    net, ckpt = load_policy(taught)
    assert net.config.lane_end_input and net.road.name == "synthetic-i80"
    assert [bool(r["teacher_drives"]) for r in ckpt["teacher"]["records"]] == [True, False]
    common = dict(method="mpur", preset="tiny", quiet=True, model=str(trained["deterministic"]), val_episodes=0,
                  separate_ego=True, init=str(taught))
    out = train_policy(TrainPolicyConfig(out=str(tmp_path / "mpur"), steps=2, lane_end_input=True, **common))
    assert load_policy(out)[0].config.lane_end_input
    with pytest.raises(UserError, match="different network"):
        train_policy(TrainPolicyConfig(out=str(tmp_path / "plain"), steps=0, **common))
    assert load_policy(out, road=i80_road())[0].road.name == "i-80"  # another location's road, as given
    scene = dataset_scene(Dataset.open(trained["dataset"]))
    sim = ReplaySimulator(scene)
    cars = sim.start(scene.episodes["val"][:2])
    driver = policy_driver(out, scene)
    a = driver(sim.observe(cars), cars.state_vector(), cars)
    assert a.shape == (2, 2) and np.isfinite(a).all()


def test_init_starts_from_another_policy(trained, tmp_path):
    from policy.driver import load_policy
    from policy.train import TrainPolicyConfig, train_policy
    from traffic_sim.cli_util import UserError

    il = train_policy(TrainPolicyConfig(method="il", preset="tiny", steps=4, quiet=True, val_episodes=0,
                                        dataset=str(trained["dataset"]), out=str(tmp_path / "il")))
    common = dict(method="svg", preset="tiny", quiet=True, model=str(trained["stochastic"]), val_episodes=0)
    out = train_policy(TrainPolicyConfig(out=str(tmp_path / "svg"), steps=0, init=str(il), **common))
    a, _ = load_policy(il / "checkpoint.pt")
    b, ckpt = load_policy(out / "checkpoint.pt")
    assert ckpt["train_config"]["init"] == str(il)
    assert_same_weights(a, b)
    with pytest.raises(UserError, match="does not exist"):
        train_policy(TrainPolicyConfig(out=str(tmp_path / "x"), steps=0, init=str(tmp_path / "none"), **common))
    # a policy that sees one state is another network: it cannot start one that sees all
    il1 = train_policy(TrainPolicyConfig(method="il", preset="tiny", steps=0, quiet=True, val_episodes=0, n_states=1,
                                         dataset=str(trained["dataset"]), out=str(tmp_path / "il1")))
    assert load_policy(il1 / "checkpoint.pt")[1]["policy_config"]["n_states"] == 1
    with pytest.raises(UserError, match="different network"):
        train_policy(TrainPolicyConfig(out=str(tmp_path / "y"), steps=0, init=str(il1), **common))
    with pytest.raises(UserError, match="--n-states"):
        train_policy(TrainPolicyConfig(out=str(tmp_path / "z"), steps=0, n_states=0, **common))
    # a wider image encoder is another network too
    il24 = train_policy(TrainPolicyConfig(method="il", preset="tiny", steps=0, quiet=True, val_episodes=0,
                                          n_feature=24, dataset=str(trained["dataset"]), out=str(tmp_path / "il24")))
    wide, _ = load_policy(il24 / "checkpoint.pt")
    assert wide.config.n_feature == 24 and [m.out_channels for m in wide.encoder.net if hasattr(m, "out_channels")] \
        == [6, 12, 24]
    with pytest.raises(UserError, match="different network"):
        train_policy(TrainPolicyConfig(out=str(tmp_path / "w"), steps=0, init=str(il24), **common))
    with pytest.raises(UserError, match="--n-feature"):
        train_policy(TrainPolicyConfig(out=str(tmp_path / "v"), steps=0, n_feature=6, **common))


def test_separate_ego_trains_through_the_model_and_refuses_methods_without_costs(trained, tmp_path):
    import csv

    from policy.driver import load_policy
    from policy.train import PRESETS, TrainPolicyConfig, train_policy, with_separated
    from traffic_sim.cli_util import UserError

    common = dict(preset="tiny", quiet=True, val_episodes=0, separate_ego=True)
    out = train_policy(TrainPolicyConfig(method="mpur", steps=3, model=str(trained["stochastic"]),
                                         out=str(tmp_path / "m"), **common))
    net, ckpt = load_policy(out / "checkpoint.pt")
    assert ckpt["preset"]["separate_ego"] is True and ckpt["step"] == 3
    assert any(p.abs().sum() > 0 for p in net.head[-1].parameters())  # it learned something
    # the uncertainty cost on the car's own path, its scale measured with the world separated
    assert ckpt["u_stats"]["u_stride"] == 2 and ckpt["u_stats"]["k_dropout"] == 2
    assert list(trained["stochastic"].parent.glob("uncertainty-k2-h4-sep-s2.json"))
    assert ckpt["preset"]["u_through_states"] is False
    st = train_policy(TrainPolicyConfig(method="mpur", steps=1, model=str(trained["stochastic"]),
                                        uncertainty_through_states=True, out=str(tmp_path / "st"), **common))
    assert load_policy(st / "checkpoint.pt")[1]["preset"]["u_through_states"] is True
    with pytest.raises(UserError, match="--uncertainty-through-states applies"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]),
                                       uncertainty_through_states=True, out=str(tmp_path / "v"), **common))
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert rows and all(float(r["uncertainty"]) >= 0 for r in rows)
    assert all(r["u_grad_ratio"] == "" for r in rows)  # weighted by lambda_u: no ratio logged
    # the uncertainty's gradient rescaled to the costs': the raw ratio of their norms is logged
    bal = train_policy(TrainPolicyConfig(method="mpur", steps=2, model=str(trained["stochastic"]),
                                         uncertainty_through_states=True, u_gradient_ratio=0.5,
                                         out=str(tmp_path / "bal"), **common))
    assert load_policy(bal / "checkpoint.pt")[1]["preset"]["u_grad_ratio"] == 0.5
    bal_rows = list(csv.DictReader(open(bal / "log.csv")))
    assert bal_rows and all(float(r["u_grad_ratio"]) > 0 and -1 <= float(r["u_grad_cos"]) <= 1 for r in bal_rows)
    with pytest.raises(UserError, match="--u-gradient-project applies"):
        train_policy(TrainPolicyConfig(method="mpur", steps=1, model=str(trained["stochastic"]),
                                       u_gradient_project=True, out=str(tmp_path / "p"), **common))
    with pytest.raises(UserError, match="--u-gradient-ratio applies to mpur"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]),
                                       u_gradient_ratio=0.5, out=str(tmp_path / "bad"), **common))
    with pytest.raises(UserError, match="--u-gradient-ratio must be at least 0"):
        train_policy(TrainPolicyConfig(method="mpur", steps=1, model=str(trained["stochastic"]),
                                       u_gradient_ratio=-1.0, out=str(tmp_path / "bad"), **common))
    # the preset's separated settings: one state, a gradient clip of 1, displaced starts, a braking
    # bound (tiny: horizon 4)
    preset = ckpt["preset"]
    assert (preset["policy"]["n_states"], preset["grad_clip"], preset["horizon"]) == (1, 1.0, 4)
    assert tuple(preset["start_noise"]) == (1.0, 0.3, 1.0) and preset["policy"]["brake_bound"] == 6.0
    assert preset["prox_reach"] == 2.75  # three quarters of a lane; without --separate-ego the method's lane
    assert PRESETS["default"].prox_reach is None and with_separated(PRESETS["default"]).prox_reach == 2.75
    rec = train_policy(TrainPolicyConfig(method="svg", steps=2, model=str(trained["stochastic"]), world="recorded",
                                         horizon=3, grad_clip=2.0, lr=2e-4, n_states=2, start_noise="2,0.5,1", action_bound=5.0, brake_bound=7.0, steer_bound=25.0,
                                         lr_decay=True,
                                         out=str(tmp_path / "r"), **common))
    preset = load_policy(rec / "checkpoint.pt")[1]["preset"]  # the options override them
    assert (preset["world"], preset["horizon"], preset["grad_clip"], preset["lr"]) == ("recorded", 3, 2.0, 2e-4)
    assert preset["policy"]["n_states"] == 2 and tuple(preset["start_noise"]) == (2.0, 0.5, 1.0)
    assert (preset["policy"]["action_bound"], preset["policy"]["brake_bound"], preset["policy"]["steer_bound"]) == \
        (5.0, 7.0, 25.0) and preset["lr_decay"]
    # cosine decay over 2 steps: the second step ran at half the rate
    assert torch.load(rec / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"] == \
        pytest.approx(1e-4)
    mixed = train_policy(TrainPolicyConfig(method="vg", steps=2, model=str(trained["deterministic"]), world="mixed",
                                           out=str(tmp_path / "mixed"), **common))
    assert load_policy(mixed / "checkpoint.pt")[1]["preset"]["world"] == "mixed"
    worst = train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), world="worst",
                                           out=str(tmp_path / "worst"), **common))
    assert load_policy(worst / "checkpoint.pt")[1]["preset"]["world"] == "worst"
    with pytest.raises(UserError, match="--action-bound"):
        train_policy(TrainPolicyConfig(method="svg", steps=1, model=str(trained["stochastic"]), action_bound=0.0,
                                       out=str(tmp_path / "n"), **common))
    for bad in ("1,2", "1,-1,0", "a,b,c"):
        with pytest.raises(UserError, match="--start-noise takes"):
            train_policy(TrainPolicyConfig(method="svg", steps=1, model=str(trained["stochastic"]), start_noise=bad,
                                           out=str(tmp_path / "n"), **common))
    with pytest.raises(UserError, match="--lambda-u must"):
        train_policy(TrainPolicyConfig(method="mpur", steps=1, model=str(trained["stochastic"]), lambda_u=-1.0,
                                       out=str(tmp_path / "n"), **common))
    reach = train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), prox_reach=1.85,
                                           offroad_ahead=2.0, focus_ends=0.5, focus_queues=0.25,
                                           out=str(tmp_path / "reach"), **common))
    assert load_policy(reach / "checkpoint.pt")[1]["preset"]["prox_reach"] == 1.85
    assert load_policy(reach / "checkpoint.pt")[1]["preset"]["focus_ends"] == 0.5
    assert load_policy(reach / "checkpoint.pt")[1]["preset"]["focus_queues"] == 0.25
    assert load_policy(reach / "checkpoint.pt")[1]["preset"]["offroad_ahead"] == 2.0
    tracked = train_policy(TrainPolicyConfig(method="vg", steps=2, model=str(trained["deterministic"]),
                                             track_weight=0.5, batch_size=3, out=str(tmp_path / "track"), **common))
    assert load_policy(tracked / "checkpoint.pt")[1]["preset"]["track_weight"] == 0.5
    assert load_policy(tracked / "checkpoint.pt")[1]["preset"]["batch_size"] == 3
    with pytest.raises(UserError, match="--batch-size must"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), batch_size=0,
                                       out=str(tmp_path / "n"), **common))
    assert all(float(r["track"]) >= 0 for r in csv.DictReader(open(tracked / "log.csv")))
    with pytest.raises(UserError, match="--track-weight must"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), track_weight=-1.0,
                                       out=str(tmp_path / "n"), **common))
    with pytest.raises(UserError, match="--track-weight applies"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), track_weight=1.0,
                                       out=str(tmp_path / "n"), **{**common, "separate_ego": False}))
    with pytest.raises(UserError, match="--ema must"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), ema=1.0,
                                       out=str(tmp_path / "n"), **common))
    with pytest.raises(UserError, match="--focus-ends must"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), focus_ends=1.0,
                                       out=str(tmp_path / "n"), **common))
    with pytest.raises(UserError, match="--focus-queues must"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), focus_queues=-0.1,
                                       out=str(tmp_path / "n"), **common))
    with pytest.raises(UserError, match="add up to less than 1"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), focus_ends=0.5,
                                       focus_queues=0.5, out=str(tmp_path / "n"), **common))
    with pytest.raises(UserError, match="--offroad-ahead must"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), offroad_ahead=-1.0,
                                       out=str(tmp_path / "n"), **common))
    with pytest.raises(UserError, match="--prox-reach must"):
        train_policy(TrainPolicyConfig(method="vg", steps=1, model=str(trained["deterministic"]), prox_reach=0.0,
                                       out=str(tmp_path / "n"), **common))
    with pytest.raises(UserError, match="--rear-weight must"):
        train_policy(TrainPolicyConfig(method="svg", steps=1, model=str(trained["stochastic"]), rear_weight=2.0,
                                       out=str(tmp_path / "n"), **common))
    with pytest.raises(UserError, match="--start-noise applies"):
        train_policy(TrainPolicyConfig(method="svg", steps=1, model=str(trained["stochastic"]), start_noise="1,0,0",
                                       out=str(tmp_path / "n"), **{**common, "separate_ego": False}))
    with pytest.raises(UserError, match="--separate-ego"):
        train_policy(TrainPolicyConfig(method="il", steps=1, dataset=str(trained["dataset"]),
                                       out=str(tmp_path / "i"), **common))
    with pytest.raises(UserError, match="--horizon"):
        train_policy(TrainPolicyConfig(method="svg", steps=1, model=str(trained["stochastic"]), horizon=0,
                                       out=str(tmp_path / "h"), **common))
    with pytest.raises(UserError, match="--lr"):
        train_policy(TrainPolicyConfig(method="svg", steps=1, model=str(trained["stochastic"]), lr=0.0,
                                       out=str(tmp_path / "l"), **common))
    with pytest.raises(UserError, match="--world applies"):
        train_policy(TrainPolicyConfig(method="svg", steps=1, model=str(trained["stochastic"]), world="recorded",
                                       out=str(tmp_path / "w"), **{**common, "separate_ego": False}))


def test_balanced_step_rescales_the_uncertainty_gradient_to_the_costs():
    from policy.train import BalancedStep

    a, b = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 0.0, 10.0])
    w = torch.zeros(3, requires_grad=True)
    step = BalancedStep(torch.optim.SGD([w], lr=0.1), [w], grad_clip=100.0, ratio=0.5)
    assert step(((w * a).sum(), (w * b).sum()), 0)
    # the costs' gradient (norm 5) plus the uncertainty's rescaled to 0.5 x 5 = 2.5
    assert torch.allclose(w.grad, torch.tensor([3.0, 4.0, 2.5]))
    assert torch.allclose(w.detach(), torch.tensor([-0.3, -0.4, -0.25]))
    assert step.pop_means() == pytest.approx({"u_grad_ratio": 2.0, "u_grad_cos": 0.0})  # |b| / |a|
    assert step.pop_means() == {}
    # against the costs: kept as it is, or its opposing part removed first (--u-gradient-project)
    c = torch.tensor([-3.0, -4.0, 5.0])  # cosine with a: -25 / (5 x 50^0.5)
    for project, expected in ((False, a + 2.5 / 50 ** 0.5 * c), (True, torch.tensor([3.0, 4.0, 2.5]))):
        w3 = torch.zeros(3, requires_grad=True)
        step3 = BalancedStep(torch.optim.SGD([w3], lr=0.1), [w3], grad_clip=100.0, ratio=0.5, project=project)
        assert step3(((w3 * a).sum(), (w3 * c).sum()), 0)
        assert torch.allclose(w3.grad, expected)
        assert step3.pop_means() == pytest.approx({"u_grad_ratio": 50 ** 0.5 / 5, "u_grad_cos": -(0.5 ** 0.5)})
    # an uncertainty without gradient adds nothing (and no NaN); a plain loss is applied as is
    w2 = torch.zeros(3, requires_grad=True)
    step2 = BalancedStep(torch.optim.SGD([w2], lr=0.1), [w2], grad_clip=100.0, ratio=0.5)
    assert step2(((w2 * a).sum(), (w2.detach() * b).sum() + torch.zeros((), requires_grad=True)), 0)
    assert torch.allclose(w2.grad, a)
    assert step2((w2 * b).sum(), 1) and torch.allclose(w2.grad, b)
    # a non-finite uncertainty skips the batch
    assert not step2(((w2 * a).sum(), (w2 * b).sum() * float("nan")), 2)


def test_queues_mask_marks_the_frames_before_the_recorded_car_slows_within_its_episode():
    from types import SimpleNamespace

    from policy.train import QUEUE_DROP, QUEUE_WITHIN, queues_mask

    # episode 0: 10 m/s for 80 frames, then 5 m/s (a drop of 5 >= QUEUE_DROP) for 40;
    # episode 1: 1 m/s throughout, after an episode that ends fast (no drop across episodes);
    # episode 2: a drop of 3.9 m/s (< QUEUE_DROP) along y, speed from vy.
    v0 = np.r_[np.full(80, 10.0), np.full(40, 5.0)]
    v1 = np.full(60, 1.0)
    v2 = np.r_[np.full(50, 8.0), np.full(50, 4.1)]
    states = np.zeros((len(v0) + len(v1) + len(v2), 4), dtype=np.float32)
    states[:len(v0) + len(v1), 2] = np.r_[v0, v1]
    states[len(v0) + len(v1):, 3] = v2
    dataset = SimpleNamespace(states=states, episode_start=np.array([0, 120, 180]),
                              episode_length=np.array([120, 60, 100]))
    mask = queues_mask(dataset)
    assert QUEUE_DROP == 4.0 and QUEUE_WITHIN == 40
    expected = np.zeros(len(states), dtype=bool)
    expected[80 - QUEUE_WITHIN:80] = True  # the frames whose next 40 include one at 5 m/s
    np.testing.assert_array_equal(mask, expected)


def test_the_teachers_windows_are_what_the_simulator_showed_with_the_teachers_actions(trained):
    """With the teacher driving, the frames kept for a car are its 20 recorded frames before
    the takeover and then what the simulator showed it after each step, and the labels are
    the teacher's normalised actions at each step; a replay of the kept actions gives back
    the same windows."""
    from data.dataset import Dataset, normalise_actions
    from policy.teacher import TeacherData
    from policy.train import dataset_scene
    from traffic_sim.sim import ReplaySimulator, builtin_actions

    ds = Dataset.open(trained["dataset"])
    stats = {k: v.tolist() for k, v in ds.stats.items()}
    scene = dataset_scene(ds)
    data = TeacherData(scene, stats, 20, "follow", seed=0)
    outcome = data.collect(3, None)
    tracks = data.records[0]["tracks"].numpy()
    np.testing.assert_array_equal(tracks, data.tracks_for(0, 3))

    sim = ReplaySimulator(scene)
    ref = sim.start(tracks)
    shown, actions = [], []
    while not ref.done.all():
        a = builtin_actions(sim, ref, "follow").astype(np.float32)
        actions.append(normalise_actions(a, stats))
        shown.append(sim.step(ref, a, observe=True))
    assert outcome["success"] == ref.success.mean()
    assert len(data) == ref.steps.sum() == len(data.index)
    history = sim.history_images(tracks)[:, -20:]
    for car in range(3):
        frames, labels = data.frames[car], data.labels[car]
        assert frames.shape[0] == 20 + ref.steps[car] - 1 and labels.shape[0] == ref.steps[car]
        np.testing.assert_array_equal(frames[:20].numpy(), history[car])
        for k in range(ref.steps[car] - 1):  # the frame seen after step k is the newest of window k + 1
            np.testing.assert_array_equal(frames[20 + k].numpy(), shown[k][car])
        np.testing.assert_allclose(labels.numpy(), np.stack(actions, 1)[car, :ref.steps[car]], rtol=1e-6)

    again = TeacherData(scene, stats, 20, "follow", seed=0)
    again.load_state(data.state())
    assert len(again.records) == 1
    for name in ("frames", "states", "labels"):
        for x, y in zip(getattr(data, name), getattr(again, name)):
            assert torch.equal(x, y), name
    images, st, target = data.batch(8)
    assert images.shape == (8, 20, 3, IMAGE_H, IMAGE_W) and st.shape == (8, 20, 4) and target.shape == (8, 2)


def test_the_windows_where_the_teacher_evades_are_marked_and_drawn_at_their_share(trained):
    """follow-evade's evasion sets the acceleration to the upper limit (from behind) or to half
    the braking limit (alongside, ahead), which its car following (at most 1 m/s^2) does not
    command: the windows marked as evading are those with one of these two labels, and with
    ``evade_share`` 0.5 half of each batch comes from them."""
    from data.dataset import Dataset, denormalise_actions
    from policy.teacher import TeacherData
    from policy.train import dataset_scene
    from traffic_sim.follow import ACC_LIMITS, EVADE_IDM

    ds = Dataset.open(trained["dataset"])
    stats = {k: v.tolist() for k, v in ds.stats.items()}
    data = TeacherData(dataset_scene(ds), stats, 20, "follow-evade", seed=0, evade_share=0.5)
    data.collect(12, None)
    assert EVADE_IDM.acc_max < ACC_LIMITS[1]
    acc = denormalise_actions(torch.cat(data.labels).numpy(), stats)[:, 0]
    evasion = np.isclose(acc, ACC_LIMITS[1], atol=1e-4) | np.isclose(acc, 0.5 * ACC_LIMITS[0], atol=1e-4)
    assert 0 < data.evading.sum() < len(data)
    np.testing.assert_array_equal(data.evading, evasion)
    for _ in range(3):
        target = denormalise_actions(data.batch(8)[2].numpy(), stats)[:, 0]
        assert np.all(np.isclose(target[:4], ACC_LIMITS[1], atol=1e-4) | np.isclose(target[:4], 0.5 * ACC_LIMITS[0],
                                                                                     atol=1e-4))
    with pytest.raises(ValueError, match="within"):
        TeacherData(dataset_scene(ds), stats, 20, "follow-evade", seed=0, evade_share=1.5)


def test_the_windows_in_a_lane_that_ends_and_of_hard_braking_are_marked_and_drawn_at_their_share(trained):
    """The windows marked as merging are, in each episode, its first steps when its car
    starts in the on-ramp (the lane that ends, beside the lane it merges into) and none
    otherwise: the teacher merges out and does not come back. A batch draws its evasions
    first, then its merges, then its hard braking, at their shares."""
    from data.dataset import Dataset, denormalise_actions
    from policy.teacher import TeacherData
    from policy.train import dataset_scene
    from traffic_sim.follow import merge_targets
    from traffic_sim.sim import ReplaySimulator

    ds = Dataset.open(trained["dataset"])
    stats = {k: v.tolist() for k, v in ds.stats.items()}
    scene = dataset_scene(ds)
    train = scene.episodes["train"]
    cars = ReplaySimulator(scene).start(train)
    ramp = np.isin(scene.road.lane_at(cars.center_x, cars.center_y), list(merge_targets(scene.road)))
    assert 0 < ramp.sum() < len(train)
    tracks = np.sort(np.concatenate([train[ramp][:4], train[~ramp][:4]]))
    data = TeacherData(scene, stats, 20, "follow-evade", seed=0, evade_share=0.25, merge_share=0.25,
                       brake_share=0.25)
    data.tracks_for = lambda collection, n: tracks
    data.collect(len(tracks), None)
    starts_on_ramp = np.isin(tracks, train[ramp])
    for e in range(len(tracks)):
        marks = data.merging[data.index[:, 0] == e]
        assert marks[0] == starts_on_ramp[e]
        np.testing.assert_array_equal(marks, np.arange(len(marks)) < marks.sum())  # a first run of steps
        if starts_on_ramp[e]:
            assert not marks[-1]  # it merged out
    assert len(data.marked)
    # hard braking: the teacher's accelerations below -2 m/s^2, in physical units
    labels = np.concatenate([a.numpy() for a in data.labels])
    accel = denormalise_actions(labels, {k: np.asarray(v) for k, v in stats.items()})[:, 0]
    np.testing.assert_array_equal(data.braking, accel < -2.0)
    assert 0 < len(data.brakes) < len(labels)
    for _ in range(3):
        rows = data.rows(8)
        assert data.evading[rows[:2]].all() and data.merging[rows[2:4]].all() and data.braking[rows[4:6]].all()
    with pytest.raises(ValueError, match="add up to at most 1"):
        TeacherData(scene, stats, 20, "follow-evade", seed=0, evade_share=0.5, merge_share=0.6)
    with pytest.raises(ValueError, match="add up to at most 1"):
        TeacherData(scene, stats, 20, "follow-evade", seed=0, merge_share=0.5, brake_share=0.6)


def test_teach_resumes_exactly_replaying_its_collections(trained, tmp_path):
    """--method teach collects at steps 0 (the teacher drives), 10 and 20 (the policy
    drives) on the tiny preset; stopped at step 15 and resumed, it replays the two
    collections it had and ends with the same weights as without a stop (with follow-evade's
    evasions drawn at their share of each batch)."""
    import csv

    from data.dataset import Dataset
    from policy.driver import load_policy
    from policy.teacher import TeacherData
    from policy.train import TrainPolicyConfig, dataset_scene, train_policy

    common = dict(method="teach", preset="tiny", quiet=True, dataset=str(trained["dataset"]), val_episodes=0,
                  teacher="follow-evade")
    full = train_policy(TrainPolicyConfig(out=str(tmp_path / "full"), steps=25, **common))
    part = train_policy(TrainPolicyConfig(out=str(tmp_path / "part"), steps=15, **common))
    train_policy(TrainPolicyConfig(out=str(tmp_path / "part"), steps=25, resume=True, **common))
    a, ca = load_policy(full / "checkpoint.pt")
    b, cb = load_policy(part / "checkpoint.pt")
    assert_same_weights(a, b)
    records = ca["teacher"]["records"]
    assert [bool(r["teacher_drives"]) for r in records] == [True, False, False]
    for r, q in zip(records, cb["teacher"]["records"]):
        assert torch.equal(r["actions"], q["actions"])
    assert ca["method"] == "teach" and ca["preset"]["teacher"]["teacher"] == "follow-evade"
    assert ca["preset"]["teacher"]["evade_share"] == 0.25
    ds = Dataset.open(trained["dataset"])
    replayed = TeacherData(dataset_scene(ds), {k: v.tolist() for k, v in ds.stats.items()}, 20, "follow-evade", 0)
    replayed.load_state(ca["teacher"])
    assert replayed.evading.any()  # the share was drawn
    assert ca["model_path"] is None and a.config.n_states == 1  # the network of --separate-ego
    rows = list(csv.DictReader(open(full / "log.csv")))
    assert [r["step"] for r in rows if r["windows"]] == ["10", "20", "25"]  # logged after each collection


def test_teacher_beside_the_costs_adds_its_weighted_imitation(trained, tmp_path):
    """--teacher beside vg's costs: at weight 0 the weights are those of plain vg (the
    collections change nothing else); at weight 1 they differ, and the imitation is logged."""
    import csv

    from policy.driver import load_policy
    from policy.train import TrainPolicyConfig, train_policy

    common = dict(method="vg", preset="tiny", quiet=True, model=str(trained["deterministic"]), val_episodes=0,
                  steps=6, separate_ego=True)
    plain = load_policy(train_policy(TrainPolicyConfig(out=str(tmp_path / "plain"), **common)) / "checkpoint.pt")[0]
    nets = {}
    for w in (0.0, 1.0):
        out = train_policy(TrainPolicyConfig(out=str(tmp_path / f"w{w}"), teacher="follow", teacher_weight=w,
                                             teacher_episodes=4, collect_every=3, **common))
        nets[w], ckpt = load_policy(out / "checkpoint.pt")
        assert len(ckpt["teacher"]["records"]) == 2  # at steps 0 and 3
        rows = list(csv.DictReader(open(out / "log.csv")))
        assert all(float(r["imitation"]) > 0 for r in rows)
    assert_same_weights(plain, nets[0.0])
    assert any(not torch.equal(x, y) for x, y in zip(plain.state_dict().values(), nets[1.0].state_dict().values()))


def test_teacher_windows_start_the_imitation_from_the_init_policys_collections(trained, tmp_path):
    """--teacher-windows: mpur from a taught network replays the 2 collections of its
    training (the same actions, relabelled), then collects with the policy at steps 0 and 3
    on episodes of its own; stopped after its first collection and resumed, it collects at
    step 3 all the same and ends with the same weights. Without --init, from a network
    trained without a teacher, or for teach itself, it is refused."""
    from data.dataset import Dataset
    from policy.driver import load_policy
    from policy.teacher import TeacherData
    from policy.train import TrainPolicyConfig, dataset_scene, train_policy
    from traffic_sim.cli_util import UserError

    taught = train_policy(TrainPolicyConfig(method="teach", preset="tiny", steps=12, quiet=True, val_episodes=0,
                                            dataset=str(trained["dataset"]), out=str(tmp_path / "teach")))
    inherited = load_policy(taught)[1]["teacher"]["records"]
    assert len(inherited) == 2
    common = dict(method="mpur", preset="tiny", quiet=True, model=str(trained["deterministic"]), val_episodes=0,
                  separate_ego=True, init=str(taught), teacher="follow-evade", teacher_episodes=4,
                  collect_every=3, teacher_windows=True)
    full = train_policy(TrainPolicyConfig(out=str(tmp_path / "full"), steps=5, **common))
    a, ckpt = load_policy(full / "checkpoint.pt")
    records = ckpt["teacher"]["records"]
    assert ckpt["teacher"]["inherited"] == 2 and len(records) == 4
    for r, q in zip(records, inherited):
        assert torch.equal(r["tracks"], q["tracks"]) and torch.equal(r["actions"], q["actions"])
    assert [bool(r["teacher_drives"]) for r in records] == [True, False, False, False]
    scene = dataset_scene(Dataset.open(trained["dataset"]))
    fresh = TeacherData(scene, ckpt["stats"], 20, "follow-evade", 0)
    for k in (2, 3):  # the episodes of the 3rd and 4th collections, not those of the 1st and 2nd
        assert np.array_equal(records[k]["tracks"].numpy(), fresh.tracks_for(k, 4))
    part = train_policy(TrainPolicyConfig(out=str(tmp_path / "part"), steps=2, **common))
    assert len(load_policy(part / "checkpoint.pt")[1]["teacher"]["records"]) == 3
    train_policy(TrainPolicyConfig(out=str(tmp_path / "part"), steps=5, resume=True, **common))
    b, resumed = load_policy(part / "checkpoint.pt")
    assert len(resumed["teacher"]["records"]) == 4
    assert_same_weights(a, b)

    untaught = train_policy(TrainPolicyConfig(method="vg", preset="tiny", quiet=True, val_episodes=0, steps=1,
                                              model=str(trained["deterministic"]), separate_ego=True,
                                              out=str(tmp_path / "vg")))
    for cfg, message in ((dict(common, init=None), "give --init"),
                         (dict(common, init=str(untaught)), "not trained with a teacher"),
                         (dict(common, method="teach", model=None, separate_ego=None, teacher_episodes=None,
                               collect_every=None), "beside another method's costs")):
        with pytest.raises(UserError, match=message):
            train_policy(TrainPolicyConfig(out=str(tmp_path / "x"), **cfg))
    assert not (tmp_path / "x").exists()


def test_teacher_options_are_checked(trained, tmp_path):
    from policy.train import TrainPolicyConfig, train_policy
    from traffic_sim.cli_util import UserError

    common = dict(preset="tiny", quiet=True, dataset=str(trained["dataset"]), out=str(tmp_path / "x"))
    for cfg, message in ((dict(method="il", teacher_weight=1.0), "applies with --teacher"),
                         (dict(method="teach", teacher_weight=1.0), "not to teach"),
                         (dict(method="teach", collect_every=0), "--collect-every must be at least 1"),
                         (dict(method="teach", separate_ego=True), "teach trains its network without a model"),
                         (dict(method="il", teacher="follow", teacher_weight=-1.0), "at least 0"),
                         (dict(method="il", evade_share=0.5), "applies with --teacher"),
                         (dict(method="teach", evade_share=-0.1), "--evade-share must be within"),
                         (dict(method="teach", merge_share=1.5), "--merge-share must be within"),
                         (dict(method="teach", evade_share=0.5, merge_share=0.6), "add up to at most 1"),
                         (dict(method="teach", brake_share=2.0), "--brake-share must be within"),
                         (dict(method="teach", brake_share=0.8), "add up to at most 1")):
        with pytest.raises(UserError, match=message):
            train_policy(TrainPolicyConfig(**cfg, **common))
    assert not (tmp_path / "x").exists()

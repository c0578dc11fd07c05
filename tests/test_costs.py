"""Proximity, lane and off-road costs on hand-built state images with known answers."""

import numpy as np
import pytest

from traffic_sim.costs import SAFE_MARGIN, SAFE_TIME, image_costs
from traffic_sim.raster import IMAGE_H, IMAGE_W, LANES_CHANNEL, PX_PER_M, VEHICLES_CHANNEL

LENGTH, WIDTH = 4.4, 1.8  # [m]


def _image_with_car_row(row):
    img = np.zeros((1, 3, IMAGE_H, IMAGE_W), dtype=np.uint8)
    img[0, VEHICLES_CHANNEL, row, 11:13] = 255
    return img


def _row_at(distance_ahead):
    """Image row whose pixel centre is ``distance_ahead`` metres ahead of the car's centre."""
    return int(round(58.5 - distance_ahead * PX_PER_M - 0.5))


def test_empty_road_costs_nothing():
    img = np.zeros((1, 3, IMAGE_H, IMAGE_W), dtype=np.uint8)
    c = image_costs(img, [10.0], [LENGTH], [WIDTH])
    assert c["proximity_cost"][0] == 0 and c["lane_cost"][0] == 0 and c["offroad_cost"][0] == 0


def test_overlapping_car_costs_one():
    c = image_costs(_image_with_car_row(58), [10.0], [LENGTH], [WIDTH])
    assert c["proximity_cost"][0] == pytest.approx(1.0)


def test_proximity_falls_linearly_to_zero_at_the_safe_distance():
    speed = 10.0  # [m/s]
    safe = SAFE_TIME * speed + SAFE_MARGIN  # 16 m beyond the car's front
    beyond = _row_at(0.5 * LENGTH + safe + 1.0)
    assert image_costs(_image_with_car_row(beyond), [speed], [LENGTH], [WIDTH])["proximity_cost"][0] == 0
    row = _row_at(0.5 * LENGTH + 0.5 * safe)
    d = 58.5 - (row + 0.5)  # [px] from the centre to that row's centre
    expected = 1.0 - (d / PX_PER_M - 0.5 * LENGTH) / safe
    got = image_costs(_image_with_car_row(row), [speed], [LENGTH], [WIDTH])["proximity_cost"][0]
    assert got == pytest.approx(expected, abs=1e-6)
    assert 0.4 < got < 0.6
    # Faster: the same car is relatively closer.
    faster = image_costs(_image_with_car_row(row), [25.0], [LENGTH], [WIDTH])["proximity_cost"][0]
    assert faster > got


def test_lane_cost_low_in_lane_high_on_a_line():
    img = np.zeros((2, 3, IMAGE_H, IMAGE_W), dtype=np.uint8)
    img[0, LANES_CHANNEL, :, [8, 9, 14, 15]] = 128  # centred in its lane (lines 3 px away)
    img[1, LANES_CHANNEL, :, [11, 12]] = 128  # a line under the car's centre
    c = image_costs(img, [10.0, 10.0], [LENGTH] * 2, [WIDTH] * 2)
    assert c["lane_cost"][0] < 0.05
    assert c["lane_cost"][1] > 0.4


def test_full_masks_agree_with_the_separable_costs():
    from traffic_sim.costs import lane_mask, proximity_mask

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (4, 3, IMAGE_H, IMAGE_W), dtype=np.uint8)
    speed, length, width = [3.0, 10.0, 0.0, 25.0], [4.0, 4.8, 12.0, 2.2], [1.8, 1.9, 2.5, 0.9]
    c = image_costs(img, speed, length, width)
    f = img.astype(float) / 255.0
    prox = (proximity_mask(speed, length, width) * f[:, VEHICLES_CHANNEL]).max(axis=(1, 2))
    lane = (lane_mask(length) * f[:, LANES_CHANNEL]).max(axis=(1, 2))
    assert c["proximity_cost"] == pytest.approx(prox, abs=1e-6)
    assert c["lane_cost"] == pytest.approx(lane, abs=1e-6)
    assert proximity_mask(10.0, 4.5, 1.8).shape == (1, IMAGE_H, IMAGE_W)  # scalars work too
    assert lane_mask(4.5).shape == (1, IMAGE_H, IMAGE_W)

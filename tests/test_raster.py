"""The batched rasteriser: objects land in the right pixels, with exact area coverage."""

import numpy as np
import pytest

from traffic_sim.raster import (IMAGE_H, IMAGE_W, LANES_CHANNEL, OFFROAD_CHANNEL, PX_PER_M,
                                VEHICLES_CHANNEL, Rasteriser)
from traffic_sim.roads import LANE_WIDTH, i80_road

ROAD = i80_road()
LANE3 = 2.5 * LANE_WIDTH  # [m] centre of lane 3


def _draw(cx, cy, boxes):
    """Images for egos at (cx, cy) with the same list of (x0, x1, y0, y1) boxes."""
    r = Rasteriser(ROAD)
    n = len(cx)
    b = np.array(boxes, dtype=float).reshape(1, -1, 4).repeat(n, axis=0)
    return r.render(np.array(cx), np.array(cy), b[..., 0], b[..., 1], b[..., 2], b[..., 3],
                    np.ones(b.shape[:2], dtype=bool))


def test_geometry_constants():
    assert PX_PER_M == pytest.approx(1.6404, abs=1e-4)  # 6 px per 12 ft lane
    assert (IMAGE_H, IMAGE_W) == (117, 24)


def test_a_car_ahead_lands_in_the_right_pixels():
    cy = 200.0
    # Car in the same lane, 10 to 14.5 m ahead of the ego's centre, 1.8 m wide.
    img = _draw([LANE3], [cy], [[LANE3 - 0.9, LANE3 + 0.9, cy + 10.0, cy + 14.5]])[0]
    veh = img[VEHICLES_CHANNEL]
    r0 = 58.5 - 14.5 * PX_PER_M  # 34.71: row coordinate of its front
    r1 = 58.5 - 10.0 * PX_PER_M  # 42.10: of its rear
    c0 = 12.0 - 0.9 * PX_PER_M  # 10.52
    assert np.all(veh[35:42, 11:13] == 255)  # fully covered pixels
    assert veh[34, 11] == round((35 - r0) * 255)  # partial row at the front
    assert veh[42, 11] == round((r1 - 42) * 255)  # partial row at the rear
    assert veh[38, 10] == round((11 - c0) * 255)  # partial column on the left
    assert veh[:34].max() == 0 and veh[43:].max() == 0
    assert veh[:, :10].max() == 0 and veh[:, 14:].max() == 0
    # Exact area: the sum of coverage is the box's area in pixels.
    assert veh.sum() / 255 == pytest.approx(4.5 * 1.8 * PX_PER_M ** 2, rel=0.01)


def test_a_car_behind_in_the_right_lane():
    cy = 200.0
    x = LANE3 + LANE_WIDTH
    img = _draw([LANE3], [cy], [[x - 0.9, x + 0.9, cy - 20.0, cy - 15.5]])[0]
    rows, cols = np.nonzero(img[VEHICLES_CHANNEL])
    assert rows.min() >= int(58.5 + 15.5 * PX_PER_M) and rows.max() <= int(58.5 + 20.0 * PX_PER_M)
    assert cols.min() >= 16 and cols.max() <= 19  # one lane (6 px) to the right


def test_lane_markings_and_off_road():
    img = _draw([LANE3, 0.5 * LANE_WIDTH], [200.0, 200.0], [])
    lanes = img[0, LANES_CHANNEL]
    # Lane 3's edges are 3 px either side of the centre: a 1 px line split over two columns.
    for col in (8, 9, 14, 15):
        assert abs(int(lanes[50, col]) - 128) <= 1
    assert lanes[50, 10:14].max() == 0
    assert img[0, OFFROAD_CHANNEL].max() == 0  # lanes 1-5 all on the road
    # Ego in lane 1: the road's left edge is 3 px to its left; everything beyond is off-road.
    off = img[1, OFFROAD_CHANNEL]
    assert np.all(off[:, :9] == 255) and np.all(off[:, 9:] == 0)


def test_on_ramp_ends():
    ramp = 6.5 * LANE_WIDTH
    end = ROAD.lane(7).y_end
    img = _draw([ramp], [end], [])[0]
    off = img[OFFROAD_CHANNEL]
    # Ahead of the ramp's end the ramp lane is off-road, behind it it is road.
    assert off[10, 12] == 255 and off[100, 12] == 0


def test_distance_to_the_end_of_a_lane_that_ends():
    from traffic_sim.roads import FT, us101_road

    end = ROAD.lane(7).y_end  # I-80's on-ramp: 800 ft, nothing goes on in its place
    ramp, lane6 = 6.5 * LANE_WIDTH, 5.5 * LANE_WIDTH
    np.testing.assert_allclose(ROAD.to_lane_end([ramp, ramp, lane6, ramp], [100.0, end - 0.5, 100.0, end + 1.0]),
                               [end - 100.0, 0.5, np.inf, np.inf])  # main lane, and off the road past the end
    # US-101's on-ramp goes on as the auxiliary lane, which goes on as the off-ramp: no lane ends
    us101 = us101_road()
    assert np.all(np.isinf(us101.to_lane_end([5.5 * LANE_WIDTH] * 3, [100 * FT, 1000 * FT, 1600 * FT])))


def test_batch_equals_one_by_one():
    boxes = [[LANE3 - 1, LANE3 + 1, 210.0, 214.0], [LANE3 + 3, LANE3 + 5, 190.0, 195.0]]
    cx = [LANE3, LANE3 + 0.7, LANE3 - 2.0]
    cy = [200.0, 205.3, 188.8]
    batch = _draw(cx, cy, boxes)
    for i in range(3):
        assert np.array_equal(batch[i], _draw([cx[i]], [cy[i]], boxes)[0])

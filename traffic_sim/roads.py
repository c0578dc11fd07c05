"""Road geometry of each NGSIM location, in the NGSIM local frame (SI units).

The local frame is the one of the NGSIM files: ``x`` is lateral, measured from the left-most
edge of the road towards the right, and ``y`` is longitudinal, measured from the entry edge of
the study area in the direction of travel. Lanes are numbered as in the files (1 = left-most).

A :class:`Road` is a set of lanes, each a rectangle ``[left, left + width] x [y_start, y_end]``;
the drivable surface is their union. Main lanes span the whole study area; an on-ramp, an
auxiliary lane or an off-ramp spans only part of it. The simulator, the rasteriser and the
generator all read the road from here, so a real US-101 file and a synthetic I-80 file drive the
same code with different roads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

FT = 0.3048  # [m/ft]
LANE_WIDTH = 12 * FT  # [m] 3.6576, every NGSIM freeway lane


@dataclass(frozen=True)
class Lane:
    """One lane: a rectangle of the road surface."""

    lane_id: int  # NGSIM Lane_ID
    left: float  # [m] lateral position of the lane's left edge
    width: float  # [m]
    y_start: float  # [m] where the lane begins (longitudinal)
    y_end: float  # [m] where the lane ends
    kind: str  # "main", "on-ramp", "auxiliary" or "off-ramp"

    @property
    def center(self) -> float:
        """[m] lateral position of the lane's centre line."""
        return self.left + 0.5 * self.width

    @property
    def right(self) -> float:
        """[m] lateral position of the lane's right edge."""
        return self.left + self.width


@dataclass(frozen=True)
class Road:
    """The drivable surface of one location's study area."""

    name: str
    length: float  # [m] study area, entry edge to exit edge
    lanes: tuple[Lane, ...]
    # The stretch where episodes are driven and judged, as in the reference benchmark: an
    # episode starts once the car is a state image's look-behind inside it and succeeds a
    # look-ahead before its end, so that its state images always lie inside recorded data.
    eval_start: float = 0.0  # [m]
    eval_end: float = float("inf")  # [m], capped at the study area's length

    def span(self, lane: Lane, beyond: float = np.inf) -> tuple[float, float]:
        """[m] longitudinal extent of a lane, where a lane reaching an end of the study area
        goes on ``beyond`` metres past it (the road does not stop at the cameras' edge)."""
        y0 = -beyond if lane.y_start <= 0.0 else lane.y_start
        y1 = self.length + beyond if lane.y_end >= self.length else lane.y_end
        return y0, y1

    def lane(self, lane_id: int) -> Lane:
        for lane in self.lanes:
            if lane.lane_id == lane_id:
                return lane
        raise KeyError(f"road {self.name!r} has no lane {lane_id}")

    @property
    def main_lanes(self) -> tuple[Lane, ...]:
        return tuple(lane for lane in self.lanes if lane.kind == "main")

    @property
    def width(self) -> float:
        """[m] lateral extent of the whole road, left edge to the right-most lane's edge."""
        return max(lane.right for lane in self.lanes)

    def lane_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """NGSIM lane id of each point (x, y) [m], 0 where the point is off the road.

        Lanes that reach an end of the study area are taken to go on beyond it."""
        x = np.asarray(x, dtype=float)[..., None]
        y = np.asarray(y, dtype=float)[..., None]
        left, right, y0, y1, ids = self._bounds
        inside = (x >= left) & (x < right) & (y >= y0) & (y <= y1)  # (..., lanes)
        first = np.argmax(inside, axis=-1)
        return np.where(inside.any(axis=-1), ids[first], 0).astype(np.int16)

    @cached_property
    def _bounds(self):
        lanes = self.lanes
        left = np.array([lane.left for lane in lanes])
        right = np.array([lane.right for lane in lanes])
        y0, y1 = np.array([self.span(lane) for lane in lanes]).T
        ids = np.array([lane.lane_id for lane in lanes])
        return left, right, y0, y1, ids

    def to_lane_end(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """[m] distance along the road from each point (x, y) to the end of the lane it lies
        in, where that lane ends inside the study area and no lane goes on in its place (an
        on-ramp that must be merged from); inf elsewhere, and off the road."""
        y = np.asarray(y, dtype=float)
        ids = self.lane_at(x, y)
        out = np.full(ids.shape, np.inf)
        for lane in self.lanes:
            end = self.span(lane)[1]
            continued = any(other.lane_id != lane.lane_id and np.isclose(other.left, lane.left)
                            and np.isclose(other.y_start, lane.y_end) for other in self.lanes)
            if np.isfinite(end) and not continued:
                mine = ids == lane.lane_id
                out[mine] = end - y[mine]
        return out

    def on_road(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True where the point (x, y) [m] lies on the drivable surface."""
        return self.lane_at(x, y) > 0


def _main_lanes(count: int, length: float) -> list[Lane]:
    return [Lane(i + 1, i * LANE_WIDTH, LANE_WIDTH, 0.0, length, "main") for i in range(count)]


def i80_road() -> Road:
    """I-80, Emeryville: 6 main lanes and the Powell St on-ramp (lane 7) merging into lane 6.

    Study area about 1,650 ft (503 m). The on-ramp runs beside lane 6 from the entry edge;
    its taper closes between about 614 and 966 ft, so ramp traffic must have merged by
    800 ft (244 m), where the ramp lane ends here.
    """
    length = 1650 * FT  # [m] 502.9
    lanes = _main_lanes(6, length)
    lanes.append(Lane(7, 6 * LANE_WIDTH, LANE_WIDTH, 0.0, 800 * FT, "on-ramp"))
    # Evaluation stretch of the reference benchmark: Local_Y 237.7 to 1,269.5 ft.
    return Road("i-80", length, tuple(lanes), eval_start=237.7 * FT, eval_end=1269.5 * FT)


def us101_road() -> Road:
    """US-101, Los Angeles: 5 main lanes and, to their right, the Ventura Blvd on-ramp (7)
    which becomes the auxiliary lane (6) and then the Cahuenga Blvd off-ramp (8).

    Study area about 2,100 ft (640 m). On-ramp up to 580 ft, auxiliary lane from 580 to
    1,400 ft, off-ramp beyond; all three in the lateral slot right of lane 5.
    """
    length = 2100 * FT  # [m] 640.1
    lanes = _main_lanes(5, length)
    slot = 5 * LANE_WIDTH  # [m] left edge of the lane right of lane 5
    lanes.append(Lane(7, slot, LANE_WIDTH, 0.0, 580 * FT, "on-ramp"))
    lanes.append(Lane(6, slot, LANE_WIDTH, 580 * FT, 1400 * FT, "auxiliary"))
    lanes.append(Lane(8, slot, LANE_WIDTH, 1400 * FT, length, "off-ramp"))
    # Evaluation stretch of the reference's US-101 map: Local_Y 311.1 to 1,828.5 ft.
    return Road("us-101", length, tuple(lanes), eval_start=311.1 * FT, eval_end=1828.5 * FT)


def synthetic_i80_road() -> Road:
    """The road of the embedded synthetic traffic: the I-80 layout, under its own name."""
    road = i80_road()
    return Road("synthetic-i80", road.length, road.lanes, road.eval_start, road.eval_end)


ROADS = {
    "i-80": i80_road,
    "us-101": us101_road,
    "synthetic-i80": synthetic_i80_road,
}


def road_for(location: str) -> Road:
    """The road of an NGSIM location ("i-80", "us-101", "synthetic-i80")."""
    try:
        return ROADS[location]()
    except KeyError:
        known = ", ".join(sorted(ROADS))
        hint = ("; pass the location explicitly (--location) if the file name does not say it"
                if location == "unknown" else "")
        raise ValueError(f"no road geometry for location {location!r} (known: {known}){hint}") from None

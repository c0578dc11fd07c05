"""Top-down pygame viewer of a controlled car driving through a replayed scene.

The window follows the controlled car along the road, drawn left to right in the direction of
travel (the driver's right is down the screen). It shows the road (lanes, markings, on-ramp),
the replayed traffic in neutral colours, the recorded vehicle the car took over as a yellow
outline at its recorded position, the controlled car in blue, a heads-up display and, in a
corner, the car's state image (channels lanes / vehicles / off-road as red / green / blue, the
direction of travel to the right).

Keys of the interactive window (:meth:`Viewer.run`):

=============  ========================================================
SPACE          pause / resume
RIGHT or ``.``  one step while paused (``.`` also while running)
``+`` / ``-``  faster / slower playback
``n``          skip to the next episode
``h``          drive by hand: UP accelerates, DOWN brakes, LEFT/RIGHT steer
``q`` / ESC    quit
=============  ========================================================

pygame is imported only by the code that draws, so this module imports without it. Headless
use (:meth:`Viewer.render_frame`, :func:`record`) needs no display.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .cli_util import doc

from .ngsim import MAX_LENGTH
from .scene import DT, Scene
from .sim import BUILTIN_POLICIES, Cars, ReplaySimulator, builtin_actions

# Colours (RGB).
BACKGROUND = (44, 66, 44)  # off-road
HUD_BG = (24, 24, 30)
ROAD = (105, 105, 105)
ROAD_OUTSIDE = (82, 82, 82)  # road beyond the recorded study area
MARKING = (235, 235, 235)
CAR = (200, 200, 196)
TRUCK = (150, 160, 176)
VEHICLE_EDGE = (40, 40, 40)
CONTROLLED = (30, 120, 255)
RECORDED = (255, 215, 0)
SUCCESS_LINE = (60, 200, 90)
TEXT = (235, 235, 235)
STATUS_COLOURS = {
    "driving": (235, 235, 235),
    "success": (80, 220, 110),
    "collision": (255, 70, 60),
    "off-road": (255, 150, 40),
    "truncated": (180, 180, 255),
}

TRUCK_LENGTH = 8.0  # [m] vehicles at least this long are drawn as trucks
DASH, GAP = 3.0, 9.0  # [m] lane-line dashes
HUD_HEIGHT = 60  # [px]
INSET_SCALE = 2  # state image pixels per inset pixel side
END_HOLD_S = 1.5  # [s] of playback an ended episode's status stays on screen
HELP = ("SPACE pause   RIGHT/. step   +/- speed   n next episode   "
        "h hand driving (arrows)   q quit")
RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # playback rates of +/-

# Hand driving.
HAND_ACCEL = 2.0  # [m/s^2] UP
HAND_BRAKE = -5.0  # [m/s^2] DOWN
HAND_YAW_RATE = 0.15  # [rad/s] LEFT / RIGHT
HAND_RECENTRE = 0.2  # fraction of the heading angle to the road given back per step


def hand_action(up: bool, down: bool, left: bool, right: bool, cars: Cars) -> np.ndarray:
    """(N, 2) action of the arrow keys: UP accelerates, DOWN brakes, nothing keeps the speed;
    LEFT / RIGHT turn at a fixed yaw rate, and with neither the car straightens up along the
    road."""
    n = len(cars.x)
    acc = np.full(n, (HAND_ACCEL if up else 0.0) + (HAND_BRAKE if down else 0.0))
    v = np.maximum(cars.v, 0.1)
    if left != right:
        steer = np.full(n, (HAND_YAW_RATE if right else -HAND_YAW_RATE)) / np.maximum(v, 1.0)
    else:
        angle = np.arctan2(cars.ux, cars.uy)  # > 0: heading to the right of the road
        steer = -HAND_RECENTRE * angle / (v * DT)
    return np.stack([acc, steer], axis=1)


def car_status(cars: Cars, i: int = 0) -> str:
    """'collision', 'off-road', 'success', 'truncated' or 'driving'."""
    for name, flags in (("collision", cars.collision), ("off-road", cars.off_road),
                        ("success", cars.success), ("truncated", cars.truncated)):
        if flags[i]:
            return name
    return "driving"


def _need_pygame():
    try:
        import pygame
    except ImportError:
        raise ValueError("the viewer needs pygame: pip install pygame-ce") from None
    return pygame


def _no_display() -> bool:
    if os.environ.get("SDL_VIDEODRIVER"):
        return False
    if sys.platform.startswith("linux"):
        return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return False


def _minus(interval, others):
    """Parts of the interval (a, b) not covered by the intervals ``others``."""
    parts = [interval]
    for c, d in others:
        nxt = []
        for a, b in parts:
            if d <= a or c >= b:
                nxt.append((a, b))
                continue
            if c > a:
                nxt.append((a, c))
            if d < b:
                nxt.append((d, b))
        parts = nxt
    return [(a, b) for a, b in parts if b - a > 1e-6]


def lane_lines(road, beyond: float = 1e4):
    """Lane markings of a road: a list of ``(x, y0, y1, kind)`` with kind ``"dashed"`` (between
    two main lanes), ``"solid"`` (between a main lane and a ramp) or ``"edge"`` (the road's
    border). Lanes reaching an end of the study area go on ``beyond`` metres past it."""
    def span(lane):
        return road.span(lane, beyond)

    lines = []
    for lane in road.lanes:
        y0, y1 = span(lane)
        left_shared, right_shared = [], []
        for other in road.lanes:
            if other is lane:
                continue
            o0, o1 = span(other)
            a, b = max(y0, o0), min(y1, o1)
            if b <= a:
                continue
            if abs(other.right - lane.left) < 1e-6:
                left_shared.append((a, b))
                kind = "dashed" if lane.kind == "main" and other.kind == "main" else "solid"
                lines.append((lane.left, a, b, kind))
            if abs(other.left - lane.right) < 1e-6:
                right_shared.append((a, b))
        for a, b in _minus((y0, y1), left_shared):
            lines.append((lane.left, a, b, "edge"))
        for a, b in _minus((y0, y1), right_shared):
            lines.append((lane.right, a, b, "edge"))
    return lines


class Viewer:
    """Replays episodes of one scene with a policy and draws them.

    ``policy``: ``"human"`` (the recorded driver's inferred actions), ``"no-action"`` (zero
    acceleration and steering) or a callable ``policy(obs_images, states, cars) -> actions``
    taking the (1, 3, 117, 24) uint8 state image, the (1, 4) state (x, y, vx, vy) and the
    :class:`~traffic_sim.sim.Cars`, returning (1, 2) actions (acceleration [m/s^2], steering
    [1/m]); if it has a ``reset(tracks)`` method, that is called at each episode's start.
    ``episodes``: track indices to drive, in order, or a split name of ``scene.episodes``
    (default: the ``"test"`` split, shuffled with ``seed``). ``fps``: simulation steps per
    second at playback rate 1 (10 is real time). ``costs_fn(sim, cars) -> {name: float}`` is
    called after each step and shown in the display.
    """

    def __init__(self, scene: Scene, policy="human", episodes=None, seed: int = 0,
                 fps: float = 10.0, size=(1200, 304), px_per_m: float = 8.0,
                 costs_fn: Optional[Callable] = None, anchor: float = 0.4,
                 end_hold_s: float = END_HOLD_S):
        self.scene = scene
        self.sim = ReplaySimulator(scene)
        if isinstance(policy, str) and policy not in BUILTIN_POLICIES:
            raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(BUILTIN_POLICIES)} or a callable")
        self.policy = policy
        if episodes is None or isinstance(episodes, str):
            split = episodes or ("test" if len(scene.episodes.get("test", ())) else "all")
            if split not in scene.episodes:
                raise ValueError(f"no episode split {split!r} (have {sorted(scene.episodes)})")
            episodes = np.random.default_rng(seed).permutation(scene.episodes[split])
        self.episodes = np.asarray(episodes, dtype=np.int64).ravel()
        if len(self.episodes) == 0:
            raise ValueError("no episodes to show")
        if self.episodes.min() < 0 or self.episodes.max() >= scene.n_tracks:
            raise ValueError(f"episode track ids must lie in [0, {scene.n_tracks})")
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        room = self.size[1] - HUD_HEIGHT - 8
        self.px_per_m = float(min(px_per_m, room / scene.road.width)) if room > 0 else px_per_m
        self.road_top = HUD_HEIGHT + 0.5 * (self.size[1] - HUD_HEIGHT - scene.road.width * self.px_per_m)
        self.anchor = anchor
        self.costs_fn = costs_fn
        self.end_hold_steps = max(int(round(end_hold_s * self.fps)), 0)
        self.lines = lane_lines(scene.road)
        # Interaction state.
        self.paused = False
        self.hand = False
        self.rate_index = RATES.index(1.0)
        self.keys = dict(up=False, down=False, left=False, right=False)
        self.results: list[dict] = []  # one per finished episode
        self.finished = False
        self.show_help = False  # key help at the bottom (on in the interactive window)
        self._surface = None
        self._fonts = None
        self.episode_index = -1
        self.start_episode(0)

    # ------------------------------------------------------------- episodes
    @property
    def rate(self) -> float:
        return RATES[self.rate_index]

    @property
    def track(self) -> int:
        return int(self.cars.track[0])

    @property
    def status(self) -> str:
        return car_status(self.cars)

    def start_episode(self, index: int) -> None:
        """Start episode ``index`` of :attr:`episodes` (past the last: :attr:`finished`)."""
        if index >= len(self.episodes):
            self.finished = True
            return
        self.episode_index = index
        self.cars = self.sim.start(self.episodes[index:index + 1])
        self.obs = self.sim.observe(self.cars)
        self.last_action = np.zeros(2)
        self.costs: dict = {}
        self.hold = self.end_hold_steps
        if not isinstance(self.policy, str) and hasattr(self.policy, "reset"):
            self.policy.reset(self.cars.track.copy())

    def next_episode(self) -> None:
        self.start_episode(self.episode_index + 1)

    def _record_result(self) -> None:
        c = self.cars
        self.results.append(dict(episode=self.episode_index, track=self.track, status=self.status,
                                 steps=int(c.steps[0]), distance=float(c.distance[0])))

    def actions(self) -> np.ndarray:
        """(1, 2) action of the current driver: the arrow keys in hand mode, else the policy."""
        if self.hand:
            return hand_action(self.keys["up"], self.keys["down"], self.keys["left"],
                               self.keys["right"], self.cars)
        if isinstance(self.policy, str):
            return builtin_actions(self.sim, self.cars, self.policy)
        out = self.policy(self.obs, self.cars.state_vector(), self.cars)
        return np.asarray(out, dtype=float).reshape(1, 2)

    def step(self) -> str:
        """One tick: a simulation step while the episode runs; once it has ended, its status
        stays for ``end_hold_s`` of playback and then the next episode starts. Returns the
        status after the tick ("finished" after the last episode)."""
        if self.finished:
            return "finished"
        if self.cars.done[0]:
            if self.hold > 0:
                self.hold -= 1
            else:
                self.next_episode()
            return "finished" if self.finished else self.status
        action = self.actions()
        self.last_action = action[0].copy()
        self.obs = self.sim.step(self.cars, action, observe=True)
        if self.costs_fn is not None:
            costs = self.costs_fn(self.sim, self.cars)
            self.costs = {k: float(np.asarray(v).ravel()[0]) for k, v in dict(costs).items()}
        if self.cars.done[0]:
            self._record_result()
            if self.hold == 0:
                self.next_episode()
        return "finished" if self.finished else self.status

    # --------------------------------------------------------------- drawing
    def _camera_y0(self) -> float:
        """[m] road position at the window's left edge."""
        return float(self.cars.center_y[0]) - self.anchor * self.size[0] / self.px_per_m

    def to_screen(self, x, y):
        """Screen pixel coordinates (sx, sy) of road points (x lateral, y longitudinal) [m]."""
        sx = (np.asarray(y, dtype=float) - self._camera_y0()) * self.px_per_m
        sy = self.road_top + np.asarray(x, dtype=float) * self.px_per_m
        return sx, sy

    def _box(self, x, y, ux, uy, length, width):
        """Screen corners (4, 2) of a vehicle box given by front centre and heading."""
        nx, ny = uy, -ux  # right-hand normal
        hw = 0.5 * width
        cx = np.array([x + nx * hw, x - nx * hw, x - ux * length - nx * hw, x - ux * length + nx * hw])
        cy = np.array([y + ny * hw, y - ny * hw, y - uy * length - ny * hw, y - uy * length + ny * hw])
        sx, sy = self.to_screen(cx, cy)
        return list(zip(sx.tolist(), sy.tolist()))

    def _font(self, size):
        import pygame

        if self._fonts is None:
            self._fonts = {}
            if not pygame.font.get_init():
                pygame.font.init()
        if size not in self._fonts:
            self._fonts[size] = pygame.font.Font(None, size)
        return self._fonts[size]

    def _text(self, surf, text, pos, size=18, colour=TEXT, centre=False):
        img = self._font(size).render(text, True, colour)
        rect = img.get_rect()
        if centre:
            rect.center = pos
        else:
            rect.topleft = pos
        surf.blit(img, rect)
        return rect

    def _draw_road(self, surf) -> None:
        import pygame

        sc, ppm = self.scene, self.px_per_m
        w, _ = self.size
        y0 = self._camera_y0()
        y1 = y0 + w / ppm
        road = sc.road
        for lane in road.lanes:
            a, b = road.span(lane, 1e4)
            for lo, hi, colour in ((a, min(b, 0.0), ROAD_OUTSIDE), (max(a, 0.0), min(b, road.length), ROAD),
                                   (max(a, road.length), b, ROAD_OUTSIDE)):
                lo, hi = max(lo, y0 - 1), min(hi, y1 + 1)
                if hi <= lo:
                    continue
                sx0, sy0 = (int(round(float(v))) for v in self.to_screen(lane.left, lo))
                sx1, sy1 = (int(round(float(v))) for v in self.to_screen(lane.right, hi))
                pygame.draw.rect(surf, colour, pygame.Rect(sx0, sy0, sx1 - sx0, sy1 - sy0))
        # Lane markings.
        thick = max(1, round(0.15 * ppm))
        for x, a, b, kind in self.lines:
            a, b = max(a, y0 - 1), min(b, y1 + 1)
            if b <= a:
                continue
            if kind == "dashed":
                k0 = np.floor(a / (DASH + GAP))
                starts = (k0 + np.arange(int((b - a) / (DASH + GAP)) + 2)) * (DASH + GAP)
                segs = [(max(s, a), min(s + DASH, b)) for s in starts if s < b and s + DASH > a]
                width = thick
            else:
                segs = [(a, b)]
                width = thick if kind == "solid" else thick + 1
            for s0, s1 in segs:
                (sx0, sx1), (sy, _) = self.to_screen([x, x], [s0, s1])
                pygame.draw.line(surf, MARKING, (sx0, sy), (sx1, sy), width)
        # Study-area ends and the success line, across the road.
        top, bottom = self.road_top, self.road_top + road.width * ppm
        for y, colour in ((0.0, MARKING), (road.length, MARKING), (sc.success_y, SUCCESS_LINE)):
            if y0 <= y <= y1:
                sx, _ = self.to_screen(0.0, y)
                if colour == SUCCESS_LINE:
                    pygame.draw.line(surf, colour, (sx, top), (sx, bottom), 3)
                else:  # dotted: the recorded data ends here
                    for t in np.arange(top, bottom, 8):
                        pygame.draw.line(surf, colour, (sx, t), (sx, min(t + 4, bottom)), 1)

    def _draw_vehicles(self, surf) -> None:
        import pygame

        sc = self.scene
        frame = int(min(self.cars.frame[0], sc.n_frames - 1))
        w = self.size[0]
        y0 = self._camera_y0()
        y1 = y0 + w / self.px_per_m
        rows = sc.rows_of_frame(frame)
        ys = sc.y[rows]
        lo, hi = np.searchsorted(ys, [y0 - 1.0, y1 + MAX_LENGTH])  # rows are sorted by front y
        me = self.track
        for r in range(rows.start + lo, rows.start + hi):
            if sc.track[r] == me:
                continue  # the controlled car took this vehicle's place
            pts = self._box(sc.x[r], sc.y[r], sc.ux[r], sc.uy[r], sc.length[r], sc.width[r])
            fill = TRUCK if sc.length[r] >= TRUCK_LENGTH else CAR
            pygame.draw.polygon(surf, fill, pts)
            pygame.draw.polygon(surf, VEHICLE_EDGE, pts, 1)
            # Windscreen: shows the heading.
            pygame.draw.line(surf, VEHICLE_EDGE, *self._windscreen(pts, sc.length[r]), 2)
        c = self.cars
        car = self._box(c.x[0], c.y[0], c.ux[0], c.uy[0], c.length[0], c.width[0])
        pygame.draw.polygon(surf, CONTROLLED, car)
        edge = STATUS_COLOURS["collision"] if c.collision[0] else (10, 40, 110)
        pygame.draw.polygon(surf, edge, car, 2)
        pygame.draw.line(surf, (200, 225, 255), *self._windscreen(car, c.length[0]), 2)
        # The recorded vehicle at the same frame, as an outline over everything.
        k = me
        r0, r1 = sc.tr_start[k], sc.tr_start[k + 1]
        r = r0 + frame - int(sc.tr_frame[r0])
        if r0 <= r < r1:
            ghost = self._box(sc.tr_x[r], sc.tr_y[r], sc.tr_ux[r], sc.tr_uy[r],
                              sc.track_length[k], sc.track_width[k])
            pygame.draw.polygon(surf, RECORDED, ghost, 2)

    @staticmethod
    def _windscreen(pts, length):
        """Screen segment across the car a fifth of its length behind the front."""
        f = min(0.25, 1.2 / max(float(length), 1e-3))
        (fx0, fy0), (fx1, fy1), (rx1, ry1), (rx0, ry0) = pts
        a = (fx0 + f * (rx0 - fx0), fy0 + f * (ry0 - fy0))
        b = (fx1 + f * (rx1 - fx1), fy1 + f * (ry1 - fy1))
        return a, b

    def _draw_inset(self, surf):
        import pygame

        img = self.obs[0]  # (3, 117, 24): rows ahead -> behind, columns left -> right
        arr = np.ascontiguousarray(img.transpose(1, 2, 0)[::-1])  # (117 along, 24 across, 3)
        small = pygame.surfarray.make_surface(arr)
        big = pygame.transform.scale(small, (arr.shape[0] * INSET_SCALE, arr.shape[1] * INSET_SCALE))
        w = self.size[0]
        pos = (w - big.get_width() - 8, 6)
        surf.blit(big, pos)
        pygame.draw.rect(surf, (120, 120, 130), big.get_rect(topleft=pos).inflate(2, 2), 1)
        return pos

    def _draw_hud(self, surf) -> None:
        import pygame

        w, h = self.size
        pygame.draw.rect(surf, HUD_BG, pygame.Rect(0, 0, w, HUD_HEIGHT))
        c, sc = self.cars, self.scene
        acc, steer = self.last_action
        frame = int(c.frame[0])
        line1 = (f"t {c.steps[0] * DT:6.1f} s   frame {frame}   speed {c.v[0] * 3.6:5.1f} km/h   "
                 f"acc {acc:+5.2f} m/s\u00b2   steer {steer:+.4f} 1/m   "
                 f"distance {c.distance[0]:6.1f} m")
        driver = "HAND (arrows)" if self.hand else (
            self.policy if isinstance(self.policy, str) else getattr(self.policy, "__name__", "policy"))
        line2 = (f"episode {self.episode_index + 1}/{len(self.episodes)}   track {self.track} "
                 f"(vehicle {sc.track_vehicle_id[self.track]})   driver {driver}   "
                 f"x{self.rate:g}" + ("   PAUSED" if self.paused else ""))
        self._text(surf, line1, (8, 5))
        self._text(surf, line2, (8, 23))
        status = self.status
        r = self._text(surf, f"status: {status}", (8, 41), colour=STATUS_COLOURS[status])
        if self.costs:
            costs = "   ".join(f"{k} {v:.3g}" for k, v in self.costs.items())
            self._text(surf, "costs: " + costs, (r.right + 20, 41))
        self._draw_inset(surf)
        if status != "driving":
            cx, cy = w // 2, int(self.road_top + 0.5 * sc.road.width * self.px_per_m)
            label = status.upper()
            img = self._font(48).render(label, True, STATUS_COLOURS[status])
            box = img.get_rect(center=(cx, cy)).inflate(24, 10)
            pygame.draw.rect(surf, HUD_BG, box)
            surf.blit(img, img.get_rect(center=(cx, cy)))
        if self.show_help:
            self._text(surf, HELP, (8, h - 15), size=16, colour=(200, 200, 200))
        if self.finished:
            self._text(surf, f"all {len(self.episodes)} episodes done: q quits", (w // 2, h - 12),
                       size=20, centre=True)

    def draw(self, surf) -> None:
        """Draw the current state onto a pygame surface of :attr:`size`."""
        surf.fill(BACKGROUND)
        self._draw_road(surf)
        self._draw_vehicles(surf)
        self._draw_hud(surf)

    def render_frame(self) -> np.ndarray:
        """The current view as an (H, W, 3) uint8 RGB array (no window needed)."""
        pygame = _need_pygame()
        if self._surface is None:
            self._surface = pygame.Surface(self.size)
        self.draw(self._surface)
        return np.ascontiguousarray(pygame.surfarray.array3d(self._surface).transpose(1, 0, 2))

    def save_frame(self, path) -> None:
        """Draw the current view into an image file (PNG, or anything pygame can write)."""
        pygame = _need_pygame()
        if self._surface is None:
            self._surface = pygame.Surface(self.size)
        self.draw(self._surface)
        pygame.image.save(self._surface, str(path))

    # ------------------------------------------------------------ interaction
    def handle_key(self, key: str) -> bool:
        """Apply one key press, by name (``"space"``, ``"right"``, ``"."``, ``"+"``, ``"-"``,
        ``"n"``, ``"h"``, ``"q"``, ``"escape"``); returns False when the key asks to quit."""
        if key in ("q", "escape"):
            return False
        if key == "space":
            self.paused = not self.paused
        elif key == "." or (key == "right" and self.paused):
            self.step()
        elif key in ("+", "="):
            self.rate_index = min(self.rate_index + 1, len(RATES) - 1)
        elif key == "-":
            self.rate_index = max(self.rate_index - 1, 0)
        elif key == "n":
            if not self.finished:
                if not self.cars.done[0]:
                    self.results.append(dict(episode=self.episode_index, track=self.track,
                                             status="skipped", steps=int(self.cars.steps[0]),
                                             distance=float(self.cars.distance[0])))
                self.next_episode()
        elif key == "h":
            self.hand = not self.hand
        return True

    def run(self, max_steps: Optional[int] = None) -> list:
        """Open the window and play until ``q``/ESC, the window is closed, or ``max_steps``
        ticks have run; returns :attr:`results` (one dict per finished episode)."""
        pygame = _need_pygame()
        if _no_display():
            raise ValueError("no display to open a window on: record to a file instead "
                             "(e.g. record='out.gif')")
        pygame.init()
        try:
            screen = pygame.display.set_mode(self.size)
        except pygame.error as exc:
            pygame.quit()
            raise ValueError(f"cannot open a window: {exc}; record to a file instead") from None
        pygame.display.set_caption("traffic viewer")
        names = {pygame.K_SPACE: "space", pygame.K_RIGHT: "right", pygame.K_PERIOD: ".",
                 pygame.K_PLUS: "+", pygame.K_EQUALS: "+", pygame.K_KP_PLUS: "+",
                 pygame.K_MINUS: "-", pygame.K_KP_MINUS: "-", pygame.K_n: "n", pygame.K_h: "h",
                 pygame.K_q: "q", pygame.K_ESCAPE: "escape"}
        clock = pygame.time.Clock()
        self.show_help = True
        self._surface = pygame.Surface(self.size)
        ticks, owed = 0, 0.0
        running = True
        try:
            while running:
                for event in pygame.event.get():
                    if event.type == pygame.QUIT:
                        running = False
                    elif event.type == pygame.KEYDOWN:
                        name = names.get(event.key) or {"+": "+", "-": "-"}.get(event.unicode)
                        if name and not self.handle_key(name):
                            running = False
                pressed = pygame.key.get_pressed()
                self.keys.update(up=pressed[pygame.K_UP], down=pressed[pygame.K_DOWN],
                                 left=pressed[pygame.K_LEFT], right=pressed[pygame.K_RIGHT])
                steps_per_s = self.fps * self.rate
                draw_hz = max(30.0, min(steps_per_s, 60.0))
                if not self.paused and not self.finished:
                    owed += steps_per_s / draw_hz
                    while owed >= 1.0 and running:
                        owed -= 1.0
                        self.step()
                        ticks += 1
                        if max_steps is not None and ticks >= max_steps:
                            running = False
                self.draw(self._surface)
                screen.blit(self._surface, (0, 0))
                pygame.display.flip()
                clock.tick(draw_hz if not self.paused else 30)
        finally:
            pygame.display.quit()
        return self.results

    def record(self, path, max_steps: Optional[int] = None) -> Path:
        """Play without a window and write every tick's frame to ``path``: a ``.gif`` (needs
        Pillow), an ``.mp4`` (needs imageio with ffmpeg, or an ``ffmpeg`` program) or a
        folder of PNG frames (any other path without a suffix). Stops after ``max_steps``
        ticks or the last episode. Returns ``path``."""
        path = Path(path)
        if path.exists() and not path.suffix and not path.is_dir():
            raise ValueError(f"{path} exists and is not a folder")
        # Written under a temporary name beside the target, renamed when complete.
        tmp = path.with_name(f".{path.name}-{os.getpid()}-tmp{path.suffix}")
        writer = _frame_writer(tmp, self.size, self.fps)  # fails before any work
        if _no_display():
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        ticks = 0
        try:
            try:
                while True:
                    writer.add(self.render_frame())
                    if self.finished or (max_steps is not None and ticks + 1 >= max_steps):
                        break
                    self.step()
                    ticks += 1
            finally:
                writer.close()
            if path.is_dir():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink(missing_ok=True)
        return path


# ------------------------------------------------------------------ recording
class _PngFolder:
    def __init__(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        self.path, self.n = path, 0

    def add(self, frame: np.ndarray) -> None:
        pygame = _need_pygame()
        surf = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        pygame.image.save(surf, str(self.path / f"frame_{self.n:05d}.png"))
        self.n += 1

    def close(self) -> None:
        pass


class _Gif:
    """Frames are kept (palette-compressed, about 1/3 of RGB) until the file is written:
    meant for clips of an episode or two."""

    def __init__(self, path: Path, fps: float):
        from PIL import Image

        self.Image, self.path, self.fps, self.frames = Image, path, fps, []

    def add(self, frame: np.ndarray) -> None:
        img = self.Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
        self.frames.append(img.convert("P", palette=self.Image.Palette.ADAPTIVE, colors=128))

    def close(self) -> None:
        if self.frames:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.frames[0].save(self.path, format="GIF", save_all=True,
                                append_images=self.frames[1:],
                                duration=int(round(1000.0 / self.fps)), loop=0)


class _Mp4:
    def __init__(self, path: Path, size, fps: float, use_imageio: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        if use_imageio:
            import imageio.v2 as imageio

            self.writer = imageio.get_writer(str(path), fps=fps)
            self.proc = None
        else:
            w, h = size
            cmd = [shutil.which("ffmpeg"), "-y", "-loglevel", "error", "-f", "rawvideo",
                   "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-",
                   "-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", str(path)]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
            self.writer = None

    def add(self, frame: np.ndarray) -> None:
        if self.proc is not None:
            self.proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        else:
            self.writer.append_data(frame)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            if self.proc.wait() != 0:
                raise ValueError("ffmpeg failed to write the video")
        else:
            self.writer.close()


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _frame_writer(path: Path, size, fps: float):
    suffix = path.suffix.lower()
    _need_pygame()
    if suffix == ".gif":
        if not _has_module("PIL"):
            raise ValueError("writing a .gif needs Pillow: pip install pillow (or record to a folder)")
        return _Gif(path, fps)
    if suffix == ".mp4":
        if _has_module("imageio") and _has_module("imageio_ffmpeg"):
            return _Mp4(path, size, fps, use_imageio=True)
        if shutil.which("ffmpeg"):
            return _Mp4(path, size, fps, use_imageio=False)
        raise ValueError("writing an .mp4 needs imageio-ffmpeg or an ffmpeg program: "
                         "pip install imageio imageio-ffmpeg (or record to a .gif or a folder)")
    if suffix:
        raise ValueError(f"cannot record to {suffix!r}: use a .gif, an .mp4 or a folder for PNG frames")
    return _PngFolder(path)


def record(scene: Scene, path, policy="human", episodes=None, max_steps: Optional[int] = None,
           **viewer_kwargs) -> Path:
    """Record episodes without a window to ``path`` (``.gif``, ``.mp4`` or a folder of PNG
    frames); ``viewer_kwargs`` go to :class:`Viewer`. Returns ``path``."""
    if _no_display():
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    viewer = Viewer(scene, policy=policy, episodes=episodes, **viewer_kwargs)
    return viewer.record(path, max_steps=max_steps)


def watch(scene: Scene, policy="human", episodes=None, record: Optional[str] = None,
          max_steps: Optional[int] = None, seed: int = 0, fps: float = 10.0, size=(1200, 304),
          costs_fn: Optional[Callable] = None):
    """Watch episodes in a window, or record them to ``record`` (see :func:`record`).

    Returns the recording's path when recording, else the list of episode results."""
    kwargs = dict(seed=seed, fps=fps, size=size, costs_fn=costs_fn)
    if record:
        if _no_display():
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        viewer = Viewer(scene, policy=policy, episodes=episodes, **kwargs)
        return viewer.record(record, max_steps=max_steps)
    return Viewer(scene, policy=policy, episodes=episodes, **kwargs).run(max_steps=max_steps)


class EnvRenderer:
    """Draws the state of a Gymnasium environment's car with the viewer's drawing code:
    ``draw(cars, image, action)`` returns the (H, W, 3) frame and, with ``window=True``, also
    shows it in a pygame window."""

    def __init__(self, scene: Scene, window: bool = False, size=(1200, 304)):
        self.viewer = Viewer(scene, policy="no-action", episodes=scene.episodes["all"][:1],
                             size=size)
        self.window = None
        if window:
            pygame = _need_pygame()
            if _no_display():
                raise ValueError("no display for render_mode='human': use 'rgb_array'")
            pygame.display.init()
            self.window = pygame.display.set_mode(self.viewer.size)
            pygame.display.set_caption("traffic_sim")
        self.clock = None

    def draw(self, cars: Cars, image: np.ndarray, action) -> np.ndarray:
        v = self.viewer
        v.cars = cars
        v.obs = np.asarray(image)[None]
        v.last_action = np.asarray(action, dtype=float)
        frame = v.render_frame()
        if self.window is not None:
            import pygame

            pygame.event.pump()
            self.window.blit(v._surface, (0, 0))
            pygame.display.flip()
            if self.clock is None:
                self.clock = pygame.time.Clock()
            self.clock.tick(v.fps)
        return frame

    def close(self) -> None:
        if self.window is not None:
            import pygame

            pygame.display.quit()
            self.window = None


@dataclass(frozen=True)
class WatchConfig:
    """Watch a car drive in replayed traffic (pygame window, or --record to a file)."""

    policy: str = doc("driver of the blue car: human, no-action, follow, follow-merge, follow-evade, follow-yield, follow-wait, mpc, a policy checkpoint "
                      "(file or train-policy folder) or checkpoints joined by + (their mean action)", "human")
    split: str = doc("episode split: train, val, test or all", "test")
    trajectories: Optional[str] = doc("trajectory file (default: the embedded synthetic traffic)", None)
    location: Optional[str] = doc("location, for files that do not say it (i-80, us-101)", None)
    record: Optional[str] = doc("write a video instead of opening a window: out.gif, out.mp4 "
                                "or a folder of PNG frames", None)
    max_steps: Optional[int] = doc("stop after this many simulation steps", None)
    episodes: Optional[int] = doc("number of episodes to show (default: all of the split in a "
                                  "window, 1 when recording)", None)
    seed: int = doc("order of the episodes", 0)
    model: Optional[str] = doc("forward model for mpc (default: <artifacts>/models/stochastic-default)", None)


def state_costs(sim: ReplaySimulator, cars: Cars) -> dict:
    """The costs of the cars' current state images (the HUD's default)."""
    from .costs import image_costs

    costs = image_costs(sim.observe(cars), cars.v, cars.length, cars.width)
    return {"proximity": costs["proximity_cost"], "lane": costs["lane_cost"],
            "off-road": costs["offroad_cost"]}


def watch_command(cfg: WatchConfig) -> str:
    from .cli_util import UserError
    from .loading import load_scene

    from .evaluate import _learned

    if cfg.policy not in BUILTIN_POLICIES and not _learned(cfg.policy):
        raise UserError(f"unknown policy {cfg.policy!r}: choose {', '.join(BUILTIN_POLICIES)}, mpc, the "
                        "path of a policy checkpoint or several joined by +")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {cfg.max_steps}")
    if cfg.episodes is not None and cfg.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {cfg.episodes}")
    if cfg.record is None and _no_display():
        raise UserError("no display to open a window on: use --record out.gif (or out.mp4, or a folder)")
    scene = load_scene(cfg.trajectories, cfg.location, quiet=False)
    if cfg.split not in scene.episodes or len(scene.episodes[cfg.split]) == 0:
        raise UserError(f"no episodes in split {cfg.split!r}")
    count = cfg.episodes or (1 if cfg.record is not None else None)
    episodes = np.random.default_rng(cfg.seed).permutation(scene.episodes[cfg.split])[:count]
    policy, costs_fn = cfg.policy, state_costs
    if policy not in BUILTIN_POLICIES:
        from policy.driver import make_driver

        policy = make_driver(cfg.policy, scene, "cpu", cfg.model)

        def costs_fn(sim, cars, driver=policy):
            costs = state_costs(sim, cars)
            u = driver.uncertainty()
            if u is not None:
                costs["uncertainty"] = u
            return costs

    result = watch(scene, policy=policy, episodes=episodes, record=cfg.record,
                   max_steps=cfg.max_steps, seed=cfg.seed, costs_fn=costs_fn)
    if cfg.record is not None:
        return f"wrote {result}"
    return "\n".join(f"episode {r['episode']}: track {r['track']} {r['status']} after "
                     f"{r['distance']:.0f} m" for r in result)

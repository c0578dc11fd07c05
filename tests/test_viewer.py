"""The pygame viewer, headless: what a frame shows, recording to files, and the episode loop."""

import importlib.util
import os

os.environ["SDL_VIDEODRIVER"] = "dummy"

import numpy as np
import pytest

pygame = pytest.importorskip("pygame")

from traffic_sim.generator import GeneratorConfig, generate
from traffic_sim.scene import Scene
from traffic_sim.viewer import (CONTROLLED, HUD_HEIGHT, RECORDED, ROAD, Viewer, hand_action,
                                lane_lines, record, watch)


@pytest.fixture(scope="module")
def scene():
    df = generate(GeneratorConfig(minutes=1.0, seed=1, warmup_s=300))
    return Scene.from_table(df)


def _mask(img, colour, tol=12):
    return (np.abs(img.astype(int) - np.array(colour)) <= tol).all(axis=-1)


def test_frame_shows_road_controlled_car_and_recorded_car(scene, tmp_path):
    viewer = Viewer(scene, policy="human", seed=0)
    path = tmp_path / "frame.png"
    viewer.save_frame(path)
    img = pygame.surfarray.array3d(pygame.image.load(str(path))).transpose(1, 0, 2)
    h, w, _ = img.shape
    assert (w, h) == viewer.size
    assert _mask(img, ROAD, tol=0).mean() > 0.2  # much of the window is road surface

    # At the handover the controlled car sits on its recorded vehicle, at the camera anchor.
    c = viewer.cars
    sx, sy = viewer.to_screen(c.center_x[0], c.center_y[0])
    assert abs(sx - viewer.anchor * w) < 1.0
    sx, sy = int(round(float(sx))), int(round(float(sy)))
    box = img[sy - 12:sy + 13, sx - 30:sx + 31]
    assert _mask(box, CONTROLLED).sum() > 50
    assert _mask(box, RECORDED).sum() > 20
    # Nowhere else on the road view: one controlled car, one recorded car.
    view = img[HUD_HEIGHT:]
    assert _mask(view, CONTROLLED).sum() == _mask(box, CONTROLLED).sum()
    assert _mask(view, RECORDED).sum() == _mask(box, RECORDED).sum()
    assert np.array_equal(viewer.render_frame(), img)


def test_recorded_car_drifts_from_a_car_without_actions(scene):
    viewer = Viewer(scene, policy="no-action", episodes=scene.episodes["test"][:1])
    sc = scene
    for _ in range(30):
        viewer.step()
    if viewer.cars.done[0]:
        pytest.skip("episode too short")
    img = viewer.render_frame()[HUD_HEIGHT:]
    blue = np.argwhere(_mask(img, CONTROLLED))
    yellow = np.argwhere(_mask(img, RECORDED))
    k = viewer.track
    r = sc.tr_start[k] + int(viewer.cars.frame[0]) - sc.tr_frame[sc.tr_start[k]]
    gx, _ = viewer.to_screen(sc.tr_x[r], sc.tr_y[r])  # recorded front, on screen
    assert len(blue) and len(yellow)
    assert abs(yellow[:, 1].max() - gx) <= 3


def test_lane_lines_of_the_i80_road(scene):
    lines = lane_lines(scene.road)
    kinds = {k for *_, k in lines}
    assert kinds == {"dashed", "solid", "edge"}
    # The on-ramp (lane 7) is separated from lane 6 by a solid line where it runs beside it.
    ramp = scene.road.lane(7)
    assert any(k == "solid" and abs(x - ramp.left) < 1e-6 and b == ramp.y_end
               for x, a, b, k in lines)


def test_record_png_folder_and_gif(scene, tmp_path):
    out = record(scene, tmp_path / "frames", policy="human", max_steps=5, size=(400, 200))
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"frame_{i:05d}.png" for i in range(5)]
    assert pygame.image.load(str(files[0])).get_size() == (400, 200)
    if importlib.util.find_spec("PIL") is None:
        with pytest.raises(ValueError, match="Pillow"):
            record(scene, tmp_path / "out.gif", max_steps=3)
        return
    from PIL import Image

    gif = record(scene, tmp_path / "out.gif", policy="no-action", max_steps=4, size=(400, 200))
    with Image.open(gif) as im:
        assert im.n_frames == 4 and im.size == (400, 200)


def test_record_rejects_unknown_formats(scene, tmp_path):
    with pytest.raises(ValueError, match="avi"):
        record(scene, tmp_path / "out.avi", max_steps=2)
    assert not (tmp_path / "out.avi").exists()


def test_watch_records_when_asked(scene, tmp_path):
    out = watch(scene, policy="no-action", episodes=scene.episodes["test"][:1],
                record=str(tmp_path / "w"), max_steps=3, size=(300, 200))
    assert len(list(out.glob("*.png"))) == 3


def test_episode_ends_shows_its_status_then_goes_on(scene):
    episodes = scene.episodes["test"][:2]
    viewer = Viewer(scene, policy="no-action", episodes=episodes, fps=10, end_hold_s=0.3)
    assert viewer.status == "driving"
    statuses = []
    for _ in range(3000):
        statuses.append(viewer.step())
        if viewer.finished:
            break
    assert viewer.finished and statuses[-1] == "finished"
    assert [r["track"] for r in viewer.results] == list(episodes)
    ended = [s for s in statuses if s not in ("driving", "finished")]
    assert ended and set(ended) <= {"collision", "off-road", "success", "truncated"}
    # The end of each episode stays on screen for the hold (3 ticks), then the next starts.
    first_end = statuses.index(ended[0])
    assert statuses[first_end:first_end + 4] == [ended[0]] * 4
    assert viewer.render_frame().shape == (304, 1200, 3)


def test_keys_and_hand_driving(scene):
    viewer = Viewer(scene, policy="human", episodes=scene.episodes["test"][:3])
    assert viewer.handle_key("space") and viewer.paused
    viewer.handle_key("right")  # single step while paused
    assert viewer.cars.steps[0] == 1
    viewer.handle_key("+")
    assert viewer.rate == 2.0
    viewer.handle_key("-"), viewer.handle_key("-")
    assert viewer.rate == 0.5
    viewer.handle_key("h")
    viewer.keys.update(up=True, right=True)
    v0 = viewer.cars.v[0]
    viewer.handle_key(".")
    assert viewer.last_action[0] > 0 and viewer.last_action[1] > 0  # accelerate, turn right
    assert viewer.cars.v[0] > v0
    viewer.handle_key("n")
    assert viewer.episode_index == 1 and viewer.results[-1]["status"] == "skipped"
    assert not viewer.handle_key("q")


def test_hand_action_straightens_up_without_steering(scene):
    from traffic_sim.sim import ReplaySimulator

    sim = ReplaySimulator(scene)
    cars = sim.start(scene.episodes["test"][:1])
    cars.ux[:], cars.uy[:] = np.sin(0.1), np.cos(0.1)  # heading right of the road
    a = hand_action(False, False, False, False, cars)
    assert a[0, 0] == 0 and a[0, 1] < 0


def test_policy_callable_and_costs(scene):
    seen = []

    def policy(obs, states, cars):
        seen.append((obs.shape, obs.dtype, states.shape))
        return np.array([[0.5, 0.0]])

    viewer = Viewer(scene, policy=policy, episodes=scene.episodes["test"][:1],
                    costs_fn=lambda sim, cars: {"speed": cars.v})
    viewer.step()
    assert seen == [((1, 3, 117, 24), np.uint8, (1, 4))]
    assert viewer.costs["speed"] == pytest.approx(viewer.cars.v[0])
    assert np.allclose(viewer.last_action, [0.5, 0.0])


def test_interactive_loop_runs_headless(scene):
    results = watch(scene, policy="human", episodes=scene.episodes["test"][:1], max_steps=5,
                    fps=200)
    assert results == []

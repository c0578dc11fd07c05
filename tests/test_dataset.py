"""The dataset builder and reader: format, alignment, splits, stats, sampling, atomic builds."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import data.build as build_mod
from data.build import BuildConfig, build_dataset, ensure_dataset, split_episodes
from traffic_sim.scene import track_split
from data.dataset import (Dataset, WindowSampler, denormalise_actions, denormalise_states,
                          normalise_actions, normalise_states)
from traffic_sim.cli_util import UserError
from traffic_sim.commands import GenerateConfig, generate_command
from traffic_sim.loading import load_scene
from traffic_sim.sim import ReplaySimulator, kinematic_step

N_EP = 40  # episodes of the small test datasets


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds-traffic")
    return generate_command(GenerateConfig(out=str(out), minutes=1.0, seed=5, quiet=True))


@pytest.fixture(scope="module")
def built(traffic, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "a"
    build_dataset(BuildConfig(trajectories=str(traffic), out=str(out), max_episodes=N_EP, quiet=True))
    return out


@pytest.fixture(scope="module")
def ds(built):
    return Dataset.open(built)


def _frames(*arrays):
    return np.concatenate([np.arange(s, e) for s, e in zip(*arrays)])


# ---------------------------------------------------------------- format
def test_manifest_and_arrays(ds, built):
    m = json.loads((built / "manifest.json").read_text())
    assert m["version"] == 2 and m["dt"] == 0.1 and m["image_shape"] == [3, 117, 24]
    assert m["n_episodes"] == ds.n_episodes == N_EP
    assert m["n_frames"] == ds.n_frames == ds.episode_start[-1]
    assert ds.episode_start.dtype == np.int64 and ds.episode_start[0] == 0
    assert np.all(np.diff(ds.episode_start) >= 40)  # min_frames
    assert ds.images.shape == (ds.n_frames, 3, 117, 24) and ds.images.dtype == np.uint8
    assert ds.states.shape == (ds.n_frames, 4) and ds.states.dtype == np.float32
    assert ds.actions.shape == (ds.n_frames, 2) and ds.actions.dtype == np.float32
    assert isinstance(ds.images, np.memmap)
    assert (built / "images.u8").stat().st_size == ds.n_frames * 3 * 117 * 24
    for key in ("track", "vehicle_id", "location"):
        assert len(m["episodes"][key]) == N_EP
    assert set(ds.stats) == {"state_mean", "state_std", "action_mean", "action_std"}
    assert ds.stats["state_mean"].shape == (4,) and ds.stats["action_std"].shape == (2,)
    # Every channel carries something somewhere (lanes, vehicles, off-road).
    assert all(ds.images[::50, c].max() > 0 for c in range(3))
    # Episodes are in (vehicle id) order and their last action is 0.
    assert m["episodes"]["vehicle_id"] == sorted(m["episodes"]["vehicle_id"])
    assert np.all(ds.actions[ds.episode_start[1:] - 1] == 0.0)


# ---------------------------------------------------------------- alignment
def test_actions_integrate_to_the_stored_states(ds):
    """From each episode's first state, the stored actions reproduce every later position."""
    start, length = ds.episode_start[:-1], ds.episode_length
    s0 = ds.states[start].astype(np.float64)
    v = np.hypot(s0[:, 2], s0[:, 3])
    assert np.all(v > 0)
    x, y, ux, uy = s0[:, 0], s0[:, 1], s0[:, 2] / v, s0[:, 3] / v
    worst = 0.0
    for t in range(1, int(length.max())):
        live = t < length
        a = ds.actions[np.minimum(start + t - 1, ds.n_frames - 1)].astype(np.float64)
        x, y, ux, uy, v = kinematic_step(x, y, ux, uy, v, a[:, 0], a[:, 1])
        ref = ds.states[np.where(live, start + t, 0)].astype(np.float64)
        err = np.hypot(x - ref[:, 0], y - ref[:, 1])[live]
        worst = max(worst, float(err.max()))
    assert worst < 1e-3
    # The speed in each state is the one the car moves with to the next state.
    i = np.arange(ds.n_frames - 1)
    i = i[np.isin(i + 1, ds.episode_start, invert=True)]
    step = np.hypot(*(ds.states[i + 1, :2] - ds.states[i, :2]).T.astype(np.float64))
    np.testing.assert_allclose(step, 0.1 * np.hypot(*ds.states[i, 2:].T.astype(np.float64)), atol=1e-4)
    # No spurious stop at the end of a track: the last stored state still moves, and no
    # action is an implausible acceleration (synthetic drivers stay within a few m/s^2).
    last = ds.episode_start[1:] - 1
    assert np.all(np.hypot(ds.states[last, 2], ds.states[last, 3]) > 0.5)
    assert np.abs(ds.actions[:, 0]).max() < 15.0


def test_image_shows_the_car_at_the_same_instant(ds, traffic):
    scene = load_scene(traffic)
    sim = ReplaySimulator(scene)
    tracks = np.asarray(ds.manifest["episodes"]["track"])
    rng = np.random.default_rng(0)
    eps = rng.choice(ds.n_episodes, 5, replace=False)
    ts = [int(rng.integers(0, ds.episode_length[e] - 1)) for e in eps]
    for e, t in zip(eps, ts):
        k = tracks[e]
        row = scene.tr_start[k] + t
        assert scene.track_vehicle_id[k] == ds.manifest["episodes"]["vehicle_id"][e]
        np.testing.assert_allclose(ds.car_size[e], [scene.track_length[k], scene.track_width[k]], atol=1e-4)
        v = scene.tr_speed[row]
        want_state = np.array([scene.tr_x[row], scene.tr_y[row], v * scene.tr_ux[row], v * scene.tr_uy[row]])
        np.testing.assert_allclose(ds.states[ds.episode_start[e] + t], want_state, rtol=1e-6, atol=1e-5)

        def image(r):
            length = scene.track_length[k]
            cx = scene.tr_x[r] - 0.5 * length * scene.tr_ux[r]
            cy = scene.tr_y[r] - 0.5 * length * scene.tr_uy[r]
            return sim.images_at([scene.tr_frame[r]], [cx], [cy], np.array([k]))[0]

        stored = ds.images[ds.episode_start[e] + t]
        np.testing.assert_array_equal(stored, image(row))
        assert not np.array_equal(stored, image(row + 1))  # one frame later is another picture


# ---------------------------------------------------------------- splits
def test_splits_are_stable_disjoint_and_seeded(ds, built, traffic, tmp_path):
    again = tmp_path / "b"
    build_dataset(BuildConfig(trajectories=str(traffic), out=str(again), max_episodes=N_EP, quiet=True))
    m1 = json.loads((built / "manifest.json").read_text())
    m2 = json.loads((again / "manifest.json").read_text())
    assert m1["splits"] == m2["splits"] and m1["episodes"] == m2["episodes"]
    assert m1["stats"] == m2["stats"]
    for name in ("images.u8", "states.f32", "actions.f32"):
        assert (built / name).read_bytes() == (again / name).read_bytes()

    parts = [ds.split(n) for n in ("train", "val", "test")]
    allp = np.concatenate(parts)
    assert len(allp) == len(set(allp.tolist())) == ds.n_episodes
    assert len(parts[0]) > len(parts[1]) and len(parts[0]) > len(parts[2])
    # the simulator's held-out vehicles are held out here too
    scene = load_scene(traffic)
    tracks = np.asarray(m1["episodes"]["track"])
    for name, part in zip(("train", "val", "test"), parts):
        assert set(tracks[part].tolist()) >= set(scene.episodes[name].tolist()) & set(tracks.tolist())
        others = set(scene.episodes["all"].tolist()) - set(scene.episodes[name].tolist())
        assert not set(tracks[part].tolist()) & others

    other = tmp_path / "c"
    build_dataset(BuildConfig(trajectories=str(traffic), out=str(other), max_episodes=N_EP, seed=1, quiet=True))
    m3 = json.loads((other / "manifest.json").read_text())
    assert m3["splits"]["train"] != m1["splits"]["train"]
    assert m3["episodes"] == m1["episodes"]  # the episodes themselves do not depend on the seed

    big = track_split(1000, 3)
    assert np.bincount(big).tolist() == [800, 100, 100]
    assert np.array_equal(track_split(1000, 3), big) and not np.array_equal(track_split(1000, 4), big)
    every_other = split_episodes(np.arange(0, 1000, 2), 1000, 3)
    assert sum(len(v) for v in every_other.values()) == 500
    assert np.array_equal(every_other["test"], np.flatnonzero(big[::2] == 2))


def test_stats_come_from_train_only(ds):
    train = ds.split("train")
    rows = _frames(ds.episode_start[train], ds.episode_start[train + 1])
    no_last = _frames(ds.episode_start[train], ds.episode_start[train + 1] - 1)
    s = ds.states[rows].astype(np.float64)
    a = ds.actions[no_last].astype(np.float64)
    np.testing.assert_allclose(ds.stats["state_mean"], s.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.stats["state_std"], s.std(0), rtol=1e-6)
    a = np.clip(a, *np.quantile(a, [0.001, 0.999], axis=0))  # the rare extremes do not set the scale
    np.testing.assert_allclose(ds.stats["action_mean"], a.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ds.stats["action_std"], a.std(0), rtol=1e-6)
    assert ds.stats["action_std"][1] < 0.05  # [1/m]: the scale of lane changes
    everything = ds.states.astype(np.float64)
    assert not np.allclose(everything.mean(0), ds.stats["state_mean"], rtol=1e-6, atol=0)


# ---------------------------------------------------------------- sampling
def test_normalisation_round_trip(ds):
    x = ds.states[:10]
    a = ds.actions[:10]
    np.testing.assert_allclose(denormalise_states(normalise_states(x, ds.stats), ds.stats), x, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(denormalise_actions(normalise_actions(a, ds.stats), ds.stats), a, atol=1e-6)
    xt = torch.from_numpy(np.array(x))
    n = normalise_states(xt, ds.stats)
    assert isinstance(n, torch.Tensor) and n.dtype == torch.float32
    np.testing.assert_allclose(n.numpy(), normalise_states(np.array(x), ds.stats), rtol=1e-5, atol=1e-5)
    train = ds.split("train")
    z = normalise_states(ds.states[_frames(ds.episode_start[train], ds.episode_start[train + 1])], ds.stats)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-3)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)


def test_sampler_batches_match_raw_windows(ds):
    sampler = WindowSampler(ds, "train", n_cond=20, n_pred=20, batch_size=16, seed=3)
    expected_starts = sampler.window_starts(np.random.default_rng(3), 16)
    batch = sampler.sample()
    assert batch["images"].shape == (16, 40, 3, 117, 24) and batch["images"].dtype == torch.uint8
    assert batch["states"].shape == (16, 40, 4) and batch["states"].dtype == torch.float32
    assert batch["actions"].shape == (16, 40, 2) and batch["actions"].dtype == torch.float32
    rows = expected_starts[:, None] + np.arange(40)
    np.testing.assert_array_equal(batch["images"].numpy(), ds.images[rows.ravel()].reshape(16, 40, 3, 117, 24))
    np.testing.assert_allclose(denormalise_states(batch["states"], ds.stats).numpy(), ds.states[rows],
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(denormalise_actions(batch["actions"], ds.stats).numpy(), ds.actions[rows],
                               atol=1e-6)
    episode = np.searchsorted(ds.episode_start, expected_starts, side="right") - 1
    np.testing.assert_array_equal(batch["car_size"].numpy(), ds.car_size[episode])
    assert batch["car_size"].shape == (16, 2) and (batch["car_size"][:, 0] > batch["car_size"][:, 1]).all()


def test_windows_stay_inside_split_episodes(ds):
    for split in ("train", "val"):
        sampler = WindowSampler(ds, split, n_cond=20, n_pred=20, batch_size=8)
        eps = ds.split(split)
        valid = set()
        for e in eps:
            valid.update(range(ds.episode_start[e], ds.episode_start[e + 1] - 40 + 1))
        assert sampler.n_windows == len(valid)
        starts = sampler.window_starts(np.random.default_rng(0), 20000)
        assert set(starts.tolist()) <= valid
        assert len(set(starts.tolist())) > 0.9 * len(valid) or split != "train"
        # Uniform over starts: each episode is drawn in proportion to its number of windows.
        ep_of = np.searchsorted(ds.episode_start, starts, side="right") - 1
        share = np.bincount(ep_of, minlength=ds.n_episodes)[eps] / len(starts)
        counts = np.array([ds.episode_length[e] - 39 for e in eps]) / len(valid)
        np.testing.assert_allclose(share, counts, atol=0.02)


def test_sampler_determinism_and_fixed_batches(ds):
    a = WindowSampler(ds, "train", batch_size=4, seed=7)
    b = WindowSampler(ds, "train", batch_size=4, seed=7)
    c = WindowSampler(ds, "train", batch_size=4, seed=8)
    first_a, first_b, first_c = a.sample(), b.sample(), c.sample()
    assert torch.equal(first_a["states"], first_b["states"])
    assert not torch.equal(first_a["states"], first_c["states"])
    it = iter(a)
    assert next(it)["images"].shape == (4, 40, 3, 117, 24)
    v = WindowSampler(ds, "val", batch_size=4, seed=0)
    f1 = v.fixed_batches(3, seed=1)
    v.sample()
    f2 = v.fixed_batches(3, seed=1)
    assert len(f1) == 3
    for x, y in zip(f1, f2):
        for key in ("images", "states", "actions"):
            assert torch.equal(x[key], y[key])
    assert not torch.equal(f1[0]["states"], f1[1]["states"])
    with pytest.raises(ValueError):
        WindowSampler(ds, "val", n_cond=2000, n_pred=20)


def test_sampler_focus_draws_a_share_of_each_batch_among_the_marked_windows(ds):
    n_cond = 20
    plain = WindowSampler(ds, "train", n_cond=n_cond, n_pred=20, batch_size=4000, seed=3)
    marked = np.zeros(ds.n_frames, dtype=bool)
    marked[plain.window_starts(np.random.default_rng(1), 50) + n_cond - 1] = True  # 50 windows' present frames
    focused = WindowSampler(ds, "train", n_cond=n_cond, n_pred=20, batch_size=4000, seed=3)
    assert focused.set_focus(marked, 0.25) == len(np.unique(np.flatnonzero(marked)))
    states = focused.sample()["states"][:, n_cond - 1].numpy()  # each window's present state
    marked_states = normalise_states(np.asarray(ds.states), ds.stats)[marked]
    hits = np.array([np.any(np.all(np.isclose(marked_states, s, atol=1e-5), axis=1)) for s in states])
    assert 0.22 < hits.mean() < 0.30  # a quarter, plus the few uniform draws that land there
    # a second group takes its own share; marks of the first group's windows only count there
    other = np.zeros(ds.n_frames, dtype=bool)
    other[plain.window_starts(np.random.default_rng(2), 50) + n_cond - 1] = True
    other &= ~marked
    assert focused.set_focus(other, 0.5) == other.sum()
    states = focused.sample()["states"][:, n_cond - 1].numpy()
    other_states = normalise_states(np.asarray(ds.states), ds.stats)[other]
    hits_other = np.array([np.any(np.all(np.isclose(other_states, s, atol=1e-5), axis=1)) for s in states])
    assert 0.45 < hits_other.mean() < 0.55 and 0.22 < np.mean([
        np.any(np.all(np.isclose(marked_states, s, atol=1e-5), axis=1)) for s in states]) < 0.30
    with pytest.raises(ValueError, match="add up to less than 1"):
        focused.set_focus(marked, 0.25)  # 0.25 + 0.5 + 0.25
    none = WindowSampler(ds, "train", n_cond=n_cond, n_pred=20, batch_size=8, seed=3)
    assert none.set_focus(np.zeros(ds.n_frames, dtype=bool), 0.5) == 0
    assert torch.equal(none.sample()["states"], WindowSampler(ds, "train", n_cond=n_cond, n_pred=20, batch_size=8,
                                                              seed=3).sample()["states"])  # uniform as before


# ---------------------------------------------------------------- atomic builds and errors
def test_interrupted_build_leaves_nothing_half_written(traffic, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    cfg = BuildConfig(trajectories=str(traffic), out=str(out), max_episodes=8, quiet=True)
    calls = {"n": 0}
    real = ReplaySimulator.images_at

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(build_mod, "CHUNK_FRAMES", 500)
    monkeypatch.setattr(ReplaySimulator, "images_at", failing)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(cfg)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(ReplaySimulator, "images_at", real)
    build_dataset(cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls["n"] = 0
    monkeypatch.setattr(ReplaySimulator, "images_at", failing)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(BuildConfig(trajectories=str(traffic), out=str(out), max_episodes=9, quiet=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]

    # A complete rebuild replaces the old dataset.
    monkeypatch.setattr(ReplaySimulator, "images_at", real)
    build_dataset(BuildConfig(trajectories=str(traffic), out=str(out), max_episodes=9, quiet=True))
    assert Dataset.open(out).n_episodes == 9
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_user_errors(traffic, tmp_path):
    with pytest.raises(UserError, match="no such"):
        build_dataset(BuildConfig(trajectories=str(tmp_path / "nope.txt"), out=str(tmp_path / "x"), quiet=True))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        build_dataset(BuildConfig(trajectories=str(traffic), out=str(tmp_path / "file"), quiet=True))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a dataset"):
        build_dataset(BuildConfig(trajectories=str(traffic), out=str(tmp_path / "other"), quiet=True))
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="no usable tracks"):
        build_dataset(BuildConfig(trajectories=str(traffic), out=str(tmp_path / "y"), min_frames=10**6, quiet=True))
    assert not (tmp_path / "y").exists()


def test_ensure_dataset_reuses_a_built_one(built):
    assert ensure_dataset(built, quiet=True) == Path(built)
    with pytest.raises(FileNotFoundError):
        Dataset.open(built.parent / "missing")

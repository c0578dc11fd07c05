"""Can the policy network drive like the privileged driver, seeing only what it sees?

    python benchmarks/probe_privileged_teacher.py [--teacher follow-evade] [--iterations 6]
        [--episodes 192] [--steps 600] [--seed 0] [--out FOLDER]

The learned policies see 20 state images and their current state; the privileged drivers
(``follow``, ``follow-merge``, ``follow-evade``: ``traffic_sim/follow.py``) read the true
gaps and speeds. This probe teaches the network of ``train-policy --separate-ego`` (the same
architecture and bounds) to copy a privileged driver's actions in the states it visits
itself: imitation with the teacher's labels on the student's own closed-loop states (DAgger,
Ross, Gordon and Bagnell 2011; a privileged teacher as in Chen et al. 2019, "Learning by
Cheating"). In the first iteration the teacher drives and the student watches; in the next
ones the student drives, the teacher says at every step what it would have done, and every
iteration's states are kept for training. After each iteration the student drives the
validation episodes that ``train-policy`` validates on; the checkpoint that does best is
``best.pt`` in ``--out`` (a policy checkpoint: ``python run.py evaluate --policy FOLDER``).

If the student comes near its teacher, the images and state the policy sees carry what the
targets need, and what keeps the policies trained through the forward model below them is
their training signal; if it stays far below, the observation or the network is short.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data.dataset import Dataset, normalise_actions  # noqa: E402
from policy.driver import BEST, POLICY_KIND, Driver  # noqa: E402
from policy.net import PolicyNet  # noqa: E402
from policy.train import (CHECKPOINT_VERSION, PRESETS, ClosedLoopValidation, dataset_scene,  # noqa: E402
                          preset_to_dict, with_separated, within_bounds)
from traffic_sim.cli_util import UserError, run_script  # noqa: E402
from traffic_sim.paths import artifacts_dir  # noqa: E402
from traffic_sim.sim import ReplaySimulator, builtin_actions  # noqa: E402
from world_model.train import CHECKPOINT, save_checkpoint  # noqa: E402

TEACHERS = ("follow", "follow-merge", "follow-evade")


class Episodes:
    """The student's closed-loop episodes: per episode its frames and states (the 20 of the
    history before the takeover, then one per step) and the teacher's normalised actions."""

    def __init__(self):
        self.frames, self.states, self.labels = [], [], []
        self.index = np.zeros((0, 2), dtype=np.int64)  # (episode, step) of every window

    def add(self, frames, states, labels, steps):
        index = [self.index]
        for f, s, a, n in zip(frames, states, labels, steps):
            index.append(np.stack([np.full(n, len(self.frames)), np.arange(n)], 1))
            self.frames.append(f[:f.shape[0] - a.shape[0] + n].clone())
            self.states.append(s[:s.shape[0] - a.shape[0] + n].clone())
            self.labels.append(a[:n].clone())
        self.index = np.concatenate(index)

    def batch(self, rng, size: int, n_cond: int):
        pick = self.index[rng.integers(len(self.index), size=size)]
        images = torch.stack([self.frames[e][t:t + n_cond] for e, t in pick])
        states = torch.stack([self.states[e][t:t + n_cond] for e, t in pick])
        return images, states, torch.stack([self.labels[e][t] for e, t in pick])


@torch.no_grad()
def collect(scene, tracks, net, stats, teacher: str, teacher_drives: bool):
    """Drive ``tracks`` (the teacher or the student at the wheel); per car its frames
    (20 + steps), states and the teacher's normalised actions at every step, and its steps."""
    sim = ReplaySimulator(scene)
    driver = Driver(scene, lambda images, states, size: net(images, states), stats, net.config.n_cond)
    cars = sim.start(tracks)
    driver.reset(cars.track)
    obs = sim.observe(cars)
    frames, states, labels = [driver.images], [driver.states], []
    while not cars.done.all():
        student = driver(obs, cars.state_vector(), cars)
        if len(labels):  # the driver appended what the cars see now (a copy: not a view that
            frames.append(driver.images[:, -1:].clone())  # would keep all 20 frames alive)
            states.append(driver.states[:, -1:].clone())
        expert = builtin_actions(sim, cars, teacher)
        labels.append(torch.from_numpy(normalise_actions(expert.astype(np.float32), stats)))
        obs = sim.step(cars, expert if teacher_drives else student, observe=True)
    return torch.cat(frames, 1), torch.cat(states, 1), torch.stack(labels, 1), cars


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="follow-evade", choices=TEACHERS)
    ap.add_argument("--dataset", default=None, help="dataset folder (default: <artifacts>/datasets/default)")
    ap.add_argument("--iterations", type=int, default=6, help="collections (the first driven by the teacher)")
    ap.add_argument("--episodes", type=int, default=192, help="training episodes driven per iteration")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per iteration")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--val-episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder of the student's checkpoints "
                                               "(default: <artifacts>/policies/teacher-TEACHER-seedS)")
    args = ap.parse_args(argv)
    for name in ("iterations", "episodes", "steps", "batch_size", "val_episodes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    folder = Path(args.dataset) if args.dataset else artifacts_dir() / "datasets" / "default"
    if not folder.is_dir():
        raise UserError(f"no dataset at {folder} (python run.py build-dataset)")
    out = Path(args.out) if args.out else artifacts_dir() / "policies" / f"teacher-{args.teacher}-seed{args.seed}"
    if (out / CHECKPOINT).is_file():
        raise UserError(f"{out / CHECKPOINT} exists: choose another --out")

    dataset = Dataset.open(folder)
    stats = {k: v.tolist() for k, v in dataset.stats.items()}
    scene = dataset_scene(dataset)
    preset = with_separated(PRESETS["default"])  # the network of train-policy --separate-ego
    config = preset.policy
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = PolicyNet(config)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    validation = ClosedLoopValidation(dataset, args.val_episodes, net, stats, "cpu")
    data, best, t0 = Episodes(), None, time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    print(f"teacher {args.teacher}; {args.iterations} iterations of {args.episodes} training episodes "
          f"and {args.steps} steps; validation on {len(validation.tracks)} episodes")
    for it in range(args.iterations):
        tracks = rng.choice(scene.episodes["train"], min(args.episodes, len(scene.episodes["train"])),
                            replace=False)
        net.eval()
        frames, states, labels, cars = collect(scene, np.sort(tracks), net, stats, args.teacher, it == 0)
        data.add(frames, states, labels, cars.steps)
        del frames, states, labels
        driving = f"{'teacher' if it == 0 else 'student'} drove: {cars.success.mean():.0%} success"
        net.train()
        losses = []
        for _ in range(args.steps):
            images, st, target = data.batch(rng, args.batch_size, config.n_cond)
            loss = F.mse_loss(net(images, st), within_bounds(target, config))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        val = validation()
        summary = (f"iteration {it + 1}: {driving}; {len(data.index):,} windows; loss {np.mean(losses[-100:]):.4f}; "
                   f"validation {val['val_success']:.0%} success, {val['val_collision']:.0%} collisions "
                   f"({time.perf_counter() - t0:.0f} s)")
        print(summary, flush=True)
        payload = {"kind": POLICY_KIND, "version": CHECKPOINT_VERSION, "method": f"teacher-{args.teacher}",
                   "policy_config": config.to_dict(), "preset": preset_to_dict(preset),
                   "train_config": vars(args), "dataset": str(folder.resolve()), "model_path": None,
                   "stats": stats, "step": (it + 1) * args.steps, "val": val, "policy": net.state_dict()}
        if best is None or val["val_success"] > best:
            best = val["val_success"]
            save_checkpoint(out / BEST, payload)
        save_checkpoint(out / CHECKPOINT, payload)
    print(f"best validation {best:.0%}: {out / BEST}")


if __name__ == "__main__":
    run_script(main)

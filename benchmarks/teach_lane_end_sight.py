"""``train-policy --method teach`` with a teacher that counts the end of its lane only where
the car's state image shows it.

    python benchmarks/teach_lane_end_sight.py [train-policy options...]

The built-in drivers that merge (``follow-merge``, ``follow-evade``, ``follow-yield``) slow
for a standing obstacle short of the end of a lane that ends from wherever it is;
``traffic_sim.follow.follow_actions(..., lane_end_sight=LOOK_AHEAD)`` counts it only within
the 35.7 m ahead of the car's centre that its state image shows. This runs ``python run.py
train-policy`` with every teacher label made so (an experiment: the option is not on the
command line), e.g. ``--seed 0 --lateral-acc 2 --out artifacts/policies/teach-sight-seed0``
after ``--method teach``, which it adds.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run import main  # noqa: E402
from traffic_sim import follow  # noqa: E402
from traffic_sim.raster import LOOK_AHEAD  # noqa: E402

if __name__ == "__main__":
    follow.follow_actions = functools.partial(follow.follow_actions, lane_end_sight=LOOK_AHEAD)
    sys.exit(main(["train-policy", "--method", "teach", *sys.argv[1:]]))

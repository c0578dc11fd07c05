"""The simulator and everything learning code uses import without gymnasium or pygame
(an accelerator machine may have neither)."""

import subprocess
import sys


def test_core_modules_import_without_gymnasium_and_pygame():
    code = (
        "import sys\n"
        "sys.modules['gymnasium'] = None\n"  # makes `import gymnasium` fail
        "sys.modules['pygame'] = None\n"
        "import traffic_sim.sim, traffic_sim.scene, traffic_sim.raster, traffic_sim.costs\n"
        "import traffic_sim.loading, traffic_sim.evaluate, traffic_sim.generator\n"
        "import traffic_sim.viewer\n"  # imports pygame only to draw
        "import data.build, data.dataset, world_model.model, world_model.train\n"
        "import world_model.evaluate\n"
        "import policy.costs, policy.rollout, policy.net, policy.train, policy.driver, policy.mpc\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr

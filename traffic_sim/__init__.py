"""Highway traffic from tracked trajectories: NGSIM files, synthetic I-80-like traffic,
replay simulation and the Gymnasium environment built on them.

Importing the package registers ``traffic_sim/I80-v0`` with Gymnasium when Gymnasium is
installed (the simulator itself does not need it)::

    import gymnasium as gym
    import traffic_sim
    env = gym.make("traffic_sim/I80-v0")                       # embedded synthetic traffic
    env = gym.make("traffic_sim/I80-v0", trajectories="i80/trajectories-0400-0415.txt")
"""

import importlib.util as _util

ENV_ID = "traffic_sim/I80-v0"

if _util.find_spec("gymnasium") is not None:
    from gymnasium.envs.registration import register as _register, registry as _registry

    if ENV_ID not in _registry:
        _register(id=ENV_ID, entry_point="traffic_sim.env:TrafficEnv")

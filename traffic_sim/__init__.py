"""Highway traffic from tracked trajectories: NGSIM files, synthetic I-80-like traffic,
replay simulation and the Gymnasium environment built on them."""

"""Episodes built from trajectory files: state images, state vectors, actions and splits.

## The dataset format
A dataset is a folder DIR:
- `DIR/manifest.json`: {"version": 2, "sources": [trajectory file paths], "locations": [...],
  "n_episodes": E, "n_frames": F, "image_shape": [3, 117, 24], "dt": 0.1,
  "splits": {"train": [episode ids], "val": [...], "test": [...]},
  "stats": {"state_mean": [4], "state_std": [4], "action_mean": [2], "action_std": [2]}  (computed on the TRAIN split only),
  "episodes": {"start": [E+1 offsets into the frame arrays], "track": [...], "vehicle_id": [...], "location": [...], "length": [m], "width": [m]},
  "build": {...settings, seconds, frames_per_second}}
- `DIR/images.u8`: raw np.memmap uint8, shape (F, 3, 117, 24) (channels: lane markings, other vehicles, off-road).
- `DIR/states.f32`: raw np.memmap float32, shape (F, 4): (x, y, vx, vy) [m, m/s] of the car at that frame (x lateral, y longitudinal; front centre; velocity = speed * heading, speed from the forward difference).
- `DIR/actions.f32`: raw np.memmap float32, shape (F, 2): (acceleration [m/s^2], steering [1/m]) that moves state t to state t+1 (0 on each episode's last frame).
- Episode e owns frames start[e] .. start[e+1]-1, in time order. image[t], state[t], action[t] describe the same instant.
- Python API in `data/dataset.py`:
  - `class Dataset`: `Dataset.open(path)` (memory-maps, reads manifest), attributes `images`, `states`, `actions` (memmaps), `manifest`, `stats` (dict of np arrays), `car_size` ((E, 2) length, width [m]), `episode_start` (np int64 array E+1), `split(name) -> np.ndarray of episode ids`, `n_episodes`, `n_frames`.
  - `class WindowSampler(dataset, split, n_cond=20, n_pred=20, batch_size=64, seed=0, device="cpu")`: draws random windows of n_cond+n_pred consecutive frames inside episodes of the split (uniform over all valid window starts), vectorised (no per-sample Python loops), returns a dict of torch tensors: `images` (B, n_cond+n_pred, 3, 117, 24) uint8, `states` (B, n_cond+n_pred, 4) float32 normalised with the train stats, `actions` (B, n_cond+n_pred, 2) float32 normalised, `car_size` (B, 2) [m]; pinned memory and non_blocking transfer when device is cuda. `sample()` returns one batch; iterating yields batches forever. `n_windows` property. Also a deterministic `fixed_batches(n, seed)` (the same validation batches every time).
  - The normalisation helpers: `normalise_states(x, stats)`, `denormalise_states`, same for actions (numpy or torch).
"""

"""Latent-variable video forward model of the traffic around a car.

- :mod:`world_model.model`: the model (``ModelConfig``, ``ForwardModel``: ``predict`` one
  step, ``unroll`` any horizon, ``forward`` = training loss).
- :mod:`world_model.train`: ``python run.py train-model`` (``TrainConfig``, ``train_model``,
  the presets, checkpoints: ``load_model``).
- :mod:`world_model.evaluate`: ``python run.py eval-model`` (``EvalModelConfig``, ``eval_model``).

Nothing here imports gymnasium or pygame.
"""

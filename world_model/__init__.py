"""Latent-variable video forward model of the traffic around a car (see docs in README)."""

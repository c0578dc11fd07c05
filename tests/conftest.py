"""Shared fixtures: small generated scenes, made once per test session."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import pytest

from traffic_sim.commands import GenerateConfig, generate_command
from traffic_sim.generator import GeneratorConfig, generate
from traffic_sim.scene import Scene


@pytest.fixture(scope="session")
def small_scene():
    """Two minutes of default synthetic traffic (after the usual warm-up), as a Scene."""
    table = generate(GeneratorConfig(minutes=2.0, seed=11))
    return Scene.from_table(table)


@pytest.fixture(scope="session")
def traffic_file(tmp_path_factory):
    """A generated trajectory file (3 minutes, seed 4), written through the CLI's code path."""
    out = tmp_path_factory.mktemp("traffic")
    return generate_command(GenerateConfig(out=str(out), minutes=3.0, seed=4, quiet=True))


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path_factory, monkeypatch):
    """Keep caches and outputs of the tests out of the repository's artifacts folder."""
    monkeypatch.setenv("PPUU_ARTIFACTS", str(tmp_path_factory.getbasetemp() / "artifacts"))

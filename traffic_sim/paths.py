"""Where generated traffic, caches and other outputs live (a git-ignored folder)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def artifacts_dir() -> Path:
    """Root of everything the project generates: ``$PPUU_ARTIFACTS`` or ``<repo>/artifacts``."""
    return Path(os.environ.get("PPUU_ARTIFACTS", REPO_ROOT / "artifacts"))


def default_traffic_dir() -> Path:
    """Folder of the embedded default traffic (synthetic I-80, 15 min, seed 0)."""
    return artifacts_dir() / "traffic" / "default"

"""Where generated traffic, caches and other outputs live (a git-ignored folder)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]


def artifacts_dir() -> Path:
    """Root of everything the project generates: ``$PPUU_ARTIFACTS`` or ``<repo>/artifacts``."""
    return Path(os.environ.get("PPUU_ARTIFACTS", REPO_ROOT / "artifacts"))


def default_traffic_dir() -> Path:
    """Folder of the embedded default traffic (synthetic I-80, 15 min, seed 0)."""
    return artifacts_dir() / "traffic" / "default"


@contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on any
    error (Ctrl-C included) it is removed, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

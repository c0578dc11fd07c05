"""Load the scene of a trajectory file (real NGSIM or generated), with an on-disk cache."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from .cli_util import UserError
from .paths import artifacts_dir
from .scene import CACHE_VERSION, Scene, load_saved_scene, save_scene


def _cache_path(paths: list[Path], location: str | None) -> Path:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|".encode())
    h.update(f"{location}|{CACHE_VERSION}".encode())
    return artifacts_dir() / "cache" / f"scene-{h.hexdigest()[:16]}.npz"


def choose_location(table, location: str | None, path):
    """The rows of ``location``: in a file of several locations, that one's rows; a file of
    one location is taken to be recorded there (the location of a raw file comes from its
    name, which may not say it). None keeps the table as it is."""
    if location is None:
        return table
    locations = sorted(map(str, table["location"].unique()))
    if location in locations:
        return table[table["location"].astype(str) == location] if len(locations) > 1 else table
    if len(locations) == 1:
        table = table.copy()
        table["location"] = location
        return table
    raise UserError(f"{path} has no rows for location {location!r} (it has {', '.join(locations)})")


def load_scene(trajectories=None, location: str | None = None, quiet: bool = True) -> Scene:
    """The scene of one or more trajectory files (default: the embedded synthetic traffic,
    generated on first use). Files with several locations need ``location``."""
    from .commands import default_traffic

    if trajectories is None:
        paths = [default_traffic(quiet=quiet)]
    elif isinstance(trajectories, (str, Path)):
        paths = [Path(trajectories)]
    else:
        paths = [Path(p) for p in trajectories]
    for p in paths:
        if not p.is_file():
            raise UserError(f"{p}: no such trajectory file")
    cache = _cache_path(paths, location)
    if cache.exists():
        scene = load_saved_scene(cache)
        if scene is not None:
            return scene
    from .ngsim import read_trajectories

    table = read_trajectories([str(p) for p in paths] if len(paths) > 1 else str(paths[0]),
                              location=None)
    table = choose_location(table, location, paths[0])
    locations = sorted(map(str, table["location"].unique()))
    if location is None:
        if len(locations) > 1:
            raise UserError(f"{paths[0]} holds several locations ({', '.join(locations)}): "
                            "choose one with --location")
        location = locations[0]
        if location == "unknown":
            raise UserError(f"{paths[0]}: cannot tell the location from the file name; "
                            "pass --location i-80 or us-101")
    try:
        scene = Scene.from_table(table, location=location)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        save_scene(scene, cache)
    except OSError as exc:  # a read-only artifacts folder only costs the cache
        warnings.warn(f"could not cache the scene in {cache.parent}: {exc.strerror or exc}")
    return scene

"""Reading and writing NGSIM vehicle trajectory files.

Two file layouts are understood; which one a file uses is decided from its
content (a header row, comma or whitespace separators), never from its name.

Raw per-location layout (e.g. ``i80/trajectories-0400-0415.txt``)
    Whitespace separated, no header, one row per vehicle per frame (10 Hz) and
    the 18 columns of :data:`RAW_COLUMNS`, in US customary units: positions,
    sizes and headways in feet, speed in ft/s, acceleration in ft/s^2,
    Global_Time in ms since 1970, Time_Headway in s (9999.99 when stopped).
    The file carries no location; it is taken from the ``location`` argument
    or from the path (see :func:`location_from_path`).

Combined open-data CSV (``Next_Generation_Simulation__NGSIM__...csv``)
    A header row and 25 comma separated columns: the 18 raw ones with
    O_Zone, D_Zone, Int_ID, Section_ID, Direction and Movement inserted after
    Lane_ID, and Location last. Column names are matched case-insensitively
    (exports spell ``v_length``/``v_Length`` either way); the file may start
    with a UTF-8 byte-order mark, use CRLF line ends, quote numbers with
    thousands separators ("1,156", "9,999.99"), mix locations and list rows in
    any order. The six zone/intersection columns are not used.

Canonical table
    :func:`read_trajectories` returns a :class:`pandas.DataFrame` in SI units
    with exactly the columns of :data:`COLUMNS`:

    ==============  =========  ===============================================
    vehicle_id      int64      NGSIM Vehicle_ID (reused across files)
    frame           int64      Frame_ID, 10 frames per second
    total_frames    int64      Total_Frames as given in the file
    global_time     int64      [ms] since 1970-01-01
    x               float64    [m] Local_X: lateral position of the FRONT
                               centre, from the left-most road edge
    y               float64    [m] Local_Y: longitudinal position of the front
                               centre, from the entry edge
    global_x        float64    [m] Global_X (CA State Plane III)
    global_y        float64    [m] Global_Y
    length, width   float64    [m] vehicle size
    v_class         int8       1 motorcycle, 2 auto, 3 truck
    speed           float64    [m/s]
    acc             float64    [m/s^2]
    lane            int16      Lane_ID
    preceding       int64      vehicle_id ahead in the lane, 0 = none
    following       int64      vehicle_id behind in the lane, 0 = none
    space_headway   float64    [m] front centre to front centre
    time_headway    float64    [s] as in the file (9999.99 = stopped)
    location        category   "i-80", "us-101", "lankershim", "peachtree", ...
    track_id        int64      0..N-1, one id per continuous vehicle track
    ==============  =========  ===============================================

    Rows are sorted by (location, track_id, frame) with a fresh RangeIndex.
    ``df.attrs["sources"]`` lists the file paths read and
    ``df.attrs["duplicates_dropped"]`` counts exact duplicate rows removed.

Tracks
    Vehicle ids repeat (within a file after a vehicle has left, and across
    files), so rows are grouped by (file, location, vehicle_id) in time order
    (Global_Time, then Frame_ID) and a new track starts whenever the frame
    number jumps by more than :data:`MAX_GAP_FRAMES` (or does not advance), or
    the vehicle's class, length or width changes. Shorter gaps stay inside one
    track; the simulator interpolates them.

Errors
    Every problem with an input file raises :class:`NGSIMFormatError` whose
    one-line message is ``"{file}:{line}: {problem}"`` (line numbers are
    1-based and count the header). Exact duplicate rows are dropped with a
    warning; rows that share location, vehicle, frame and time but differ
    anywhere else are an error naming both lines. Duplicates and conflicts are
    looked for within each file.

Speed
    Files are parsed by pandas' C parser straight into float64 columns and
    checked with vectorised numpy tests; only when that fails is the file
    read again line by line to find and report the first bad line.
    :func:`write_raw` formats all numbers with integer arithmetic into a byte
    matrix, so neither direction runs Python code per row.
"""

from __future__ import annotations

import csv
import os
from array import array
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import numpy as np
import pandas as pd

from .roads import FT  # [m/ft] international foot

__all__ = [
    "FT",
    "FRAME_RATE",
    "DT",
    "MAX_GAP_FRAMES",
    "MAX_LENGTH",
    "MAX_WIDTH",
    "STOPPED_TIME_HEADWAY",
    "RAW_COLUMNS",
    "CSV_COLUMNS",
    "COLUMNS",
    "DTYPES",
    "NGSIMFormatError",
    "feet_to_m",
    "m_to_feet",
    "location_from_path",
    "read_trajectories",
    "write_raw",
]

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

FRAME_RATE = 10.0  # [Hz] NGSIM video frame rate
DT = 1.0 / FRAME_RATE  # [s] time between frames
MS_PER_FRAME = 100  # [ms] Global_Time step between frames
MAX_GAP_FRAMES = 50  # [frames] longest gap kept inside one track (5 s)
MAX_LENGTH = 30.0  # [m] longest plausible vehicle
MAX_WIDTH = 4.0  # [m] widest plausible vehicle
STOPPED_TIME_HEADWAY = 9999.99  # [s] Time_Headway written for a stopped vehicle
VALID_CLASSES = (1, 2, 3)  # v_Class: 1 motorcycle, 2 auto, 3 truck

RAW_COLUMNS: tuple[str, ...] = (
    "Vehicle_ID",  # [-]
    "Frame_ID",  # [frame]
    "Total_Frames",  # [frames]
    "Global_Time",  # [ms]
    "Local_X",  # [ft]
    "Local_Y",  # [ft]
    "Global_X",  # [ft]
    "Global_Y",  # [ft]
    "v_Length",  # [ft]
    "v_Width",  # [ft]
    "v_Class",  # [-]
    "v_Vel",  # [ft/s]
    "v_Acc",  # [ft/s^2]
    "Lane_ID",  # [-]
    "Preceding",  # [-]
    "Following",  # [-]
    "Space_Headway",  # [ft]
    "Time_Headway",  # [s]
)

_CSV_EXTRA_COLUMNS = ("O_Zone", "D_Zone", "Int_ID", "Section_ID", "Direction", "Movement")

#: Column order of the combined open-data CSV.
CSV_COLUMNS: tuple[str, ...] = (
    RAW_COLUMNS[:14] + _CSV_EXTRA_COLUMNS + RAW_COLUMNS[14:] + ("Location",)
)

#: Canonical table columns and their dtypes.
DTYPES: dict[str, object] = {
    "vehicle_id": np.int64,
    "frame": np.int64,
    "total_frames": np.int64,
    "global_time": np.int64,  # [ms]
    "x": np.float64,  # [m]
    "y": np.float64,  # [m]
    "global_x": np.float64,  # [m]
    "global_y": np.float64,  # [m]
    "length": np.float64,  # [m]
    "width": np.float64,  # [m]
    "v_class": np.int8,
    "speed": np.float64,  # [m/s]
    "acc": np.float64,  # [m/s^2]
    "lane": np.int16,
    "preceding": np.int64,
    "following": np.int64,
    "space_headway": np.float64,  # [m]
    "time_headway": np.float64,  # [s]
    "location": "category",
    "track_id": np.int64,
}
COLUMNS: tuple[str, ...] = tuple(DTYPES)

# raw column -> (canonical column, factor from file units to SI or None for
# integers, decimals written by write_raw)
_CONVERSION: tuple[tuple[str, str, float | None, int], ...] = (
    ("Vehicle_ID", "vehicle_id", None, 0),
    ("Frame_ID", "frame", None, 0),
    ("Total_Frames", "total_frames", None, 0),
    ("Global_Time", "global_time", None, 0),
    ("Local_X", "x", FT, 3),
    ("Local_Y", "y", FT, 3),
    ("Global_X", "global_x", FT, 3),
    ("Global_Y", "global_y", FT, 3),
    ("v_Length", "length", FT, 1),
    ("v_Width", "width", FT, 1),
    ("v_Class", "v_class", None, 0),
    ("v_Vel", "speed", FT, 2),
    ("v_Acc", "acc", FT, 2),
    ("Lane_ID", "lane", None, 0),
    ("Preceding", "preceding", None, 0),
    ("Following", "following", None, 0),
    ("Space_Headway", "space_headway", FT, 2),
    ("Time_Headway", "time_headway", 1.0, 2),
)
_INT_RAW = tuple(raw for raw, _, factor, _ in _CONVERSION if factor is None)
# integer range in which float64 holds every integer exactly
_MAX_EXACT_INT = 2**53
MAX_FRAME_ID = 10_000_000  # [frames] about 11.6 days at 10 Hz: larger is not a frame number
_INT_LIMITS = {
    "Lane_ID": (np.iinfo(np.int16).min, np.iinfo(np.int16).max),
    "Frame_ID": (0, MAX_FRAME_ID),
}

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------
# Errors and small helpers
# --------------------------------------------------------------------------


class NGSIMFormatError(ValueError):
    """A problem with an NGSIM input file.

    The message is a single line ``"{file}:{line}: {problem}"``; ``line`` is
    the 1-based line number in the file (the header counts) and is left out
    when no particular line applies.
    """

    def __init__(self, file: PathLike, line: int | None, problem: str):
        self.file = str(file)
        self.line = line
        self.problem = str(problem).replace("\r", " ").replace("\n", " ")
        where = self.file if line is None else f"{self.file}:{line}"
        super().__init__(f"{where}: {self.problem}")


def feet_to_m(value):
    """Feet (or ft/s, ft/s^2) to metres (m/s, m/s^2)."""
    return value * FT


def m_to_feet(value):
    """Metres (or m/s, m/s^2) to feet (ft/s, ft/s^2)."""
    return value / FT


_LOCATION_PATTERNS = (
    (re.compile(r"(?<![a-z0-9])synthetic-i-?80(?![a-z0-9])"), "synthetic-i80"),
    (re.compile(r"(?<![a-z0-9])i-?80(?![a-z0-9])"), "i-80"),
    (re.compile(r"(?<![a-z0-9])us-?101(?![a-z0-9])"), "us-101"),
    (re.compile(r"(?<![a-z0-9])lankershim(?![a-z0-9])"), "lankershim"),
    (re.compile(r"(?<![a-z0-9])peachtree(?![a-z0-9])"), "peachtree"),
)


def location_from_path(path: PathLike) -> str:
    """Location named by a path: ``synthetic-i80``, ``i-80``, ``us-101``,
    ``lankershim``, ``peachtree`` or ``unknown``.

    The file stem is looked at first, then the folders from the innermost
    outwards; names match case-insensitively as whole tokens (``i80`` and
    ``i-80`` both mean I-80, ``us101`` and ``us-101`` US-101).
    """
    p = Path(path)
    parts = [p.stem, *reversed(p.parts[:-1])]
    for part in parts:
        text = part.lower()
        for pattern, name in _LOCATION_PATTERNS:
            if pattern.search(text):
                return name
    return "unknown"


# --------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------


@dataclass
class _Layout:
    comma: bool  # comma separated (else whitespace)
    header_line: int  # 1-based line of the header row, 0 when there is none
    names: list[str]  # display name of every field
    raw_idx: tuple[int, ...]  # field index of each RAW_COLUMNS entry
    loc_idx: int | None  # field index of Location, if any

    @property
    def n_fields(self) -> int:
        return len(self.names)


_KNOWN_NAMES = {name.lower(): name for name in CSV_COLUMNS}
_NUM_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_NONFINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def _split(line: str, comma: bool) -> list[str]:
    if not comma:
        return line.split()
    if '"' in line:
        return next(csv.reader([line]))
    return line.split(",")


def _open_error(path: str, exc: OSError) -> NGSIMFormatError:
    if isinstance(exc, FileNotFoundError):
        return NGSIMFormatError(path, None, "No such file")
    if isinstance(exc, IsADirectoryError):
        return NGSIMFormatError(path, None, "is a directory, not a file")
    if isinstance(exc, PermissionError):
        return NGSIMFormatError(path, None, "cannot read file: permission denied")
    return NGSIMFormatError(path, None, f"cannot read file: {exc.strerror or exc}")


def _decode(raw: bytes, first: bool) -> str:
    text = raw.decode("utf-8", errors="surrogateescape")
    if first and text.startswith("\ufeff"):
        text = text[1:]
    return text


def _detect_layout(path: str) -> _Layout:
    """Read up to the first non-blank line and work out the layout."""
    try:
        with open(path, "rb") as fh:
            line_no = 0
            for raw in fh:
                line_no += 1
                if b"\0" in raw:
                    raise NGSIMFormatError(path, line_no, "not a text file (NUL bytes)")
                line = _decode(raw, line_no == 1).rstrip("\r\n")
                if line.strip():
                    break
            else:
                raise NGSIMFormatError(path, None, "empty file: no data rows")
    except OSError as exc:
        raise _open_error(path, exc) from None

    comma = "," in line
    try:
        tokens = [t.strip() for t in _split(line, comma)]
    except csv.Error as exc:
        raise NGSIMFormatError(path, line_no, f"cannot split line: {exc}") from None
    is_header = any(
        t.strip('"').lower() in _KNOWN_NAMES and not _NUM_RE.match(t) for t in tokens
    )
    if is_header:
        names = [t.strip('"') for t in tokens]
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            key = name.lower()
            if key in index:
                raise NGSIMFormatError(path, line_no, f"column {name!r} appears twice in the header")
            index[key] = i
        missing = [c for c in RAW_COLUMNS if c.lower() not in index]
        if missing:
            raise NGSIMFormatError(
                path, line_no, f"header lacks column(s) {', '.join(missing)}"
            )
        raw_idx = tuple(index[c.lower()] for c in RAW_COLUMNS)
        return _Layout(comma, line_no, names, raw_idx, index.get("location"))

    n = len(tokens)
    if n == len(CSV_COLUMNS):  # combined layout without its header
        names = list(CSV_COLUMNS)
        raw_idx = tuple(names.index(c) for c in RAW_COLUMNS)
        return _Layout(comma, 0, names, raw_idx, len(names) - 1)
    if n != len(RAW_COLUMNS):
        raise NGSIMFormatError(
            path, line_no, f"expected {len(RAW_COLUMNS)} columns, got {n}"
        )
    return _Layout(comma, 0, list(RAW_COLUMNS), tuple(range(len(RAW_COLUMNS))), None)


# --------------------------------------------------------------------------
# Parsing one file
# --------------------------------------------------------------------------


@dataclass
class _FileData:
    path: str
    layout: _Layout
    cols: dict[str, np.ndarray]  # RAW_COLUMNS name -> values in file units
    loc_values: list[str] | None  # distinct normalised locations, sorted
    loc_codes: np.ndarray | None  # per row index into loc_values

    @property
    def n(self) -> int:
        return len(self.cols["Vehicle_ID"])


def _read_options(layout: _Layout) -> list[dict]:
    """pandas.read_csv keyword sets to try, fastest first."""
    used = set(layout.raw_idx)
    base = dict(
        header=None,
        skiprows=layout.header_line,
        na_filter=False,
        encoding="utf-8-sig",
        engine="c",
        skip_blank_lines=True,
    )

    def dtypes(extra_as_text: bool) -> dict:
        out: dict = {}
        for i in range(layout.n_fields):
            if i == layout.loc_idx:
                out[i] = "category"
            elif extra_as_text and i not in used:
                out[i] = object
            else:
                out[i] = np.float64
        return out

    if not layout.comma:
        return [
            dict(base, sep=" ", dtype=dtypes(False)),
            dict(base, sep=r"\s+", dtype=dtypes(False)),
        ]
    csv_opts = dict(base, sep=",", quotechar='"', thousands=",")
    attempts = [dict(csv_opts, dtype=dtypes(False))]
    if len(used) + (layout.loc_idx is not None) < layout.n_fields:
        # the unused zone columns may be blank or text in some exports
        attempts.append(dict(csv_opts, dtype=dtypes(True)))
    return attempts


def _fast_parse(path: str, layout: _Layout) -> pd.DataFrame | None:
    """pandas' C parser into float64 columns; None when it cannot cope."""
    for opts in _read_options(layout):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = pd.read_csv(path, **opts)
        except Exception:  # any failure: try the next way, then line by line
            continue
        if df.shape[1] == layout.n_fields and len(df) > 0:
            return df
    return None


_SEARCH_CHUNK = 65536  # [rows] block size when looking for the block pandas rejects


def _first_failing_block(path: str, layout: _Layout) -> int:
    """First data row of the block of rows that pandas cannot parse (0 if unknown).

    Parsing block by block with the most lenient options narrows a parse
    failure down so that only that block needs the line-by-line check.
    """
    opts = _read_options(layout)[-1]
    start = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pd.read_csv(path, chunksize=_SEARCH_CHUNK, **opts) as reader:
                for block in reader:
                    if block.shape[1] != layout.n_fields:
                        return start
                    start += len(block)
    except Exception:
        return start
    return 0


def _first_bad_row(cols: dict[str, np.ndarray], loc: np.ndarray | None) -> int | None:
    """Index of the first row failing any value check, or None."""
    bad = np.zeros(len(cols["Vehicle_ID"]), dtype=bool)
    for name in RAW_COLUMNS:
        bad |= ~np.isfinite(cols[name])
    for name in _INT_RAW:
        v = cols[name]
        lo, hi = _INT_LIMITS.get(name, (-_MAX_EXACT_INT, _MAX_EXACT_INT))
        bad |= (v != np.trunc(v)) | (v < lo) | (v > hi)
    cls = cols["v_Class"]
    bad |= (cls != 1) & (cls != 2) & (cls != 3)
    length = cols["v_Length"] * FT
    width = cols["v_Width"] * FT
    bad |= (length <= 0) | (length > MAX_LENGTH) | (width <= 0) | (width > MAX_WIDTH)
    bad |= cols["v_Vel"] < 0
    if loc is not None:
        bad |= loc == ""
    if bad.any():
        return int(np.argmax(bad))
    return None


_IDX = {name: j for j, name in enumerate(RAW_COLUMNS)}
_INT_CHECK = tuple(
    (j, name, _INT_LIMITS.get(name, (-_MAX_EXACT_INT, _MAX_EXACT_INT)))
    for j, name in enumerate(RAW_COLUMNS)
    if name in _INT_RAW
)


def _token_problem(name: str, text: str) -> str:
    """Why a numeric token could not be read (for a token float() rejected
    or one that is not a plain decimal number)."""
    clean = text.replace(",", "")
    if clean.lower() in _NONFINITE:
        return f"column {name}: value is not finite: {text!r}"
    if not _NUM_RE.match(clean):
        return f"column {name}: not a number: {text!r}"
    return f"column {name}: value is not finite: {text!r}"


def _row_problem(tokens: list[str], layout: _Layout) -> tuple[str | None, list[float], str]:
    """Check one split data row; returns (problem, raw values, location)."""
    if len(tokens) != layout.n_fields:
        return f"expected {layout.n_fields} columns, got {len(tokens)}", [], ""
    texts = [tokens[i].strip() for i in layout.raw_idx]
    values = []
    for name, text in zip(RAW_COLUMNS, texts):
        clean = text.replace(",", "") if layout.comma else text
        if not _NUM_RE.match(clean):
            return _token_problem(name, text), [], ""
        value = float(clean)
        if value in (np.inf, -np.inf):
            return _token_problem(name, text), [], ""
        values.append(value)
    for j, name, (lo, hi) in _INT_CHECK:
        value = values[j]
        if value != int(value):
            return f"column {name}: expected an integer, got {texts[j]!r}", [], ""
        if not lo <= value <= hi:
            return f"column {name}: integer out of range: {texts[j]!r}", [], ""
    if values[_IDX["v_Class"]] not in VALID_CLASSES:
        return f"v_Class must be 1, 2 or 3, got {texts[_IDX['v_Class']]!r}", [], ""
    if not 0 < values[_IDX["v_Length"]] * FT <= MAX_LENGTH:
        return (
            f"impossible vehicle length v_Length = {texts[_IDX['v_Length']]} ft "
            f"(must be > 0 and <= {MAX_LENGTH:g} m)"
        ), [], ""
    if not 0 < values[_IDX["v_Width"]] * FT <= MAX_WIDTH:
        return (
            f"impossible vehicle width v_Width = {texts[_IDX['v_Width']]} ft "
            f"(must be > 0 and <= {MAX_WIDTH:g} m)"
        ), [], ""
    if values[_IDX["v_Vel"]] < 0:
        return f"negative speed v_Vel = {texts[_IDX['v_Vel']]} ft/s", [], ""
    location = ""
    if layout.loc_idx is not None:
        location = tokens[layout.loc_idx].strip().lower()
        if not location:
            return "empty Location", [], ""
    return None, values, location


def _iter_rows(path: str, layout: _Layout, skip: int = 0) -> Iterator[tuple[int, str | None]]:
    """(line number, line) of every non-blank data line, streamed from disk.

    The first ``skip`` data lines are yielded with ``None`` instead of their
    text (counting them is all that is needed there).
    """
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise _open_error(path, exc) from None
    with fh:
        row = 0
        for line_no, raw in enumerate(fh, start=1):
            if line_no <= layout.header_line or not raw.strip():
                continue
            if row < skip:
                row += 1
                yield line_no, None
                continue
            row += 1
            line = _decode(raw, line_no == 1).rstrip("\n")
            if line.endswith("\r"):
                line = line[:-1]
            yield line_no, line


def _careful_parse(path: str, layout: _Layout, start_row: int = 0) -> _FileData | None:
    """Line-by-line parse raising on the first bad line at or after ``start_row``.

    Rows before ``start_row`` are only counted. Returns the parsed file when no
    problem is found and ``start_row`` is 0, else None.

    This is the reference for what a valid row is; the vectorised checks in
    :func:`_first_bad_row` test the same conditions.
    """
    values = array("d")
    locations: list[str] = []
    row = -1
    for line_no, line in _iter_rows(path, layout, skip=start_row):
        row += 1
        if line is None:
            continue
        try:
            tokens = _split(line, layout.comma)
        except csv.Error as exc:
            raise NGSIMFormatError(path, line_no, f"cannot split line: {exc}") from None
        problem, vals, location = _row_problem(tokens, layout)
        if problem:
            raise NGSIMFormatError(path, line_no, problem)
        if start_row == 0:
            values.extend(vals)
            locations.append(location)
    if row < 0:
        raise NGSIMFormatError(path, None, "no data rows")
    if start_row:
        return None
    arr = np.frombuffer(values, dtype=np.float64).reshape(-1, len(RAW_COLUMNS))
    cols = {name: np.ascontiguousarray(arr[:, j]) for j, name in enumerate(RAW_COLUMNS)}
    if layout.loc_idx is None:
        return _FileData(path, layout, cols, None, None)
    uniq, codes = np.unique(np.array(locations, dtype=object), return_inverse=True)
    return _FileData(path, layout, cols, [str(u) for u in uniq], codes.astype(np.int64))


def _row_lines(path: str, layout: _Layout, rows: Sequence[int]) -> dict[int, int]:
    """Line numbers of the given data rows (0-based row indices)."""
    wanted = set(int(r) for r in rows)
    found: dict[int, int] = {}
    last = max(wanted) if wanted else -1
    for row, (line_no, _) in enumerate(_iter_rows(path, layout, skip=last + 1)):
        if row in wanted:
            found[row] = line_no
            if len(found) == len(wanted):
                break
    return found


def _parse_file(path: str, layout: _Layout) -> _FileData:
    df = _fast_parse(path, layout)
    if df is None:
        start = _first_failing_block(path, layout)
        data = _careful_parse(path, layout, start_row=start)
        if data is None:  # nothing wrong from ``start`` on: check every line
            data = _careful_parse(path, layout)
        assert data is not None
        return data
    cols = {name: df[i].to_numpy(dtype=np.float64) for name, i in zip(RAW_COLUMNS, layout.raw_idx)}
    loc_values = loc_codes = None
    loc_raw = None
    if layout.loc_idx is not None:
        cat = df[layout.loc_idx].array
        if not isinstance(cat, pd.Categorical):
            cat = pd.Categorical(np.asarray(cat, dtype=object))
        cats = [str(c).strip().lower() for c in cat.categories]
        loc_values = sorted(set(cats))
        remap = np.array([loc_values.index(c) for c in cats], dtype=np.int64)
        loc_codes = remap[cat.codes]
        loc_raw = np.array(loc_values, dtype=object)[loc_codes] if "" in loc_values else None
    del df
    bad = _first_bad_row(cols, loc_raw)
    if bad is not None:
        _careful_parse(path, layout, start_row=bad)
        # the vectorised test and the line check disagree: re-read carefully
        data = _careful_parse(path, layout)
        assert data is not None
        return data
    return _FileData(path, layout, cols, loc_values, loc_codes)


# --------------------------------------------------------------------------
# Duplicates, conflicts and track ids
# --------------------------------------------------------------------------


def _num(value: float) -> str:
    """A value as it would read in a file: integers without decimals."""
    value = float(value)
    return str(int(value)) if value == int(value) else repr(value)


def _int(values: np.ndarray) -> np.ndarray:
    return values.astype(np.int64)


def _sort_order(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stable order sorting by ``parts`` (most significant first) and a mask,
    over sorted positions 1.., that is True where the whole key repeats."""
    n = len(parts[0])
    total = 1
    offsets = []
    for p in parts:
        lo, hi = (int(p.min()), int(p.max())) if n else (0, 0)
        offsets.append((lo, hi - lo + 1))
        total *= hi - lo + 1
    if total < 2**62:
        key = np.zeros(n, dtype=np.int64)
        for p, (lo, span) in zip(parts, offsets):
            key *= span
            key += p - lo
        order = np.argsort(key, kind="stable")
        ks = key[order]
        same = ks[1:] == ks[:-1]
    else:
        order = np.lexsort(parts[::-1])
        same = np.ones(max(n - 1, 0), dtype=bool)
        for p in parts:
            ps = p[order]
            same &= ps[1:] == ps[:-1]
    return order, same


def _dedupe_and_order(data: _FileData) -> tuple[np.ndarray, np.ndarray, int]:
    """Order rows by (location, vehicle, time); drop exact duplicates.

    Returns (row order, new-track flags over that order, duplicates dropped).
    """
    cols = data.cols
    n = data.n
    loc = data.loc_codes if data.loc_codes is not None else np.zeros(n, dtype=np.int64)
    vid = _int(cols["Vehicle_ID"])
    gt = _int(cols["Global_Time"])
    frame = _int(cols["Frame_ID"])
    order, same = _sort_order([loc, vid, gt, frame])

    dropped = 0
    if same.any():
        pos = np.flatnonzero(same)
        a, b = order[pos], order[pos + 1]
        differs = np.zeros(len(pos), dtype=bool)
        first_diff = np.full(len(pos), -1)
        for j, name in enumerate(RAW_COLUMNS):
            d = cols[name][a] != cols[name][b]
            first_diff = np.where((first_diff < 0) & d, j, first_diff)
            differs |= d
        if differs.any():
            k = np.flatnonzero(differs)
            # the conflict completed earliest in the file
            pair_late = np.maximum(a[k], b[k])
            pick = k[np.argmin(pair_late)]
            ra, rb = sorted((int(a[pick]), int(b[pick])))
            lines = _row_lines(data.path, data.layout, [ra, rb])
            col = RAW_COLUMNS[int(first_diff[pick])]
            va, vb = cols[col][ra], cols[col][rb]
            raise NGSIMFormatError(
                data.path,
                lines.get(rb),
                f"conflicting rows for vehicle {vid[ra]} frame {frame[ra]} "
                f"(Global_Time {gt[ra]}): lines {lines.get(ra)} and {lines.get(rb)} "
                f"differ in {col} ({_num(va)} vs {_num(vb)})",
            )
        keep = np.ones(n, dtype=bool)
        keep[pos + 1] = False
        order = order[keep]
        dropped = int(len(pos))
        warnings.warn(
            f"{data.path}: dropped {dropped} exact duplicate row(s)", stacklevel=3
        )

    # new track flags over the sorted rows
    if len(order) == 0:
        return order, np.zeros(0, dtype=bool), dropped
    lo_s, vid_s, fr_s = loc[order], vid[order], frame[order]
    new = np.empty(len(order), dtype=bool)
    new[0] = True
    step = np.diff(fr_s)
    brk = (lo_s[1:] != lo_s[:-1]) | (vid_s[1:] != vid_s[:-1])
    brk |= (step < 1) | (step > MAX_GAP_FRAMES)
    for name in ("v_Class", "v_Length", "v_Width"):
        v = cols[name][order]
        brk |= v[1:] != v[:-1]
    new[1:] = brk
    return order, new, dropped


# --------------------------------------------------------------------------
# Public reader
# --------------------------------------------------------------------------


def _as_path_list(paths) -> list[str]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    out = [os.fsdecode(p) for p in paths]
    if not out:
        raise ValueError("read_trajectories: no input files given")
    return out


def read_trajectories(
    paths: Union[PathLike, Iterable[PathLike]], location: str | None = None
) -> pd.DataFrame:
    """Read one or more NGSIM files (raw or combined-CSV layout) into the
    canonical SI table described in this module's docstring.

    ``location``, when given, is the location of every row, overriding both
    a Location column and the path. Otherwise raw files take their location
    from the path (:func:`location_from_path`) and CSV files from their
    Location column, lower-cased.

    Raises :class:`NGSIMFormatError` for any malformed input.
    """
    path_list = _as_path_list(paths)
    per_file = []
    dropped_total = 0
    for path in path_list:
        layout = _detect_layout(path)
        data = _parse_file(path, layout)
        if location is not None:
            data.loc_values, data.loc_codes = [str(location)], None
        elif data.loc_values is None:
            data.loc_values = [location_from_path(path)]
        order, new, dropped = _dedupe_and_order(data)
        dropped_total += dropped
        per_file.append((data, order, new))

    categories = sorted({v for data, _, _ in per_file for v in data.loc_values})
    cat_index = {c: i for i, c in enumerate(categories)}

    pieces: dict[str, list[np.ndarray]] = {name: [] for name in RAW_COLUMNS}
    loc_parts, new_parts = [], []
    for data, order, new in per_file:
        remap = np.array([cat_index[v] for v in data.loc_values], dtype=np.int16)
        if data.loc_codes is None:
            loc_parts.append(np.full(len(order), remap[0], dtype=np.int16))
        else:
            loc_parts.append(remap[data.loc_codes[order]])
        in_order = len(order) == data.n and bool((np.diff(order) == 1).all())
        for name in RAW_COLUMNS:
            # files already sorted by vehicle and time need no gather
            pieces[name].append(data.cols[name] if in_order else data.cols[name][order])
        new_parts.append(new)
        data.cols = {}

    def _cat(parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    raw = {name: _cat(pieces.pop(name)) for name in RAW_COLUMNS}
    loc_code = _cat(loc_parts)
    new = _cat(new_parts)
    if len(per_file) > 1 and len(categories) > 1 and (np.diff(loc_code) < 0).any():
        final = np.argsort(loc_code, kind="stable")
        raw = {name: v[final] for name, v in raw.items()}
        loc_code, new = loc_code[final], new[final]

    out: dict[str, object] = {}
    for raw_name, name, factor, _ in _CONVERSION:
        v = raw.pop(raw_name)
        if factor is None:
            out[name] = v.astype(DTYPES[name])
        elif factor == 1.0:
            out[name] = v
        else:
            out[name] = v * factor
    out["location"] = pd.Categorical.from_codes(loc_code, categories=categories)
    out["track_id"] = np.cumsum(new, dtype=np.int64) - 1
    df = pd.DataFrame(out, copy=False)
    df.attrs["sources"] = list(path_list)
    df.attrs["duplicates_dropped"] = int(dropped_total)
    return df


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------

_WRITE_CHUNK = 32768  # [rows] formatted per block (keeps the byte matrix in cache)


def _format_block(ints: list[np.ndarray], decimals: Sequence[int]) -> bytes:
    """Format rows of scaled integers as space separated decimal text.

    Every column gets a fixed slot in a (width, rows) byte matrix; unused
    leading positions hold 0 bytes which are squeezed out at the end.
    """
    n = len(ints[0])
    slots = []
    width = 0
    for a, d in zip(ints, decimals):
        neg = bool((a < 0).any())
        biggest = int(np.abs(a).max()) if n else 0
        digits = max(len(str(biggest)), d + 1)
        w = digits + (1 if d else 0) + (1 if neg else 0)
        slots.append((neg, digits, w))
        width += w + 1
    padded = -(-width // 8) * 8  # whole groups of 8 bytes for the transpose
    mt = np.zeros((padded, n), dtype=np.uint8)
    pos = 0
    for a, d, (neg, digits, w) in zip(ints, decimals, slots):
        end = pos + w
        x = np.abs(a)
        if digits <= 9:
            x = x.astype(np.int32)
        c = end - 1
        for k in range(digits):
            q = x // 10
            row = mt[c]
            np.subtract(x, q * 10, out=row, casting="unsafe")
            row += 48
            if k > d:  # leading zeros of the integer part become blanks
                row *= x != 0
            c -= 1
            if d and k == d - 1:
                mt[c] = 46  # '.'
                c -= 1
            x = q
        if neg:
            mt[pos] = (a < 0) * np.uint8(45)  # '-'
        mt[end] = 32  # ' '
        pos = end + 1
    mt[width - 1] = 10  # '\n' replaces the last separator
    # (bytes, rows) -> (rows, bytes); copying 8-byte groups is several times
    # faster than numpy's element-wise transpose of the whole matrix
    m = np.empty((n, padded // 8, 8), dtype=np.uint8)
    groups = mt.reshape(padded // 8, 8, n)
    for g in range(padded // 8):
        m[:, g, :] = groups[g].T
    return m[m != 0].tobytes()


def _raw_integers(df: pd.DataFrame) -> list[np.ndarray]:
    """The 18 raw columns as integers scaled by 10**decimals, in file units."""
    out = []
    for raw_name, name, factor, d in _CONVERSION:
        if name not in df.columns:
            raise ValueError(f"write_raw: column {name!r} is missing")
        v = df[name].to_numpy()
        if factor is None:
            if v.dtype.kind == "f":
                if not np.isfinite(v).all() or (v != np.trunc(v)).any():
                    raise ValueError(f"write_raw: column {name!r} holds non-integers")
            v = v.astype(np.int64)
        else:
            v = np.asarray(v, dtype=np.float64)
            if not np.isfinite(v).all():
                raise ValueError(f"write_raw: column {name!r} holds NaN or inf")
            scaled = (v / factor if factor != 1.0 else v) * 10.0**d
            if len(scaled) and np.abs(scaled).max() >= 2.0**62:
                raise ValueError(f"write_raw: column {name!r} is too large to write")
            v = np.rint(scaled).astype(np.int64)
        out.append(v)
    return out


def write_raw(df: pd.DataFrame, path: PathLike) -> None:
    """Write a canonical table as a raw 18-column NGSIM file.

    Units are converted back to feet, ft/s and ft/s^2; rows are written in
    (frame, vehicle_id) order, space separated, without a header, with the
    precision of the published files (positions 3 decimals, sizes 1, speed,
    acceleration and headways 2, integers as integers). The file is written
    to a temporary file in the same folder and moved into place, so a failed
    write leaves nothing behind.
    """
    ints = _raw_integers(df)
    decimals = [d for _, _, _, d in _CONVERSION]
    frame, vid = ints[1], ints[0]
    n = len(frame)
    if n:
        order, _ = _sort_order([frame, vid])
        ints = [a[order] for a in ints]

    from .paths import atomic_output

    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        for start in range(0, n, _WRITE_CHUNK):
            block = [a[start : start + _WRITE_CHUNK] for a in ints]
            fh.write(_format_block(block, decimals))

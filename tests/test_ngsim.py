"""Tests of the NGSIM reader and writer (traffic_sim.ngsim)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from traffic_sim import ngsim
from traffic_sim.ngsim import (
    COLUMNS,
    DTYPES,
    FT,
    MAX_GAP_FRAMES,
    RAW_COLUMNS,
    NGSIMFormatError,
    feet_to_m,
    location_from_path,
    m_to_feet,
    read_trajectories,
    write_raw,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
I80_ROWS = FIXTURES / "i80" / "trajectories-vehicle1.txt"
US101_ROWS = FIXTURES / "us101" / "trajectories-vehicle2.txt"
MIXED_CSV = FIXTURES / "mixed_locations.csv"
# shared/ lies beside the repository root (also in CI clones)
REPO_ROOT = Path(__file__).resolve().parents[1]
EXCERPT = REPO_ROOT.parent / "shared" / "data" / "ngsim" / "dot_export_first_1000.csv"

CSV_HEADER = ",".join(ngsim.CSV_COLUMNS)


def raw_line(
    vid=1, frame=1, total=100, gtime=None, x=6.0, y=10.0, gx=6042806.0, gy=2133110.0,
    length=15.0, width=6.0, cls=2, vel=30.0, acc=0.0, lane=1, prec=0, foll=0, sh=0.0, th=0.0,
) -> str:
    """One raw NGSIM row in the published precision."""
    if gtime is None:
        gtime = 1113433136000 + 100 * frame
    return (
        f"{vid} {frame} {total} {gtime} {x:.3f} {y:.3f} {gx:.3f} {gy:.3f} "
        f"{length:.1f} {width:.1f} {cls} {vel:.2f} {acc:.2f} {lane} {prec} {foll} {sh:.2f} {th:.2f}"
    )


def write_lines(path: Path, lines, newline="\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        fh.write("".join(line + newline for line in lines))
    return path


def track(vid, frames, **kw):
    return [raw_line(vid=vid, frame=f, **kw) for f in frames]


# ---------------------------------------------------------------------------
# constants and units
# ---------------------------------------------------------------------------


def test_constants():
    assert FT == 0.3048
    assert len(RAW_COLUMNS) == 18
    assert RAW_COLUMNS[0] == "Vehicle_ID" and RAW_COLUMNS[-1] == "Time_Headway"
    assert len(ngsim.CSV_COLUMNS) == 25 and ngsim.CSV_COLUMNS[-1] == "Location"
    assert ngsim.CSV_COLUMNS[14:20] == ("O_Zone", "D_Zone", "Int_ID", "Section_ID", "Direction", "Movement")
    assert COLUMNS == (
        "vehicle_id", "frame", "total_frames", "global_time", "x", "y", "global_x", "global_y",
        "length", "width", "v_class", "speed", "acc", "lane", "preceding", "following",
        "space_headway", "time_headway", "location", "track_id",
    )
    assert MAX_GAP_FRAMES == 50
    assert feet_to_m(10.0) == pytest.approx(3.048)
    assert m_to_feet(3.048) == pytest.approx(10.0)


def test_i80_vehicle1_units():
    # documented real values: Global_Time, Local_Y, v_Vel, v_Length, v_Width, Lane_ID
    df = read_trajectories(I80_ROWS)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 2
    a, b = df.iloc[0], df.iloc[1]
    assert (a.vehicle_id, a.frame, b.frame) == (1, 12, 13)
    assert (a.global_time, b.global_time) == (1113433136100, 1113433136200)
    assert a.y == pytest.approx(14.6953224, abs=1e-9)  # 48.213 ft
    assert b.y == pytest.approx(15.0763224, abs=1e-9)  # 49.463 ft
    assert a.speed == pytest.approx(3.81, abs=1e-12)  # 12.5 ft/s
    assert a.length == pytest.approx(4.35864, abs=1e-12)  # 14.3 ft
    assert a.width == pytest.approx(1.95072, abs=1e-12)  # 6.4 ft
    assert a.lane == 2 and a.v_class == 2
    assert a.location == "i-80"
    # Local_Y advances by v_Vel * 0.1 s per frame
    dt = (b.global_time - a.global_time) / 1000.0
    assert dt == pytest.approx(0.1)
    assert b.y - a.y == pytest.approx(a.speed * dt, abs=1e-9)
    assert df.track_id.tolist() == [0, 0]


def test_us101_vehicle2_units():
    df = read_trajectories(US101_ROWS)
    assert (df.location == "us-101").all()
    assert df.frame.tolist() == [13, 14] and (df.lane == 2).all()
    assert df.speed.iloc[0] == pytest.approx(40 * 0.3048)
    assert df.y.iloc[1] - df.y.iloc[0] == pytest.approx(4.0 * 0.3048, abs=1e-9)
    assert df.y.iloc[1] - df.y.iloc[0] == pytest.approx(df.speed.iloc[0] * 0.1, abs=1e-9)


def test_dtypes_index_and_attrs():
    df = read_trajectories([I80_ROWS, US101_ROWS])
    for name, dtype in DTYPES.items():
        if name == "location":
            assert isinstance(df[name].dtype, pd.CategoricalDtype)
        else:
            assert df[name].dtype == np.dtype(dtype), name
    assert isinstance(df.index, pd.RangeIndex) and df.index[0] == 0
    assert df.attrs["sources"] == [str(I80_ROWS), str(US101_ROWS)]
    assert df.attrs["duplicates_dropped"] == 0
    assert list(df.location.cat.categories) == ["i-80", "us-101"]
    assert df.track_id.tolist() == [0, 0, 1, 1]


# ---------------------------------------------------------------------------
# the real open-data excerpt
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def excerpt():
    if not EXCERPT.is_file():
        pytest.skip(f"real NGSIM excerpt not found at {EXCERPT} (shared/ must lie beside the repository)")
    return read_trajectories(EXCERPT)


def test_real_excerpt(excerpt):
    df = excerpt
    assert len(df) == 1000 - df.attrs["duplicates_dropped"]
    assert df.attrs["duplicates_dropped"] == 0
    assert list(df.location.unique()) == ["peachtree"]
    # "1,156" in quotes
    assert set(df.loc[df.vehicle_id == 352, "total_frames"]) == {1156}
    # a 0-79 ft strip of road
    assert df.y.min() >= 0.0 and df.y.max() <= 79 * FT
    assert df.y.max() == pytest.approx(41.889 * FT)
    assert df.time_headway.max() == pytest.approx(9999.99)  # "9,999.99"
    assert set(df.v_class.unique()) <= {1, 2, 3}
    assert df.x.min() == pytest.approx(-5.359 * FT)  # a negative Local_X
    first = df[(df.vehicle_id == 352) & (df.frame == 3380)].iloc[0]
    assert first.global_time == 1163368300
    assert first.speed == pytest.approx(33.96 * FT)
    assert first.length == pytest.approx(15 * FT) and first.width == pytest.approx(6.5 * FT)
    key = df[["location", "track_id", "frame"]].astype({"location": str})
    assert key.equals(key.sort_values(["location", "track_id", "frame"], ignore_index=True))
    assert df.track_id.iloc[0] == 0 and df.track_id.iloc[-1] == df.track_id.nunique() - 1


def test_real_excerpt_to_raw_round_trip(excerpt, tmp_path):
    out = tmp_path / "peachtree-from-csv.txt"
    write_raw(excerpt, out)
    again = read_trajectories(out)
    assert again.location.iloc[0] == "peachtree"
    pd.testing.assert_frame_equal(again, excerpt, check_exact=True)


# ---------------------------------------------------------------------------
# combined CSV layout
# ---------------------------------------------------------------------------


def test_mixed_locations_csv():
    df = read_trajectories(MIXED_CSV)
    assert len(df) == 7
    assert list(df.location.cat.categories) == ["peachtree", "us-101"]
    assert (df.location == "us-101").sum() == 3
    # vehicle 39 exists in both locations: separate tracks
    v39 = df[df.vehicle_id == 39]
    assert v39.groupby("location", observed=True).track_id.nunique().to_dict() == {"peachtree": 1, "us-101": 1}
    assert df.track_id.tolist() == [0, 0, 0, 1, 2, 2, 2]
    assert df.frame.tolist() == [208, 216, 217, 357, 208, 209, 210]
    us = df[df.location == "us-101"]
    assert (us.total_frames == 1024).all()
    assert us.global_time.tolist() == [1118847000800, 1118847000900, 1118847001000]
    assert df.loc[df.vehicle_id == 70, "time_headway"].item() == pytest.approx(9999.99)
    assert df.loc[df.vehicle_id == 70, "speed"].item() == 0.0


def test_csv_to_raw_round_trip(tmp_path):
    df = read_trajectories(MIXED_CSV)
    for loc in ("peachtree", "us-101"):
        part = df[df.location == loc]
        out = tmp_path / f"{loc}.txt"
        write_raw(part, out)
        back = read_trajectories(out)
        cols = [c for c in COLUMNS if c not in ("location", "track_id")]
        expected = part[cols].reset_index(drop=True)
        pd.testing.assert_frame_equal(back[cols], expected, check_exact=True)
        assert (back.location == loc).all()


def test_layout_detected_by_content_not_extension(tmp_path):
    raw_as_csv = tmp_path / "i80" / "looks-like.csv"
    raw_as_csv.parent.mkdir()
    raw_as_csv.write_bytes(I80_ROWS.read_bytes())
    csv_as_txt = tmp_path / "export.txt"
    csv_as_txt.write_bytes(MIXED_CSV.read_bytes())
    a = read_trajectories(raw_as_csv)
    assert len(a) == 2 and a.location.iloc[0] == "i-80"
    b = read_trajectories(csv_as_txt)
    assert len(b) == 7 and set(b.location) == {"peachtree", "us-101"}


def test_csv_header_case_and_no_bom(tmp_path):
    text = MIXED_CSV.read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    header, rest = text.split("\n", 1)
    path = tmp_path / "lower.csv"
    path.write_text(header.upper().replace("LOCATION", "location") + "\n" + rest)
    pd.testing.assert_frame_equal(
        read_trajectories(path), read_trajectories(MIXED_CSV), check_exact=True
    )


# ---------------------------------------------------------------------------
# locations
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        ("data/i80/trajectories-0400-0415.txt", "i-80"),
        ("data/I-80/trajectories.txt", "i-80"),
        ("/x/US101/trajectories-0750am-0805am.txt", "us-101"),
        ("us-101_traj.txt", "us-101"),
        ("runs/synthetic-i80-seed3.txt", "synthetic-i80"),
        ("/data/Synthetic-I80/run.txt", "synthetic-i80"),
        ("lankershim/trajectories.txt", "lankershim"),
        ("Peachtree-Main-Data.txt", "peachtree"),
        ("/data/other/trajectories.txt", "unknown"),
        ("/data/wifi80/trajectories.txt", "unknown"),
    ],
)
def test_location_from_path(path, expected):
    assert location_from_path(path) == expected


def test_location_argument_overrides(tmp_path):
    assert read_trajectories(I80_ROWS, location="study-site").location.iloc[0] == "study-site"
    df = read_trajectories(MIXED_CSV, location="peachtree")
    assert list(df.location.cat.categories) == ["peachtree"]
    # us-101 and peachtree vehicle 39 now share a location but stay apart in time
    assert df[df.vehicle_id == 39].track_id.nunique() == 2


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


def test_raw_round_trip_exact_bytes(tmp_path):
    df = read_trajectories(I80_ROWS)
    out = tmp_path / "i80" / "copy.txt"
    out.parent.mkdir()
    write_raw(df, out)
    # the fixture is in the published precision, so the text is identical
    assert out.read_bytes() == I80_ROWS.read_bytes()
    back = read_trajectories(out)
    back.attrs = df.attrs = {}
    pd.testing.assert_frame_equal(back, df, check_exact=True)


def random_raw_lines(n_vehicles=60, n_frames=120, seed=1) -> list[str]:
    """Rows with awkward values: negatives, zeros, stopped headways, big ids."""
    rng = np.random.default_rng(seed)
    lines = []
    for frame in range(1000, 1000 + n_frames):
        for vid in range(1, n_vehicles + 1):
            vel = 0.0 if vid % 7 == 0 else rng.uniform(0, 90)
            lines.append(
                raw_line(
                    vid=vid * 37, frame=frame, total=n_frames, x=rng.uniform(-8, 80),
                    y=rng.uniform(0, 2000), gx=rng.uniform(6e6, 6.1e6), gy=rng.uniform(-5, 2.2e6),
                    length=10 + (vid % 9), width=5 + (vid % 3) * 0.5, cls=1 + vid % 3,
                    vel=vel, acc=rng.uniform(-11.2, 11.2), lane=1 + vid % 7,
                    prec=0 if vid == 1 else (vid - 1) * 37, foll=(vid + 1) * 37,
                    sh=rng.uniform(0, 400), th=9999.99 if vel == 0 else rng.uniform(0, 100),
                )
            )
    return lines


def test_raw_round_trip_values_and_bytes(tmp_path):
    src = write_lines(tmp_path / "i80" / "src.txt", random_raw_lines())
    df = read_trajectories(src)
    assert df.track_id.nunique() == 60
    first = tmp_path / "i80" / "first.txt"
    write_raw(df, first)
    # identical values after re-reading...
    want = pd.read_csv(src, sep=" ", header=None)
    got = pd.read_csv(first, sep=" ", header=None)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    # ...and identical text, since the source used the same precision and order
    assert first.read_bytes() == src.read_bytes()
    back = read_trajectories(first)
    back.attrs = {}
    df.attrs = {}
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    second = tmp_path / "i80" / "second.txt"
    write_raw(back, second)
    assert second.read_bytes() == first.read_bytes()


def test_round_trip_of_unaligned_whitespace(tmp_path):
    # tabs, runs of spaces, CRLF and blank lines (the fast path cannot take these)
    lines = random_raw_lines(n_vehicles=5, n_frames=10)
    messy = ["", *("  " + line.replace(" ", "   ", 3).replace(" ", "\t", 1) + "  " for line in lines), "  "]
    src = write_lines(tmp_path / "messy.txt", messy, newline="\r\n")
    clean = write_lines(tmp_path / "clean.txt", lines)
    a, b = read_trajectories(src), read_trajectories(clean)
    a.attrs = b.attrs = {}
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_write_raw_format_and_order(tmp_path):
    lines = [
        raw_line(vid=5, frame=2, x=-1.25, acc=-0.004, th=9999.99),
        raw_line(vid=3, frame=2),
        raw_line(vid=5, frame=1, x=-1.25),
        raw_line(vid=3, frame=1),
    ]
    df = read_trajectories(write_lines(tmp_path / "in.txt", lines))
    out = tmp_path / "out.txt"
    write_raw(df, out)
    text = out.read_text().splitlines()
    assert [tuple(int(t) for t in s.split()[:2]) for s in text] == [(3, 1), (5, 1), (3, 2), (5, 2)]
    pattern = re.compile(
        r"^\d+ \d+ \d+ \d+ (-?\d+\.\d{3} ){4}\d+\.\d \d+\.\d \d -?\d+\.\d{2} -?\d+\.\d{2} \d+ \d+ \d+ \d+\.\d{2} \d+\.\d{2}$"
    )
    assert all(pattern.match(s) for s in text), text
    assert text[3].split()[4] == "-1.250"
    assert text[3].split()[12] == "0.00"  # -0.004 rounds to 0.00, never "-0.00"
    assert text[3].split()[17] == "9999.99"


def test_write_raw_is_atomic(tmp_path, monkeypatch):
    df = read_trajectories(write_lines(tmp_path / "src.txt", random_raw_lines(n_vehicles=40, n_frames=50)))
    target = tmp_path / "out" / "traj.txt"
    target.parent.mkdir()
    target.write_text("old contents\n")
    monkeypatch.setattr(ngsim, "_WRITE_CHUNK", 100)
    calls = {"n": 0}
    real = ngsim._format_block

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(ngsim, "_format_block", failing)
    with pytest.raises(OSError, match="disk full"):
        write_raw(df, target)
    assert calls["n"] == 3
    assert os.listdir(target.parent) == ["traj.txt"]  # no temporary file left behind
    assert target.read_text() == "old contents\n"

    bad = df.copy()
    bad.loc[5, "speed"] = np.nan
    with pytest.raises(ValueError, match="speed"):
        write_raw(bad, tmp_path / "out" / "new.txt")
    assert os.listdir(target.parent) == ["traj.txt"]


# ---------------------------------------------------------------------------
# malformed input: file name and line number in a one-line message
# ---------------------------------------------------------------------------

GOOD = track(1, range(1, 4)) + track(2, range(1, 4), x=18.0, lane=2)


def replace_field(line: str, index: int, value: str) -> str:
    fields = line.split()
    fields[index] = value
    return " ".join(fields)


BAD_RAW_CASES = {
    # name: (lines, bad line number, words expected in the problem)
    "missing column": (GOOD[:4] + [" ".join(GOOD[4].split()[:-1])] + GOOD[5:], 5, ["expected 18 columns, got 17"]),
    "extra column": (GOOD[:2] + [GOOD[2] + " 7"] + GOOD[3:], 3, ["expected 18 columns, got 19"]),
    "extra column in first row": ([GOOD[0] + " 7"] + GOOD[1:], 1, ["expected 18 columns, got 19"]),
    "non-numeric": (GOOD[:5] + [replace_field(GOOD[5], 5, "12.3x")], 6, ["Local_Y", "12.3x"]),
    "nan": (GOOD[:3] + [replace_field(GOOD[3], 11, "NaN")] + GOOD[4:], 4, ["v_Vel", "not finite"]),
    "inf": (GOOD[:1] + [replace_field(GOOD[1], 4, "inf")] + GOOD[2:], 2, ["Local_X", "not finite"]),
    "length too long": (GOOD[:4] + [replace_field(GOOD[4], 8, "99.0")] + GOOD[5:], 5, ["v_Length", "99.0 ft"]),
    "length zero": (GOOD[:2] + [replace_field(GOOD[2], 8, "0.0")] + GOOD[3:], 3, ["v_Length", "0.0 ft"]),
    "width too wide": (GOOD[:1] + [replace_field(GOOD[1], 9, "13.2")] + GOOD[2:], 2, ["v_Width", "13.2 ft"]),
    "width negative": (GOOD[:5] + [replace_field(GOOD[5], 9, "-6.0")], 6, ["v_Width", "-6.0 ft"]),
    "negative speed": (GOOD[:3] + [replace_field(GOOD[3], 11, "-2.50")] + GOOD[4:], 4, ["negative speed", "-2.50"]),
    "bad class": (GOOD[:2] + [replace_field(GOOD[2], 10, "4")] + GOOD[3:], 3, ["v_Class", "'4'"]),
    "fractional id": ([replace_field(GOOD[0], 0, "1.5")] + GOOD[1:], 1, ["Vehicle_ID", "integer"]),
}


@pytest.mark.parametrize("case", sorted(BAD_RAW_CASES))
def test_bad_raw_rows(tmp_path, case):
    lines, line_no, words = BAD_RAW_CASES[case]
    path = write_lines(tmp_path / "bad.txt", lines)
    with pytest.raises(NGSIMFormatError) as info:
        read_trajectories(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line_no}: "), message
    for word in words:
        assert word in message, message
    assert info.value.line == line_no and info.value.file == str(path)


def test_bad_row_deep_in_large_file_after_blank_lines(tmp_path):
    lines = random_raw_lines(n_vehicles=50, n_frames=60)  # 3000 rows
    lines[2500] = replace_field(lines[2500], 8, "120.0")
    lines = ["", ""] + lines[:1000] + ["", "   "] + lines[1000:]
    path = write_lines(tmp_path / "big.txt", lines)
    with pytest.raises(NGSIMFormatError, match=re.escape(f"{path}:2505: impossible vehicle length")):
        read_trajectories(path)


@pytest.mark.parametrize("token, words", [("4x.5", "not a number: '4x.5'"), ("nan", "not finite")])
def test_parse_error_deep_in_file_is_located(tmp_path, monkeypatch, token, words):
    # parse failures are narrowed down block by block; line numbers must survive that
    monkeypatch.setattr(ngsim, "_SEARCH_CHUNK", 500)
    lines = random_raw_lines(n_vehicles=50, n_frames=60)
    lines[2222] = replace_field(lines[2222], 5, token)
    lines = lines[:700] + [""] + lines[700:1900] + ["", ""] + lines[1900:]
    path = write_lines(tmp_path / "big.txt", lines)
    with pytest.raises(NGSIMFormatError) as info:
        read_trajectories(path)
    assert str(info.value).startswith(f"{path}:2226: column Local_Y: "), str(info.value)
    assert words in str(info.value)


def test_conflicting_rows_name_both_lines(tmp_path):
    lines = GOOD + [replace_field(GOOD[1], 11, "31.00")]
    path = write_lines(tmp_path / "conflict.txt", lines)
    with pytest.raises(NGSIMFormatError) as info:
        read_trajectories(path)
    message = str(info.value)
    assert message.startswith(f"{path}:7: "), message
    assert "lines 2 and 7" in message and "v_Vel" in message and "vehicle 1 frame 2" in message


def test_exact_duplicates_dropped_with_warning(tmp_path):
    lines = GOOD[:3] + [GOOD[1], GOOD[1]] + GOOD[3:] + [GOOD[5]]
    path = write_lines(tmp_path / "dups.txt", lines)
    with pytest.warns(UserWarning) as record:
        df = read_trajectories(path)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "3 exact duplicate" in messages[0] and str(path) in messages[0]
    assert df.attrs["duplicates_dropped"] == 3
    assert len(df) == 6
    clean = read_trajectories(write_lines(tmp_path / "clean.txt", GOOD))
    df.attrs = clean.attrs = {}
    pd.testing.assert_frame_equal(df, clean, check_exact=True)


def test_no_warning_without_duplicates():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_trajectories(I80_ROWS)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(NGSIMFormatError, match=re.escape(f"{path}: empty")):
        read_trajectories(path)
    blank = write_lines(tmp_path / "blank.txt", ["", "   ", ""])
    with pytest.raises(NGSIMFormatError, match=re.escape(f"{blank}: empty")):
        read_trajectories(blank)


def test_header_only_csv(tmp_path):
    path = write_lines(tmp_path / "header.csv", [CSV_HEADER])
    with pytest.raises(NGSIMFormatError, match=re.escape(f"{path}: no data rows")):
        read_trajectories(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "trajectories.txt"
    with pytest.raises(NGSIMFormatError, match="No such file") as info:
        read_trajectories(path)
    assert str(path) in str(info.value)
    # the error comes before any other file is used
    with pytest.raises(NGSIMFormatError, match="No such file"):
        read_trajectories([I80_ROWS, path])


def csv_rows() -> list[str]:
    return MIXED_CSV.read_text(encoding="utf-8-sig").splitlines()


@pytest.mark.parametrize(
    "edit, line_no, words",
    [
        (lambda r: r[:3] + [r[3] + ",1"] + r[4:], 4, ["expected 25 columns, got 26"]),
        (lambda r: r[:5] + [r[5].rsplit(",", 1)[0]] + r[6:], 6, ["expected 25 columns, got 24"]),
        (lambda r: r[:2] + [r[2].replace("11.577", "eleven")] + r[3:], 3, ["Local_X", "eleven"]),
        (lambda r: r[:7] + [r[7].replace("0.29,", "nan,")], 8, ["v_Vel", "not finite"]),
        (lambda r: r[:6] + [r[6].replace(",3,,,", ",3.5,,,")] + r[7:], 7, ["Lane_ID", "integer"]),
        (lambda r: r[:4] + [r[4].replace(",US-101", ",")] + r[5:], 5, ["empty Location"]),
        (lambda r: [r[0].replace("Local_Y", "Local_Z")] + r[1:], 1, ["header lacks", "Local_Y"]),
        (lambda r: r + [r[2].replace("0.94", "0.95")], 9, ["lines 3 and 9"]),
    ],
)
def test_bad_csv_rows(tmp_path, edit, line_no, words):
    path = write_lines(tmp_path / "bad.csv", edit(csv_rows()), newline="\r\n")
    with pytest.raises(NGSIMFormatError) as info:
        read_trajectories(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line_no}: "), message
    for word in words:
        assert word in message, message


def test_errors_are_value_errors():
    assert issubclass(NGSIMFormatError, ValueError)
    err = NGSIMFormatError("a.txt", 3, "bad\nthing")
    assert str(err) == "a.txt:3: bad thing"
    assert str(NGSIMFormatError("a.txt", None, "empty")) == "a.txt: empty"


# ---------------------------------------------------------------------------
# tracks
# ---------------------------------------------------------------------------


def test_small_gap_stays_one_track(tmp_path):
    frames = [1, 2, 3, 7, 8]  # 3 frames (4, 5, 6) missing
    df = read_trajectories(write_lines(tmp_path / "gap.txt", track(9, frames)))
    assert df.track_id.tolist() == [0] * 5
    assert df.frame.tolist() == frames


def test_gap_limit_is_max_gap_frames(tmp_path):
    one = track(9, [10, 10 + MAX_GAP_FRAMES])
    two = track(9, [10, 11 + MAX_GAP_FRAMES])
    assert read_trajectories(write_lines(tmp_path / "a.txt", one)).track_id.nunique() == 1
    assert read_trajectories(write_lines(tmp_path / "b.txt", two)).track_id.nunique() == 2


def test_reused_id_after_long_gap_is_new_track(tmp_path):
    lines = track(4, range(1, 11)) + track(4, range(210, 215), x=30.0, lane=3) + track(5, range(1, 4))
    df = read_trajectories(write_lines(tmp_path / "reuse.txt", sorted(lines, key=lambda s: int(s.split()[1]))))
    assert df.track_id.nunique() == 3
    v4 = df[df.vehicle_id == 4]
    assert v4.groupby("track_id").frame.agg(["min", "max"]).values.tolist() == [[1, 10], [210, 214]]
    assert df.track_id.tolist() == [0] * 10 + [1] * 5 + [2] * 3


def test_size_or_class_change_starts_a_track(tmp_path):
    lines = track(4, range(1, 4)) + track(4, range(4, 6), length=40.0, cls=3)
    df = read_trajectories(write_lines(tmp_path / "change.txt", lines))
    assert df.track_id.tolist() == [0, 0, 0, 1, 1]


def test_same_ids_in_two_files_are_different_tracks(tmp_path):
    a = write_lines(tmp_path / "i80" / "a.txt", track(1, range(1, 5)) + track(2, range(1, 5)))
    b = write_lines(tmp_path / "i80" / "b.txt", track(1, range(1, 5)) + track(2, range(1, 5)))
    df = read_trajectories([a, b])
    assert df.track_id.nunique() == 4
    assert df.attrs["duplicates_dropped"] == 0
    assert df.track_id.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert df.attrs["sources"] == [str(a), str(b)]


def test_rows_out_of_order_are_sorted(tmp_path):
    lines = track(3, range(1, 6)) + track(1, range(2, 5))
    rng = np.random.default_rng(0)
    shuffled = [lines[i] for i in rng.permutation(len(lines))]
    df = read_trajectories(write_lines(tmp_path / "shuffled.txt", shuffled))
    assert df.vehicle_id.tolist() == [1] * 3 + [3] * 5
    assert df.frame.tolist() == [2, 3, 4, 1, 2, 3, 4, 5]
    assert df.index.equals(pd.RangeIndex(8))

"""The command line: outputs, CSV format, and one-line errors with exit status 2."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_evaluate_writes_the_csv(traffic_file, tmp_path):
    out = tmp_path / "eval.csv"
    r = run("evaluate", "--trajectories", str(traffic_file), "--split", "all", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout
    rows = list(csv.DictReader(out.open()))
    assert [row["policy"] for row in rows] == ["human", "no-action"]
    assert list(rows[0]) == ["policy", "episodes", "success_rate", "collision_rate",
                             "offroad_rate", "mean_distance_m", "mean_time_s",
                             "collision_front_rate", "collision_rear_rate", "collision_side_rate"]
    for row in rows:
        for k in ("success_rate", "collision_rate", "offroad_rate"):
            assert 0.0 <= float(row[k]) <= 1.0
    for row in rows:  # the kinds of collision add up to the collisions
        kinds = sum(float(row[f"collision_{k}_rate"]) for k in ("front", "rear", "side"))
        assert kinds == pytest.approx(float(row["collision_rate"]), abs=1e-4)
    assert float(rows[0]["success_rate"]) >= 0.98
    assert float(rows[1]["success_rate"]) < float(rows[0]["success_rate"])


def test_inspect_summarises(traffic_file):
    r = run("inspect", str(traffic_file))
    assert r.returncode == 0, r.stderr
    assert "synthetic-i80" in r.stdout and "vehicles in view" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["inspect", "/nonexistent/x.txt"], "x.txt"),
    (["evaluate", "--policy", "telepathy"], "unknown policy"),
    (["evaluate", "--trajectories", "/nonexistent/x.txt"], "no such trajectory file"),
    (["evaluate", "--episodes", "0"], "--episodes"),
    (["generate", "--minutes", "-3"], "--minutes"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = run(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


GOOD_ROW = "1 12 884 1113433136100 16.884 48.213 6042842.12 2133117.45 14.3 6.4 2 12.50 0.00 2 0 13 0.00 0.00\n"


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\x00\x01\x02 binary", "not a text file"),
    (GOOD_ROW.rsplit(" ", 1)[0].encode() + b"\n", "expected 18 columns, got 17"),
    (GOOD_ROW.replace(" 14.3 ", " -2 ").encode(), "impossible vehicle length"),
])
def test_bad_files_through_the_cli(tmp_path, content, message):
    bad = tmp_path / "i80-bad.txt"
    bad.write_bytes(content)
    for args in (["inspect", str(bad)], ["evaluate", "--trajectories", str(bad)]):
        r = run(*args)
        assert r.returncode == 2
        assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_a_folder_is_not_a_file(tmp_path):
    r = run("inspect", str(tmp_path))
    assert r.returncode == 2 and "directory" in r.stderr


def test_bad_file_names_file_and_line(tmp_path):
    bad = tmp_path / "i80-bad.txt"
    bad.write_text(GOOD_ROW + GOOD_ROW.replace(" 12 ", " 13 ", 1).replace("48.213", "abc"))
    r = run("inspect", str(bad))
    assert r.returncode == 2
    assert f"{bad}:2:" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_watch_records_frames(traffic_file, tmp_path):
    out = tmp_path / "frames"
    r = run("watch", "--trajectories", str(traffic_file), "--split", "all", "--record", str(out),
            "--max-steps", "5")
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("*.png"))) >= 5


def test_a_script_reports_bad_input_in_one_line_with_status_2(capsys):
    from traffic_sim.cli_util import UserError, run_script

    def bad():
        raise UserError("--steps must be at least 1")

    with pytest.raises(SystemExit) as stop:
        run_script(bad)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: --steps must be at least 1\n"
    run_script(lambda: None)  # a script that ends well returns

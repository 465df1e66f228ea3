"""`photon report`: a run's summary.json becomes three PNG plots and a markdown summary."""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from photon.cli.report import report
from photon.errors import DataError
from photon.report import ReportFiles, default_out_dir, load_summary, make_report
from photon.report.markdown import render_markdown
from photon.report.series import (
    byte_unit,
    cumulative_ddp,
    cumulative_traffic,
    eval_by_round,
    eval_by_tokens,
    train_loss_by_silo,
)
from photon.report.summary import parse_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def summary_dict(rounds: int = 4, silos: int = 3, *, params: int = 1_234_567) -> dict[str, Any]:
    """A summary.json shaped like aggregator.summary.build_summary writes."""
    rows: list[dict[str, Any]] = []
    for r in range(rounds):
        loss = 5.0 - 0.5 * (r + 1)
        rows.append(
            {
                "round": r,
                "version": r + 1,
                "eval_loss": loss,
                "bytes_up": silos * 1_000_000,
                "bytes_down": silos * 2_000_000,
                "seconds": 10.0 + r,
                "tokens": silos * 1024,
                "ddp_equivalent_bytes": 2 * 4 * params * 50 * silos,
                "silos": {
                    f"silo-{i}": {
                        "train_loss": loss + 0.1 * i,
                        "tokens": 1024,
                        "bytes_up": 1_000_000,
                        "bytes_down": 2_000_000,
                    }
                    for i in range(silos)
                },
            }
        )
    up, down = sum(r["bytes_up"] for r in rows), sum(r["bytes_down"] for r in rows)
    ddp = sum(r["ddp_equivalent_bytes"] for r in rows)
    return {
        "federation": "photon-local",
        "preset": "tiny",
        "model_params": params,
        "codec": "int8",
        "rounds_planned": rounds,
        "local_steps": 50,
        "version": rounds,
        "done": True,
        "initial_eval_loss": 5.5,
        "final_eval_loss": rows[-1]["eval_loss"] if rows else None,
        "checkpoint": "/runs/x/checkpoints/v000004.safetensors",
        "param_digest": "ab" * 32,
        "bytes_up_total": up,
        "bytes_down_total": down,
        "ddp_equivalent_bytes_total": ddp,
        "comm_reduction_vs_ddp": round(ddp / (up + down), 2) if up + down else None,
        "rounds": rows,
    }


def write_run(run_dir: Path, summary: dict[str, Any], *, nested: bool = False) -> Path:
    path = run_dir / "aggregator-state" / "summary.json" if nested else run_dir / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def assert_report(files: ReportFiles, out_dir: Path) -> None:
    assert files.markdown == out_dir / "report.md"
    for png in (files.eval_loss, files.train_loss, files.bytes):
        assert png.parent == out_dir
        width, height = png_size(png)
        assert 800 <= width <= 960 and 450 <= height <= 540  # ~8x4.5 in at ~110 dpi
    assert files.markdown.read_text().startswith("# Run report: photon-local")
    assert not list(out_dir.glob(".*tmp*")), "atomic writes left a temporary file"


@pytest.fixture(scope="module")
def full_report(tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    """One report of a 4-round, 3-silo run in RUN_DIR/aggregator-state (made once: plotting
    is the slow part of these tests)."""
    run_dir = tmp_path_factory.mktemp("run")
    write_run(run_dir, summary_dict(rounds=4), nested=True)
    files = make_report(run_dir)
    assert files.markdown.parent == run_dir / "report"
    return files


def test_report_writes_three_pngs_and_markdown_into_run_dir_report(
    full_report: ReportFiles,
) -> None:
    assert_report(full_report, full_report.markdown.parent)


@pytest.mark.parametrize("form", ["workdir", "aggregator-state", "file"])
def test_summary_is_found_in_a_workdir_a_state_dir_or_given_directly(
    tmp_path: Path, form: str
) -> None:
    path = write_run(tmp_path, summary_dict(rounds=2), nested=form != "workdir")
    given = path if form == "file" else tmp_path
    assert load_summary(given).path == path
    assert (
        default_out_dir(given)
        == (tmp_path / "aggregator-state" if form == "file" else tmp_path) / "report"
    )


def test_missing_summary_names_every_path_tried(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        make_report(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "summary.json") in message
    assert str(tmp_path / "aggregator-state" / "summary.json") in message
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object")],
)
def test_unreadable_summary_is_a_data_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "summary.json").write_text(content)
    with pytest.raises(DataError, match=message):
        make_report(tmp_path)


def test_markdown_states_the_run_in_numbers(full_report: ReportFiles) -> None:
    text = full_report.markdown.read_text()
    for expected in (
        "| Federation | photon-local |",
        "preset `tiny`, 1.23M parameters",
        "| Codec | int8 |",
        "| Rounds | 4 of 4 (finished), 50 local steps each |",
        "5.5000 → 3.0000 (final/initial = 0.545)",  # 3.0 / 5.5
        "| Bytes up / down | 12.0MB / 24.0MB |",
        "| Data-parallel equivalent | 5.9GB |",
        "| Wall time (sum of rounds) | 46.0s |",  # 10 + 11 + 12 + 13
        "v000004.safetensors",
    ):
        assert expected in text, expected
    assert f"{summary_dict()['comm_reduction_vs_ddp']:g}x less traffic" in text


def test_markdown_links_resolve_to_the_written_pngs(full_report: ReportFiles) -> None:
    files = full_report
    text = files.markdown.read_text()
    for png in (files.eval_loss, files.train_loss, files.bytes):
        assert f"]({png.name})" in text
        assert (files.markdown.parent / png.name).is_file()


@pytest.mark.parametrize(
    "summary",
    [
        {},
        summary_dict(rounds=1, silos=1),
        {**summary_dict(), "initial_eval_loss": None, "comm_reduction_vs_ddp": None},
        {"rounds": [{"round": 0, "eval_loss": None, "silos": {}}]},
        {"rounds": [{"round": 0, "bytes_up": 0, "bytes_down": 0, "silos": None}]},
    ],
    ids=["empty", "one-round", "nulls", "sparse-round", "no-traffic"],
)
def test_sparse_or_early_summaries_still_make_a_report(
    tmp_path: Path, summary: dict[str, Any]
) -> None:
    write_run(tmp_path, summary)
    files = make_report(tmp_path)
    for path in files.paths():
        assert path.is_file() and path.stat().st_size > 0
    if not summary.get("federation"):
        assert "n/a" in files.markdown.read_text()


def test_round_numbers_and_versions_default_from_position(tmp_path: Path) -> None:
    rows = [{"eval_loss": 4.0}, {"eval_loss": 3.0, "tokens": 100}]
    s = parse_summary({"rounds": rows, "initial_eval_loss": 5.0}, tmp_path / "summary.json")
    assert [(r.round, r.version) for r in s.rounds] == [(0, 1), (1, 2)]
    assert eval_by_round(s).x == [0, 1, 2]


def test_eval_series_start_at_the_initial_loss_and_skip_missing_evals(tmp_path: Path) -> None:
    raw = summary_dict(rounds=3, silos=2)
    raw["rounds"][1]["eval_loss"] = None
    s = parse_summary(raw, tmp_path)
    by_round = eval_by_round(s)
    assert by_round.x == [0, 1, 3] and by_round.y == [5.5, 4.5, 3.5]
    by_tokens = eval_by_tokens(s)
    assert by_tokens.x == [0, 2048, 6144]  # cumulative tokens after rounds 0 and 2
    assert by_tokens.y == by_round.y


def test_tokens_fall_back_to_the_sum_over_silos(tmp_path: Path) -> None:
    raw = summary_dict(rounds=2, silos=3)
    for row in raw["rounds"]:
        del row["tokens"]
    assert eval_by_tokens(parse_summary(raw, tmp_path)).x == [0, 3072, 6144]


def test_train_loss_lines_break_where_a_silo_sent_nothing(tmp_path: Path) -> None:
    raw = summary_dict(rounds=3, silos=2)
    del raw["rounds"][1]["silos"]["silo-1"]
    lines = train_loss_by_silo(parse_summary(raw, tmp_path))
    assert sorted(lines) == ["silo-0", "silo-1"]
    assert lines["silo-0"].y == pytest.approx([4.5, 4.0, 3.5])
    assert math.isnan(lines["silo-1"].y[1]) and lines["silo-1"].y[2] == pytest.approx(3.6)


def test_cumulative_bytes_against_the_data_parallel_equivalent(tmp_path: Path) -> None:
    s = parse_summary(summary_dict(rounds=3, silos=1, params=1000), tmp_path)
    assert cumulative_traffic(s).y == [3e6, 6e6, 9e6]
    ddp = cumulative_ddp(s)
    assert ddp is not None and ddp.y == [400_000, 800_000, 1_200_000]
    assert ddp.x == [1, 2, 3]
    assert cumulative_ddp(parse_summary({"rounds": [{"round": 0}]}, tmp_path)) is None


@pytest.mark.parametrize(
    ("largest", "unit"),
    [(0, "B"), (999, "B"), (1000, "KB"), (2.5e6, "MB"), (7e9, "GB"), (3e13, "TB")],
)
def test_byte_unit(largest: float, unit: str) -> None:
    assert byte_unit(largest)[0] == unit


optional_number = st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-(2**40), 2**40))
round_rows = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "round": st.integers(0, 100),
            "eval_loss": optional_number,
            "bytes_up": optional_number,
            "bytes_down": optional_number,
            "seconds": optional_number,
            "tokens": optional_number,
            "ddp_equivalent_bytes": optional_number,
            "silos": st.dictionaries(
                st.text(min_size=1, max_size=8),
                st.fixed_dictionaries({}, optional={"train_loss": optional_number}),
                max_size=3,
            ),
        },
    ),
    max_size=6,
)


@settings(max_examples=50, deadline=None)
@given(
    rows=round_rows,
    top=st.fixed_dictionaries(
        {},
        optional={
            k: optional_number
            for k in ("initial_eval_loss", "final_eval_loss", "model_params", "version")
        },
    ),
)
def test_any_partial_summary_parses_and_renders(rows: list[Any], top: dict[str, Any]) -> None:
    s = parse_summary({**top, "rounds": rows}, Path("summary.json"))
    for line in (eval_by_round(s), eval_by_tokens(s), cumulative_traffic(s)):
        assert len(line.x) == len(line.y)
        assert all(math.isfinite(v) for v in line.y)
    assert render_markdown(s, {"Plot": "p.png"}).startswith("# Run report:")


def test_cli_prints_the_paths_written(tmp_path: Path) -> None:
    write_run(tmp_path / "run", summary_dict(), nested=True)
    result = CliRunner().invoke(report, [str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    printed = [Path(line) for line in result.output.splitlines()]
    assert [p.name for p in printed] == [
        "eval_loss.png",
        "train_loss.png",
        "bytes.png",
        "report.md",
    ]
    assert all(p.is_file() and p.parent == tmp_path / "out" for p in printed)


def test_cli_reports_a_missing_summary_without_a_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(report, [str(tmp_path)])
    assert result.exit_code == 1
    assert "Error: no summary.json" in result.output
    assert "Traceback" not in result.output


def test_cli_help_shows_an_example() -> None:
    result = CliRunner().invoke(report, ["--help"])
    assert result.exit_code == 0
    assert "photon report runs/try1" in result.output


def test_report_of_a_real_photon_local_run(tmp_path: Path) -> None:
    """The summary.json that `photon local` really writes (not a hand-written one) makes a
    complete report: every row filled, the numbers those of the run."""
    workdir = tmp_path / "run"
    args = ["--silos", "2", "--rounds", "2", "--local-steps", "3", "--codec", "int8"]
    run = subprocess.run(
        [sys.executable, "-m", "photon", "local", *args, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    files = make_report(workdir)
    assert_report(files, default_out_dir(workdir))
    text = files.markdown.read_text()
    initial, final = summary["initial_eval_loss"], summary["final_eval_loss"]
    for expected in (
        "| Codec | int8 |",
        "| Rounds | 2 of 2 (finished), 3 local steps each |",
        f"{initial:.4f} → {final:.4f}",
        f"`{summary['checkpoint']}`",
    ):
        assert expected in text, expected
    missing = re.findall(r"^\| ([^|]+) \|.*\bn/a\b", text, flags=re.M)
    assert not missing, f"rows the real summary.json leaves empty: {missing}"

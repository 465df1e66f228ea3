"""The command line as a person uses it: photon local end to end, --insecure, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from aggregator.config import AggregatorConfig, ServerConfig
from photon.cli import main
from photon.cli.configwrite import to_toml


def test_photon_local_runs_a_federation_and_writes_summary(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "photon",
            "local",
            "--silos",
            "2",
            "--rounds",
            "2",
            "--local-steps",
            "4",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "initial global eval loss" in result.stdout
    assert "done in" in result.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    for key in ("initial_eval_loss", "final_eval_loss", "checkpoint", "rounds"):
        assert key in summary
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    for row in summary["rounds"]:
        assert {"round", "eval_loss", "bytes_up", "bytes_down", "seconds"} <= row.keys()
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    assert Path(summary["checkpoint"]).exists()


def test_photon_local_refuses_a_non_empty_workdir(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("x")
    result = CliRunner().invoke(main, ["local", "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not empty" in result.output


def test_plaintext_in_config_needs_the_insecure_flag(tmp_path: Path) -> None:
    cfg = tmp_path / "aggregator.toml"
    server = ServerConfig(listen="127.0.0.1:0", insecure=True)
    cfg.write_text(to_toml(AggregatorConfig(server=server)))
    result = CliRunner().invoke(main, ["aggregator", "serve", "--config", str(cfg)])
    assert result.exit_code == 1
    assert "pass --insecure on the command line" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["local"],
        ["aggregator", "serve"],
        ["silo", "run"],
        ["certs", "init"],
        ["data", "prepare"],
        ["status"],
        ["report"],
        ["audit"],
        ["link"],
        ["export"],
        ["generate"],
        ["config", "example"],
    ],
)
def test_every_command_has_help_with_an_example(args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output

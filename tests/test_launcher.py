"""The one launcher: configs written from the typed classes load back equal, and a process that
fails is reported with its log."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import AggregatorConfig, EvalConfig, RoundsConfig, load_aggregator_config
from aggregator.privacy import PrivacyConfig
from aggregator.strategies import OuterConfig
from photon.cli.configwrite import to_toml
from photon.cli.localfed.launcher import Launcher, LaunchError, aggregator_config, silo_config
from photon.configload import read_toml
from photon.errors import ConfigError
from photon.federation import FederationSpec, TrainingSpec
from photon.retry import RetryPolicy
from silo_agent.config import SiloConfig, TransferSection, load_silo_config


def _aggregator(root: Path) -> AggregatorConfig:
    """Every section changed from its defaults, with values TOML must take care with."""
    cfg = aggregator_config(root, listen="0.0.0.0:0")
    cfg.server.allowlist = ["silo-0", 'silo "quoted"', "silo-ü\\back"]
    cfg.server.max_requests_per_s = 0.0
    cfg.server.max_norm_ratio = 2.5
    cfg.rounds = RoundsConfig(min_silos=2, silos_per_round=3, quorum=0.5, deadline_s=1e-3)
    cfg.outer = OuterConfig(name="nesterov", lr=0.7, momentum=0.9)
    cfg.eval = EvalConfig(data_dir=root / "eval data", batches=3)
    training = TrainingSpec(lr=1e-4, batch_size=2, seq_len=16, reset_optimizer=True)
    cfg.federation = FederationSpec(
        name="café", rounds=7, codec="int8", training=training, model={"dim": 64, "odd key": "x"}
    )
    cfg.privacy = PrivacyConfig(enabled=True, clip_norm=0.25, noise_multiplier=1.5)
    return cfg


def _silo(root: Path) -> SiloConfig:
    cfg = silo_config(root, "silo-1", root / "data", aggregator="10.0.0.1:50051")
    cfg.silo.metrics_listen = "127.0.0.1:9100"
    cfg.retry = RetryPolicy(initial_s=0.2, max_s=1.0, give_up_after_s=0.0)
    cfg.transfer = TransferSection(chunk_bytes=65536, max_upload_rate="50MB/s")
    return cfg


def test_aggregator_config_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = _aggregator(tmp_path)
    path = tmp_path / "aggregator.toml"
    path.write_text(to_toml(cfg, "a comment\non two lines"))
    assert path.read_text().startswith("# a comment\n# on two lines\n")
    assert load_aggregator_config(path, environ={}) == cfg


def test_silo_config_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = _silo(tmp_path)
    path = tmp_path / "silo.toml"
    path.write_text(to_toml(cfg))
    assert load_silo_config(path, environ={}) == cfg


def _keys(data: dict[str, Any], where: str = "") -> set[str]:
    out = set()
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        out |= _keys(value, dotted) if isinstance(value, dict) and key != "model" else {dotted}
    return out


def test_only_what_differs_from_the_defaults_is_written(tmp_path: Path) -> None:
    cfg = aggregator_config(tmp_path)
    cfg.rounds.quorum = 0.5
    (tmp_path / "a.toml").write_text(to_toml(cfg))
    written = _keys(read_toml(tmp_path / "a.toml"))
    server = {"listen", "state_dir", "certs_dir", "port_file"}
    assert written == {f"server.{k}" for k in server} | {"rounds.quorum"}


def test_none_where_the_default_is_not_none_is_refused(tmp_path: Path) -> None:
    cfg = _silo(tmp_path)
    cfg.transfer = dataclasses.replace(cfg.transfer)
    object.__setattr__(cfg.transfer, "max_upload_rate", None)
    with pytest.raises(ConfigError, match=r"transfer\.max_upload_rate is None"):
        to_toml(cfg)


def test_a_launched_process_that_fails_is_reported_with_its_log(tmp_path: Path) -> None:
    """The aggregator refuses a config (no certificates folder): start_aggregator raises at
    once, naming the process and showing the daemon's own error from its log."""
    fed = Launcher(root=tmp_path, aggregator=aggregator_config(tmp_path), silos={})
    with pytest.raises(LaunchError, match=r"aggregator exited with code [1-9]") as info:
        fed.start_aggregator(timeout_s=120)
    assert "certs" in str(info.value)
    assert (tmp_path / "aggregator.toml").exists()
    assert fed.summary() == {}

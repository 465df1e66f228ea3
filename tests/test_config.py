"""Config files load into typed configs; every mistake names its key and the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aggregator.config import load_aggregator_config
from aggregator.server import AggregatorDaemon
from aggregator.store import Store
from photon.errors import ConfigError
from photon.federation import FederationSpec, TrainingSpec
from photon.wire import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from silo_agent.config import load_silo_config
from tests.harness import make_federation

GOOD_AGG = """
[server]
listen = "127.0.0.1:0"
certs_dir = "certs"
[rounds]
min_silos = 2
[federation]
rounds = 3
local_steps = 10
"""

GOOD_SILO = """
[silo]
name = "silo-0"
aggregator = "localhost:50051"
data_dir = "data"
certs_dir = "certs"
"""


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_aggregator_config_loads_with_paths_relative_to_file(tmp_path: Path) -> None:
    cfg = load_aggregator_config(write(tmp_path, GOOD_AGG), environ={})
    assert cfg.rounds.min_silos == 2
    assert cfg.federation.rounds == 3
    assert cfg.server.certs_dir == tmp_path / "certs"
    assert cfg.server.state_dir == tmp_path / "aggregator-state"
    assert cfg.outer.name == "fedavg"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD_AGG + "\n[bogus]\nx = 1\n", "unknown key 'bogus'"),
        (
            GOOD_AGG.replace("min_silos = 2", "min_silos = 2\nmin_silo = 3"),
            "unknown key 'rounds.min_silo'",
        ),
        (
            GOOD_AGG.replace("min_silos = 2", 'min_silos = "two"'),
            "rounds.min_silos must be an integer",
        ),
        (
            GOOD_AGG.replace("min_silos = 2", "min_silos = true"),
            "rounds.min_silos must be an integer, got a boolean",
        ),
        (GOOD_AGG.replace("min_silos = 2", "min_silos = 0"), "rounds.min_silos must be >= 1"),
        (GOOD_AGG.replace("min_silos = 2", "quorum = 1.5"), "rounds.quorum must be within"),
        (GOOD_AGG + '\n[outer]\nname = "sgd"\n', "outer.name = 'sgd' is not one of"),
        (GOOD_AGG.replace('certs_dir = "certs"', ""), "server.certs_dir is required"),
        (GOOD_AGG.replace('"127.0.0.1:0"', '"nowhere"'), "must be host:port"),
        (
            GOOD_AGG.replace("local_steps = 10", "local_steps = 0"),
            "federation.local_steps must be > 0",
        ),
        (
            GOOD_AGG.replace("local_steps = 10", 'local_steps = 10\ncodec = "zip"'),
            "federation.codec = 'zip' is not one of",
        ),
        (
            GOOD_AGG.replace("min_silos = 2", "min_silos = 3\nsilos_per_round = 2"),
            "silos_per_round is smaller than rounds.min_silos",
        ),
        ("[server\n", "is not valid TOML"),
    ],
)
def test_aggregator_config_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_aggregator_config(write(tmp_path, text), environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_aggregator_config(tmp_path / "absent.toml", environ={})


def test_environment_overrides_for_containers(tmp_path: Path) -> None:
    env = {
        "PHOTON__ROUNDS__MIN_SILOS": "5",
        "PHOTON__SERVER__LISTEN": "0.0.0.0:6000",
        "PHOTON__FEDERATION__TRAINING__LR": "0.01",
        "UNRELATED": "x",
    }
    cfg = load_aggregator_config(write(tmp_path, GOOD_AGG), environ=env)
    assert cfg.rounds.min_silos == 5
    assert cfg.server.listen == "0.0.0.0:6000"
    assert cfg.federation.training.lr == pytest.approx(0.01)


def test_silo_config_loads_and_validates(tmp_path: Path) -> None:
    cfg = load_silo_config(write(tmp_path, GOOD_SILO), environ={})
    assert cfg.silo.data_dir == tmp_path / "data"
    assert cfg.retry.max_s == 15.0
    with pytest.raises(ConfigError, match=re.escape("missing required key 'silo.name'")):
        load_silo_config(write(tmp_path, GOOD_SILO.replace('name = "silo-0"', "")), environ={})
    with pytest.raises(ConfigError, match=re.escape("missing the [silo] table")):
        load_silo_config(write(tmp_path, "[retry]\n"), environ={})
    with pytest.raises(ConfigError, match=re.escape("silo.device must be one of")):
        load_silo_config(write(tmp_path, GOOD_SILO + 'device = "tpu"\n'), environ={})
    with pytest.raises(ConfigError, match=re.escape("transfer.chunk_bytes must be within")):
        load_silo_config(write(tmp_path, GOOD_SILO + "[transfer]\nchunk_bytes = 10\n"), environ={})


@pytest.mark.parametrize("value", [MIN_CHUNK_BYTES, MAX_CHUNK_BYTES])
def test_both_daemons_accept_the_chunk_bounds(tmp_path: Path, value: int) -> None:
    agg = GOOD_AGG.replace("[rounds]", f"chunk_bytes = {value}\n[rounds]")
    assert load_aggregator_config(write(tmp_path, agg), environ={}).server.chunk_bytes == value
    silo = GOOD_SILO + f"[transfer]\nchunk_bytes = {value}\n"
    assert load_silo_config(write(tmp_path, silo), environ={}).transfer.chunk_bytes == value


@pytest.mark.parametrize("value", [MIN_CHUNK_BYTES - 1, MAX_CHUNK_BYTES + 1])
def test_both_daemons_refuse_a_chunk_outside_the_bounds(tmp_path: Path, value: int) -> None:
    within = f"must be within [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}] (try 2097152)"
    agg = GOOD_AGG.replace("[rounds]", f"chunk_bytes = {value}\n[rounds]")
    with pytest.raises(ConfigError, match=re.escape(f"server.chunk_bytes {within}")):
        load_aggregator_config(write(tmp_path, agg), environ={})
    silo = GOOD_SILO + f"[transfer]\nchunk_bytes = {value}\n"
    with pytest.raises(ConfigError, match=re.escape(f"transfer.chunk_bytes {within}")):
        load_silo_config(write(tmp_path, silo), environ={})


def test_federation_spec_json_round_trip_and_validation() -> None:
    spec = FederationSpec(rounds=4, local_steps=7, codec="int8")
    again = FederationSpec.from_json(spec.to_json())
    assert again == spec
    assert again.digest() == spec.digest()
    with pytest.raises(ConfigError, match="not valid JSON"):
        FederationSpec.from_json(b"{nope")
    with pytest.raises(ConfigError, match=re.escape("unknown key 'federation.evil'")):
        FederationSpec.from_json(b'{"evil": 1}')


def test_federation_spec_changes_name_each_key_and_ignore_keys_added_later() -> None:
    stored = FederationSpec(rounds=4, codec="int8")
    assert FederationSpec(rounds=4, codec="int8").changes_since(stored.to_json()) == []
    changed = FederationSpec(rounds=5, codec="int8", training=TrainingSpec(lr=1e-3))
    assert changed.changes_since(stored.to_json()) == [
        "rounds: 4 -> 5",
        f"training.lr: {TrainingSpec().lr!r} -> 0.001",
    ]
    # A spec stored before `block_size` existed: the default fills it, so nothing changed.
    older = json.loads(stored.to_json())
    del older["block_size"]
    assert stored.changes_since(json.dumps(older).encode()) == []
    # A key this version does not know is reported, not crashed on.
    newer = {**json.loads(stored.to_json()), "future_knob": 1}
    assert stored.changes_since(json.dumps(newer).encode()) == ["future_knob: 1 -> '(absent)'"]


def test_aggregator_refuses_a_state_dir_of_another_spec_and_names_the_key(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, silos=1, rounds=2)
    toml = fed.config_path("aggregator")
    AggregatorDaemon(load_aggregator_config(toml)).store.close()
    fed.aggregator.federation.rounds = 3
    fed.write_configs()
    with pytest.raises(ConfigError, match=re.escape("(rounds: 2 -> 3)")):
        AggregatorDaemon(load_aggregator_config(toml))
    # A spec stored by an older version without a key that now has its default is adopted.
    fed.aggregator.federation.rounds = 2
    fed.write_configs()
    store = Store(tmp_path / "aggregator-state" / "journal.sqlite")
    old = json.loads(store.get_meta("federation_spec") or "")
    del old["block_size"]
    store.set_meta("federation_spec", json.dumps(old, sort_keys=True))
    store.set_meta("federation_digest", "digest-of-an-older-spelling")
    store.close()
    daemon = AggregatorDaemon(load_aggregator_config(toml))
    assert daemon.store.get_meta("federation_digest") == daemon.cfg.federation.digest()
    daemon.store.close()


@pytest.mark.parametrize(
    ("server", "rounds", "message"),
    [
        (
            "max_workers = 64",
            "",
            "server.max_workers = 64 must be at least server.max_transfers_total (64) + "
            "rounds.max_long_polls (32) + 4",
        ),
        (
            "max_workers = 20\nmax_transfers_total = 8",
            "max_long_polls = 9",
            "server.max_workers = 20 must be at least server.max_transfers_total (8) + "
            "rounds.max_long_polls (9) + 4",
        ),
        (
            "max_concurrent_per_silo = 3",
            "",
            "server.max_concurrent_per_silo = 3 must be >= server.max_transfers_per_silo + 2",
        ),
        ("max_open_uploads_per_silo = 0", "", "server.max_open_uploads_per_silo must be >= 1"),
        ("min_stream_bytes_per_s = -1", "", "server.min_stream_bytes_per_s and"),
        ("", "max_long_polls = 0", "rounds.max_long_polls must be >= 1"),
    ],
)
def test_worker_pool_must_leave_room_for_short_calls(
    tmp_path: Path, server: str, rounds: str, message: str
) -> None:
    text = GOOD_AGG.replace("[server]", f"[server]\n{server}").replace(
        "[rounds]", f"[rounds]\n{rounds}"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_aggregator_config(write(tmp_path, text), environ={})
    fine = GOOD_AGG.replace("[server]", "[server]\nmax_workers = 20\nmax_transfers_total = 8")
    fine = fine.replace("[rounds]", "[rounds]\nmax_long_polls = 8")
    assert load_aggregator_config(write(tmp_path, fine), environ={}).server.max_workers == 20

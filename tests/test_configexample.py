"""`photon config example`: commented example configs generated from the config dataclasses."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.config import (
    AggregatorConfig,
    EvalConfig,
    RoundsConfig,
    ServerConfig,
    load_aggregator_config,
)
from aggregator.strategies import OuterConfig
from photon.cli.config import config
from photon.cli.configexample import (
    KINDS,
    PLACEHOLDERS,
    SET_BY_AGGREGATOR,
    SUGGESTIONS,
    config_class,
    field_docs,
    iter_fields,
    render_example,
    toml_value,
)
from photon.federation import FederationSpec, TrainingSpec
from photon.retry import RetryPolicy
from silo_agent.config import SiloSection, TransferSection, load_silo_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ASSIGNMENT = re.compile(r"^(#\s)?([A-Za-z0-9_]+) = (.+)$")
TABLE = re.compile(r"^\[([a-z0-9_.]+)\]$")


def keys_in(text: str) -> dict[str, tuple[bool, str]]:
    """dotted key -> (active, TOML value) for every assignment line, commented out or not."""
    table, found = "", {}
    for line in text.splitlines():
        if m := TABLE.match(line):
            table = m.group(1)
        elif m := ASSIGNMENT.match(line):
            key = f"{table}.{m.group(2)}" if table else m.group(2)
            found[key] = (m.group(1) is None, m.group(3))
    return found


def write_example(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.toml"
    path.write_text(render_example(kind))
    return path


def test_aggregator_example_loads_as_the_defaults_plus_its_placeholders(tmp_path: Path) -> None:
    cfg = load_aggregator_config(write_example(tmp_path, "aggregator"), environ={})
    assert isinstance(cfg, AggregatorConfig)
    assert cfg.server.certs_dir == tmp_path / "certs"
    assert cfg.server.state_dir == tmp_path / "aggregator-state"
    expected_server = ServerConfig(certs_dir=Path("certs"))
    for f in dataclasses.fields(ServerConfig):
        if f.name not in ("certs_dir", "state_dir"):
            assert getattr(cfg.server, f.name) == getattr(expected_server, f.name), f.name
    assert cfg.rounds == RoundsConfig()
    assert cfg.outer == OuterConfig()
    assert cfg.eval == EvalConfig()
    assert cfg.federation == FederationSpec()


def test_silo_example_loads_with_its_placeholders(tmp_path: Path) -> None:
    cfg = load_silo_config(write_example(tmp_path, "silo"), environ={})
    assert cfg.silo.name == "silo-0"
    assert cfg.silo.data_dir == tmp_path / "data" / "silo-0"
    assert cfg.silo.certs_dir == tmp_path / "certs"
    assert (
        cfg.silo.aggregator == SiloSection(name="x", data_dir=Path("d"), insecure=True).aggregator
    )
    assert cfg.retry == RetryPolicy()
    assert cfg.transfer == TransferSection()


@pytest.mark.parametrize("kind", KINDS)
def test_every_dataclass_field_appears_in_its_table(kind: str) -> None:
    found = keys_in(render_example(kind))
    expected = {key for key, _ in iter_fields(config_class(kind))}
    assert set(found) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_every_documented_field_shows_its_documentation(kind: str) -> None:
    text = " ".join(line.removeprefix("# ") for line in render_example(kind).splitlines())
    classes = _dataclasses_under(config_class(kind))
    for cls in classes:
        for name, doc in field_docs(cls).items():
            assert doc in text, f"{cls.__name__}.{name}"


def _dataclasses_under(cls: type[Any]) -> set[type[Any]]:
    out = {cls}
    for hint in get_type_hints(cls).values():
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out |= _dataclasses_under(hint)
    return out


def test_docs_are_read_from_hash_colon_comments_and_from_strings_after_fields() -> None:
    server = field_docs(ServerConfig)
    assert server["listen"].startswith("host:port to listen on; port 0 picks a free port")
    outer = field_docs(OuterConfig)
    assert outer["lr"].startswith("Server learning rate; None -> fedavg/fedmom 1.0")
    assert field_docs(TrainingSpec)["lr"] == "Peak learning rate of the inner AdamW."
    # a field directly under a documented one shares its comment
    assert field_docs(FederationSpec)["tokenizer_digest"] == field_docs(FederationSpec)["model"]


def test_optional_fields_defaulting_to_none_are_commented_out_with_a_value() -> None:
    found = keys_in(render_example("aggregator"))
    for key in ("server.port_file", "outer.lr", "outer.momentum", "outer.tau", "eval.data_dir"):
        active, value = found[key]
        assert not active, key
        assert value == toml_value(SUGGESTIONS["aggregator"][key])
    assert found["server.certs_dir"] == (True, '"certs"')  # None default, but needed to load
    assert not found["federation.model"][0] and not found["federation.tokenizer_digest"][0]


@pytest.mark.parametrize("kind", KINDS)
def test_every_shown_value_is_valid_toml(kind: str) -> None:
    for key, (_active, value) in keys_in(render_example(kind)).items():
        try:
            tomllib.loads(f"v = {value}")
        except tomllib.TOMLDecodeError as exc:
            pytest.fail(f"{key} = {value} is not valid TOML: {exc}")


@pytest.mark.parametrize("kind", KINDS)
def test_curated_values_name_existing_fields_and_cover_every_required_one(kind: str) -> None:
    fields = dict(iter_fields(config_class(kind)))
    curated = set(PLACEHOLDERS[kind]) | set(SUGGESTIONS[kind]) | SET_BY_AGGREGATOR[kind]
    assert curated <= set(fields), sorted(curated - set(fields))
    required = {
        key
        for key, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert required <= set(PLACEHOLDERS[kind])


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="aggregator, silo"):
        config_class("gateway")


toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=50, deadline=None)
@given(value=toml_values)
def test_toml_value_round_trips_through_tomllib(value: Any) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_toml_value_of_paths_nan_and_whole_floats() -> None:
    assert toml_value(Path("a") / "b") == '"a/b"'
    assert toml_value(2.0) == "2.0"
    assert toml_value(1e-20) == "1e-20"
    assert math.isnan(tomllib.loads(f"v = {toml_value(math.nan)}")["v"])
    with pytest.raises(TypeError):
        toml_value(object())


def test_cli_prints_the_example(tmp_path: Path) -> None:
    result = CliRunner().invoke(config, ["example", "silo"])
    assert result.exit_code == 0, result.output
    assert result.output == render_example("silo")


def test_cli_writes_the_example_to_a_file_that_loads(tmp_path: Path) -> None:
    out = tmp_path / "conf" / "aggregator.toml"
    result = CliRunner().invoke(config, ["example", "aggregator", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == render_example("aggregator")
    assert load_aggregator_config(out, environ={}).server.certs_dir == tmp_path / "conf" / "certs"


def test_cli_refuses_an_unknown_kind() -> None:
    result = CliRunner().invoke(config, ["example", "gateway"])
    assert result.exit_code == 2
    assert "aggregator" in result.output and "silo" in result.output

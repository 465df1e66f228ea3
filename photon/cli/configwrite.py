"""Write a typed config (a tree of dataclasses) as TOML that `photon.configload` reads back equal.

The inverse of `configload.from_mapping`: each nested dataclass becomes a `[dotted.table]`; a
field equal to its default is left out (so a file holds what differs from the defaults, and None
can only be a default, as TOML has no null). Values are written by `toml_value`, the same
function that writes the commented examples (`photon config example`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from photon.cli.configexample import toml_value
from photon.errors import ConfigError


def to_toml(config: Any, comment: str = "") -> str:
    """`config` (a dataclass instance) as a TOML document, `comment` as its leading lines."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"to_toml needs a dataclass instance, got {type(config).__name__}")
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    _write_table(config, "", lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_table(obj: Any, where: str, lines: list[str]) -> None:
    scalars: list[str] = []
    tables: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        key, value = f"{where}.{f.name}" if where else f.name, getattr(obj, f.name)
        if not f.init:
            continue
        if dataclasses.is_dataclass(value):
            tables.append((key, value))  # its fields are compared with their own defaults
        elif _is_default(f, value):
            continue
        elif value is None:
            raise ConfigError(f"{key} is None but its default is not; TOML cannot write None")
        else:
            scalars.append(f"{f.name} = {_value(value, key)}")
    if where and scalars:
        lines += ["", f"[{where}]"]
    lines += scalars
    for key, value in tables:
        _write_table(value, key, lines)


def _is_default(f: dataclasses.Field[Any], value: Any) -> bool:
    """Whether `value` equals the field's default (a required field has none)."""
    if f.default is not dataclasses.MISSING:
        return bool(value == f.default)
    if f.default_factory is not dataclasses.MISSING:
        return bool(value == f.default_factory())
    return False


def _value(value: Any, key: str) -> str:
    try:
        return toml_value(value)
    except TypeError as exc:
        raise ConfigError(f"{key}: {exc}") from exc

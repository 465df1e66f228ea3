"""Write a typed config (a tree of dataclasses) as TOML that `photon.configload` reads back equal.

The inverse of `configload.from_mapping`: each nested dataclass becomes a `[dotted.table]`; a
field equal to its default is left out (so a file holds what differs from the defaults, and None
can only be a default, as TOML has no null); paths are written as strings, lists and tuples as
arrays, mappings as inline tables.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from photon.errors import ConfigError

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


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
        key, value = _dotted(where, f.name), getattr(obj, f.name)
        if not f.init:
            continue
        if dataclasses.is_dataclass(value):
            tables.append((key, value))  # its fields are compared with their own defaults
        elif _is_default(f, value):
            continue
        elif value is None:
            raise ConfigError(f"{key} is None but its default is not; TOML cannot write None")
        else:
            scalars.append(f"{_key(f.name)} = {_value(value, key)}")
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
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Path):
        return json.dumps(value.as_posix())
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, f"{key}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, Mapping):
        items = (f"{_key(str(k))} = {_value(v, _dotted(key, str(k)))}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise ConfigError(f"{key}: cannot write a {type(value).__name__} to TOML")


def _float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _dotted(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key

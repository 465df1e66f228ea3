"""Load TOML tables into typed dataclass configs, with errors that name the key and the fix.

Every config component is a `@dataclass(kw_only=True, slots=True)` with a docstring per field
(written as a `#:` comment above it) and cross-field checks in `__post_init__`. This module turns
a parsed TOML mapping into such a dataclass: unknown keys, wrong types and missing required keys
raise `ConfigError` naming the dotted key; nested dataclasses load from sub-tables.

Environment overrides (for containers): `PHOTON__SECTION__KEY=value` sets `section.key`; the
value is parsed as TOML (so `3`, `1.5`, `true`, `"text"`, `[1, 2]` work) and falls back to a
plain string.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from photon.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

T = TypeVar("T")
ENV_PREFIX = "PHOTON__"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error becomes a ConfigError."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Apply `PHOTON__A__B=value` overrides to the nested mapping `data` in place."""
    env = os.environ if environ is None else environ
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__") if k]
        if not keys:
            continue
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(keys)} crosses a non-table value")
        node[keys[-1]] = _parse_env_value(raw)


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`; `where` is the dotted path used in error messages."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{where or cls.__name__}] must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = _dotted(where, unknown[0])
        raise ConfigError(
            f"unknown key {key!r}; valid keys in [{where or 'top level'}] are: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {
        name: _convert(hints[name], value, _dotted(where, name)) for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = [n for n, f in fields.items() if n not in kwargs and _required(f)]
        if missing:
            raise ConfigError(f"missing required key {_dotted(where, missing[0])!r}") from exc
        raise ConfigError(f"[{where}]: {exc}") from exc


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _dotted(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against annotation `tp`, converting where TOML has no native form."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(get_args(tp), value, key)
    if origin is typing.Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key} = {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, key)  # type: ignore[arg-type]
    return _convert_scalar(tp, value, key)


def _convert_union(options: tuple[Any, ...], value: Any, key: str) -> Any:
    if value is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _convert(option, value, key)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {'; '.join(errors)}")


def _convert_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a path string, got {type(value).__name__}")
        return Path(value).expanduser()
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key} must be an integer, got a boolean")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _type_name(tp: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, tp.__name__
    )

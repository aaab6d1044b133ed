"""Typed settings: keyword-only dataclasses loaded from YAML, environment or flags, validated eagerly.

Declare each field with `setting(default, help=..., min=..., max=...)`; the annotation is the type.
`load_settings(cls, mapping, source=...)` rejects unknown keys (suggesting the closest known one),
values of the wrong type and values out of range, with a `ConfigError` naming the key and the file;
it never falls back to a default on bad input. `describe_settings(cls)` lists every key with its
type, default and help, for docs and `--help`.

Supported annotations: str, int, float, bool, Path, Literal[...], X | None, list[X], dict[str, X],
and nested settings dataclasses (YAML sub-maps).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from taskfabric.conform import Mismatch, conform
from taskfabric.errors import ConfigError

__all__ = ["SettingDoc", "describe_settings", "load_settings", "load_yaml", "setting", "settings_from_env"]

_T = TypeVar("_T")
_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    *,
    help: str,
    min: float | None = None,
    max: float | None = None,
    default_factory: Any = _MISSING,
) -> Any:
    """A settings field with its documentation and optional numeric bounds."""
    metadata = {"help": help, "min": min, "max": max}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping (an empty file is an empty mapping)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys to values", source=str(path))
    return data


def load_settings(cls: type[_T], data: Mapping[str, Any], *, source: str = "settings", prefix: str = "") -> _T:
    """Build settings dataclass `cls` from `data`, validating every key and value."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"expected a mapping, got {type(data).__name__}", key=prefix.rstrip(".") or None, source=source
        )
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key_message(str(key), fields), key=f"{prefix}{key}", source=source)
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is _MISSING and field.default_factory is _MISSING:
                raise ConfigError("is required", key=f"{prefix}{name}", source=source)
            continue
        value = _coerce(hints[name], data[name], key=f"{prefix}{name}", source=source)
        _check_bounds(field, value, key=f"{prefix}{name}", source=source)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as exc:  # cross-field rules in __post_init__
        raise ConfigError(str(exc), source=source) from None


def settings_from_env(cls: type, prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The subset of `cls`'s top-level keys set as `<PREFIX><KEY>` environment variables, parsed
    as YAML scalars (so `TASKFABRIC_FORWARDER_PORT=8080` is an int). Feed it to `load_settings`."""
    environ = os.environ if environ is None else environ
    found: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        name = f"{prefix}{field.name}".upper()
        if name in environ:
            try:
                found[field.name] = yaml.safe_load(environ[name])
            except yaml.YAMLError:
                found[field.name] = environ[name]
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class SettingDoc:
    key: str
    type: str
    default: str
    help: str


def describe_settings(cls: type, prefix: str = "") -> list[SettingDoc]:
    """Every key of `cls` (nested ones as `a.b`) with its type, default and help text."""
    hints = typing.get_type_hints(cls)
    docs = []
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            docs.extend(describe_settings(annotation, f"{prefix}{field.name}."))  # type: ignore[arg-type]
            continue
        if field.default is not _MISSING:
            default = repr(field.default)
        elif field.default_factory is not _MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        docs.append(
            SettingDoc(f"{prefix}{field.name}", _type_name(annotation), default, field.metadata.get("help", ""))
        )
    return docs


# --- coercion -----------------------------------------------------------------------------


def _unknown_key_message(key: str, fields: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; known keys: {', '.join(sorted(fields))}"


_SCALAR_NAMES: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", Path: "path"}


def _type_name(annotation: Any) -> str:
    if annotation in _SCALAR_NAMES:
        return _SCALAR_NAMES[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    names: dict[Any, Callable[[], str]] = {
        typing.Literal: lambda: " | ".join(repr(arg) for arg in args),
        types.UnionType: lambda: " | ".join("null" if arg is type(None) else _type_name(arg) for arg in args),
        typing.Union: lambda: " | ".join("null" if arg is type(None) else _type_name(arg) for arg in args),
        list: lambda: f"list of {_type_name(args[0])}",
        dict: lambda: f"map of {_type_name(args[1])}",
    }
    describe = names.get(origin)
    return describe() if describe else getattr(annotation, "__name__", str(annotation))


def _coerce(annotation: Any, value: Any, *, key: str, source: str) -> Any:
    """`value` converted to `annotation`, or a ConfigError naming `key` (and the bad item in it)."""

    def nested(inner: Any, item: Any, where: str) -> Any:
        if dataclasses.is_dataclass(inner):
            return load_settings(inner, {} if item is None else item, source=source, prefix=f"{key}{where}.")  # type: ignore[arg-type]
        return NotImplemented

    try:
        return conform(value, annotation, nested=nested)
    except Mismatch as bad:
        raise ConfigError(
            f"expected {bad.expected}, got {bad.value!r}", key=f"{key}{bad.where}", source=source
        ) from None


def _check_bounds(field: dataclasses.Field[Any], value: Any, *, key: str, source: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = field.metadata.get("min"), field.metadata.get("max")
    if low is not None and value < low:
        raise ConfigError(f"must be at least {low:g}, got {value!r}", key=key, source=source)
    if high is not None and value > high:
        raise ConfigError(f"must be at most {high:g}, got {value!r}", key=key, source=source)

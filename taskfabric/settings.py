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


class _Bad(Exception):
    """Internal: a value is not of the expected kind (turned into a ConfigError by `_coerce`)."""


def _scalar(check: Callable[[Any], bool], convert: Callable[[Any], Any], expected: str) -> Callable[[Any], Any]:
    def coerce(value: Any) -> Any:
        if check(value):
            return convert(value)
        raise _Bad(expected)

    return coerce


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_SCALAR_COERCERS: dict[Any, Callable[[Any], Any]] = {
    bool: _scalar(lambda v: isinstance(v, bool), bool, "true or false"),
    int: _scalar(lambda v: isinstance(v, int) and not isinstance(v, bool), int, "an integer"),
    float: _scalar(_is_number, float, "a number"),
    str: _scalar(lambda v: isinstance(v, str), str, "a string"),
    Path: _scalar(lambda v: isinstance(v, (str, Path)) and bool(str(v)), lambda v: Path(v).expanduser(), "a path"),
}


def _coerce(annotation: Any, value: Any, *, key: str, source: str) -> Any:
    """`value` converted to `annotation`, or a ConfigError naming `key`."""
    try:
        return _coerce_or_bad(annotation, value, key=key, source=source)
    except _Bad as bad:
        raise ConfigError(f"expected {bad}, got {value!r}", key=key, source=source) from None


def _coerce_or_bad(annotation: Any, value: Any, *, key: str, source: str) -> Any:
    if annotation is Any:
        return value
    scalar = _SCALAR_COERCERS.get(annotation)
    if scalar is not None:
        return scalar(value)
    composite = _COMPOSITE_COERCERS.get(typing.get_origin(annotation))
    if composite is not None:
        return composite(annotation, value, key, source)
    if dataclasses.is_dataclass(annotation):
        return load_settings(annotation, {} if value is None else value, source=source, prefix=f"{key}.")  # type: ignore[arg-type]
    raise TypeError(f"unsupported settings annotation {annotation!r} for {key}")


def _coerce_literal(annotation: Any, value: Any, key: str, source: str) -> Any:
    choices = typing.get_args(annotation)
    if value in choices:
        return value
    raise _Bad("one of " + ", ".join(repr(choice) for choice in choices))


def _coerce_list(annotation: Any, value: Any, key: str, source: str) -> Any:
    if not isinstance(value, list):
        raise _Bad("a list")
    (item_type,) = typing.get_args(annotation)
    return [_coerce(item_type, item, key=f"{key}[{index}]", source=source) for index, item in enumerate(value)]


def _coerce_dict(annotation: Any, value: Any, key: str, source: str) -> Any:
    if not isinstance(value, Mapping):
        raise _Bad("a mapping")
    value_type = typing.get_args(annotation)[1]
    return {str(k): _coerce(value_type, v, key=f"{key}.{k}", source=source) for k, v in value.items()}


def _coerce_union(annotation: Any, value: Any, key: str, source: str) -> Any:
    args = typing.get_args(annotation)
    if value is None and type(None) in args:
        return None
    non_none = [arg for arg in args if arg is not type(None)]
    if len(non_none) == 1:
        return _coerce_or_bad(non_none[0], value, key=key, source=source)
    for arg in non_none:
        try:
            return _coerce(arg, value, key=key, source=source)
        except ConfigError:
            continue
    raise _Bad(_type_name(annotation))


_COMPOSITE_COERCERS: dict[Any, Callable[[Any, Any, str, str], Any]] = {
    typing.Literal: _coerce_literal,
    list: _coerce_list,
    dict: _coerce_dict,
    types.UnionType: _coerce_union,
    typing.Union: _coerce_union,
}


def _check_bounds(field: dataclasses.Field[Any], value: Any, *, key: str, source: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = field.metadata.get("min"), field.metadata.get("max")
    if low is not None and value < low:
        raise ConfigError(f"must be at least {low:g}, got {value!r}", key=key, source=source)
    if high is not None and value > high:
        raise ConfigError(f"must be at most {high:g}, got {value!r}", key=key, source=source)

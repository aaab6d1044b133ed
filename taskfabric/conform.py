"""Checking a value read from YAML (or the environment) against a type annotation.

The one conformance check behind typed settings (`taskfabric.settings`) and the Parsl provider and
launcher options of an endpoint config (`taskfabric.endpoint_agent.providers`). `conform(value,
annotation)` returns the value (ints widened to float where a float is wanted, YAML lists turned
into tuples where a tuple is wanted, `Path`s expanded) or raises `Mismatch`, which says what was
expected in words and where inside the value the first bad part is. Callers turn it into a
`ConfigError` naming their key.

Annotations understood: Any, None, bool, int, float, str, Path, Literal[...], unions (X | Y,
Optional), list[X], tuple[X, ...], tuple[X, Y], dict[K, V], and any other class (checked with
isinstance). A caller may handle more (nested settings dataclasses) with the `nested` hook.
"""

from __future__ import annotations

import contextlib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["Mismatch", "Nested", "conform", "describe"]


class Mismatch(Exception):
    """`value` (at `where` inside the checked value: "" for itself, "[1]", ".name") is not
    `expected` (in words, e.g. "an integer or null")."""

    def __init__(self, expected: str, value: Any, where: str = "") -> None:
        super().__init__(f"{where or 'value'}: expected {expected}, got {value!r}")
        self.expected = expected
        self.value = value
        self.where = where


#: (annotation, value, where) -> the conformed value, or NotImplemented to let `conform` decide
Nested = Callable[[Any, Any, str], Any]


def conform(value: Any, annotation: Any, *, where: str = "", nested: Nested | None = None) -> Any:
    """`value` checked against `annotation` (see the module docstring); raises `Mismatch`."""
    if annotation is None or annotation is Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
        raise Mismatch("null", value, where)
    scalar = _SCALARS.get(annotation)
    if scalar is not None:
        accepts, convert, words = scalar
        if accepts(value):
            return convert(value)
        raise Mismatch(words, value, where)
    origin = typing.get_origin(annotation)
    composite = _COMPOSITES.get(origin or annotation)
    if composite is not None:
        return composite(value, annotation, where, nested)
    if nested is not None:
        handled = nested(annotation, value, where)
        if handled is not NotImplemented:
            return handled
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise Mismatch(describe(annotation), value, where)
    return value


def describe(annotation: Any) -> str:
    """An annotation in words, for error messages ("a list (of a string)", "an integer or null")."""
    if annotation is type(None):
        return "null"
    if annotation in _SCALARS:
        return _SCALARS[annotation][2]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    words = _CONTAINER_WORDS.get(origin or annotation)
    if words is not None:
        return words(args)
    return f"a {getattr(annotation, '__name__', annotation)}"


# --- scalars ------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, Path)) and bool(str(value))


def _same(value: Any) -> Any:
    return value


_SCALARS: dict[Any, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    bool: (lambda v: isinstance(v, bool), _same, "true or false"),
    int: (_is_int, _same, "an integer"),
    float: (_is_number, float, "a number"),
    str: (lambda v: isinstance(v, str), _same, "a string"),
    Path: (_is_path, lambda v: Path(v).expanduser(), "a path"),
}


# --- composites ---------------------------------------------------------------------------


def _conform_union(value: Any, annotation: Any, where: str, nested: Nested | None) -> Any:
    options = typing.get_args(annotation)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is not type(None):
            with contextlib.suppress(Mismatch):
                return conform(value, option, where=where, nested=nested)
    raise Mismatch(describe(annotation), value, where)


def _conform_literal(value: Any, annotation: Any, where: str, nested: Nested | None) -> Any:
    if value in typing.get_args(annotation):
        return value
    raise Mismatch(describe(annotation), value, where)


def _conform_list(value: Any, annotation: Any, where: str, nested: Nested | None) -> list[Any]:
    if not isinstance(value, list):
        raise Mismatch("a list", value, where)
    args = typing.get_args(annotation)
    if not args:
        return list(value)
    return [conform(item, args[0], where=f"{where}[{index}]", nested=nested) for index, item in enumerate(value)]


def _conform_tuple(value: Any, annotation: Any, where: str, nested: Nested | None) -> tuple[Any, ...]:
    args = typing.get_args(annotation)
    if not isinstance(value, (list, tuple)):
        raise Mismatch(describe(annotation), value, where)
    if not args:
        return tuple(value)
    if Ellipsis in args:
        return tuple(conform(item, args[0], where=f"{where}[{i}]", nested=nested) for i, item in enumerate(value))
    if len(value) != len(args):
        raise Mismatch(describe(annotation), value, where)
    return tuple(
        conform(item, arg, where=f"{where}[{i}]", nested=nested)
        for i, (item, arg) in enumerate(zip(value, args, strict=True))
    )


def _conform_dict(value: Any, annotation: Any, where: str, nested: Nested | None) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise Mismatch("a mapping", value, where)
    args = typing.get_args(annotation)
    if not args:
        return dict(value)
    key_type, value_type = args
    return {
        _conform_key(key, key_type, where): conform(item, value_type, where=f"{where}.{key}", nested=nested)
        for key, item in value.items()
    }


def _conform_key(key: Any, annotation: Any, where: str) -> Any:
    if annotation is str:
        return str(key)  # YAML reads `1:` as an int key; a map of names takes it as "1"
    return conform(key, annotation, where=f"{where}.{key}")


_COMPOSITES: dict[Any, Callable[[Any, Any, str, Nested | None], Any]] = {
    typing.Union: _conform_union,
    types.UnionType: _conform_union,
    typing.Literal: _conform_literal,
    list: _conform_list,
    tuple: _conform_tuple,
    dict: _conform_dict,
}


def _describe_list(args: tuple[Any, ...]) -> str:
    return f"a list (of {describe(args[0])})" if args else "a list"


def _describe_dict(args: tuple[Any, ...]) -> str:
    return f"a mapping (of {describe(args[0])} to {describe(args[1])})" if args else "a mapping"


def _describe_tuple(args: tuple[Any, ...]) -> str:
    if not args or Ellipsis in args:
        return "a list"
    return f"a list of {len(args)} items ({', '.join(describe(arg) for arg in args)})"


_CONTAINER_WORDS: dict[Any, Callable[[tuple[Any, ...]], str]] = {
    list: _describe_list,
    tuple: _describe_tuple,
    dict: _describe_dict,
}

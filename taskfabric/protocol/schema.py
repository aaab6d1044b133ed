"""Field codecs derived from the annotations of the message dataclasses.

A message class is a frozen dataclass; its annotations are its schema. `record_codec(cls)` builds,
once per class, an encoder (object -> msgpack-ready dict) and a decoder (untrusted dict -> object)
that checks every field's type, rejects missing required fields, ignores unknown ones, converts
UUIDs to and from 16 raw bytes, and reports the path of the first bad field.

The codecs are generated as Python source per class (the hot path decodes and encodes every task at
every hop, so the checks are inlined rather than dispatched field by field). Errors inside carry
their path as a list that is joined only when an error actually happens.

Supported annotations: str, int, float, bool, bytes, uuid.UUID, `X | None`, list[X],
dict[str, X], and nested record dataclasses.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

from taskfabric.errors import ProtocolError
from taskfabric.ids import uuid_from_bytes

__all__ = ["FieldError", "RecordCodec", "record_codec"]

_MISSING = dataclasses.MISSING


class FieldError(Exception):
    """Internal to the protocol package: a bad value, with the path to it (outermost first)."""

    def __init__(self, parts: list[str], message: str) -> None:
        super().__init__(message)
        self.parts = parts
        self.message = message

    def to_protocol_error(self, root: str) -> ProtocolError:
        path = root
        for part in self.parts:
            path += part if part.startswith("[") else f".{part}"
        return ProtocolError(f"{path}: {self.message}")


@dataclasses.dataclass(frozen=True, slots=True)
class RecordCodec:
    """The encoder and decoder of one record class. `decode` raises `FieldError`."""

    cls: type
    encode: Callable[[Any], dict[str, Any]]
    decode: Callable[[Any], Any]


_CODECS: dict[type, RecordCodec] = {}
_names = itertools.count()


def record_codec(cls: type) -> RecordCodec:
    """The (cached) codec of a record dataclass."""
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _build(cls)
        _CODECS[cls] = codec
    return codec


# --- runtime helpers used by the generated code ---------------------------------------------

_object_new = object.__new__


_uuid_from_bytes = uuid_from_bytes


def _kind(value: Any) -> str:
    return type(value).__name__


def _decode_list(value: Any, item: Callable[[Any], Any]) -> list[Any]:
    if type(value) is not list:
        raise FieldError([], f"expected a list, got {_kind(value)}")
    try:
        return [item(element) for element in value]
    except FieldError:
        for index, element in enumerate(value):  # find the bad element to name it
            try:
                item(element)
            except FieldError as exc:
                exc.parts.insert(0, f"[{index}]")
                raise
        raise


def _decode_dict(value: Any, item: Callable[[Any], Any]) -> dict[str, Any]:
    if type(value) is not dict:
        raise FieldError([], f"expected a map, got {_kind(value)}")
    out = {}
    for key, element in value.items():
        if type(key) is not str:
            raise FieldError([], "map keys must be strings")
        try:
            out[key] = item(element)
        except FieldError as exc:
            exc.parts.insert(0, key)
            raise
    return out


def _scalar_decoder(annotation: Any) -> Callable[[Any], Any]:
    """A standalone decoder for a scalar (used inside lists and maps)."""
    check = _SCALAR_CHECKS[annotation]
    namespace: dict[str, Any] = {
        "FieldError": FieldError,
        "_kind": _kind,
        "math": math,
        "_uuid_from_bytes": _uuid_from_bytes,
    }
    body = "\n".join("    " + line for line in check("v", "out", "[]"))
    exec(f"def decode(v):\n{body}\n    return out", namespace)
    decoder: Callable[[Any], Any] = namespace["decode"]
    return decoder


# --- code generation ------------------------------------------------------------------------
# A check takes (value variable, output variable, parts expression) and returns source lines that
# validate the value and assign the decoded result.


def _check_str(v: str, out: str, parts: str) -> list[str]:
    return [
        f"if type({v}) is not str: raise FieldError({parts}, 'expected a string, got ' + _kind({v}))",
        f"{out} = {v}",
    ]


def _check_int(v: str, out: str, parts: str) -> list[str]:
    return [
        f"if type({v}) is not int: raise FieldError({parts}, 'expected an integer, got ' + _kind({v}))",
        f"{out} = {v}",
    ]


def _check_float(v: str, out: str, parts: str) -> list[str]:
    return [
        f"if type({v}) is float: {out} = {v}",
        f"elif type({v}) is int: {out} = float({v})",
        f"else: raise FieldError({parts}, 'expected a number, got ' + _kind({v}))",
        f"if not math.isfinite({out}): raise FieldError({parts}, 'expected a finite number')",
    ]


def _check_bool(v: str, out: str, parts: str) -> list[str]:
    return [
        f"if type({v}) is not bool: raise FieldError({parts}, 'expected a boolean, got ' + _kind({v}))",
        f"{out} = {v}",
    ]


def _check_bytes(v: str, out: str, parts: str) -> list[str]:
    return [
        f"if type({v}) is not bytes: raise FieldError({parts}, 'expected bytes, got ' + _kind({v}))",
        f"{out} = {v}",
    ]


def _check_uuid(v: str, out: str, parts: str) -> list[str]:
    return [
        f"if type({v}) is not bytes or len({v}) != 16: raise FieldError({parts}, 'expected a UUID as 16 bytes')",
        f"{out} = _uuid_from_bytes({v})",
    ]


_SCALAR_CHECKS: dict[Any, Callable[[str, str, str], list[str]]] = {
    str: _check_str,
    int: _check_int,
    float: _check_float,
    bool: _check_bool,
    bytes: _check_bytes,
    uuid.UUID: _check_uuid,
}


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(annotation)
        non_none = [arg for arg in args if arg is not type(None)]
        if len(non_none) == 1 and len(args) == 2:
            return non_none[0], True
        raise TypeError(f"unsupported protocol field annotation: {annotation!r}")
    return annotation, False


def _nested_decoder(annotation: Any) -> Callable[[Any], Any]:
    """A decoder function for a composite (record, list, map) or scalar annotation."""
    if annotation in _SCALAR_CHECKS:
        return _scalar_decoder(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and len(args) == 1:
        item = _nested_decoder(args[0])
        return lambda value: _decode_list(value, item)
    if origin is dict and len(args) == 2 and args[0] is str:
        item = _nested_decoder(args[1])
        return lambda value: _decode_dict(value, item)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return record_codec(annotation).decode
    raise TypeError(f"unsupported protocol field annotation: {annotation!r}")


def _nested_encoder(annotation: Any) -> Callable[[Any], Any] | None:
    """An encoder for a value of `annotation`, or None where the value packs as it is."""
    if annotation is uuid.UUID:
        return lambda value: value.bytes
    if annotation in _SCALAR_CHECKS:
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list:
        return _list_encoder(_nested_encoder(args[0]))
    if origin is dict:
        return _dict_encoder(_nested_encoder(args[1]))
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return record_codec(annotation).encode
    raise TypeError(f"unsupported protocol field annotation: {annotation!r}")


def _list_encoder(item: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if item is None:
        return list
    return lambda value: [item(element) for element in value]


def _dict_encoder(item: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if item is None:
        return dict
    return lambda value: {key: item(element) for key, element in value.items()}


def _build(cls: type) -> RecordCodec:
    hints = typing.get_type_hints(cls)
    namespace: dict[str, Any] = {
        "FieldError": FieldError,
        "_kind": _kind,
        "math": math,
        "_uuid_from_bytes": _uuid_from_bytes,
        "_MISSING": _MISSING,
        "_cls": cls,
        "_new": _object_new,
    }
    decode_lines = [
        "def decode(raw):",
        f"    if type(raw) is not dict: raise FieldError([], 'expected a {cls.__name__} map, got ' + _kind(raw))",
        "    get = raw.get",
    ]
    encode_items = []
    setters = []
    for field in dataclasses.fields(cls):
        name = field.name
        local = f"f_{name}"
        annotation, optional = _split_optional(hints[name])
        required = field.default is _MISSING and field.default_factory is _MISSING
        decode_lines += _field_decode_lines(namespace, field, annotation, optional, required, local)
        # frozen slots classes: set each slot through its descriptor (3x cheaper than __init__)
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
        setters.append(f"    _set_{name}(obj, {local})")
        encode_items.append(_field_encode_expr(namespace, name, annotation, optional))
    check = "check" in cls.__dict__
    decode_lines.append("    obj = _new(_cls)")
    decode_lines += setters
    if check:
        decode_lines += [
            "    try:",
            "        obj.check()",
            "    except ValueError as exc:",
            "        raise FieldError([], str(exc)) from None",
        ]
    decode_lines.append("    return obj")
    encode_source = "def encode(obj):\n    return {" + ", ".join(encode_items) + "}"
    exec("\n".join(decode_lines), namespace)
    exec(encode_source, namespace)
    return RecordCodec(cls, namespace["encode"], namespace["decode"])


def _field_decode_lines(
    namespace: dict[str, Any],
    field: dataclasses.Field[Any],
    annotation: Any,
    optional: bool,
    required: bool,
    local: str,
) -> list[str]:
    """Source lines decoding field `field` of `raw` into variable `local`."""
    name = field.name
    lines = [f"    v = get({name!r}, _MISSING)", "    if v is _MISSING:"]
    if required:
        lines.append(f"        raise FieldError([], {('missing field ' + repr(name))!r})")
    elif field.default_factory is not _MISSING:
        factory_name = f"_factory_{next(_names)}"
        namespace[factory_name] = field.default_factory
        lines.append(f"        {local} = {factory_name}()")
    else:
        default_name = f"_default_{next(_names)}"
        namespace[default_name] = field.default
        lines.append(f"        {local} = {default_name}")
    if optional:
        lines += ["    elif v is None:", f"        {local} = None"]
    lines.append("    else:")
    parts = f"[{name!r}]"
    if annotation in _SCALAR_CHECKS:
        body = _SCALAR_CHECKS[annotation]("v", local, parts)
    else:
        decoder_name = f"_decode_{next(_names)}"
        namespace[decoder_name] = _nested_decoder(annotation)
        body = [
            "try:",
            f"    {local} = {decoder_name}(v)",
            "except FieldError as exc:",
            f"    exc.parts.insert(0, {name!r})",
            "    raise",
        ]
    return lines + ["        " + line for line in body]


def _field_encode_expr(namespace: dict[str, Any], name: str, annotation: Any, optional: bool) -> str:
    encoder = _nested_encoder(annotation)
    if encoder is None:
        return f"{name!r}: obj.{name}"
    encoder_name = f"_encode_{next(_names)}"
    namespace[encoder_name] = encoder
    if optional:
        return f"{name!r}: (None if obj.{name} is None else {encoder_name}(obj.{name}))"
    return f"{name!r}: {encoder_name}(obj.{name})"

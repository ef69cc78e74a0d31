"""The JSON codec: frozen records to plain JSON and back, strictly.

Decoding is driven by each record's type hints, compiled once per record type into a chain of
small converter functions. A bad value raises `DecodeError` naming the field path (`payload.
argv[2]`) and the reason; unknown fields and unknown enum values are errors, so a typo in a policy
file or a newer producer is never silently misread.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, TypeVar

import orjson

__all__ = ["DecodeError", "decode_json", "decode_record", "encode", "to_plain"]

T = TypeVar("T")


class DecodeError(ValueError):
    """Input that is not a valid procwarden message. `field` names where, `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def encode(record: object) -> bytes:
    """Plain JSON bytes for a record (dataclasses, enums by value, tuples as arrays)."""
    return orjson.dumps(record)


def to_plain(record: object) -> Any:
    """The record as plain Python data (what `encode` would write)."""
    return orjson.loads(orjson.dumps(record))


def decode_json(data: bytes | str, where: str = "") -> Any:
    """Parse JSON text; anything unparseable becomes a DecodeError."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(where, f"not valid JSON ({exc})") from None


def decode_record(cls: type[T], obj: Any, where: str = "") -> T:
    """Build a `cls` record from plain data, validating every field."""
    converter = _converter_for(cls)
    try:
        result: T = converter(obj)
    except DecodeError as exc:
        raise _prefixed(exc, where) from None
    return result


# A converter takes a plain value and returns the typed one, or raises DecodeError naming the
# field relative to itself. Containers prefix the path on the way out, so the path string is only
# built when something is wrong.
_Converter = Callable[[Any], Any]
_CACHE: dict[Any, _Converter] = {}


def _prefixed(exc: DecodeError, part: str) -> DecodeError:
    if not part:
        return exc
    if not exc.field:
        field = part
    elif exc.field.startswith("["):
        field = part + exc.field
    else:
        field = f"{part}.{exc.field}"
    return DecodeError(field, exc.reason)


def _converter_for(tp: Any) -> _Converter:
    cached = _CACHE.get(tp)
    if cached is None:
        cached = _build(tp)
        _CACHE[tp] = cached
    return cached


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _build(tp: Any) -> _Converter:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build_record(tp)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _build_enum(tp)
    if tp is str:
        return _conv_str
    if tp is bool:
        return _conv_bool
    if tp is int:
        return _conv_int
    if tp is float:
        return _conv_float
    if tp is Any:
        return lambda value: value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) != 1 or len(args) != 2:
            raise TypeError(f"unsupported union {tp!r}")
        inner = _converter_for(members[0])
        return lambda value: None if value is None else inner(value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _build_tuple(args[0])
    if origin in (dict, Mapping) and args and args[0] is str:
        return _build_dict(_converter_for(args[1]))
    raise TypeError(f"unsupported type {tp!r}")


def _conv_str(value: Any) -> str:
    if type(value) is not str:
        raise DecodeError("", f"expected a string, got {_type_name(value)}")
    return value


def _conv_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise DecodeError("", f"expected true or false, got {_type_name(value)}")
    return value


def _conv_int(value: Any) -> int:
    if type(value) is not int:
        raise DecodeError("", f"expected an integer, got {_type_name(value)}")
    return value


def _conv_float(value: Any) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    raise DecodeError("", f"expected a number, got {_type_name(value)}")


# Types whose JSON value is already the Python value when `type(raw)` is exactly this type.
_PLAIN = {str: str, int: int, bool: bool, float: float}


def _build_enum(enum_cls: type[Enum]) -> _Converter:
    by_value = {member.value: member for member in enum_cls}
    allowed = ", ".join(sorted(str(v) for v in by_value))

    def convert(value: Any) -> Enum:
        member = by_value.get(value) if type(value) is str else None
        if member is None:
            raise DecodeError("", f"unknown value {value!r} (allowed: {allowed})")
        return member

    return convert


def _build_tuple(item_type: Any) -> _Converter:
    item = _converter_for(item_type)
    plain = _PLAIN.get(item_type)

    def convert(value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise DecodeError("", f"expected an array, got {_type_name(value)}")
        if plain is not None and all(type(v) is plain for v in value):
            return tuple(value)
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except DecodeError as exc:
                raise _prefixed(exc, f"[{i}]") from None
        return tuple(out)

    return convert


def _build_dict(item: _Converter) -> _Converter:
    def convert(value: Any) -> dict[str, Any]:
        if type(value) is not dict:
            raise DecodeError("", f"expected an object, got {_type_name(value)}")
        out = {}
        for k, v in value.items():
            try:
                out[k] = item(v)
            except DecodeError as exc:
                raise _prefixed(exc, k) from None
        return out

    return convert


def _build_record(cls: type) -> _Converter:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = frozenset(
        f.name for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    known = ", ".join(sorted(f.name for f in fields))
    # name -> (type that needs no conversion or None, converter)
    specs: dict[str, tuple[type | None, _Converter]] = {}
    name = cls.__name__

    def checked(value: Any) -> Any:
        """Field by field, naming the first field at fault."""
        if type(value) is not dict:
            raise DecodeError("", f"expected an object ({name}), got {_type_name(value)}")
        if not required.issubset(value):
            raise DecodeError(min(required.difference(value)), "required field is missing")
        kwargs = {}
        for key, raw in value.items():
            spec = specs.get(key)
            if spec is None:
                raise DecodeError(key, f"unknown field (known: {known})")
            plain, conv = spec
            if type(raw) is plain:
                kwargs[key] = raw
                continue
            try:
                kwargs[key] = conv(raw)
            except DecodeError as exc:
                raise _prefixed(exc, key) from None
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:  # record-level invariants in __post_init__
            raise DecodeError("", str(exc)) from None

    _CACHE[cls] = checked  # registered before its fields, so records may nest themselves
    for f in fields:
        tp = hints[f.name]
        specs[f.name] = (_PLAIN.get(tp), _converter_for(tp))
    fast = _CACHE[cls] = _compile_record(cls, fields, specs, required, checked)
    return fast


def _compile_record(cls: type, fields: list[dataclasses.Field[Any]],
                    specs: dict[str, tuple[type | None, _Converter]], required: frozenset[str],
                    checked: _Converter) -> _Converter:
    """The same validation as `checked`, as code generated for this record (the hot path of
    every consumer: sinks and the stream app decode every message). A record with every field
    given (what `encode` writes) takes straight-line code; one with some (what collectors and
    people write) converts just those. Any failure hands the value to `checked`, which names
    the field at fault."""
    env: dict[str, Any] = {"cls": cls, "checked": checked, "known": frozenset(specs),
                           "required": required, "type": type, "dict": dict,
                           "plains": {name: plain for name, (plain, _) in specs.items()},
                           "convs": {name: conv for name, (_, conv) in specs.items()},
                           "DecodeError": DecodeError}
    lines = ["def fast(value):",
             "    if (type(value) is not dict or not value.keys() <= known",
             "            or not required <= value.keys()):",
             "        return checked(value)",
             "    try:",
             f"        if len(value) == {len(fields)}:"]
    args = []
    for i, f in enumerate(fields):
        plain, conv = specs[f.name]
        env[f"c{i}"] = conv
        lines.append(f"            v{i} = value[{f.name!r}]")
        if plain is not None:
            env[f"p{i}"] = plain
            lines.append(f"            if type(v{i}) is not p{i}:")
            lines.append(f"                v{i} = c{i}(v{i})")
        else:
            lines.append(f"            v{i} = c{i}(v{i})")
        args.append(f"{f.name}=v{i}")
    lines += [f"            return cls({', '.join(args)})",
              "        kwargs = dict(value)",
              "        for key, raw in value.items():",
              "            if type(raw) is not plains[key]:",
              "                kwargs[key] = convs[key](raw)",
              "        return cls(**kwargs)",
              "    except (DecodeError, ValueError, TypeError):",
              "        return checked(value)"]
    exec("\n".join(lines), env)
    fast: _Converter = env["fast"]
    return fast

"""The JSON codec: records to plain JSON and back, strictly.

msgspec does the work (schemas/records.py): it decodes into the typed records and checks every
field as it goes. A bad value raises `DecodeError` naming the field path (`payload.argv[2]`) and
the reason in plain words; unknown fields and unknown enum values are errors, so a typo in a
policy file or a newer producer is never silently misread.
"""

from __future__ import annotations

import re
import types
import typing
from enum import Enum
from typing import Any, TypeVar

import msgspec
import orjson

__all__ = ["DecodeError", "decode_json", "decode_record", "encode", "to_plain"]

T = TypeVar("T")


class DecodeError(ValueError):
    """Input that is not a valid procwarden message. `field` names where, `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


_ENCODER = msgspec.json.Encoder()


def encode(record: object) -> bytes:
    """Plain JSON bytes for a record (records as objects, enums by value, tuples as arrays)."""
    return _ENCODER.encode(record)


def to_plain(record: object) -> Any:
    """The record as plain Python data (what `encode` would write: lists, enum values)."""
    return orjson.loads(_ENCODER.encode(record))


def decode_json(data: bytes | str, where: str = "") -> Any:
    """Parse JSON text; anything unparseable becomes a DecodeError."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(where, f"not valid JSON ({exc})") from None


def decode_record(cls: type[T], obj: Any, where: str = "") -> T:
    """Build a `cls` record from plain data (parsed JSON or YAML), validating every field."""
    try:
        return msgspec.convert(obj, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise _decode_error(exc, cls, where) from None


# -- msgspec's errors in procwarden's words ------------------------------------------------------

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_PATH_PART = re.compile(r"\.(\w+)|\[(\d+|\.\.\.)\]")
_EXPECTED = {"int": "an integer", "str": "a string", "bool": "true or false",
             "float": "a number", "array": "an array", "object": "an object", "null": "null"}
_GOT = {"int": "integer", "str": "string", "bool": "boolean", "float": "number",
        "array": "array", "object": "object", "null": "null"}


def _decode_error(exc: msgspec.ValidationError, cls: Any, where: str = "") -> DecodeError:
    """A DecodeError naming the field at fault and why, from msgspec's message."""
    message = str(exc)
    at = _AT.search(message)
    path = at.group("path").lstrip(".") if at else ""
    reason = message[:at.start()] if at else message
    if m := re.fullmatch(r"Object missing required field `(.+)`", reason):
        path, reason = _join(path, m.group(1)), "required field is missing"
    elif m := re.fullmatch(r"Object contains unknown field `(.+)`", reason):
        known = _field_names(_type_at(cls, path))
        path, reason = _join(path, m.group(1)), "unknown field" + (
            f" (known: {', '.join(sorted(known))})" if known else "")
    elif m := re.fullmatch(r"Expected `(.+)`, got `(.+)`", reason):
        expected = " or ".join(_EXPECTED.get(t, t) for t in m.group(1).split(" | "))
        reason = f"expected {expected}, got {_GOT.get(m.group(2), m.group(2))}"
    elif m := re.fullmatch(r"Invalid enum value (.+)", reason):
        allowed = _type_at(cls, path)
        reason = f"unknown value {m.group(1)}" + (
            f" (allowed: {', '.join(sorted(str(e.value) for e in allowed))})"
            if isinstance(allowed, type) and issubclass(allowed, Enum) else "")
    return DecodeError(_join(where, path), reason)


def _join(base: str, part: str) -> str:
    if not base or not part:
        return base or part
    return base + part if part.startswith("[") else f"{base}.{part}"


def _type_at(cls: Any, path: str) -> Any:
    """The declared type at a msgspec path (`payload.rules[2].action`), or None."""
    tp = _unwrap(cls)
    for name, _index in _PATH_PART.findall("." + path if path and path[0] != "[" else path):
        try:
            if name:
                tp = typing.get_type_hints(tp)[name]
            else:
                args = typing.get_args(tp)
                tp = args[-1] if typing.get_origin(tp) is dict else args[0]
        except (KeyError, TypeError, IndexError):
            return None
        tp = _unwrap(tp)
    return tp


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return members[0] if len(members) == 1 else tp
    return tp


def _field_names(tp: Any) -> tuple[str, ...]:
    return tuple(getattr(tp, "__struct_fields__", ()))

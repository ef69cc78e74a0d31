"""The JSON codec: records to plain JSON and back, strictly.

msgspec does the work (schemas/records.py): it decodes into the typed records and checks every
field as it goes. A bad value raises `DecodeError` naming the field path (`payload.argv[2]`) and
the reason in plain words; unknown fields and unknown enum values are errors, so a typo in a
policy file or a newer producer is never silently misread.

Whatever the input, the codec raises nothing but `DecodeError`, and it bounds what it parses: a
message over `max_message_bytes` (default 1 MiB, Kafka's own default) or nesting deeper than
`max_depth` levels (default 64; the deepest valid record is far shallower) is refused before any
recursive code sees it, naming the limit. Each role reads both from
`PROCWARDEN_MAX_MESSAGE_BYTES` and `PROCWARDEN_MAX_NESTING` as it starts (`limits_from_env`,
every role the same) and sets them with `set_limits`. Typed decoding never nests deeper than
the schema, so only the generic parse (the slow path, taken by invalid messages and by data
already parsed elsewhere) walks for depth.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import msgspec
import orjson

__all__ = ["CodecLimits", "DecodeError", "check_size", "decode_json", "decode_record", "encode",
           "limits", "limits_from_env", "set_limits", "to_plain"]

T = TypeVar("T")


class DecodeError(ValueError):
    """Input that is not a valid procwarden message. `field` names where, `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(frozen=True, slots=True)
class CodecLimits:
    max_message_bytes: int = 1 << 20
    max_depth: int = 64

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be at least 1024, not "
                             f"{self.max_message_bytes}")
        # Valid records nest up to about 6 levels: a smaller limit would refuse valid messages
        # on the slow path only, which no one could reason about.
        if self.max_depth < _MIN_DEPTH:
            raise ValueError(f"max_depth must be at least {_MIN_DEPTH}, not {self.max_depth}")


_MIN_DEPTH = 3


def limits_from_env(env: Mapping[str, str] | None = None) -> CodecLimits:
    """The bounds `PROCWARDEN_MAX_*` name (defaults for the unset), read through
    `schemas.env_settings.MessageLimitSettings`; a ValueError naming the variable for a bad
    value."""
    from schemas.env_settings import MessageLimitSettings  # pydantic only where it is needed

    return MessageLimitSettings.read(env).limits()


_limits = CodecLimits()


def limits() -> CodecLimits:
    """The codec's current bounds."""
    return _limits


def set_limits(new: CodecLimits | None = None, *, max_message_bytes: int | None = None,
               max_depth: int | None = None) -> CodecLimits:
    """Change the bounds (for this process) to `new`, or some of them; returns the previous
    ones."""
    global _limits
    previous = _limits
    base = new or previous
    _limits = CodecLimits(
        base.max_message_bytes if max_message_bytes is None else max_message_bytes,
        base.max_depth if max_depth is None else max_depth)
    return previous


def check_size(data: bytes | bytearray | memoryview | str, where: str = "") -> None:
    """DecodeError if `data` is over `max_message_bytes` (text counted in UTF-8)."""
    limit = _limits.max_message_bytes
    if not isinstance(data, bytes | bytearray | memoryview | str):
        return  # not text at all: the parser says so
    size = len(data)
    if isinstance(data, str) and size * 4 > limit and size <= limit:
        size = len(data.encode("utf-8", "surrogatepass"))  # only when it might matter
    elif isinstance(data, memoryview):
        size = data.nbytes
    if size > limit:
        raise DecodeError(where, f"message of {size} bytes is over the limit of {limit} bytes "
                                 "(max_message_bytes)")


def _nesting_error(where: str) -> DecodeError:
    return DecodeError(where, f"nesting deeper than {_limits.max_depth} levels (max_depth)")


def _check_shape(obj: Any, where: str) -> None:
    """DecodeError if lists and objects in `obj` nest deeper than `max_depth`, or if there are
    more of them than a message of `max_message_bytes` could hold (data from YAML may share
    one list many times over: a few lines that expand to billions of values).

    Iterative, so any depth is measured without recursion; a scalar is 0 deep, `[]` is 1.
    """
    if not isinstance(obj, dict | list | tuple):
        return
    limit, budget = _limits.max_depth, _limits.max_message_bytes // 2  # `[]` is two bytes
    stack: list[tuple[Any, int]] = [(obj, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            raise _nesting_error(where)
        budget -= 1
        if budget < 0:
            raise DecodeError(where, "more lists and objects than a message of "
                                     f"{_limits.max_message_bytes} bytes holds "
                                     "(max_message_bytes)")
        for child in (node.values() if isinstance(node, dict) else node):
            if isinstance(child, dict | list | tuple):
                push((child, depth + 1))


_ENCODER = msgspec.json.Encoder()


def encode(record: object) -> bytes:
    """Plain JSON bytes for a record (records as objects, enums by value, tuples as arrays)."""
    return _ENCODER.encode(record)


def to_plain(record: object) -> Any:
    """The record as plain Python data (what `encode` would write: lists, enum values)."""
    return orjson.loads(_ENCODER.encode(record))


def decode_json(data: bytes | str, where: str = "") -> Any:
    """Parse JSON text; anything unparseable, too large or too deep becomes a DecodeError."""
    if not isinstance(data, bytes | bytearray | memoryview | str):
        raise DecodeError(where, f"not JSON text (a {type(data).__name__})")
    check_size(data, where)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # orjson's own bound (1,024) is above ours
            raise _nesting_error(where) from None
        raise DecodeError(where, f"not valid JSON ({exc})") from None
    _check_shape(obj, where)
    return obj


def decode_record(cls: type[T], obj: Any, where: str = "") -> T:
    """Build a `cls` record from plain data (parsed JSON or YAML), validating every field."""
    _check_shape(obj, where)
    return _convert(cls, obj, where)


def _convert(cls: type[T], obj: Any, where: str) -> T:
    """decode_record for data whose depth is already checked."""
    try:
        return msgspec.convert(obj, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise _decode_error(exc, cls, where) from None
    except RecursionError:  # the caller's own stack was deep already
        raise _nesting_error(where) from None


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

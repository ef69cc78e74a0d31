"""The records: the base of every wire record, and a faster `__init__` for the process-local ones.

`Record` is a frozen msgspec Struct that refuses unknown fields. msgspec decodes JSON straight
into these records in C, validating every field on the way (types, enums by value, required
fields, unknown fields), about six times faster than checking parsed JSON in Python, and builds
and encodes them faster than frozen dataclasses. The stream worker, the sinks and the collectors
decode or encode every message, so this is their hot path. `gc=False`: records form trees (a
policy holds rules, a verdict an incident), never cycles, so Python's collector need not track
the millions a worker makes.

`fast_init` is for the frozen dataclasses that never travel (the collectors' /proc and fanotify
readings, the worker's raw messages). A frozen dataclass sets each field with
`object.__setattr__`, about 0.25 us a field here. `fast_init` gives the record an `__init__` that
lends the new object, for the time of the assignments, to a twin class with the same slots and no
frozen `__setattr__` (CPython allows a `__class__` change between classes of the same layout),
assigns the fields as plain slot stores, and hands the object back to its class. What comes out is
exactly what the dataclass `__init__` makes (same fields, defaults, `__post_init__` checks,
equality, hash).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import msgspec

__all__ = ["Record", "fast_init", "field", "replace"]

field = msgspec.field
replace = msgspec.structs.replace  # runs the new record's __post_init__ checks


class Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """A wire record: subclass with typed fields; `__post_init__` may raise ValueError."""


T = TypeVar("T")

_FACTORY = object()  # stands for "call this field's default_factory"


def fast_init(cls: type[T]) -> type[T]:
    """Apply on top of `@dataclass(frozen=True, slots=True)`."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or not params.init or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__}: fast_init wants a frozen, slotted dataclass")
    if cls.__bases__ != (object,):
        raise TypeError(f"{cls.__name__}: fast_init wants a record without base classes")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(not f.init or f.kw_only for f in fields):
        raise TypeError(f"{cls.__name__}: fast_init wants every field in __init__, positional")
    slots = vars(cls)["__slots__"]
    twin = type(f"_{cls.__name__}Unfrozen", (object,), {"__slots__": slots})
    probe: Any = object.__new__(twin)
    probe.__class__ = cls  # raises TypeError now, not per message, if the layouts differ

    env: dict[str, Any] = {"_twin": twin, "_cls": cls, "_set": object.__setattr__,
                           "_FACTORY": _FACTORY}
    params_src, body = [], ["    _set(self, '__class__', _twin)"]
    for i, f in enumerate(fields):
        if f.default is not dataclasses.MISSING:
            env[f"_d{i}"] = f.default
            params_src.append(f"{f.name}=_d{i}")
        elif f.default_factory is not dataclasses.MISSING:
            env[f"_f{i}"] = f.default_factory
            params_src.append(f"{f.name}=_FACTORY")
            body.append(f"    if {f.name} is _FACTORY:\n        {f.name} = _f{i}()")
        else:
            params_src.append(f.name)
        body.append(f"    self.{f.name} = {f.name}")
    body.append("    self.__class__ = _cls")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(params_src)}):\n" + "\n".join(body) + "\n"
    exec(source, env)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[method-assign]
    return cls

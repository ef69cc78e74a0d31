"""fast_init builds exactly what the frozen dataclass __init__ builds; the wire records
(msgspec Structs) stay frozen and keep their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from schemas import Envelope, EventKind, ExecCheck, ExecEvent, Workload, WorkloadKind
from schemas.records import fast_init, replace


def _record_class() -> type:
    @dataclass(frozen=True, slots=True)
    class Record:
        name: str
        count: int = 0
        tags: tuple[str, ...] = ()
        extra: dict[str, str] = field(default_factory=dict)

        def __post_init__(self) -> None:
            if self.count < 0:
                raise ValueError("count must not be negative")

    return Record


_Plain = _record_class()
_Fast = fast_init(_record_class())


@pytest.mark.parametrize(("args", "kwargs"), [
    (("a",), {}),
    (("a", 2), {"tags": ("x", "y")}),
    ((), {"name": "b", "extra": {"k": "v"}, "count": 7}),
])
def test_same_fields_as_the_dataclass_init(args: tuple[object, ...],
                                           kwargs: dict[str, object]) -> None:
    plain, fast = _Plain(*args, **kwargs), _Fast(*args, **kwargs)
    assert type(fast) is _Fast
    assert dataclasses.asdict(plain) == dataclasses.asdict(fast)
    assert fast == _Fast(*args, **kwargs)
    assert hash(ExecEvent("w", 1, "/bin/sh", argv=("sh",))) == hash(
        ExecEvent("w", 1, "/bin/sh", argv=("sh",)))


def test_still_frozen_and_checked() -> None:
    record = _Fast("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.count = 3
    with pytest.raises(ValueError, match="must not be negative"):
        _Fast("a", -1)
    with pytest.raises(TypeError):
        _Fast()
    with pytest.raises(TypeError):
        _Fast("a", nope=1)


def test_each_record_gets_its_own_default_factory_value() -> None:
    first, second = _Fast("a"), _Fast("b")
    first.extra["k"] = "v"
    assert second.extra == {}


def test_the_wire_records_are_frozen_and_keep_their_checks() -> None:
    event = ExecEvent("w", 1, "/bin/sh")
    with pytest.raises(AttributeError):
        event.pid = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="kind exec carries ExecEvent, not ExecCheck"):
        Envelope(1, "e", "n", "c", 0.0, EventKind.EXEC, ExecCheck("w", 1, "/bin/sh"))
    env = Envelope(1, "e", "n", "c", 0.0, EventKind.EXEC, event)
    with pytest.raises(ValueError, match="carries ExecEvent, not ExecCheck"):
        replace(env, payload=ExecCheck("w", 1, "/bin/sh"))
    first, second = Workload("a", WorkloadKind.HOST, "n"), Workload("b", WorkloadKind.HOST, "n")
    first.labels["k"] = "v"
    assert second.labels == {}


def test_refuses_what_it_cannot_speed_up() -> None:
    @dataclass(slots=True)
    class Mutable:
        name: str

    @dataclass(frozen=True)
    class NoSlots:
        name: str

    for cls in (Mutable, NoSlots):
        with pytest.raises(TypeError, match="frozen, slotted dataclass"):
            fast_init(cls)

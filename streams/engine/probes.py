"""Kubernetes exec probes (docs/behaviour.md §7.3): probe rules for the learned group, and probe
commands."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from schemas import Action, Rule, RuleSource
from schemas.masking import mask_argv
from streams.engine.validation import clean_path

__all__ = ["SHELLS", "probe_commands", "probe_rules", "rule_uuid"]

SHELLS = frozenset({"sh", "bash", "ash"})
_NAMESPACE = uuid.UUID("6f0c5d1e-2b8a-4c53-9d7e-7a1b2c3d4e5f")


def rule_uuid(*parts: str) -> str:
    """A deterministic rule uuid: the engine never draws random numbers or reads clocks."""
    return str(uuid.uuid5(_NAMESPACE, "\x00".join(parts)))


def _sub_commands(argv: tuple[str, ...]) -> list[tuple[str, ...]]:
    """`exec X …` segments of a `sh -c` script, split on `;`."""
    if not argv or argv[0].rsplit("/", 1)[-1] not in SHELLS:
        return []
    try:
        script = argv[argv.index("-c") + 1]
    except (ValueError, IndexError):
        return []
    out = []
    for segment in script.split(";"):
        tokens = segment.split()
        if len(tokens) > 1 and tokens[0] == "exec":
            out.append(tuple(tokens[1:]))
    return out


def probe_commands(probes: Iterable[tuple[str, ...]]) -> frozenset[tuple[str, ...]]:
    """Every argv that counts as a probe: the probe commands and their `exec` sub-commands,
    each as given and masked (the collector masks a probe's secrets before it publishes)."""
    out: set[tuple[str, ...]] = set()
    for argv in probes:
        if argv:
            out.add(tuple(argv))
            out.update(_sub_commands(tuple(argv)))
    return frozenset(out | {mask_argv(argv) for argv in out})


def probe_rules(group: str, probes: Iterable[tuple[str, ...]], ts: int) -> tuple[Rule, ...]:
    """The learned allow rules for a pod's exec probes, one per process name."""
    by_name: dict[str, tuple[str, list[str]]] = {}
    commands: list[tuple[str, ...]] = []
    for argv in probes:
        if argv:
            commands.append(tuple(argv))
            commands.extend(_sub_commands(tuple(argv)))
    for argv in commands:
        exe = argv[0]
        name = exe.rsplit("/", 1)[-1]
        if not name:
            continue
        path = clean_path(exe) if "/" in exe else "*"
        line = ",".join(argv)
        if name in by_name:
            _, lines = by_name[name]
            if line not in lines:  # a second command with the same name widens the path
                lines.append(line)
                by_name[name] = ("*", lines)
        else:
            by_name[name] = (path, [line])
    return tuple(
        Rule(name=name, path=path, action=Action.ALLOW, cfg_type=RuleSource.LEARNED,
             uuid=rule_uuid(group, "probe", name), group=group, probe_cmds=tuple(lines),
             created_timestamp=ts, last_modified_timestamp=ts)
        for name, (path, lines) in sorted(by_name.items())
    )

"""Offline replay (`procwarden decide`): policy files plus a JSONL stream of wire messages in,
one JSON answer per line out, with the same engine the stream app uses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import yaml

from schemas import (
    DecodeError,
    GroupPolicy,
    decode_envelope,
    decode_record,
    to_plain,
)
from schemas.codec import limits
from streams.engine import PolicyError, apply_crd
from streams.engine.crd import CRD_KINDS
from streams.worker.session import DecisionSession, EditOutcome, UnknownWorkload
from transport.guard import describe

__all__ = ["OversizedLine", "ReplayLine", "dumps", "explain", "load_policy_file", "read_lines",
           "replay"]


def load_policy_file(session: DecisionSession, path: Path) -> int:
    """Load a native policy file (JSON/YAML: a group policy, a list, or `{groups: [...]}`) or
    NeuVector CRD YAML into the session; returns how many groups it touched."""
    text = path.read_text()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML or JSON: {exc}") from None
    if any(isinstance(d, dict) and (d.get("kind") in CRD_KINDS or d.get("kind") == "List")
           for d in docs):
        result = apply_crd(session.policies, text, session.settings, ts=0.0, actor=f"file:{path}")
        session.apply(result)
        return len(result.updated)
    groups: list[Any] = []
    for doc in docs:
        if isinstance(doc, list):
            groups.extend(doc)
        elif isinstance(doc, dict) and "groups" in doc:
            groups.extend(doc["groups"])
        else:
            groups.append(doc)
    policies = []
    for i, raw in enumerate(groups):
        try:
            policies.append(decode_record(GroupPolicy, raw, f"groups[{i}]"))
        except DecodeError as exc:
            raise PolicyError(f"{path}: {exc}") from None
    session.load_policies(policies)
    return len(policies)


@dataclass(frozen=True, slots=True)
class ReplayLine:
    line: int
    output: dict[str, Any]
    ok: bool


@dataclass(frozen=True, slots=True)
class OversizedLine:
    """A line longer than the codec takes, skipped without being held in memory."""

    length: int


def read_lines(stream: IO[bytes]) -> Iterator[bytes | OversizedLine]:
    """The lines of a binary stream, each at most `max_message_bytes` (and its newline) held
    in memory: a longer one is read past in chunks and stands as an `OversizedLine`."""
    limit = limits().max_message_bytes
    while line := stream.readline(limit + 2):
        if len(line) <= limit + 1 or line.endswith(b"\n"):
            yield line.rstrip(b"\r\n")  # the newline is not part of the message's size
            continue
        length = len(line)
        while chunk := stream.readline(1 << 20):
            length += len(chunk)
            if chunk.endswith(b"\n"):
                break
        yield OversizedLine(length)


def replay(session: DecisionSession,
           lines: Iterable[str | bytes | OversizedLine]) -> Iterator[ReplayLine]:
    """Feed each JSONL line to the session; a bad line yields an error and the run goes on."""
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, OversizedLine):
            yield ReplayLine(number, {"line": number, "error": (
                f"invalid message: line of {raw.length} bytes is over the limit of "
                f"{limits().max_message_bytes} bytes (max_message_bytes)")}, False)
            continue
        if not raw.strip():
            continue
        env = None
        try:
            env = decode_envelope(raw)
            answer = session.handle(env)
        except DecodeError as exc:
            yield ReplayLine(number, {"line": number, "error": f"invalid message: {exc}"}, False)
            continue
        except UnknownWorkload as exc:
            yield ReplayLine(number, {"line": number, "event_id": env.event_id if env else "",
                                      "error": f"unknown workload {exc.args[0]!r}: announce it "
                                               "with a workload message first"}, False)
            continue
        except Exception as exc:  # one line the engine fails on must not end the replay
            yield ReplayLine(number, {"line": number, "event_id": env.event_id if env else "",
                                      "error": f"handling failed: {describe(exc)}"}, False)
            continue
        out = {"line": number, **to_plain(answer)}
        ok = not (isinstance(answer, EditOutcome) and answer.status >= 400)
        yield ReplayLine(number, out, ok)


def dumps(output: dict[str, Any]) -> str:
    return orjson.dumps(output).decode()


def explain(session: DecisionSession, item: ReplayLine) -> str:
    """A human reading of one replay answer."""
    out = item.output
    head = f"line {item.line:>4}"
    if "error" in out:
        return f"{head}  ERROR  {out['error']}"
    if "event_kind" not in out:  # an edit
        text = f"{head}  edit   {out['verdict'].upper():7} {out['reason']}"
        for change in out.get("changes", []):
            rule = change.get("rule")
            what = f" {rule['name']}:{rule['path']} ({rule['action']})" if rule else ""
            text += (f"\n{'':13}{change['group']} v{change['version']} "
                     f"{change['change']}{what} {change.get('detail', '')}".rstrip())
        return text
    d = out
    where = f"{d['group']} [{d['mode']}/{d['baseline']}]"
    what = f"{d['event_kind']:5} {d['path'] or '-'} ({d['name'] or '-'})"
    text = f"{head}  {what} in {where} -> {d['verdict'].upper()}  {d['reason']}"
    if d.get("would_block"):
        text += "  (Protect would block)"
    if d.get("suppressed"):
        text += "  (incident suppressed: alert_disabled)"
    incident = d.get("incident")
    if incident:
        text += (f"\n{'':13}{incident['name']} {incident['level']} rule {incident['rule_id']}: "
                 f"{incident['message']}")
    learn = d.get("learn")
    if learn:
        text += f"\n{'':13}learned into {learn['group']}: {learn['name']}:{learn['path']}"
        if learn.get("user"):
            text += f" user {learn['user']}"
    return text


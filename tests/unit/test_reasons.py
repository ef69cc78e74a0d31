"""Reason codes: one closed vocabulary, one render and one parse (schemas/reasons.py)."""

from __future__ import annotations

import msgspec
import pytest

from schemas import Decision, DecodeError, Envelope, EventKind, Verdict, decode_envelope, encode
from schemas.reasons import (
    DRIFT_DETAILS,
    EXCEPTION_DETAILS,
    IGNORED_DETAILS,
    NONE_DETAILS,
    PreExecReason,
    Reason,
    ReasonCode,
    ViolationCode,
    check,
    parse,
    render,
)

_FREE = {ReasonCode.PARENT_RULE: ("sh/*", "pgid"), ReasonCode.SUSPICIOUS: ("nc", "ncat")}
_CLOSED = {
    ReasonCode.EXCEPTION: EXCEPTION_DETAILS,
    ReasonCode.IGNORED: IGNORED_DETAILS,
    ReasonCode.VIOLATION: frozenset(ViolationCode),
    ReasonCode.DRIFT: DRIFT_DETAILS,
    ReasonCode.NONE: NONE_DETAILS,
    ReasonCode.PRE_EXEC: frozenset(PreExecReason) - {PreExecReason.DENY_RULE},
}


def _every_reason() -> list[Reason]:
    out: list[Reason] = []
    for code in ReasonCode:
        details = _FREE.get(code) or sorted(_CLOSED.get(code, ()))
        if code is ReasonCode.PRE_EXEC:
            details = [*details, "deny-rule:9f0c2a1e-0000-4000-8000-000000000001"]
        out += [Reason(code, str(d)) for d in details] or [Reason(code)]
    return out


@pytest.mark.parametrize("reason", _every_reason(), ids=str)
def test_every_code_round_trips(reason: Reason) -> None:
    text = render(reason.code, reason.detail)
    assert str(reason) == text
    assert parse(text) == reason
    check(text)


def test_the_wire_strings_are_the_ones_consumers_have_always_read() -> None:
    assert render(ReasonCode.VIOLATION, ViolationCode.R5) == "violation:R5"
    assert render(ReasonCode.RULE) == "rule"
    assert render(ReasonCode.LEARN_CAPPED) == "learn-capped"
    assert render(ReasonCode.PRE_EXEC, "deny-rule:u1") == "pre-exec:deny-rule:u1"
    assert parse("pre-exec:deny-rule:u1") == Reason(ReasonCode.PRE_EXEC, "deny-rule:u1")


@pytest.mark.parametrize("text", [
    "", "test", "allowed:9f0c", "Rule", "violation", "violation:", "violation:R9", "rule:x",
    "learn:", "drift:delete", "none:whatever", "pre-exec:deny-rule", "pre-exec:deny-rule:",
    "pre-exec:not-protect:x", "parent-rule:", "suspicious", " rule", "rule ",
])
def test_an_unknown_code_or_detail_is_refused(text: str) -> None:
    with pytest.raises(DecodeError) as err:
        parse(text)
    assert err.value.field == "reason"
    with pytest.raises(DecodeError):
        check(text)


def test_a_detail_with_colons_survives() -> None:
    text = render(ReasonCode.PARENT_RULE, "a:b:/usr/bin/*")
    assert text == "parent-rule:a:b:/usr/bin/*"
    assert parse(text) == Reason(ReasonCode.PARENT_RULE, "a:b:/usr/bin/*")


def test_render_refuses_what_parse_would() -> None:
    with pytest.raises(DecodeError):
        render(ReasonCode.RULE, "9f0c")
    with pytest.raises(DecodeError):
        render(ReasonCode.VIOLATION, "R9")


def _verdict(reason: str) -> Decision:
    return Decision(event_id="e1", event_kind=EventKind.EXEC, workload_id="w", node="n",
                    verdict=Verdict.BLOCK, reason=reason, pid=7)


def test_a_decision_with_an_unknown_reason_is_not_built_nor_decoded() -> None:
    with pytest.raises(DecodeError):
        _verdict("hand-written")
    good = encode(Envelope(1, "e1", "n", "c", 1.0, EventKind.VERDICT, _verdict("violation:R0")))
    assert decode_envelope(good).payload == _verdict("violation:R0")
    bad = good.replace(b'"violation:R0"', b'"violation:R9"')
    with pytest.raises(DecodeError) as err:
        decode_envelope(bad)
    assert "reason" in str(err.value)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(_verdict("rule")).replace(b'"rule"', b'"x"'),
                            type=Decision)


def test_why_is_the_structured_reason() -> None:
    assert _verdict("violation:RD").why == Reason(ReasonCode.VIOLATION, ViolationCode.RD)
    assert _verdict("rule").why.code is ReasonCode.RULE

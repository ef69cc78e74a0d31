"""Why a decision came out as it did: a closed vocabulary of reason codes (docs/behaviour.md §7,
docs/decide.md "Reasons").

On the wire a reason is one string, `<code>` or `<code>:<detail>` (`rule`, `violation:R5`,
`parent-rule:sh/*`, `pre-exec:deny-rule:<uuid>`), exactly as ClickHouse, the SIEM formats, the
collector and the dashboards have always read it. In code it is a `Reason`: a `ReasonCode` and its
detail. `render` and `parse` are the only places that join or split the two: a code is never
followed by anything but `:`, and a detail may hold `:` itself (only the first `:` separates).

`parse` refuses a code this build does not know, a detail a code does not take (or a missing one
it needs), and a detail outside a closed set, with a `DecodeError` naming the `reason` field: a
`Decision` checks its reason as it is built or decoded, so a verdict with an unknown reason never
reaches a consumer's handler (the guard sends it to the DLQ).
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from schemas.codec import DecodeError

__all__ = ["WHOLE_REASONS", "PreExecReason", "Reason", "ReasonCode", "ViolationCode", "check",
           "parse", "render"]


class ReasonCode(StrEnum):
    """The part of a reason before the first `:`; each member's comment says what it means and
    which detail follows it."""

    RULE = "rule"  # allowed by the matched rule (`rule_uuid`), §7.1 step 16
    LEARN = "learn"  # Discover learned a rule (step 11, 14 or 15)
    USER_LEARN = "user-learn"  # Discover added the exec's user to a learned rule (step 13)
    HASH_LEARN = "hash-learn"  # Discover pinned the executable's hash (step 14, §8.2)
    LEARN_CAPPED = "learn-capped"  # Discover would learn, but a learning cap stops it: allowed
    PROBE = "probe"  # a Kubernetes exec probe (step 4, §7.3)
    PARENT_RULE = "parent-rule"  # admitted by a parent rule; detail: its name, or `pgid` (step 12)
    EXCEPTION = "exception"  # an exempt exec; detail: `nc-healthcheck` (step 3)
    IGNORED = "ignored"  # not judged (step 1); detail: `runtime` or `no-exe`
    VIOLATION = "violation"  # a profile violation; detail: a ViolationCode (§7.4)
    SUSPICIOUS = "suspicious"  # Discover: a risky program, alerted; detail: its name (§9.1)
    DRIFT = "drift"  # file drift (§6); detail: the operation, `create`, `modify` or `attrib`
    NO_DRIFT = "no-drift"  # a file event that is not drift (§6)
    REVERSE_SHELL = "reverse-shell"  # the reverse-shell detector (§9.2)
    ESCALATION = "escalation"  # root privilege escalation (§9.3)
    DOCKER_CP = "docker-cp"  # docker cp into or out of the container (§9.4)
    PRE_EXEC = "pre-exec"  # the answer to a held exec (§14); detail: a PreExecReason
    NONE = "none"  # an event that decides nothing; detail: why (NONE_DETAILS)


class ViolationCode(StrEnum):
    """The detail of `violation:` (docs/behaviour.md §7.4)."""

    R0 = "R0"  # not in the profile
    RD = "RD"  # a deny rule matched
    RS = "RS"  # a suspicious program, in Monitor or Protect
    R5 = "R5"  # not from an image file
    R6 = "R6"  # not from the container's root process
    R7 = "R7"  # family, but not listed
    RU = "RU"  # started by another user than a learned rule lists
    RH = "RH"  # the hash differs from the pin


class PreExecReason(StrEnum):
    """The detail of `pre-exec:` (docs/behaviour.md §14): why a held exec was let run or denied."""

    NOT_PROTECT = "not-protect"  # allow: a host, or a mode that does not block
    OUTSIDE_CONTAINER = "outside-container"  # allow: the executable lies outside the container
    RUNTIME_INJECTED = "runtime-injected"  # allow: a runtime-injected caller, judged after exec
    DECIDED_AFTER_EXEC = "decided-after-exec"  # allow: only the process name can decide it
    PARENT_RULES = "parent-rules"  # allow: parent rules may admit it, judged after exec
    DENY_RULE = "deny-rule"  # deny: a deny rule for any name; followed by `:<rule uuid>`
    NOT_IN_PROFILE = "not-in-profile"  # deny: no allow rule could match the file
    NOT_FROM_IMAGE = "not-from-image"  # deny: zero-drift, and the file is not an image file


# The details of `ignored:`, `exception:`, `drift:` and `none:`, each a closed set.
IGNORED_DETAILS = frozenset({"runtime", "no-exe"})
EXCEPTION_DETAILS = frozenset({"nc-healthcheck"})
DRIFT_DETAILS = frozenset({"create", "modify", "attrib"})
NONE_DETAILS = frozenset({
    "exit",  # a process ended: its state is forgotten
    "not-judged",  # a file event of a workload that does not judge drift
    "no-tunnel",  # standard streams that are not a reverse shell
    "tunnel-sighted",  # a possible reverse shell, first sighting: marked, not reported
    "tunnel-reported",  # a reverse shell already reported
    "no-escalation",  # a uid change that is no escalation
    "not-this-container",  # a docker cp of another container
})


def _free(detail: str) -> bool:
    return bool(detail)


def _pre_exec(detail: str) -> bool:
    why, sep, uuid = detail.partition(":")
    if why == PreExecReason.DENY_RULE:
        return bool(sep and uuid)
    return not sep and why in _PRE_EXEC_VALUES


_PRE_EXEC_VALUES = frozenset(PreExecReason)

# Which detail each code takes: absent from the table, none; otherwise a check of the detail.
_DETAIL = {
    ReasonCode.PARENT_RULE: _free,
    ReasonCode.SUSPICIOUS: _free,
    ReasonCode.EXCEPTION: EXCEPTION_DETAILS.__contains__,
    ReasonCode.IGNORED: IGNORED_DETAILS.__contains__,
    ReasonCode.VIOLATION: frozenset(ViolationCode).__contains__,
    ReasonCode.DRIFT: DRIFT_DETAILS.__contains__,
    ReasonCode.PRE_EXEC: _pre_exec,
    ReasonCode.NONE: NONE_DETAILS.__contains__,
}
_CODES = {c.value: c for c in ReasonCode}
# Every reason without a free detail, written out: most decisions' reasons, checked by one lookup.
WHOLE_REASONS = frozenset(
    [c.value for c in ReasonCode if c not in _DETAIL]
    + [f"{code.value}:{d}" for code, details in (
        (ReasonCode.EXCEPTION, EXCEPTION_DETAILS), (ReasonCode.IGNORED, IGNORED_DETAILS),
        (ReasonCode.VIOLATION, frozenset(ViolationCode)), (ReasonCode.DRIFT, DRIFT_DETAILS),
        (ReasonCode.PRE_EXEC, _PRE_EXEC_VALUES - {PreExecReason.DENY_RULE}),
        (ReasonCode.NONE, NONE_DETAILS)) for d in details])


class Reason(NamedTuple):
    code: ReasonCode
    detail: str = ""

    def __str__(self) -> str:
        return render(self.code, self.detail)


def check(text: str) -> None:
    """`parse`, for a caller that needs only the refusal (a `Decision` as it is built)."""
    if text not in WHOLE_REASONS:
        parse(text)


def render(code: ReasonCode, detail: str = "") -> str:
    """The wire string of a reason; ValueError for a detail `code` does not take."""
    text = f"{code.value}:{detail}" if detail else code.value
    parse(text)  # the one definition of what is valid
    return text


def parse(text: str) -> Reason:
    """The reason a wire string names; DecodeError (field `reason`) for anything else."""
    head, sep, detail = text.partition(":")
    code = _CODES.get(head)
    if code is None:
        shown = head[:40]
        raise DecodeError("reason", f"unknown reason code {shown!r} (known: "
                                    f"{', '.join(sorted(_CODES))})")
    check = _DETAIL.get(code)
    if check is None:
        if sep:
            raise DecodeError("reason", f"{code.value!r} takes no detail")
    elif not check(detail):
        raise DecodeError("reason", f"{detail[:80]!r} is not a detail of {code.value!r}"
                          if detail else f"{code.value!r} needs a detail")
    return Reason(code, detail)

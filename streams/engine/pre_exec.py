"""The answer to a held exec before it runs (docs/behaviour.md §14).

Before exec only the file, the caller and its credentials are known: no argv, no final process
name. The answer must never deny what the post-exec decision (§7) would allow, so it denies only
when no process name at all could make the exec allowed.
"""

from __future__ import annotations

from typing import NamedTuple

from schemas import Action, Mode
from schemas.reasons import PreExecReason
from streams.engine.compiled import is_user_update_rule
from streams.engine.matching import can_match_path
from streams.engine.view import PolicyView

__all__ = ["PreExecAnswer", "pre_exec_decide"]


_NOT_PROTECT, _OUTSIDE = PreExecReason.NOT_PROTECT, PreExecReason.OUTSIDE_CONTAINER
_INJECTED, _AFTER_EXEC = PreExecReason.RUNTIME_INJECTED, PreExecReason.DECIDED_AFTER_EXEC
_PARENT_RULES, _DENY_RULE = PreExecReason.PARENT_RULES, PreExecReason.DENY_RULE
_NOT_IN_PROFILE, _NOT_FROM_IMAGE = PreExecReason.NOT_IN_PROFILE, PreExecReason.NOT_FROM_IMAGE


class PreExecAnswer(NamedTuple):
    allow: bool
    why: PreExecReason
    rule_uuid: str = ""  # of the deny rule, for DENY_RULE

    @property
    def reason(self) -> str:
        """The detail of the decision's `pre-exec:` reason."""
        return f"{self.why.value}:{self.rule_uuid}" if self.rule_uuid else self.why.value


def pre_exec_decide(view: PolicyView, exe: str, *, runtime_injected: bool, image_file: bool,
                    exe_on_host: bool = False,
                    netcat_paths: frozenset[str] = frozenset()) -> PreExecAnswer:
    if view.is_host or view.effective_mode is not Mode.PROTECT:
        return PreExecAnswer(True, _NOT_PROTECT)
    if exe_on_host:
        return PreExecAnswer(True, _OUTSIDE)
    if runtime_injected:
        return PreExecAnswer(True, _INJECTED)
    if exe.rsplit("/", 1)[-1] == "busybox" or exe in netcat_paths:
        return PreExecAnswer(True, _AFTER_EXEC)
    rules = view.rules
    if rules.parent_rules:
        return PreExecAnswer(True, _PARENT_RULES)
    candidates = [r for r in rules.rules if can_match_path(r, exe)]
    if candidates and candidates[0].action is Action.DENY and candidates[0].name == "*":
        return PreExecAnswer(False, _DENY_RULE, candidates[0].uuid)
    if not any(r.action is Action.ALLOW for r in candidates):
        return PreExecAnswer(False, _NOT_IN_PROFILE)
    if view.zero_drift and not image_file and not any(is_user_update_rule(r) for r in candidates):
        return PreExecAnswer(False, _NOT_FROM_IMAGE)
    return PreExecAnswer(True, _AFTER_EXEC)

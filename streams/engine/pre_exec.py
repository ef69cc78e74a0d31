"""The answer to a held exec before it runs (docs/behaviour.md §14).

Before exec only the file, the caller and its credentials are known: no argv, no final process
name. The answer must never deny what the post-exec decision (§7) would allow, so it denies only
when no process name at all could make the exec allowed.
"""

from __future__ import annotations

from typing import NamedTuple

from schemas import Action, Mode
from streams.engine.compiled import is_user_update_rule
from streams.engine.matching import can_match_path
from streams.engine.view import PolicyView

__all__ = ["PreExecAnswer", "pre_exec_decide"]


class PreExecAnswer(NamedTuple):
    allow: bool
    reason: str


def pre_exec_decide(view: PolicyView, exe: str, *, runtime_injected: bool, image_file: bool,
                    exe_on_host: bool = False,
                    netcat_paths: frozenset[str] = frozenset()) -> PreExecAnswer:
    if view.is_host or view.effective_mode is not Mode.PROTECT:
        return PreExecAnswer(True, "not-protect")
    if exe_on_host:
        return PreExecAnswer(True, "outside-container")
    if runtime_injected:
        return PreExecAnswer(True, "runtime-injected")
    if exe.rsplit("/", 1)[-1] == "busybox" or exe in netcat_paths:
        return PreExecAnswer(True, "decided-after-exec")
    rules = view.rules
    if rules.parent_rules:
        return PreExecAnswer(True, "parent-rules")
    candidates = [r for r in rules.rules if can_match_path(r, exe)]
    if candidates and candidates[0].action is Action.DENY and candidates[0].name == "*":
        return PreExecAnswer(False, f"deny-rule:{candidates[0].uuid}")
    if not any(r.action is Action.ALLOW for r in candidates):
        return PreExecAnswer(False, "not-in-profile")
    if view.zero_drift and not image_file and not any(is_user_update_rule(r) for r in candidates):
        return PreExecAnswer(False, "not-from-image")
    return PreExecAnswer(True, "decided-after-exec")

"""The decision procedure (docs/behaviour.md §6, §7, §8, §9): one event in, one decision out.

Pure: no I/O, no clock, no randomness, no mutation of inputs. Matching first (what does the
profile say), then the mode decides the verdict. The Faust agents, `procwarden decide` and policy
dry-runs all call `decide`, so they always agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from enum import IntEnum

import msgspec

from schemas import Action as RuleAction
from schemas import (
    CopyDirection,
    Decision,
    DockerCpEvent,
    Envelope,
    EventKind,
    ExecCheck,
    ExecEvent,
    ExitEvent,
    FileEvent,
    FileOp,
    Incident,
    IncidentAction,
    LearnRequest,
    Level,
    Mode,
    Origin,
    Rule,
    RuleSource,
    StdioEvent,
    UidChangeEvent,
    Verdict,
    reserved_rule_id,
)
from schemas.reasons import PreExecReason, ReasonCode, ViolationCode, render
from schemas.records import replace
from streams.engine.compiled import is_user_update_rule
from streams.engine.detectors import (
    NETCATS,
    SUSPICIOUS,
    docker_cp_target,
    is_escalation,
    is_nc_healthcheck,
    is_runtime_process,
    is_tunnel,
)
from streams.engine.incidents import ProcFacts, incident
from streams.engine.matching import match_rule, process_name
from streams.engine.policies import learn_refusal
from streams.engine.pre_exec import pre_exec_decide
from streams.engine.probes import SHELLS
from streams.engine.state import (
    ADMITTED_PGIDS,
    DRIFT_PATHS,
    LEARNING,
    PROBE_SHELLS,
    RISKY_PIDS,
    TUNNEL_SIGHTINGS,
    ProcessState,
    StateEffect,
    drift_key,
)
from streams.engine.view import PolicyView

__all__ = ["DECIDED_KINDS", "decide"]


# Enum members bound once: reading a member off an Enum class costs 100-200 ns on Python 3.11,
# and the exec path reads a dozen of them per event.
_ALLOW, _LEARN, _ALERT, _BLOCK, _NONE = (Verdict.ALLOW, Verdict.LEARN, Verdict.ALERT,
                                         Verdict.BLOCK, Verdict.NONE)
_DISCOVER, _MONITOR, _PROTECT = Mode.DISCOVER, Mode.MONITOR, Mode.PROTECT
_IMAGE = Origin.IMAGE
_RULE_ALLOW = RuleAction.ALLOW
_LEARNED = RuleSource.LEARNED

Result = tuple[Decision, StateEffect | None]

# Kinds `decide` accepts, for callers that route messages.
DECIDED_KINDS = frozenset({EventKind.EXEC, EventKind.EXEC_CHECK, EventKind.FILE, EventKind.STDIO,
                           EventKind.UID_CHANGE, EventKind.DOCKER_CP, EventKind.EXIT})

_R0, _RD, _RS, _R5, _R6, _R7, _RU, _RH = (
    ViolationCode.R0, ViolationCode.RD, ViolationCode.RS, ViolationCode.R5, ViolationCode.R6,
    ViolationCode.R7, ViolationCode.RU, ViolationCode.RH)

# Reasons as their wire strings (schemas/reasons.py), rendered once: most decisions carry one.
_RULE, _LEARN_R, _USER_LEARN, _HASH_LEARN, _LEARN_CAPPED, _PROBE, _NO_DRIFT, _REVERSE_SHELL, \
    _ESCALATION, _DOCKER_CP = (render(c) for c in (
        ReasonCode.RULE, ReasonCode.LEARN, ReasonCode.USER_LEARN, ReasonCode.HASH_LEARN,
        ReasonCode.LEARN_CAPPED, ReasonCode.PROBE, ReasonCode.NO_DRIFT, ReasonCode.REVERSE_SHELL,
        ReasonCode.ESCALATION, ReasonCode.DOCKER_CP))
_VIOLATION = {v: render(ReasonCode.VIOLATION, v) for v in ViolationCode}
_NONE_R = {d: render(ReasonCode.NONE, d) for d in (
    "exit", "not-judged", "no-tunnel", "tunnel-sighted", "tunnel-reported", "no-escalation",
    "not-this-container")}
_IGNORED_R = {d: render(ReasonCode.IGNORED, d) for d in ("no-exe", "runtime")}
_NC_HEALTHCHECK = render(ReasonCode.EXCEPTION, "nc-healthcheck")
_PARENT_PGID = render(ReasonCode.PARENT_RULE, "pgid")
_DRIFT_R = {op: render(ReasonCode.DRIFT, op.value)
            for op in (FileOp.CREATE, FileOp.MODIFY, FileOp.ATTRIB)}

_BASE_MESSAGE = "Process profile violation"
_SUFFIX = {
    _R5: ", not from an image file",
    _R6: ", not from its root process",
    _R7: ", not a listed family process",
    _RU: ", started by a different user",
}


def decide(view: PolicyView, state: ProcessState, env: Envelope) -> Result:
    """Decide one event of `view.workload` given the workload's process state."""
    payload = env.payload
    if type(payload) is ExecEvent:
        return _decide_exec(view, state, env, payload)
    if type(payload) is FileEvent:
        return _with_overflow(view, state, env, *_decide_file(view, state, env, payload))
    if type(payload) is ExecCheck:
        return _decide_exec_check(view, state, env, payload), None
    if type(payload) is StdioEvent:
        return _with_overflow(view, state, env, *_decide_stdio(view, state, env, payload))
    if type(payload) is UidChangeEvent:
        return _decide_uid_change(view, env, payload)
    if type(payload) is DockerCpEvent:
        return _decide_docker_cp(view, env, payload)
    if type(payload) is ExitEvent:
        return _decision(view, env, _NONE, _NONE_R["exit"], pid=payload.pid), \
            StateEffect(forget_pid=payload.pid)
    raise ValueError(f"the engine decides events, not {env.kind.value} messages")


def _decision(view: PolicyView, env: Envelope, verdict: Verdict, reason: str, *,
              group: str = "", rule: Rule | None = None, pid: int = 0, start_time: int = 0,
              name: str = "", path: str = "", user: str = "", found: Incident | None = None,
              learn: LearnRequest | None = None, would_block: bool = False,
              any_caller: bool = False) -> Decision:
    wl = view.workload
    return Decision(
        event_id=env.event_id, event_kind=env.kind, workload_id=wl.id, node=wl.node,
        verdict=verdict, reason=reason, group=group or view.learned.name,
        rule_uuid=rule.uuid if rule is not None else "",
        rule_group=rule.group if rule is not None else "",
        mode=view.mode, baseline=view.baseline, would_block=would_block,
        suppressed=found is not None and view.learned.alert_disabled,
        pid=pid, start_time=start_time, name=name, path=path, user=user, ts=env.ts,
        policy_version=view.learned.version, pre_exec=view.pre_exec, pre_write=view.pre_write,
        fail_mode=view.fail_mode, policy_stamp=view.stamp, any_caller=any_caller,
        incident=found, learn=learn,
    )


# ---- caps (issue 21; what each overflow changes: state.py, policies.learn_refusal) ----------

_STATE_OVERFLOWS = {
    DRIFT_PATHS: ("max_drift_paths", "drift files",
                  "the container is treated as drifted: no file counts as an image file"),
    RISKY_PIDS: ("max_tracked_pids", "risky processes",
                 "every process is treated as risky"),
    PROBE_SHELLS: ("max_tracked_pids", "probe shells",
                   "children of further probe shells are judged as ordinary execs"),
    ADMITTED_PGIDS: ("max_tracked_pids", "admitted process groups",
                     "further process groups are judged by the rules"),
    TUNNEL_SIGHTINGS: ("max_tracked_pids", "reverse-shell sightings",
                       "a first sighting is reported at once"),
}
_FAILS_CLOSED = (DRIFT_PATHS, RISKY_PIDS)  # CRITICAL: every later decision of it changes


def _overflow_incident(view: PolicyView, env: Envelope, cap: str, message: str,
                       proc: ProcFacts, level: Level = Level.WARNING) -> Incident:
    return incident(view, env, kind="overflow", level=level, action=IncidentAction.VIOLATE,
                    group=view.learned.name, rule_id=reserved_rule_id(8),
                    message=f"Profile overflow: {message}", proc=proc, id_kind=f"overflow:{cap}")


def _state_overflow(view: PolicyView, st: ProcessState, env: Envelope,
                    effect: StateEffect | None, proc: ProcFacts) -> tuple[str, Incident | None]:
    """The cap a decision's effect hit, and the incident when the workload had not hit it."""
    if effect is None or effect.overflow is None:
        return "", None
    cap = effect.overflow[0]
    if cap in st.overflow:
        return cap, None
    limit, what, consequence = _STATE_OVERFLOWS[cap]
    if cap == RISKY_PIDS and view.is_host:
        consequence = "further risky processes are not remembered"
    message = f"more than {getattr(view.settings, limit)} {what}; {consequence}"
    level = Level.CRITICAL if cap in _FAILS_CLOSED else Level.WARNING
    return cap, _overflow_incident(view, env, cap, message, proc, level)


def _with_overflow(view: PolicyView, st: ProcessState, env: Envelope, decision: Decision,
                   effect: StateEffect | None) -> Result:
    if effect is None or effect.overflow is None:
        return decision, effect
    cap, found = _state_overflow(view, st, env, effect,
                                 ProcFacts(name=decision.name, path=decision.path))
    return replace(decision, capped=cap, overflow=found), effect


def _room(items: Collection[object], key: object, limit: int) -> bool:
    """Whether `key` is in `items` already or fits under the cap."""
    return key in items or len(items) < limit


def _would_block(view: PolicyView) -> bool:
    """In Monitor, whether Protect would block a violation (system containers never block)."""
    return view.mode is _MONITOR and not view.workload.system


def _proc(ev: ExecEvent, pname: str) -> ProcFacts:
    return ProcFacts(name=pname, path=ev.path, argv=ev.argv, ruid=ev.ruid, euid=ev.euid,
                     real_user=ev.real_user, user=ev.user, parent_name=ev.parent_name,
                     parent_path=ev.parent_path)


# ---- exec -------------------------------------------------------------------------------------

# What the exec procedure concludes: verdict, reason, matched rule, attributed group, incident,
# learning request, state effect. The Decision is built once from it.
_Outcome = tuple[Verdict, str, Rule | None, str, Incident | None, LearnRequest | None,
                 StateEffect | None]


def _decide_exec(view: PolicyView, st: ProcessState, env: Envelope, ev: ExecEvent) -> Result:
    exe = ev.path
    pid, start = ev.pid, ev.start_time
    if not exe or exe == "/":
        return _decision(view, env, _NONE, _IGNORED_R["no-exe"], pid=pid, start_time=start,
                         name=ev.name), None
    exe_bin = exe[exe.rfind("/") + 1:]
    if (view.is_host or ev.exe_on_host) and is_runtime_process(exe_bin, ev.argv):  # step 1
        return _decision(view, env, _NONE, _IGNORED_R["runtime"], pid=pid, start_time=start,
                         name=ev.name, path=exe), None
    pname = process_name(ev.name, exe_bin, ev.argv)  # step 2
    verdict, reason, rule, group, found, learn, effect = _judge_exec(view, st, env, ev, pname)
    capped, overflow = "", None
    if effect is not None and effect.overflow is not None:
        capped, overflow = _state_overflow(view, st, env, effect, _proc(ev, pname))
    if learn is not None:
        why = learn_refusal(view.learned, learn, view.settings)
        if why:
            # Learning is capped: the exec runs as Discover lets it, unlearned. Each workload's
            # first refusal says so and tells the group's writer to mark the group (a later
            # one, or one whose incident slot a state overflow took, sends nothing). Per
            # workload, not per group: the writer may have capped the group itself (learns of
            # one burst overtake the policy they fill), and then no decision was a group's first.
            first = LEARNING not in st.overflow and overflow is None
            verdict, reason, capped = _ALLOW, _LEARN_CAPPED, capped or why
            learn = replace(learn, capped=why) if first else None
            if first:
                overflow = _overflow_incident(
                    view, env, why, f"learning stopped ({_LEARN_CAPS[why]}); what the group "
                    "did not learn is a violation once it leaves Discover", _proc(ev, pname))
                effect = (StateEffect(overflow=(LEARNING, why)) if effect is None
                          else dataclasses.replace(effect, overflow=(LEARNING, why)))
    wl = view.workload
    learned = view.learned
    return Decision(
        event_id=env.event_id, event_kind=env.kind, workload_id=wl.id, node=wl.node,
        verdict=verdict, reason=reason, group=group or learned.name,
        rule_uuid=rule.uuid if rule is not None else "",
        rule_group=rule.group if rule is not None else "",
        mode=view.mode, baseline=view.baseline,
        would_block=verdict is _ALERT and found is not None and _would_block(view),
        suppressed=found is not None and learned.alert_disabled,
        pid=pid, start_time=start, name=pname, path=exe, user=ev.user, ts=env.ts,
        policy_version=learned.version, pre_exec=view.pre_exec, pre_write=view.pre_write,
        fail_mode=view.fail_mode, policy_stamp=view.stamp,
        incident=found, learn=learn, capped=capped, overflow=overflow,
    ), effect


_LEARN_CAPS = {
    "learned_rules": "the group holds its maximum of learned rules",
    "rule_users": "a learned rule holds its maximum of users",
    "hash_pins": "the group holds its maximum of hash pins",
    "rule_strings": "a process name, path or user is too long to learn",
    "policy_bytes": "the group's policy record is at its size limit",
}


# ---- the exec judgement: matching (what the rules and checks found), then one table ---------

class FindingKind(IntEnum):
    """What §7.1's steps 3 and 5 to 16 find for an exec, before the mode makes it a verdict.
    (An IntEnum: its members hash as ints, and the table below is read once per exec.)"""

    EXEMPT = 0  # step 3: a netcat health check of an image file
    RISKY = 1  # step 8: a risk, not admitted, not both allowed and explicitly allowed
    RISKY_NAMED = 2  # step 8: the same, unlisted although a rule names the risk
    DENIED = 3  # step 9: denied by m, not admitted
    NOT_IMAGE = 4  # step 10a: zero-drift, not an image file, no allow_update rule
    NOT_FAMILY_LEARNED = 5  # step 10b: zero-drift, not family, allowed by a learned rule
    NOT_FAMILY_UNLISTED = 6  # step 10b: zero-drift, not family, unlisted
    FAMILY_UNLISTED = 7  # step 10c: zero-drift, family, unlisted
    UNLISTED = 8  # step 11
    ADMITTED = 9  # step 12: admitted by a parent rule (or its process group)
    OTHER_USER = 10  # step 13: a learned rule's users do not hold the exec's user
    HASH_UNPINNED = 11  # step 14: no pin for the executable yet
    HASH_DIFFERS = 12  # step 14: the hash differs from the pin
    CUSTOM_ONLY = 13  # step 15: only a custom group's rule allows it, and it could be learned
    ALLOWED = 14  # step 16


class Finding(msgspec.Struct, frozen=True, gc=False):
    """What matching found (a Struct: built once per exec, five times faster than a
    NamedTuple)."""

    kind: FindingKind
    rule: Rule | None  # m, the first rule that matched (step 6)
    detail: str = ""  # RISKY, RISKY_NAMED: the risk; ADMITTED: the parent-rule reason
    effect: StateEffect | None = None  # what the exec leaves in the workload's state (5, 7)


_K = FindingKind
_V, _C = ViolationCode, ReasonCode
# (effective mode M', finding) -> (verdict, reason): §3's table, row by row. A ViolationCode is a
# violation (§7.4: alert, block in Protect, with that code's incident); a ReasonCode is not.
# M' is Monitor for a system container in Protect (D14), so such a container never blocks.
_TABLE_ROWS: dict[FindingKind, tuple[tuple[Verdict, ReasonCode | ViolationCode], ...]] = {
    #                       Discover                  Monitor              Protect
    _K.EXEMPT:              ((_ALLOW, _C.EXCEPTION),  (_ALLOW, _C.EXCEPTION),
                             (_ALLOW, _C.EXCEPTION)),
    _K.RISKY:               ((_ALERT, _C.SUSPICIOUS), (_ALERT, _V.RS),       (_BLOCK, _V.RS)),
    _K.RISKY_NAMED:         ((_ALERT, _V.R0),         (_ALERT, _V.RS),       (_BLOCK, _V.RS)),
    _K.DENIED:              ((_ALERT, _V.RD),         (_ALERT, _V.RD),       (_BLOCK, _V.RD)),
    _K.NOT_IMAGE:           ((_ALERT, _V.R5),         (_ALERT, _V.R5),       (_BLOCK, _V.R5)),
    _K.NOT_FAMILY_LEARNED:  ((_ALERT, _V.R6),         (_ALERT, _V.R6),       (_BLOCK, _V.R6)),
    _K.NOT_FAMILY_UNLISTED: ((_ALERT, _V.R6),         (_ALERT, _V.R0),       (_BLOCK, _V.R6)),
    _K.FAMILY_UNLISTED:     ((_LEARN, _C.LEARN),      (_ALERT, _V.R7),       (_BLOCK, _V.R7)),
    _K.UNLISTED:            ((_LEARN, _C.LEARN),      (_ALERT, _V.R0),       (_BLOCK, _V.R0)),
    _K.ADMITTED:            ((_ALLOW, _C.PARENT_RULE), (_ALLOW, _C.PARENT_RULE),
                             (_ALLOW, _C.PARENT_RULE)),
    _K.OTHER_USER:          ((_LEARN, _C.USER_LEARN), (_ALERT, _V.RU),       (_BLOCK, _V.RU)),
    # A first hash is pinned in every mode (§8.2).
    _K.HASH_UNPINNED:       ((_LEARN, _C.HASH_LEARN), (_LEARN, _C.HASH_LEARN),
                             (_LEARN, _C.HASH_LEARN)),
    _K.HASH_DIFFERS:        ((_ALERT, _V.RH),         (_ALERT, _V.RH),       (_BLOCK, _V.RH)),
    # Step 15 is Discover's: outside it the matching never finds CUSTOM_ONLY (allowed: §3).
    _K.CUSTOM_ONLY:         ((_LEARN, _C.LEARN),      (_ALLOW, _C.RULE),     (_ALLOW, _C.RULE)),
    _K.ALLOWED:             ((_ALLOW, _C.RULE),       (_ALLOW, _C.RULE),     (_ALLOW, _C.RULE)),
}
_EXEMPT = Finding(_K.EXEMPT, None)
_NO_RISK: tuple[str, tuple[int, str] | None, tuple[str, str] | None] = ("", None, None)
# Members bound once (see _ALLOW above): the exec path reads them per event.
_F_ADMITTED = FindingKind.ADMITTED
_F_ALLOWED = FindingKind.ALLOWED
_F_CUSTOM_ONLY = FindingKind.CUSTOM_ONLY
_F_DENIED = FindingKind.DENIED
_F_FAMILY_UNLISTED = FindingKind.FAMILY_UNLISTED
_F_HASH_DIFFERS = FindingKind.HASH_DIFFERS
_F_HASH_UNPINNED = FindingKind.HASH_UNPINNED
_F_NOT_FAMILY_LEARNED = FindingKind.NOT_FAMILY_LEARNED
_F_NOT_FAMILY_UNLISTED = FindingKind.NOT_FAMILY_UNLISTED
_F_NOT_IMAGE = FindingKind.NOT_IMAGE
_F_OTHER_USER = FindingKind.OTHER_USER
_F_RISKY = FindingKind.RISKY
_F_RISKY_NAMED = FindingKind.RISKY_NAMED
_F_UNLISTED = FindingKind.UNLISTED
_RC_EXCEPTION = ReasonCode.EXCEPTION
_RC_HASH_LEARN = ReasonCode.HASH_LEARN
_RC_LEARN = ReasonCode.LEARN
_RC_PARENT_RULE = ReasonCode.PARENT_RULE
_RC_RULE = ReasonCode.RULE
_RC_SUSPICIOUS = ReasonCode.SUSPICIOUS
_RC_USER_LEARN = ReasonCode.USER_LEARN
assert list(_TABLE_ROWS) == list(FindingKind)  # every finding has its row, in order
# The table read as _VERDICTS[mode][finding]: one lookup and an index per exec.
_VERDICTS = {mode: tuple(row[i] for row in _TABLE_ROWS.values())
             for i, mode in enumerate((_DISCOVER, _MONITOR, _PROTECT))}
# The violations whose incident names m (§7.4); the others name a reserved rule id.
_NAMES_THE_RULE = frozenset({_V.RD, _V.RS, _V.RU, _V.RH})


def _judge_exec(view: PolicyView, st: ProcessState, env: Envelope, ev: ExecEvent,
                pname: str) -> _Outcome:
    """§7.1 steps 3 to 16: what the exec is (matching), then what the mode makes of it."""
    image_file = ev.origin is _IMAGE and not st.is_drift(ev.path,
                                                         view.settings.max_drift_path_bytes)
    if not view.is_host and pname in NETCATS and image_file and is_nc_healthcheck(ev.argv):
        found = _EXEMPT  # step 3
    elif (view.probe_argvs and (ev.runtime_injected or ev.ppid in st.probe_shells)
            and ev.argv in view.probe_argvs):
        # Step 4 is no row of the table: a probe gets the executable checks only, attributed
        # to its probe rule, never a violation of rules, family or user (§7.3, D13).
        return _judge_probe(view, st, env, ev, pname, image_file)
    else:
        found = _match_exec(view, st, ev, pname, image_file)
    verdict, why = _VERDICTS[view.effective_mode][found.kind]
    if why is _RC_RULE:  # most execs: allowed by m (step 16), nothing more to build
        m = found.rule
        assert m is not None
        return verdict, _RULE, m, m.group, None, None, found.effect
    return _outcome(view, env, ev, pname, found, verdict, why)


def _match_exec(view: PolicyView, st: ProcessState, ev: ExecEvent, pname: str,
                image_file: bool) -> Finding:
    """Steps 5 to 16 as a finding. Matching reads the mode only where §7.1 makes it part of
    what is found: step 6 (Discover skips probe rules), step 7 (outside Discover an unlisted
    exec may be admitted) and step 15 (Discover's alone, and it comes before step 14's pin);
    everything else the mode decides is the table's."""
    rules = view.rules
    # Step 5 (the call only when a risk can be there: most execs carry none).
    risk, risky_pid, overflow = (
        _risk(view, st, ev, pname)
        if (pname in SUSPICIOUS or ev.ppid in st.risk or ev.parent_name in SUSPICIOUS
            or RISKY_PIDS in st.overflow) else _NO_RISK)
    discover = view.mode is _DISCOVER
    pos = rules.first_match(pname, ev.path, skip_probe=discover)  # step 6
    m = rules.rules[pos] if pos >= 0 else None
    denied = m is not None and m.action is not _RULE_ALLOW
    admitted, admit_pgid = "", None
    if denied or (m is None and not discover):  # step 7
        admitted, admit_pgid, overflow = _admission(view, st, ev, pname, overflow)
    effect = (StateEffect(risk=risky_pid, admit_pgid=admit_pgid, overflow=overflow)
              if risky_pid or admit_pgid or overflow else None)
    if risk and not admitted and not (m is not None and not denied
                                      and rules.explicitly_allows(risk)):  # step 8
        named = m is None and rules.explicitly_allows(risk)
        return Finding(_F_RISKY_NAMED if named else _F_RISKY, m, risk, effect)
    if denied and not admitted:  # step 9
        return Finding(_F_DENIED, m, "", effect)
    if view.zero_drift and not (image_file and ev.family and m is not None):  # step 10
        # (a family exec of an image file that a rule matched passes step 10 whatever it is)
        kind = _zero_drift_finding(ev, m, denied, image_file, admitted)
        if kind is not None:
            return Finding(kind, m, "", effect)
    if m is None and not admitted:  # step 11
        return Finding(_F_UNLISTED, None, "", effect)
    if admitted:  # step 12
        return Finding(_F_ADMITTED, m, admitted, effect)
    assert m is not None  # allowed from here on
    if m.cfg_type is _LEARNED and m.users and ev.user not in m.users:  # step 13
        return Finding(_F_OTHER_USER, m, "", effect)
    if view.effective_mode is _DISCOVER or (view.learned.hash_enabled and ev.hash):
        return Finding(_pin_or_learn(view, ev, pname, m, pos, risk, image_file), m, "", effect)
    return Finding(_F_ALLOWED, m, "", effect)  # step 16: 14 pins hashes, 15 is Discover's


def _risk(view: PolicyView, st: ProcessState, ev: ExecEvent,
          pname: str) -> tuple[str, tuple[int, str] | None, tuple[str, str] | None]:
    """Step 5: the exec's risk, the pid to remember it by, or the cap that could not."""
    is_host = view.is_host
    risk_entry = None if (is_host and pname == "sshd") else SUSPICIOUS.get(pname)
    risk = pname if risk_entry is not None else st.risk.get(ev.ppid, "")
    if not risk and ev.ppid not in st.risk and ev.parent_name in SUSPICIOUS \
            and not (is_host and ev.parent_name == "sshd"):
        risk = ev.parent_name
    # A container whose risky processes overflowed cannot tell whose parent was risky: all are.
    all_risky = not is_host and RISKY_PIDS in st.overflow
    if not risk and all_risky:
        risk = st.overflow[RISKY_PIDS]
    if not risk:
        return "", None, None
    if not all_risky and _room(st.risk, ev.pid, view.settings.max_tracked_pids):
        return risk, (ev.pid, risk), None
    return risk, None, (RISKY_PIDS, risk)


def _admission(view: PolicyView, st: ProcessState, ev: ExecEvent, pname: str,
               overflow: tuple[str, str] | None
               ) -> tuple[str, int | None, tuple[str, str] | None]:
    """Step 7: the reason a parent rule admits the exec (or ""), the process group to remember,
    and the overflow (a risk's, which comes first, or the admitted groups')."""
    parent_rule = view.rules.parent_admission(pname, ev.parent_name, ev.parent_path)
    if parent_rule is None:
        if ev.pgid and ev.pgid in st.admitted_pgids:
            return _PARENT_PGID, None, overflow
        return "", None, overflow
    admitted = render(ReasonCode.PARENT_RULE, parent_rule.name)
    if not ev.pgid:
        return admitted, None, overflow
    if _room(st.admitted_pgids, ev.pgid, view.settings.max_tracked_pids):
        return admitted, ev.pgid, overflow
    return admitted, None, overflow or (ADMITTED_PGIDS, "")


def _zero_drift_finding(ev: ExecEvent, m: Rule | None, denied: bool,
                        image_file: bool, admitted: str) -> FindingKind | None:
    """Step 10 (zero-drift containers), or None when it finds nothing."""
    allowed = m is not None and not denied
    if not image_file and not (allowed and is_user_update_rule(m)):
        return _F_NOT_IMAGE
    if not ev.family:
        if allowed and m is not None and m.cfg_type is _LEARNED:
            return _F_NOT_FAMILY_LEARNED
        if m is None and not admitted:
            return _F_NOT_FAMILY_UNLISTED
    elif m is None and not admitted:
        return _F_FAMILY_UNLISTED  # (outside Discover: in Discover step 11's learning, its row)
    return None


def _pin_or_learn(view: PolicyView, ev: ExecEvent, pname: str, m: Rule, pos: int, risk: str,
                  image_file: bool) -> FindingKind:
    """Steps 14 to 16, for an exec m allows, when the group pins hashes or is in Discover."""
    rules = view.rules
    # Step 15's condition (custom-allowed learning); step 14 needs it too.
    custom_learn = (view.effective_mode is _DISCOVER and pos < rules.learned_start and not risk
                    and rules.first_match(pname, ev.path, skip_probe=True,
                                          start=rules.learned_start) < 0
                    and (not view.zero_drift or (ev.family and image_file)))
    if view.learned.hash_enabled and ev.hash:  # step 14
        pin = view.learned.hash_pins.get(ev.path)
        if pin is None:  # learning the rule pins the hash too
            return _F_CUSTOM_ONLY if custom_learn else _F_HASH_UNPINNED
        if pin != ev.hash:
            return _F_HASH_DIFFERS
    return _F_CUSTOM_ONLY if custom_learn else _F_ALLOWED  # steps 15, 16


def _outcome(view: PolicyView, env: Envelope, ev: ExecEvent, pname: str, found: Finding,
             verdict: Verdict, why: ReasonCode | ViolationCode) -> _Outcome:
    """What the table's (verdict, reason) means for the decision: its incident, the rule and
    group it names, and what it asks the writer to learn."""
    m, effect = found.rule, found.effect
    if type(why) is ViolationCode:
        incident_rule = m if why in _NAMES_THE_RULE else None
        return _violation(view, env, ev, pname, why, m, incident_rule, effect,
                          block=verdict is _BLOCK)
    if why is _RC_RULE:
        assert m is not None
        return verdict, _RULE, m, m.group, None, None, effect
    if why is _RC_LEARN:
        return verdict, _LEARN_R, m, "", None, _learn_rule(view, env, ev, pname), effect
    if why is _RC_USER_LEARN:
        assert m is not None
        learn = LearnRequest(group=m.group, name=m.name, path=m.path, user=ev.user,
                             rule_uuid=m.uuid, cause_event_id=env.event_id, ts=env.ts,
                             add_rule=False)
        return verdict, _USER_LEARN, m, "", None, learn, effect
    if why is _RC_HASH_LEARN:
        return verdict, _HASH_LEARN, m, "", None, _hash_learn(view, env, ev, pname), effect
    if why is _RC_PARENT_RULE:
        return verdict, found.detail, None, "", None, None, effect
    if why is _RC_EXCEPTION:
        return verdict, _NC_HEALTHCHECK, None, "", None, None, None
    assert why is _RC_SUSPICIOUS
    entry = SUSPICIOUS[found.detail]
    suspicious = incident(
        view, env, kind="suspicious", level=Level.WARNING, action=IncidentAction.VIOLATE,
        group=view.learned.name, rule_id=reserved_rule_id(1),
        message=f"Risky application: {entry.reported}", proc=_proc(ev, pname),
        conn_ingress=entry.incoming)
    return verdict, render(_RC_SUSPICIOUS, found.detail), m, "", suspicious, None, effect


def _violation(view: PolicyView, env: Envelope, ev: ExecEvent, pname: str, code: ViolationCode,
               m: Rule | None, rule: Rule | None, effect: StateEffect | None, *,
               block: bool) -> _Outcome:
    found, verdict, group = _process_violation(view, env, ev, pname, code, rule, block=block)
    return verdict, _VIOLATION[code], m, group, found, None, effect


def _hash_learn(view: PolicyView, env: Envelope, ev: ExecEvent, pname: str) -> LearnRequest:
    return LearnRequest(group=view.learned.name, name=pname, path=ev.path, hash=ev.hash,
                        cause_event_id=env.event_id, ts=env.ts, add_rule=False)


def _judge_probe(view: PolicyView, st: ProcessState, env: Envelope, ev: ExecEvent,
                 pname: str, image_file: bool) -> _Outcome:
    """Step 4: a probe exec gets the executable checks only (drift, hash pin)."""
    rules = view.rules
    exe = ev.path
    effect = None
    if pname in SHELLS:
        effect = (StateEffect(probe_shell=ev.pid)
                  if _room(st.probe_shells, ev.pid, view.settings.max_tracked_pids)
                  else StateEffect(overflow=(PROBE_SHELLS, "")))
    pos = rules.first_match(pname, exe)
    m = rules.rules[pos] if pos >= 0 else None
    probe_rule = _first_probe_rule(view, pname, exe)
    block = view.effective_mode is _PROTECT
    if view.zero_drift and not image_file and not is_user_update_rule(m):
        return _violation(view, env, ev, pname, _R5, m, None, effect, block=block)
    if view.learned.hash_enabled and ev.hash:
        pin = view.learned.hash_pins.get(exe)
        if pin is None:
            learn = _hash_learn(view, env, ev, pname)
            return _LEARN, _HASH_LEARN, probe_rule, "", None, learn, effect
        if pin != ev.hash:
            return _violation(view, env, ev, pname, _RH, probe_rule, probe_rule, effect,
                              block=block)
    return _ALLOW, _PROBE, probe_rule, "", None, None, effect


def _first_probe_rule(view: PolicyView, pname: str, exe: str) -> Rule | None:
    rules = view.rules
    start = rules.learned_start
    for pos in sorted(rules.probe_positions):
        if pos >= start:
            rule = rules.rules[pos]
            if match_rule(rule.name, rule.path, pname, exe):
                return rule
    return None


def _learn_rule(view: PolicyView, env: Envelope, ev: ExecEvent, pname: str) -> LearnRequest:
    return LearnRequest(group=view.learned.name, name=pname, path=ev.path, user=ev.user,
                        hash=ev.hash if view.learned.hash_enabled else "",
                        cause_event_id=env.event_id, ts=env.ts)


def _process_violation(view: PolicyView, env: Envelope, ev: ExecEvent, pname: str,
                       code: ViolationCode, rule: Rule | None, *,
                       block: bool) -> tuple[Incident, Verdict, str]:
    """The incident, verdict and attributed group of a profile violation (§7.4); `block`: in
    Protect (M')."""
    learned = view.learned.name
    family_code = _R7 if ev.family else _R6
    if code in (_RD, _RS) and block and view.zero_drift:
        rule_id = reserved_rule_id(7 if ev.family else 6)
        suffix, group = _SUFFIX[family_code], learned
    elif code in (_RD, _RU, _RH) or (code is _RS and rule is not None):
        assert rule is not None
        rule_id, suffix, group = rule.uuid, _SUFFIX.get(code, ""), rule.group
    elif code in (_R0, _RS):
        rule_id, suffix, group = reserved_rule_id(0), "", learned
    else:  # R5, R6, R7: the reserved rule id of the same number
        rule_id, suffix, group = reserved_rule_id(int(code[1])), _SUFFIX[code], learned
    message = _BASE_MESSAGE + suffix + (": execution denied" if block else "")
    found = incident(view, env, kind="process", level=Level.WARNING,
                     action=IncidentAction.DENY if block else IncidentAction.VIOLATE,
                     group=group, rule_id=rule_id, message=message, proc=_proc(ev, pname))
    return found, (_BLOCK if block else _ALERT), group


# ---- before exec (§14) -----------------------------------------------------------------------

# The violation a denied held exec would be after exec (the deny rule's is RD).
_PRE_EXEC_CODES = {PreExecReason.NOT_IN_PROFILE: _R0, PreExecReason.NOT_FROM_IMAGE: _R5}


def _decide_exec_check(view: PolicyView, st: ProcessState, env: Envelope,
                       ev: ExecCheck) -> Decision:
    image_file = ev.origin is _IMAGE and not st.is_drift(ev.path,
                                                         view.settings.max_drift_path_bytes)
    netcat_paths = frozenset((ev.path,)) if ev.netcat else frozenset()
    answer = pre_exec_decide(view, ev.path, runtime_injected=ev.runtime_injected,
                             image_file=image_file, exe_on_host=ev.exe_on_host,
                             netcat_paths=netcat_paths)
    pname = ev.path[ev.path.rfind("/") + 1:]  # the best name there is before exec
    reason = render(ReasonCode.PRE_EXEC, answer.reason)
    if answer.allow:
        # A runtime-injected caller is allowed whatever the file: would the container's own be?
        any_caller = not ev.runtime_injected or pre_exec_decide(
            view, ev.path, runtime_injected=False, image_file=image_file,
            exe_on_host=ev.exe_on_host, netcat_paths=netcat_paths).allow
        return _decision(view, env, _ALLOW, reason, pid=ev.pid, start_time=ev.start_time,
                         name=pname, path=ev.path, user=ev.user, any_caller=any_caller)
    # The same incident the post-exec decision would raise for this file and caller.
    facts = ExecEvent(workload_id=ev.workload_id, pid=ev.pid, path=ev.path, name=pname,
                      argv=(ev.path,), start_time=ev.start_time, euid=ev.euid, user=ev.user,
                      parent_name=ev.name, family=not ev.runtime_injected,
                      runtime_injected=ev.runtime_injected, origin=ev.origin)
    code, rule = _PRE_EXEC_CODES.get(answer.why, _RD), None
    if code is _RD:
        rule = next(r for r in view.rules.rules if r.uuid == answer.rule_uuid)
    elif code is _R0 and view.zero_drift:
        code = _R7  # pre-exec denies only non-injected callers: the exec is a family one
    found, verdict, group = _process_violation(view, env, facts, pname, code, rule,
                                               block=view.effective_mode is _PROTECT)
    return _decision(view, env, verdict, reason, group=group, rule=rule, pid=ev.pid,
                     start_time=ev.start_time, name=pname, path=ev.path, user=ev.user,
                     found=found)


# ---- file drift (§6) --------------------------------------------------------------------------

_DRIFT_MESSAGES = {
    FileOp.CREATE: "File drift, new executable file",
    FileOp.MODIFY: "File drift, image file modified",
    FileOp.ATTRIB: "File drift, file made executable",
}


def _decide_file(view: PolicyView, st: ProcessState, env: Envelope, ev: FileEvent) -> Result:
    if not view.zero_drift or not ev.in_container_fs:
        return _decision(view, env, _NONE, _NONE_R["not-judged"], pid=ev.pid,
                         name=ev.proc_name, path=ev.path), None
    limits = view.settings
    if not ev.is_drift:
        effect = (StateEffect(clean_path=drift_key(ev.path, limits.max_drift_path_bytes))
                  if ev.op is FileOp.DELETE and st.drift else None)
        return _decision(view, env, _ALLOW, _NO_DRIFT, pid=ev.pid, name=ev.proc_name,
                         path=ev.path), effect
    decision = _detected(view, env, "file", Level.WARNING, 5, _DRIFT_MESSAGES[ev.op],
                         ProcFacts(name=ev.proc_name, path=ev.proc_path),
                         _DRIFT_R[ev.op], pid=ev.pid, name=ev.proc_name, path=ev.path,
                         denied_suffix=": access denied", file_path=ev.path)
    # A held write that is denied never happens; everything else leaves a drifted file.
    held_and_denied = decision.verdict is _BLOCK and ev.held and ev.op is FileOp.MODIFY
    if held_and_denied:
        return decision, None
    key = drift_key(ev.path, limits.max_drift_path_bytes)
    if DRIFT_PATHS not in st.overflow and _room(st.drift, key, limits.max_drift_paths):
        return decision, StateEffect(drift_path=key)
    return decision, StateEffect(overflow=(DRIFT_PATHS, ""))  # every file is drift now


def _detected(view: PolicyView, env: Envelope, kind: str, level: Level, rule_no: int,
              message: str, proc: ProcFacts, reason: str, *, pid: int, name: str, path: str,
              start_time: int = 0, user: str = "", denied_suffix: str = "",
              file_path: str = "") -> Decision:
    """A detector's finding: alert, or block in Protect (never for system containers)."""
    block = view.effective_mode is _PROTECT
    found = incident(
        view, env, kind=kind, level=level,
        action=IncidentAction.DENY if block else IncidentAction.VIOLATE,
        group=view.learned.name, rule_id=reserved_rule_id(rule_no),
        message=message + (denied_suffix if block else ""), proc=proc, file_path=file_path)
    return _decision(view, env, _BLOCK if block else _ALERT, reason, pid=pid,
                     start_time=start_time, name=name, path=path, user=user, found=found,
                     would_block=_would_block(view))


# ---- detectors (§9.2–§9.4) --------------------------------------------------------------------

def _decide_stdio(view: PolicyView, st: ProcessState, env: Envelope, ev: StdioEvent) -> Result:
    key = (ev.pid, ev.start_time)
    if ev.name == "sshd" or not is_tunnel(ev):
        return _decision(view, env, _NONE, _NONE_R["no-tunnel"], pid=ev.pid,
                         start_time=ev.start_time, name=ev.name, path=ev.path), None
    seen = st.tunnels.get(key)
    room = seen is not None or len(st.tunnels) < view.settings.max_tracked_pids
    if seen is None and room:  # first sighting: mark only
        return _decision(view, env, _NONE, _NONE_R["tunnel-sighted"], pid=ev.pid,
                         start_time=ev.start_time, name=ev.name, path=ev.path), \
            StateEffect(tunnel_sighting=key)
    if seen:
        return _decision(view, env, _NONE, _NONE_R["tunnel-reported"], pid=ev.pid,
                         start_time=ev.start_time, name=ev.name, path=ev.path), None
    proc = ProcFacts(name=ev.name, path=ev.path, argv=ev.argv, ruid=ev.ruid, euid=ev.euid,
                     user=ev.user, parent_name=ev.parent_name, parent_path=ev.parent_path)
    # A sighting there is no room to remember is confirmed at once (fail closed).
    effect = (StateEffect(tunnel_reported=key) if room
              else StateEffect(overflow=(TUNNEL_SIGHTINGS, "")))
    return _detected(view, env, "tunnel", Level.CRITICAL, 2, "Tunnel detected: reverse shell",
                     proc, _REVERSE_SHELL, pid=ev.pid, start_time=ev.start_time, name=ev.name,
                     path=ev.path, user=ev.user), effect


def _decide_uid_change(view: PolicyView, env: Envelope, ev: UidChangeEvent) -> Result:
    if not is_escalation(ev):
        return _decision(view, env, _NONE, _NONE_R["no-escalation"], pid=ev.pid,
                         start_time=ev.start_time, name=ev.name, path=ev.path), None
    # proc_* describe the user's process (the parent), proc_parent_* the grandparent.
    proc = ProcFacts(name=ev.parent_name, path=ev.parent_path, argv=ev.argv,
                     ruid=ev.parent_ruid, euid=ev.parent_euid, real_user=ev.parent_user,
                     user=ev.parent_user, parent_name=ev.grandparent_name,
                     parent_path=ev.grandparent_path)
    return _detected(view, env, "escalation", Level.CRITICAL, 3,
                     "Unauthorized root privilege escalation!", proc, _ESCALATION, pid=ev.pid,
                     start_time=ev.start_time, name=ev.name, path=ev.path), None


def _decide_docker_cp(view: PolicyView, env: Envelope, ev: DockerCpEvent) -> Result:
    wl = view.workload
    target = None if view.is_host else docker_cp_target(ev, wl.name, wl.id)
    if target is None:
        return _decision(view, env, _NONE, _NONE_R["not-this-container"]), None
    direction, inside = target
    message = ("docker copy to container" if direction is CopyDirection.TO_CONTAINER
               else "docker copy from container")
    found = incident(
        view, env, kind="suspicious", level=Level.WARNING, action=IncidentAction.VIOLATE,
        group=view.learned.name, rule_id=reserved_rule_id(4), message=message,
        proc=ProcFacts(name="docker cp", path=inside, argv=ev.client_argv))
    return _decision(view, env, _ALERT, _DOCKER_CP, name="docker cp", path=inside,
                     found=found), None


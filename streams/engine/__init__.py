"""The pure decision engine: matching, precedence, modes and baselines, detectors, learning.

No Faust, no Kafka, no I/O, no clock reads, no logging, no mutation of inputs. Everything that
decides a verdict in procwarden calls into this package.
"""

from streams.engine.compiled import CompiledRules, compile_rules
from streams.engine.crd import apply_crd, apply_crd_documents, parse_crd_documents
from streams.engine.decide import DECIDED_KINDS, decide
from streams.engine.matching import can_match_path, match_rule, process_name
from streams.engine.membership import (
    criteria_match,
    custom_groups_of,
    learned_group_name,
    service_name,
)
from streams.engine.ordering import category, effective_rules, order_group_rules
from streams.engine.policies import (
    EditResult,
    apply_group_config,
    apply_group_delete,
    apply_learn,
    apply_profile_patch,
    apply_service_config,
    ensure_workload_groups,
    merge,
    nodes_group,
)
from streams.engine.pre_exec import PreExecAnswer, pre_exec_decide
from streams.engine.probes import probe_commands, probe_rules
from streams.engine.state import ProcessState, StateEffect
from streams.engine.validation import (
    PolicyError,
    parse_baseline,
    parse_mode,
    trim_space,
    validate_rule,
)
from streams.engine.view import (
    EngineSettings,
    MissingGroup,
    PolicyView,
    build_view,
    hold_settings,
)

__all__ = [
    "DECIDED_KINDS", "CompiledRules", "EditResult", "EngineSettings", "MissingGroup",
    "PolicyError", "PolicyView", "PreExecAnswer", "ProcessState", "StateEffect", "apply_crd",
    "apply_crd_documents",
    "apply_group_config", "apply_group_delete", "apply_learn", "apply_profile_patch",
    "apply_service_config", "build_view", "can_match_path", "category", "compile_rules",
    "criteria_match", "custom_groups_of", "decide", "effective_rules", "ensure_workload_groups",
    "hold_settings",
    "learned_group_name", "match_rule", "merge", "nodes_group", "order_group_rules",
    "parse_baseline", "parse_crd_documents", "parse_mode", "pre_exec_decide",
    "probe_commands", "probe_rules", "process_name", "service_name", "trim_space",
    "validate_rule",
]

"""Which principal may do what on Kafka: the ACL set of a procwarden deployment, as a pure
function of its topic names (with their prefix), its consumer groups and its nodes; and the admin
calls that apply it and add a node.

- `node-<name>` (a collector): WRITE exec, file, workloads, collector-reports; READ verdicts and
  its group `procwarden-collector-<name>` (it reads its partition by assign, commits in the group).
- `streams`: READ exec, file, workloads, policy, policy-updates, process-state; WRITE verdicts,
  policy, policy-updates, profile-changes, process-state, security-events, dlq; READ the groups
  prefixed by its app id.
- `sink-clickhouse`: READ verdicts, security-events, profile-changes, workloads, collector-reports
  and its group; WRITE dlq.
- `siem`: READ security-events and its group; WRITE dlq.
- `admin`: super user (`super.users`), holds no ACL.

Only the stream app writes verdicts, policy, policy-updates (the API writes through it),
profile-changes, process-state and security-events; no collector writes the DLQ. READ and WRITE
imply DESCRIBE; an idempotent producer needs nothing more than WRITE on a topic (Kafka >= 3.0).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from procwarden.stack.credentials import SIEM, SINK_CLICKHOUSE, STREAMS, node_principal
from procwarden.stack.kafka import quiet_logger
from procwarden.stack.processes import StackError
from schemas.connections import KafkaConnection
from schemas.topics import (
    COLLECTOR_REPORTS,
    DLQ,
    EXEC,
    FILE,
    POLICY,
    POLICY_UPDATES,
    PROCESS_STATE,
    PROFILE_CHANGES,
    SECURITY_EVENTS,
    VERDICTS,
    WORKLOADS,
    TopicSpec,
)

__all__ = ["ROLE_TOPICS", "AclPlan", "acl_set", "add_node", "apply_acls", "describe_binding",
           "ensure_users", "existing_acls", "remove_node", "retire_users"]

COLLECTOR_WRITES = (EXEC, FILE, WORKLOADS, COLLECTOR_REPORTS)
COLLECTOR_READS = (VERDICTS,)
STREAMS_READS = (EXEC, FILE, WORKLOADS, POLICY, POLICY_UPDATES, PROCESS_STATE)
STREAMS_WRITES = (VERDICTS, POLICY, POLICY_UPDATES, PROFILE_CHANGES, PROCESS_STATE,
                  SECURITY_EVENTS, DLQ)
SINK_READS = (VERDICTS, SECURITY_EVENTS, PROFILE_CHANGES, WORKLOADS, COLLECTOR_REPORTS)
SIEM_READS = (SECURITY_EVENTS,)
# What each role's identity must reach, by its principal (the roles' start-up access check).
ROLE_TOPICS: dict[str, tuple[TopicSpec, ...]] = {
    STREAMS: (*STREAMS_READS, *(t for t in STREAMS_WRITES if t not in STREAMS_READS)),
    SINK_CLICKHOUSE: (*SINK_READS, DLQ),
    SIEM: (*SIEM_READS, DLQ),
}
SCRAM_ITERATIONS = 8192


@dataclass(frozen=True)
class Groups:
    """The consumer groups of the roles (their settings' defaults)."""

    streams_app_id: str = "procwarden-streams"
    sink_clickhouse: str = "procwarden-sink-clickhouse"
    siem: str = "procwarden-siem"


def _allow(principal: str, rtype: ResourceType, name: str, op: AclOperation,
           pattern: ResourcePatternType = ResourcePatternType.LITERAL) -> AclBinding:
    return AclBinding(rtype, name, pattern, f"User:{principal}", "*", op,
                      AclPermissionType.ALLOW)


def collector_acls(node: str, prefix: str = "") -> list[AclBinding]:
    who = node_principal(node)
    return ([_allow(who, ResourceType.TOPIC, prefix + t.name, AclOperation.WRITE)
             for t in COLLECTOR_WRITES]
            + [_allow(who, ResourceType.TOPIC, prefix + t.name, AclOperation.READ)
               for t in COLLECTOR_READS]
            # It reads its verdict partition by assign, and commits its offsets in this group.
            + [_allow(who, ResourceType.GROUP, f"procwarden-collector-{node}",
                      AclOperation.READ)])


def _reads_writes(who: str, prefix: str, reads: Iterable[TopicSpec],
                  writes: Iterable[TopicSpec]) -> list[AclBinding]:
    return ([_allow(who, ResourceType.TOPIC, prefix + t.name, AclOperation.READ) for t in reads]
            + [_allow(who, ResourceType.TOPIC, prefix + t.name, AclOperation.WRITE)
               for t in writes])


def acl_set(prefix: str = "", nodes: Iterable[str] = (),
            groups: Groups = Groups()) -> list[AclBinding]:
    """Every ACL of a deployment whose topics carry `prefix`, for these collector nodes."""
    acls = _reads_writes(STREAMS, prefix, STREAMS_READS, STREAMS_WRITES)
    # Faust's group is the app id; the event decider's is "<app id>-events".
    acls.append(_allow(STREAMS, ResourceType.GROUP, groups.streams_app_id, AclOperation.READ,
                       ResourcePatternType.PREFIXED))
    acls += _reads_writes(SINK_CLICKHOUSE, prefix, SINK_READS, (DLQ,))
    acls.append(_allow(SINK_CLICKHOUSE, ResourceType.GROUP, groups.sink_clickhouse,
                       AclOperation.READ))
    acls += _reads_writes(SIEM, prefix, SIEM_READS, (DLQ,))
    acls.append(_allow(SIEM, ResourceType.GROUP, groups.siem, AclOperation.READ))
    for node in sorted(set(nodes)):
        acls += collector_acls(node, prefix)
    return acls


def _n(value: object) -> str:
    # AclBinding turns its str/int arguments into enums; the stubs still say str | int.
    return str(getattr(value, "name", value))


def describe_binding(b: AclBinding) -> str:
    pattern = "" if _n(b.resource_pattern_type) == "LITERAL" else \
        f" ({_n(b.resource_pattern_type).lower()})"
    return (f"{b.principal:28} {_n(b.permission_type)} {_n(b.operation):6} "
            f"{_n(b.restype).lower()} {b.name}{pattern}")


def _admin(conn: KafkaConnection) -> AdminClient:
    config: dict[str, Any] = {**conn.confluent_config(), "logger": quiet_logger()}
    return AdminClient(config)


def existing_acls(conn: KafkaConnection, timeout: float = 15.0) -> list[AclBinding]:
    anything: Any = None  # a filter's None matches any name, principal or host
    everything = AclBindingFilter(ResourceType.ANY, anything, ResourcePatternType.ANY, anything,
                                  anything, AclOperation.ANY, AclPermissionType.ANY)
    admin = _admin(conn)  # held until the answer: a collected client cancels its requests
    try:
        return list(admin.describe_acls(everything).result(timeout))
    except KafkaException as exc:
        raise StackError(f"listing ACLs on {conn.describe()} failed: {exc}") from None


@dataclass(frozen=True)
class AclPlan:
    created: tuple[AclBinding, ...]
    present: tuple[AclBinding, ...]
    extra: tuple[AclBinding, ...]  # on the cluster, not in the set: left alone, reported


def _key(b: AclBinding) -> tuple[str, ...]:
    return (_n(b.restype), b.name, _n(b.resource_pattern_type), b.principal, b.host,
            _n(b.operation), _n(b.permission_type))


def apply_acls(conn: KafkaConnection, acls: Iterable[AclBinding],
               timeout: float = 15.0) -> AclPlan:
    """Create the bindings the cluster lacks (with a super user's connection). Removes none."""
    wanted = {_key(b): b for b in acls}
    have = {_key(b): b for b in existing_acls(conn, timeout)}
    missing = [b for k, b in wanted.items() if k not in have]
    if missing:
        admin = _admin(conn)
        for binding, future in admin.create_acls(missing).items():
            try:
                future.result(timeout)
            except KafkaException as exc:
                raise StackError(f"creating ACL {describe_binding(binding)} failed: "
                                 f"{exc}") from None
    return AclPlan(tuple(missing), tuple(b for k, b in wanted.items() if k in have),
                   tuple(b for k, b in have.items() if k not in wanted))


def ensure_users(conn: KafkaConnection, passwords: dict[str, str],
                 timeout: float = 15.0) -> list[str]:
    """Give each user its SCRAM-SHA-512 password, unless it has one already; the users made."""
    admin = _admin(conn)
    have: set[str] = set()
    described = admin.describe_user_scram_credentials(list(passwords))
    assert isinstance(described, dict)  # given users, it answers one future per user
    for user, future in described.items():
        try:
            future.result(timeout)
            have.add(user)
        except KafkaException as exc:
            if "RESOURCE_NOT_FOUND" not in str(exc):
                raise StackError(f"reading SCRAM users on {conn.describe()}: {exc}") from None
    return _upsert(admin, {u: p for u, p in passwords.items() if u not in have}, timeout)


def _upsert(admin: AdminClient, passwords: dict[str, str], timeout: float) -> list[str]:
    if not passwords:
        return []
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    changes: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, password.encode())
        for user, password in passwords.items()]
    for user, future in admin.alter_user_scram_credentials(changes).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            raise StackError(f"setting the SCRAM password of {user} failed: {exc}") from None
    time.sleep(0.2)  # the broker applies the record a moment after answering (~0.1 s measured)
    return sorted(passwords)


def add_node(conn: KafkaConnection, node: str, password: str, prefix: str = "",
             timeout: float = 15.0) -> AclPlan:
    """A collector node's SCRAM user and its ACLs (idempotent). The password is always set:
    a node removed before (its user locked out, not deleted) gets back in with this one."""
    _upsert(_admin(conn), {node_principal(node): password}, timeout)
    return apply_acls(conn, collector_acls(node, prefix), timeout)


def retire_users(conn: KafkaConnection, users: Iterable[str], timeout: float = 15.0) -> None:
    """Lock users out for good: each gets a fresh random password nobody is told.

    Never a SCRAM deletion: on Kafka 4.4.0 (KRaft), once any SCRAM user has been deleted the
    broker loses every SCRAM credential at its next restart (measured: admin and all roles then
    fail with "invalid credentials", so nothing can log in again short of reformatting).
    Replacing the password refuses the user just as surely and survives a restart."""
    _upsert(_admin(conn), {u: secrets.token_urlsafe(48) for u in users}, timeout)


def remove_node(conn: KafkaConnection, node: str, timeout: float = 15.0) -> int:
    """Revoke a collector node: delete every ACL naming its principal and retire its user.
    The number of ACLs deleted."""
    anything: Any = None
    principal = node_principal(node)
    admin = _admin(conn)
    deleted = 0
    for future in admin.delete_acls([AclBindingFilter(
            ResourceType.ANY, anything, ResourcePatternType.ANY, f"User:{principal}", anything,
            AclOperation.ANY, AclPermissionType.ANY)]).values():
        try:
            deleted += len(future.result(timeout))
        except KafkaException as exc:
            raise StackError(f"deleting the ACLs of {principal} failed: {exc}") from None
    retire_users(conn, [principal], timeout)
    return deleted

"""The ACL set of a deployment: who may read and write which topic, from the topic definitions."""

from __future__ import annotations

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from procwarden.stack.acls import Groups, acl_set, collector_acls, describe_binding
from schemas.topics import ALL_TOPICS

PREFIX = "t1."


def grants(acls: list[AclBinding], principal: str, op: AclOperation) -> set[str]:
    return {b.name for b in acls if b.principal == f"User:{principal}"
            and b.restype == ResourceType.TOPIC and b.operation == op}


def writers(acls: list[AclBinding], topic: str) -> set[str]:
    return {b.principal for b in acls if b.restype == ResourceType.TOPIC and b.name == topic
            and b.operation in (AclOperation.WRITE, AclOperation.ALL)}


ACLS = acl_set(PREFIX, ["node-a", "web-1.example"])


def test_a_collector_writes_only_its_events_announcements_and_reports() -> None:
    for node in ("node-a", "web-1.example"):
        who = f"node-{node}"
        assert grants(ACLS, who, AclOperation.WRITE) == {
            f"{PREFIX}procwarden.{t}" for t in ("exec", "file", "workloads", "collector-reports")}
        assert grants(ACLS, who, AclOperation.READ) == {f"{PREFIX}procwarden.verdicts"}
        groups = {(b.name, b.resource_pattern_type) for b in ACLS
                  if b.principal == f"User:{who}" and b.restype == ResourceType.GROUP}
        assert groups == {(f"procwarden-collector-{node}", ResourcePatternType.LITERAL)}


def test_only_the_stream_app_writes_what_collectors_obey() -> None:
    for name in ("verdicts", "policy", "policy-updates", "profile-changes", "process-state",
                 "security-events"):
        assert writers(ACLS, f"{PREFIX}procwarden.{name}") == {"User:streams"}, name


def test_no_collector_writes_the_dlq_and_the_sinks_do() -> None:
    assert writers(ACLS, f"{PREFIX}procwarden.dlq") == {
        "User:streams", "User:sink-clickhouse", "User:siem"}


def test_every_grant_is_literal_allow_on_a_prefixed_topic_of_ours() -> None:
    names = {f"{PREFIX}{t.name}" for t in ALL_TOPICS}
    for b in ACLS:
        assert b.permission_type == AclPermissionType.ALLOW
        assert b.host == "*"
        assert b.operation in (AclOperation.READ, AclOperation.WRITE)  # never ALL or ALTER
        if b.restype == ResourceType.TOPIC:
            assert b.name in names
            assert b.resource_pattern_type == ResourcePatternType.LITERAL
    assert not any(b.principal == "User:admin" for b in ACLS)  # a super user, by the broker


def test_groups_come_from_the_roles_settings() -> None:
    acls = acl_set("", [], Groups(streams_app_id="app-x", sink_clickhouse="sx", siem="gx"))
    groups = {(b.principal, b.name, b.resource_pattern_type) for b in acls
              if b.restype == ResourceType.GROUP}
    assert groups == {("User:streams", "app-x", ResourcePatternType.PREFIXED),  # + "-events"
                      ("User:sink-clickhouse", "sx", ResourcePatternType.LITERAL),
                      ("User:siem", "gx", ResourcePatternType.LITERAL)}
    assert grants(acls, "sink-clickhouse", AclOperation.READ) == {
        f"procwarden.{t}" for t in ("verdicts", "security-events", "profile-changes",
                                    "workloads", "collector-reports")}
    assert grants(acls, "siem", AclOperation.READ) == {"procwarden.security-events"}


def test_a_node_name_cannot_become_a_role_or_a_pattern() -> None:
    import pytest

    from procwarden.stack.processes import StackError

    assert {b.principal for b in collector_acls("admin")} == {"User:node-admin"}
    for bad in ("", "a,b", "a b", "*", "-x", "x" * 201, "a;User:admin"):
        with pytest.raises(StackError):
            collector_acls(bad)


def test_the_printed_form_names_principal_operation_and_resource() -> None:
    line = describe_binding(collector_acls("node-a")[0])
    assert "User:node-node-a" in line and "WRITE" in line and "topic procwarden.exec" in line

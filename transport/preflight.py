"""Before a role starts consuming: can its Kafka identity see its topics and use its consumer
groups? Without this, a missing group ACL is silent: Faust (the stream worker) waits forever
for a coordinator it may not use, and a confluent consumer retries in a loop, while the role
looks alive. Each problem is one line naming the topic or group, the principal and the ACL
that would fix it; the composition root prints them and exits.

Visibility is what a metadata request shows: Kafka leaves out the topics a principal may not
DESCRIBE (which READ and WRITE imply), and a missing topic looks the same. A group is
described (DESCRIBE on the group, which READ implies): a principal that may not use it gets
GROUP_AUTHORIZATION_FAILED at once, where a consumer would retry its coordinator lookup.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from schemas.connections import KafkaConnection

__all__ = ["access_problems"]

log = logging.getLogger(__name__)


def _quiet() -> logging.Logger:
    # librdkafka's own retries of a refused request are not the role's news: the problem
    # lines are.
    logger = logging.getLogger("procwarden.preflight.kafka")
    logger.setLevel(logging.CRITICAL)
    return logger


def access_problems(kafka: KafkaConnection, topics: Sequence[str], groups: Sequence[str],
                    timeout: float = 10.0) -> list[str]:
    """What `kafka`'s identity lacks for these topics (full names) and groups; [] if nothing
    is surely missing. A Kafka it cannot reach is not a problem here (the role retries, as it
    would at any other time): the check is skipped with a warning."""
    who = f"User:{kafka.sasl_username}" if kafka.sasl_username else "this client"
    config: dict[str, Any] = {**kafka.confluent_config(), "logger": _quiet()}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        log.warning("access check skipped: cannot reach Kafka at %s (%s)", kafka.describe(),
                    exc.args[0])
        return []
    problems: list[str] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            why = f" ({meta.error.str()})" if meta is not None and meta.error else ""
            problems.append(f"topic {topic}: not visible to {who}{why}; it is missing (run "
                            "`procwarden stack up`) or the principal has no READ/WRITE ACL on "
                            "it (`procwarden kafka acls`)")
    if not groups:
        return problems
    for group, future in admin.describe_consumer_groups(list(groups),
                                                        request_timeout=timeout).items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                problems.append(f"group {group}: {who} may not use it "
                                f"(GROUP_AUTHORIZATION_FAILED); it needs READ on Group:{group} "
                                "(`procwarden kafka acls` prints the set)")
            else:
                log.warning("access check of group %s inconclusive: %s", group, err)
    return problems

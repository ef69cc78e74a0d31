"""Each sink role builds its parts from its own settings (sinks/siem/compose.py,
sinks/clickhouse/compose.py): what `procwarden siem` and `sink-clickhouse` run."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas import Level
from schemas.connections import ClickHouseConnection, KafkaConnection
from sinks.clickhouse import compose as sink_compose
from sinks.settings import SiemSettings, SinkSettings
from sinks.siem import compose as siem_compose
from sinks.siem.transports import WebhookTransport
from transport.health import Health

KAFKA = KafkaConnection(bootstrap_servers="127.0.0.1:1")  # never reached


def test_no_destination_is_a_setting_error() -> None:
    with pytest.raises(ValueError, match="set SIEM_SYSLOG_URL and/or SIEM_WEBHOOK_URL"):
        siem_compose.destinations(SiemSettings())


def test_the_destinations_follow_the_settings() -> None:
    settings = SiemSettings(syslog_url="udp://127.0.0.1:5514", syslog_format="cef",
                            hostname="edge", webhook_url="http://127.0.0.1:9/hook",
                            webhook_token="tok-123", webhook_max_bytes=8192)
    syslog, webhook = siem_compose.destinations(settings)
    syslog.transport.close()
    assert (syslog.name, syslog.format, syslog.syslog, syslog.hostname, syslog.max_bytes) == \
        ("syslog", "cef", True, "edge", 8192)  # udp: a datagram's worth by default
    assert (webhook.name, webhook.format, webhook.syslog, webhook.max_bytes) == \
        ("webhook", "json", False, 8192)
    assert isinstance(webhook.transport, WebhookTransport)
    assert webhook.transport.token == "tok-123"  # plain only where the header is made
    assert "tok-123" not in repr(settings)
    tcp, = siem_compose.destinations(SiemSettings(syslog_url="tcp://127.0.0.1:5514",
                                                  syslog_max_bytes=4096))
    assert tcp.max_bytes == 4096
    tcp.transport.close()


def test_a_bad_syslog_address_names_itself() -> None:
    with pytest.raises(ValueError, match="needs a host and a port"):
        siem_compose.destinations(SiemSettings(syslog_url="tcp://nowhere"))


def test_the_forwarder_follows_the_settings() -> None:
    settings = SiemSettings(webhook_url="http://127.0.0.1:9/", min_level="CRITICAL",
                            groups=" web, ,db ", aggregate_seconds=5, group_id="siem-b")
    health = Health("siem")
    forwarder = siem_compose.forwarder(settings, KAFKA, siem_compose.destinations(settings),
                                       health)
    try:
        assert forwarder.min_level is Level.CRITICAL
        assert forwarder.groups == frozenset({"web", "db"})
        assert (forwarder.aggregate_seconds, forwarder.group_id) == (5, "siem-b")
        assert forwarder.health is health and forwarder.kafka is KAFKA
    finally:
        forwarder.close()


def test_the_webhook_token_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEM_WEBHOOK_TOKEN", "tok-456")
    settings = SiemSettings()
    assert settings.webhook_token.get_secret_value() == "tok-456"
    assert "tok-456" not in repr(settings) and "tok-456" not in settings.model_dump_json()
    with pytest.raises(ValidationError):
        SiemSettings(min_level="LOUD")


def test_the_writer_follows_the_settings() -> None:
    settings = SinkSettings(group_id="sink-b", batch_size=7, batch_seconds=0.25,
                            max_backoff_seconds=3, retention_days=30)
    clickhouse = ClickHouseConnection(database="db")
    health = Health("sink-clickhouse")
    writer = sink_compose.writer(settings, KAFKA, clickhouse, health)
    try:
        assert (writer.group_id, writer.batch_size, writer.batch_seconds, writer.max_backoff,
                writer.retention_days) == ("sink-b", 7, 0.25, 3, 30)
        assert writer.clickhouse is clickhouse and writer.health is health
    finally:
        writer.close()

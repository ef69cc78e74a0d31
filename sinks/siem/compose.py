"""The SIEM forwarder's parts, built from its own settings (`SIEM_*`) and a Kafka connection.

`procwarden siem` reads the settings, calls `destinations` (where a bad setting shows) and,
once its Kafka access is checked, `forwarder`.
"""

from __future__ import annotations

from schemas import Level
from schemas.connections import KafkaConnection
from sinks.settings import SiemSettings
from sinks.siem.forwarder import Destination, SiemForwarder
from sinks.siem.transports import WebhookTransport, default_max_bytes, syslog_transport
from transport.health import Health

__all__ = ["destinations", "forwarder"]


def destinations(settings: SiemSettings) -> list[Destination]:
    """Where incidents go: a syslog receiver and/or a webhook. ValueError when neither is set
    or a setting is unusable (the message names it)."""
    out = []
    if settings.syslog_url:
        out.append(Destination(
            "syslog", syslog_transport(settings.syslog_url, ca_file=settings.ca_file,
                                       cert_file=settings.cert_file, key_file=settings.key_file),
            settings.syslog_format, hostname=settings.hostname,
            max_bytes=settings.syslog_max_bytes or default_max_bytes(settings.syslog_url)))
    if settings.webhook_url:
        out.append(Destination(
            "webhook", WebhookTransport(settings.webhook_url,
                                        token=settings.webhook_token.get_secret_value()),
            "json", syslog=False, max_bytes=settings.webhook_max_bytes))
    if not out:
        raise ValueError("set SIEM_SYSLOG_URL and/or SIEM_WEBHOOK_URL")
    return out


def forwarder(settings: SiemSettings, kafka: KafkaConnection, to: list[Destination],
              health: Health) -> SiemForwarder:
    return SiemForwarder(kafka, to, group_id=settings.group_id,
                         min_level=Level(settings.min_level), groups=settings.group_set,
                         aggregate_seconds=settings.aggregate_seconds, health=health)

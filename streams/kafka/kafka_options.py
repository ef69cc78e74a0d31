"""How the stream app's own aiokafka client (the policy mirror) reaches Kafka:
the same servers, TLS and SASL settings Faust is given."""

from __future__ import annotations

import ssl
from typing import Any

from schemas.connections import KafkaConnection

__all__ = ["aiokafka_options", "ssl_context"]


def ssl_context(kafka: KafkaConnection) -> ssl.SSLContext | None:
    if "SSL" not in kafka.security_protocol.upper():
        return None
    context = ssl.create_default_context(cafile=kafka.ssl_ca_location or None)
    if kafka.ssl_cert_location:
        context.load_cert_chain(kafka.ssl_cert_location, kafka.ssl_key_location or None)
    return context


def aiokafka_options(kafka: KafkaConnection) -> dict[str, Any]:
    return {"bootstrap_servers": kafka.bootstrap_servers,
            "security_protocol": kafka.security_protocol.upper(),
            "ssl_context": ssl_context(kafka),
            "sasl_mechanism": kafka.sasl_mechanism.upper() or "PLAIN",
            "sasl_plain_username": kafka.sasl_username or None,
            "sasl_plain_password": kafka.sasl_password or None}

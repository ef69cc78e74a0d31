"""Connection settings shared by every role (`PROCWARDEN_KAFKA_*`, `PROCWARDEN_CLICKHOUSE_*`)."""

from __future__ import annotations

import pytest

from schemas.connections import ClickHouseConnection, ConfigError, KafkaConnection


def test_defaults_are_the_local_stack() -> None:
    kafka = KafkaConnection.from_env({})
    assert kafka.confluent_config() == {"bootstrap.servers": "127.0.0.1:9092",
                                        "security.protocol": "PLAINTEXT"}
    ch = ClickHouseConnection.from_env({})
    assert (ch.host, ch.port, ch.database, ch.secure) == ("127.0.0.1", 9000, "procwarden", False)


def test_external_cluster_with_sasl_ssl() -> None:
    env = {"PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS": "k1:9093,k2:9093",
           "PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "PROCWARDEN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "PROCWARDEN_KAFKA_SASL_USERNAME": "pw", "PROCWARDEN_KAFKA_SASL_PASSWORD": "s3cret",
           "PROCWARDEN_KAFKA_SSL_CA_LOCATION": "/etc/ca.pem",
           "PROCWARDEN_KAFKA_TOPIC_PREFIX": "prod."}
    kafka = KafkaConnection.from_env(env)
    assert kafka.confluent_config() == {
        "bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "pw", "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/ca.pem"}
    assert kafka.topic("procwarden.exec") == "prod.procwarden.exec"
    assert "s3cret" not in repr(kafka) and "s3cret" not in kafka.describe()
    ch = ClickHouseConnection.from_env({"PROCWARDEN_CLICKHOUSE_HOST": "ch.internal",
                                        "PROCWARDEN_CLICKHOUSE_PORT": "9440",
                                        "PROCWARDEN_CLICKHOUSE_PASSWORD": "pa55",
                                        "PROCWARDEN_CLICKHOUSE_SECURE": "true"})
    assert (ch.host, ch.port, ch.secure) == ("ch.internal", 9440, True)
    assert "pa55" not in repr(ch) and "pa55" not in ch.describe()


@pytest.mark.parametrize("env,variable", [
    ({"PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "TLS"}, "PROCWARDEN_KAFKA_SECURITY_PROTOCOL"),
    ({"PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "PROCWARDEN_KAFKA_SASL_MECHANISM"),
    ({"PROCWARDEN_KAFKA_SASL_MECHANISM": "GSSAPI"}, "PROCWARDEN_KAFKA_SASL_MECHANISM"),
    ({"PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS": ""}, "PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS"),
])
def test_bad_kafka_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        KafkaConnection.from_env(env)


@pytest.mark.parametrize("env,variable", [
    ({"PROCWARDEN_CLICKHOUSE_PORT": "nine"}, "PROCWARDEN_CLICKHOUSE_PORT"),
    ({"PROCWARDEN_CLICKHOUSE_PORT": "70000"}, "PROCWARDEN_CLICKHOUSE_PORT"),
    ({"PROCWARDEN_CLICKHOUSE_SECURE": "maybe"}, "PROCWARDEN_CLICKHOUSE_SECURE"),
    ({"PROCWARDEN_CLICKHOUSE_DATABASE": "x; DROP"}, "PROCWARDEN_CLICKHOUSE_DATABASE"),
])
def test_bad_clickhouse_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        ClickHouseConnection.from_env(env)


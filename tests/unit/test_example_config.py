"""examples/config/procwarden.env: every name in it is a real setting, and every value
validates through the settings classes the roles read it with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collectors.settings import CollectorSettings
from procwarden.docs_config import rows
from schemas import codec
from schemas.connections import ClickHouseSettings, KafkaConnection, KafkaSettings
from sinks.settings import SiemSettings, SinkSettings
from sinks.siem import compose
from streams.settings import StreamSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config" / "procwarden.env"
_PREFIXES = ("PROCWARDEN_", "COLLECTOR_", "STREAMS_", "SINKS_", "SIEM_")


def parse(text: str) -> dict[str, str]:
    """`NAME=value` lines; blank lines and `#` comments skipped; a name set twice fails."""
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and name and name == name.strip(), f"line {number}: not NAME=value: {line}"
        assert name not in env, f"line {number}: {name} set twice"
        env[name] = value
    return env


def unknown(names: set[str]) -> set[str]:
    """The names no settings class reads (docs/configuration.md is made from the classes)."""
    return names - {row.variable for row in rows()}


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The example, as the process environment (alone: the test run's own variables go)."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            monkeypatch.delenv(name)
    env = parse(EXAMPLE.read_text())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_every_name_is_a_setting(example: dict[str, str]) -> None:
    assert unknown(set(example)) == set()


def test_a_misspelt_name_is_caught() -> None:
    env = parse("# a comment\n\nSIEM_WEBHOK_URL=http://x/\nSIEM_WEBHOOK_URL=http://x/\n")
    assert unknown(set(env)) == {"SIEM_WEBHOK_URL"}
    with pytest.raises(AssertionError, match="set twice"):
        parse("SIEM_GROUPS=a\nSIEM_GROUPS=b\n")


def test_no_secret_is_written_in_it(example: dict[str, str]) -> None:
    secrets = {row.variable for row in rows() if row.secret}
    assert secrets & set(example) == set()
    assert "PROCWARDEN_KAFKA_SASL_PASSWORD" in secrets  # the check sees the connections' too


def test_every_value_validates(example: dict[str, str], tmp_path: Path) -> None:
    collector, streams = CollectorSettings(), StreamSettings()
    sink, siem = SinkSettings(), SiemSettings()
    kafka, clickhouse = KafkaSettings.read(), ClickHouseSettings.read()
    codec.limits_from_env()
    # What was set is what the roles get (not a default that happens to validate).
    assert collector.node == example["COLLECTOR_NODE"]
    assert streams.web_port == int(example["STREAMS_WEB_PORT"])
    assert sink.retention_days == int(example["SINKS_RETENTION_DAYS"])
    assert siem.syslog_format == example["SIEM_SYSLOG_FORMAT"]
    assert kafka.topic_prefix == example["PROCWARDEN_KAFKA_TOPIC_PREFIX"]
    assert clickhouse.connection().secure is True
    streams.engine()
    # The connection, with the password file it names standing in a temporary folder.
    password = tmp_path / "kafka.password"
    password.write_text("example\n")
    conn = KafkaConnection.from_env({**example,
                                     "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE": str(password)})
    assert conn.topic("procwarden.exec") == "prod.procwarden.exec"
    # The SIEM's destinations, against the system's CAs in place of the example's file.
    built = compose.destinations(siem.model_copy(update={"ca_file": ""}))
    assert [d.name for d in built] == ["syslog", "webhook"]

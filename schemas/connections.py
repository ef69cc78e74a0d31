"""Where Kafka and ClickHouse are, shared by every role, read from `PROCWARDEN_*` variables.

The local stack is the default (loopback, SASL_SSL with SCRAM-SHA-512; `procwarden up` gives each
role its own identity); set these to run the same roles against an existing cluster. Secrets never
appear in `repr` or in `describe()`.

| variable | default |
|---|---|
| `PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS` | `127.0.0.1:9092` |
| `PROCWARDEN_KAFKA_SECURITY_PROTOCOL` | `PLAINTEXT` (`SSL`, `SASL_PLAINTEXT`, `SASL_SSL`) |
| `PROCWARDEN_KAFKA_SASL_MECHANISM` | `` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`) |
| `PROCWARDEN_KAFKA_SASL_USERNAME` / `_SASL_PASSWORD` | `` |
| `PROCWARDEN_KAFKA_SASL_PASSWORD_FILE` | `` (read once; not with `_SASL_PASSWORD`) |
| `PROCWARDEN_KAFKA_SSL_CA_LOCATION` / `_SSL_CERT_LOCATION` / `_SSL_KEY_LOCATION` | `` |
| `PROCWARDEN_KAFKA_TOPIC_PREFIX` | `` (prepended to every topic name) |
| `PROCWARDEN_CLICKHOUSE_HOST` / `_PORT` | `127.0.0.1` / `9000` (native protocol) |
| `PROCWARDEN_CLICKHOUSE_USER` / `_PASSWORD` / `_DATABASE` | `default` / `` / `procwarden` |
| `PROCWARDEN_CLICKHOUSE_SECURE` | `false` (TLS) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["ClickHouseConnection", "ConfigError", "KafkaConnection"]

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# A password file is a secret, not a document: anything longer is the wrong file.
_MAX_PASSWORD_FILE_BYTES = 4096


class ConfigError(ValueError):
    """A setting with a bad value; the message names the variable."""


def _read(env: Mapping[str, str], prefix: str, cls: type) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in fields(cls):
        name = f"{prefix}{f.name.upper()}"
        raw = env.get(name)
        if raw is None:
            continue
        raw = raw.strip()
        if f.type in ("int", int):
            try:
                values[f.name] = int(raw)
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
        elif f.type in ("bool", bool):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ConfigError(f"{name}: expected true or false, got {raw!r}")
            values[f.name] = raw.lower() in ("1", "true", "yes")
        else:
            values[f.name] = raw
    return values


def _read_secret(path: str) -> str:
    name = "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    if len(raw) > _MAX_PASSWORD_FILE_BYTES:
        raise ConfigError(f"{name}: {path} is over {_MAX_PASSWORD_FILE_BYTES} bytes")
    try:
        secret = raw.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{name}: {path} is empty")
    return secret


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    sasl_password_file: str = ""
    ssl_ca_location: str = ""
    ssl_cert_location: str = ""
    ssl_key_location: str = ""
    topic_prefix: str = ""

    def __post_init__(self) -> None:
        # Read here, once: a copy (dataclasses.replace) carries the password read and does not
        # open the file again, so a password given beside the file is that copy's.
        if self.sasl_password_file and not self.sasl_password:
            object.__setattr__(self, "sasl_password", _read_secret(self.sasl_password_file))
        if not self.bootstrap_servers:
            raise ConfigError("PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS: must not be empty")
        if self.security_protocol.upper() not in _PROTOCOLS:
            raise ConfigError(f"PROCWARDEN_KAFKA_SECURITY_PROTOCOL: {self.security_protocol!r} "
                              f"is not one of {', '.join(_PROTOCOLS)}")
        if self.sasl_mechanism.upper() not in _MECHANISMS:
            raise ConfigError(f"PROCWARDEN_KAFKA_SASL_MECHANISM: {self.sasl_mechanism!r} is not "
                              f"one of {', '.join(m for m in _MECHANISMS if m)}")
        if "SASL" in self.security_protocol.upper() and not self.sasl_mechanism:
            raise ConfigError("PROCWARDEN_KAFKA_SASL_MECHANISM: needed with a SASL protocol")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaConnection:
        values = _read(os.environ if env is None else env, "PROCWARDEN_KAFKA_", cls)
        if values.get("sasl_password") and values.get("sasl_password_file"):
            raise ConfigError("PROCWARDEN_KAFKA_SASL_PASSWORD_FILE: set it or "
                              "PROCWARDEN_KAFKA_SASL_PASSWORD, not both")
        return cls(**values)

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def confluent_config(self) -> dict[str, str]:
        """Client settings for confluent-kafka (librdkafka names)."""
        config = {"bootstrap.servers": self.bootstrap_servers,
                  "security.protocol": self.security_protocol.upper()}
        if self.sasl_mechanism:
            config |= {"sasl.mechanism": self.sasl_mechanism.upper(),
                       "sasl.username": self.sasl_username,
                       "sasl.password": self.sasl_password}
        for key, value in (("ssl.ca.location", self.ssl_ca_location),
                           ("ssl.certificate.location", self.ssl_cert_location),
                           ("ssl.key.location", self.ssl_key_location)):
            if value:
                config[key] = value
        return config

    def describe(self) -> str:
        auth = f", sasl {self.sasl_mechanism} as {self.sasl_username}" if self.sasl_mechanism \
            else ""
        return f"kafka {self.bootstrap_servers} ({self.security_protocol}{auth})"


@dataclass(frozen=True, slots=True)
class ClickHouseConnection:
    host: str = "127.0.0.1"
    port: int = 9000
    user: str = "default"
    password: str = field(default="", repr=False)
    database: str = "procwarden"
    secure: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"PROCWARDEN_CLICKHOUSE_PORT: {self.port} is not a port")
        if not self.database.replace("_", "").isalnum():
            raise ConfigError(f"PROCWARDEN_CLICKHOUSE_DATABASE: {self.database!r} must be "
                              "letters, digits and _")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClickHouseConnection:
        return cls(**_read(os.environ if env is None else env, "PROCWARDEN_CLICKHOUSE_", cls))

    def describe(self) -> str:
        return f"clickhouse {self.user}@{self.host}:{self.port}/{self.database}" + \
            (" (TLS)" if self.secure else "")

"""Where Kafka and ClickHouse are, shared by every role, read from `PROCWARDEN_*` variables.

`KafkaSettings` (`PROCWARDEN_KAFKA_*`) and `ClickHouseSettings` (`PROCWARDEN_CLICKHOUSE_*`) are
pydantic-settings classes, like every role's own settings; docs/configuration.md lists their
variables. Each builds the frozen value the rest of the code passes around (`KafkaConnection`,
`ClickHouseConnection`), checked as it is made, so a copy (`dataclasses.replace`) is checked too.

The local stack is the default (loopback; `procwarden up` gives each role its own SASL_SSL
identity); set these to run the same roles against an existing cluster. A bad value is a
`ConfigError` of one line naming the variable. Secrets are `SecretStr` in the settings; the
values hold them in plain form only because the Kafka and ClickHouse clients take them so, and
keep them out of `repr` and `describe()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from schemas.env_settings import ConfigError, EnvSettings

__all__ = ["ClickHouseConnection", "ClickHouseSettings", "ConfigError", "KafkaConnection",
           "KafkaSettings"]

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# A password file is a secret, not a document: anything longer is the wrong file.
_MAX_PASSWORD_FILE_BYTES = 4096


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


class KafkaSettings(EnvSettings):
    """`PROCWARDEN_KAFKA_*`: the brokers and this role's identity on them."""

    model_config = SettingsConfigDict(env_prefix="PROCWARDEN_KAFKA_")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="host:port list of brokers")
    security_protocol: str = Field("PLAINTEXT",
                                   description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = Field("", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; needed "
                                                "with a SASL protocol")
    sasl_username: str = Field("", description="the role's or node's principal")
    sasl_password: SecretStr = Field(SecretStr(""), description="its password (or use the _FILE "
                                                                "variable, not both)")
    sasl_password_file: str = Field("", description="a file holding the password, read once at "
                                                    "start (at most 4096 bytes)")
    ssl_ca_location: str = Field("", description="PEM CA that signed the brokers' certificates")
    ssl_cert_location: str = Field("", description="PEM client certificate (mutual TLS)")
    ssl_key_location: str = Field("", description="PEM key of the client certificate")
    topic_prefix: str = Field("", description="prepended to every topic name")

    def connection(self) -> KafkaConnection:
        password = self.sasl_password.get_secret_value()
        if password and self.sasl_password_file:
            raise ConfigError("PROCWARDEN_KAFKA_SASL_PASSWORD_FILE: set it or "
                              "PROCWARDEN_KAFKA_SASL_PASSWORD, not both")
        values = self.model_dump(exclude={"sasl_password"})
        return KafkaConnection(**values, sasl_password=password)


class ClickHouseSettings(EnvSettings):
    """`PROCWARDEN_CLICKHOUSE_*`: the server the sink writes to and the API reads from."""

    model_config = SettingsConfigDict(env_prefix="PROCWARDEN_CLICKHOUSE_")

    host: str = Field("127.0.0.1", description="server host (native protocol)")
    port: int = Field(9000, description="native protocol port")
    user: str = Field("default", description="user name")
    password: SecretStr = Field(SecretStr(""), description="its password")
    database: str = Field("procwarden", description="database of the procwarden tables "
                                                    "(letters, digits and _)")
    secure: bool = Field(False, description="TLS to the server")

    def connection(self) -> ClickHouseConnection:
        values = self.model_dump(exclude={"password"})
        return ClickHouseConnection(**values, password=self.password.get_secret_value())


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
        """Through `KafkaSettings` from `env` (default: the process environment)."""
        return KafkaSettings.read(env).connection()

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
        """Through `ClickHouseSettings` from `env` (default: the process environment)."""
        return ClickHouseSettings.read(env).connection()

    def describe(self) -> str:
        return f"clickhouse {self.user}@{self.host}:{self.port}/{self.database}" + \
            (" (TLS)" if self.secure else "")

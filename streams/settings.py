"""The stream worker's settings: `STREAMS_*` variables, validated at start-up.

Where Kafka is comes from `PROCWARDEN_KAFKA_*` (schemas/connections.py), shared by every role.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import Baseline, Mode
from schemas.env_settings import LOG_LEVEL, LogLevel
from streams.engine import EngineSettings, parse_baseline, parse_mode

__all__ = ["StreamSettings"]


class StreamSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMS_", extra="forbid")

    app_id: str = Field("procwarden-streams", description="Kafka consumer group of the workers")
    web_host: str = Field("127.0.0.1", description="address the policy API and console listen "
                          "on")
    web_port: int = Field(6066, ge=1, le=65535, description="port of the policy API and console")
    web_tls_cert: Path | None = Field(None, description="PEM certificate chain: serve HTTPS")
    web_tls_key: Path | None = Field(None, description="PEM private key of web_tls_cert")
    api_token: SecretStr | None = Field(None, description="an admin bearer token named 'env' "
                                        "(the single token of earlier versions)")
    api_tokens_file: Path | None = Field(None, description="named tokens with roles "
                                         "(`procwarden token add`); default "
                                         "<data_dir>/api-tokens.json")
    open_reads: bool = Field(False, description="serve API reads without a token")
    api_allowed_hosts: str = Field("", description="comma-separated Host names the API "
                                   "answers when reads are open (against DNS rebinding); "
                                   "127.0.0.1, localhost, ::1 and web_host always")
    new_group_mode: str = Field("Discover", description="mode of a group made for a new "
                                "workload: Discover, Monitor or Protect")
    new_group_baseline: str = Field("zero-drift", description="baseline of such a group: "
                                    "zero-drift or basic")
    full_cmdline: bool = Field(False, description="keep secret-looking arguments unmasked in "
                               "incidents")
    unknown_workload_wait_s: float = Field(3.0, ge=0, description="wait for an announcement")
    # Events of unannounced workloads wait aside while the rest is decided; past these bounds
    # they are dead-lettered (counted in procwarden_streams_unknown_workload_events_total).
    unknown_workload_max_events: int = Field(10_000, ge=0, description="waiting, in all")
    unknown_workload_max_per_workload: int = Field(256, ge=0,
                                                   description="waiting, per workload")
    dlq_value_bytes: int = Field(16 * 1024, ge=256, le=512 * 1024,
                                 description="of a refused message kept in its dead letter")
    ready_stall_s: float = Field(30.0, gt=0, description="a decider loop quiet this long: "
                                 "not ready")
    # Caps on what a workload or group can grow (streams/engine/view.py says what each bounds;
    # an overflow fails closed and raises one Container.Profile.Overflow incident).
    max_drift_paths: int = Field(1000, ge=1, description="drift files remembered per workload")
    max_drift_path_bytes: int = Field(256, ge=80, description="longer paths kept by digest")
    max_tracked_pids: int = Field(2048, ge=1, description="risky/probe/admitted/tunnel pids, "
                                  "each, per workload")
    max_learned_rules: int = Field(1000, ge=1, description="learned rules per group")
    max_rule_name_bytes: int = Field(64, ge=16, description="a learned rule's name and users")
    max_rule_path_bytes: int = Field(256, ge=16, description="a learned rule's path")
    max_rule_users: int = Field(4, ge=1, description="users a learned rule records")
    max_hash_pins: int = Field(1000, ge=1, description="hash pins per group")
    max_policy_bytes: int = Field(900_000, ge=10_000, le=1_000_000,
                                  description="a group's policy record after any edit")
    max_crd_bytes: int = Field(1024 * 1024, ge=1024, description="one CRD import's text (413)")
    # Signatures (streams/worker/provenance.py): the keyring file (default: the local one, made on
    # first use), how long a verdict may be acted on, and an insecure switch that believes
    # unsigned records (for a rollout where some collectors do not sign yet).
    signing_keyring_file: Path | None = None
    keys_check_interval_s: float = Field(
        5.0, ge=0.05, le=3600, description="how often the keyring file is looked at for a "
                                           "rotation (transport/keyfile.py)")
    verdict_ttl_s: float = Field(60.0, ge=1, le=3600, description="a verdict's validity")
    accept_unsigned: bool = Field(False, description="INSECURE: believe unsigned records")
    data_dir: Path = Field(Path("var/streams"), description="the worker's table state (one "
                           "folder per app_id) and default token file")
    log_level: LogLevel = Field("info", description=LOG_LEVEL)

    @field_validator("new_group_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        return parse_mode(value).value

    @field_validator("new_group_baseline")
    @classmethod
    def _baseline(cls, value: str) -> str:
        return parse_baseline(value).value

    @model_validator(mode="after")
    def _tls_pair(self) -> StreamSettings:
        if (self.web_tls_cert is None) != (self.web_tls_key is None):
            raise ValueError("STREAMS_WEB_TLS_CERT and STREAMS_WEB_TLS_KEY go together")
        return self

    def tokens_path(self) -> Path:
        return self.api_tokens_file or self.data_dir / "api-tokens.json"

    def allowed_hosts(self) -> frozenset[str]:
        given = {h.strip().lower() for h in self.api_allowed_hosts.split(",") if h.strip()}
        return frozenset({"127.0.0.1", "localhost", "::1", self.web_host.lower()} | given)

    def engine(self) -> EngineSettings:
        caps = {name: getattr(self, name) for name in _CAPS}
        return EngineSettings(full_cmdline=self.full_cmdline,
                              new_group_mode=Mode(self.new_group_mode),
                              new_group_baseline=Baseline(self.new_group_baseline), **caps)


_CAPS = ("max_drift_paths", "max_drift_path_bytes", "max_tracked_pids", "max_learned_rules",
         "max_rule_name_bytes", "max_rule_path_bytes", "max_rule_users", "max_hash_pins",
         "max_policy_bytes", "max_crd_bytes")

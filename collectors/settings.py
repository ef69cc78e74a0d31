"""The collector's settings: `COLLECTOR_*` variables, validated at start-up.

Where Kafka is comes from `PROCWARDEN_KAFKA_*` (schemas/connections.py), shared by every role.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import FailMode
from schemas.env_settings import LOG_LEVEL, LogLevel

__all__ = ["CollectorSettings"]


class CollectorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", extra="forbid")

    node: str = Field(default_factory=socket.gethostname, description="this node's name")
    cluster: str = Field("default", description="the cluster this node belongs to, carried in "
                         "every record it publishes")
    with_hash: bool = Field(False, description="send the sha256 of every executable")
    dry_run: bool = Field(False, description="sense and report, never kill or deny")
    enforce: bool = Field(True, description="consume this node's verdicts and enforce them")
    fail_mode: FailMode = Field(FailMode.OPEN,
                                description="a held exec with no verdict in time: open allows "
                                            "(the late verdict still alerts), closed denies")
    hold_timeout_ms: int = Field(500, ge=10, le=30_000,
                                 description="how long a first-seen exec waits for its verdict")
    max_held: int = Field(512, ge=2, le=65_536,
                          description="execs held at once on this node (a ceiling no one "
                                      "workload can reach); beyond it each workload's fail "
                                      "mode answers")
    max_held_per_workload: int = Field(
        64, ge=1, le=65_535,
        description="first-seen execs one workload may have held at once (repeats of a "
                    "held one included); beyond it COLLECTOR_OVER_BUDGET_MODE answers")
    over_budget_mode: FailMode = Field(
        FailMode.CLOSED,
        description="a first-seen exec of a workload over its own held budget: closed denies "
                    "it (the workload flooding is the attacker), open allows it")
    answerer_max_files: int = Field(
        65_536, ge=256,
        description="the exec answerer's RLIMIT_NOFILE (each held exec holds a descriptor); "
                    "raised up to the hard limit")
    origin_digest_max_bytes: int = Field(
        64 * 2**20, ge=0,
        description="a held exec of a copied-up file is compared with the image's up to this "
                    "size; a larger one counts as modified")
    # A workload's /etc/passwd, /etc/group and /etc/login.defs (user names, escalation facts):
    # read on the sensing loop, so a few KiB of a real image, a few MiB at the very most.
    workload_file_max_bytes: int = Field(
        64 * 1024, ge=1024, le=4 * 2**20,
        description="the largest workload file (passwd, group, login.defs) read; a bigger "
                    "one is refused whole and counted")
    hold_realtime: bool = Field(
        True, description="while execs are held, the process answering them runs at a "
                          "real-time priority (SCHED_FIFO 1)")
    kernel_cache: bool = Field(
        True, description="once an exec of an image file is allowed for any caller, the "
                          "kernel allows that file's later execs unheld, until a policy "
                          "change or a write to the file (a file with one name only)")
    fast_answers: bool = Field(
        True, description="the exec answerer's wait and cached answers run compiled "
                          "(collectors/enforcement/fast_answer.c); false: all in Python, by the "
                          "same rules")
    cache_size: int = Field(65_536, ge=16, description="cached pre-exec answers")
    file_events: bool = Field(True, description="report file changes in containers (drift)")
    stdio_inspections: int = Field(5, ge=0, le=20,
                                   description="reverse-shell checks of a new process's stdio")
    stdio_interval_s: float = Field(0.5, gt=0, le=10,
                                    description="seconds between those checks")
    state_dir: Path = Field(Path("var/collector"),
                            description="what must survive a restart: which workloads are held")
    spool_max_bytes: int = Field(256 * 2**20, ge=2**20,
                                 description="disk spool for when Kafka is away (state_dir/spool)")
    report_interval_s: float = Field(10.0, gt=0, le=3600,
                                     description="how often the totals go to collector-reports")
    # What the collector keeps of a command line a process chooses (argv is masked, then cut;
    # each cap hit is counted in procwarden_collector_truncated_total and the event says
    # argv_truncated). 32 KiB stays far below Kafka's 1 MB per message even escaped six-fold in
    # JSON, and an incident carrying it below a syslog receiver's 64 KiB line.
    full_cmdline: bool = Field(False, description="publish command lines unmasked (secrets "
                                                  "such as mysql -pSECRET included)")
    max_args: int = Field(256, ge=1, le=65_536, description="arguments kept of an exec")
    max_arg_bytes: int = Field(4096, ge=64, le=128 * 1024,
                               description="bytes kept of one argument")
    max_cmdline_bytes: int = Field(32 * 1024, ge=256, le=256 * 1024,
                                   description="bytes kept of a whole command line")
    max_path_bytes: int = Field(4096, ge=256, le=4096,
                                description="bytes kept of an executable's path (PATH_MAX)")
    # Verdicts (issue 22): a collector acts only on a verdict that answers an event it
    # published recently, for the process and workload that event named.
    verdict_events_max: int = Field(
        65_536, ge=16, le=4_194_304,
        description="events (execs, stdio, uid changes, held execs) remembered for their "
                    "verdicts; beyond it the oldest is forgotten (counted) and its verdict refused")
    verdict_events_max_age_s: float = Field(
        600.0, gt=0, le=86_400,
        description="how long a published event waits for its verdict; a later one is refused")
    verdicts_acted_max: int = Field(
        65_536, ge=16, le=4_194_304,
        description="verdicts remembered as acted on, so a replay of one is refused")
    signing_keys_file: Path | None = Field(
        None, description="this node's signing keys (procwarden keys node NAME --out FILE); "
                          "unset: derived from the local keyring (var/keys)")
    keys_check_interval_s: float = Field(
        5.0, ge=0.05, le=3600, description="how often the key file is looked at for a "
                                           "rotation (transport/keyfile.py)")
    accept_unsigned_verdicts: bool = Field(
        False, description="insecure, for mixed-version rollouts only: act on verdicts that "
                           "carry no signature (still only on the collector's own events; an "
                           "unsigned hold settings record may only hold more, never less)")
    metrics_port: int = Field(0, ge=0, le=65535, description="/metrics on loopback; 0: off")
    log_level: LogLevel = Field("info", description=LOG_LEVEL)

    @model_validator(mode="after")
    def _budget_below_ceiling(self) -> CollectorSettings:
        if self.max_held_per_workload >= self.max_held:
            raise ValueError("max_held_per_workload must be below max_held: one workload "
                             "must not be able to fill the node's held execs")
        return self

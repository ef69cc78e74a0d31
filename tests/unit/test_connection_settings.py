"""`PROCWARDEN_KAFKA_*` / `PROCWARDEN_CLICKHOUSE_*` through their pydantic-settings classes:
every variable, one-line errors naming the variable, secrets kept out of sight, the password
file, and no environment read at import time anywhere."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from schemas.connections import (
    ClickHouseConnection,
    ClickHouseSettings,
    ConfigError,
    KafkaConnection,
    KafkaSettings,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-s3cret"

KAFKA = [
    ("PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS", "k1:9093,k2:9093", "bootstrap_servers",
     "k1:9093,k2:9093"),
    ("PROCWARDEN_KAFKA_SECURITY_PROTOCOL", "SSL", "security_protocol", "SSL"),
    ("PROCWARDEN_KAFKA_SASL_MECHANISM", "PLAIN", "sasl_mechanism", "PLAIN"),
    ("PROCWARDEN_KAFKA_SASL_USERNAME", "node-a", "sasl_username", "node-a"),
    ("PROCWARDEN_KAFKA_SASL_PASSWORD", SECRET, "sasl_password", SECRET),
    ("PROCWARDEN_KAFKA_SSL_CA_LOCATION", "/ca.pem", "ssl_ca_location", "/ca.pem"),
    ("PROCWARDEN_KAFKA_SSL_CERT_LOCATION", "/c.pem", "ssl_cert_location", "/c.pem"),
    ("PROCWARDEN_KAFKA_SSL_KEY_LOCATION", "/k.pem", "ssl_key_location", "/k.pem"),
    ("PROCWARDEN_KAFKA_TOPIC_PREFIX", "prod.", "topic_prefix", "prod."),
]
CLICKHOUSE = [
    ("PROCWARDEN_CLICKHOUSE_HOST", "ch.internal", "host", "ch.internal"),
    ("PROCWARDEN_CLICKHOUSE_PORT", "9440", "port", 9440),
    ("PROCWARDEN_CLICKHOUSE_USER", "pw", "user", "pw"),
    ("PROCWARDEN_CLICKHOUSE_PASSWORD", SECRET, "password", SECRET),
    ("PROCWARDEN_CLICKHOUSE_DATABASE", "pw_2", "database", "pw_2"),
    ("PROCWARDEN_CLICKHOUSE_SECURE", "yes", "secure", True),
]


def test_every_variable_is_a_setting() -> None:
    """The tables above name every field: a new one needs a line here (and in the docs)."""
    assert {KafkaSettings.variable(f) for f in KafkaSettings.model_fields} == \
        {v for v, *_ in KAFKA} | {"PROCWARDEN_KAFKA_SASL_PASSWORD_FILE"}
    assert {ClickHouseSettings.variable(f) for f in ClickHouseSettings.model_fields} == \
        {v for v, *_ in CLICKHOUSE}


@pytest.mark.parametrize("variable,raw,attr,expected", KAFKA)
def test_each_kafka_variable_reaches_the_connection(variable: str, raw: str, attr: str,
                                                    expected: Any) -> None:
    env = {variable: f" {raw}\n"}  # pasted values carry stray blanks
    if variable == "PROCWARDEN_KAFKA_SECURITY_PROTOCOL":
        env = {variable: raw}
    assert getattr(KafkaConnection.from_env(env), attr) == expected


@pytest.mark.parametrize("variable,raw,attr,expected", CLICKHOUSE)
def test_each_clickhouse_variable_reaches_the_connection(variable: str, raw: str, attr: str,
                                                         expected: Any) -> None:
    assert getattr(ClickHouseConnection.from_env({variable: f" {raw} "}), attr) == expected


def test_a_given_mapping_replaces_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROCWARDEN_KAFKA_TOPIC_PREFIX", "from-env.")
    monkeypatch.setenv("PROCWARDEN_CLICKHOUSE_PORT", "9999")
    assert KafkaConnection.from_env({}).topic_prefix == ""
    assert ClickHouseConnection.from_env({}).port == 9000
    assert KafkaConnection.from_env().topic_prefix == "from-env."
    assert ClickHouseConnection.from_env().port == 9999


@pytest.mark.parametrize("env,variable", [
    ({"PROCWARDEN_CLICKHOUSE_PORT": "nine"}, "PROCWARDEN_CLICKHOUSE_PORT"),
    ({"PROCWARDEN_CLICKHOUSE_PORT": "0"}, "PROCWARDEN_CLICKHOUSE_PORT"),
    ({"PROCWARDEN_CLICKHOUSE_SECURE": "maybe"}, "PROCWARDEN_CLICKHOUSE_SECURE"),
    ({"PROCWARDEN_CLICKHOUSE_DATABASE": "a-b"}, "PROCWARDEN_CLICKHOUSE_DATABASE"),
])
def test_bad_clickhouse_values_are_one_line_naming_the_variable(env: dict[str, str],
                                                                variable: str) -> None:
    env = {**env, "PROCWARDEN_CLICKHOUSE_PASSWORD": SECRET}
    with pytest.raises(ConfigError) as caught:
        ClickHouseConnection.from_env(env)
    text = str(caught.value)
    assert text.startswith(f"{variable}: ") and "\n" not in text and SECRET not in text
    assert caught.value.__cause__ is None  # no pydantic report chained under it


@pytest.mark.parametrize("env,variable,says", [
    ({"PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "TLS"}, "PROCWARDEN_KAFKA_SECURITY_PROTOCOL",
     "is not one of"),
    ({"PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "PROCWARDEN_KAFKA_SASL_MECHANISM",
     "needed with a SASL protocol"),
    ({"PROCWARDEN_KAFKA_SASL_MECHANISM": "GSSAPI"}, "PROCWARDEN_KAFKA_SASL_MECHANISM",
     "is not one of"),
    ({"PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS": " "}, "PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS",
     "must not be empty"),
    ({"PROCWARDEN_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"},
     "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE", "not both"),
])
def test_bad_kafka_values_are_one_line_naming_the_variable(env: dict[str, str], variable: str,
                                                           says: str) -> None:
    env = {"PROCWARDEN_KAFKA_SASL_PASSWORD": SECRET, **env}
    with pytest.raises(ConfigError) as caught:
        KafkaConnection.from_env(env)
    text = str(caught.value)
    assert text.startswith(f"{variable}: ") and says in text, text
    assert "\n" not in text and SECRET not in text


def test_secrets_are_secretstr_and_never_shown() -> None:
    assert KafkaSettings.model_fields["sasl_password"].annotation is SecretStr
    assert ClickHouseSettings.model_fields["password"].annotation is SecretStr
    env = {"PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "PROCWARDEN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "PROCWARDEN_KAFKA_SASL_USERNAME": "siem", "PROCWARDEN_KAFKA_SASL_PASSWORD": SECRET,
           "PROCWARDEN_CLICKHOUSE_PASSWORD": SECRET}
    kafka_settings, ch_settings = KafkaSettings.read(env), ClickHouseSettings.read(env)
    kafka, ch = kafka_settings.connection(), ch_settings.connection()
    for shown in (repr(kafka_settings), str(kafka_settings), repr(ch_settings),
                  kafka_settings.model_dump_json(), repr(kafka), kafka.describe(), repr(ch),
                  ch.describe(), repr(replace(kafka, topic_prefix="x."))):
        assert SECRET not in shown, shown
    # ... and handed, as it is, to the clients that need it
    assert kafka.confluent_config()["sasl.password"] == SECRET
    assert ch.password == SECRET
    assert "siem" in kafka.describe()


def test_the_password_file_is_read_once(tmp_path: Path) -> None:
    secret = tmp_path / "siem.password"
    secret.write_text(SECRET + "\n")
    env = {"PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "PROCWARDEN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "PROCWARDEN_KAFKA_SASL_USERNAME": "siem",
           "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE": f"{secret} "}
    kafka = KafkaConnection.from_env(env)
    assert kafka.sasl_password == SECRET and kafka.sasl_password_file == str(secret)
    assert kafka.confluent_config()["sasl.password"] == SECRET
    assert SECRET not in repr(kafka)
    secret.unlink()  # a copy carries what was read and does not open the file again
    assert replace(kafka, topic_prefix="p.").sasl_password == SECRET


@pytest.mark.parametrize("content,says", [
    (b"", "is empty"),
    (b"\n", "is empty"),
    (b"x" * 4097, "is over 4096 bytes"),
    (b"\xff\xfe", "is not UTF-8 text"),
    (None, "cannot read"),
])
def test_a_bad_password_file_is_one_line(tmp_path: Path, content: bytes | None,
                                         says: str) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        KafkaConnection.from_env({"PROCWARDEN_KAFKA_SASL_PASSWORD_FILE": str(path)})
    text = str(caught.value)
    assert text.startswith("PROCWARDEN_KAFKA_SASL_PASSWORD_FILE: ") and says in text
    assert "\n" not in text


def test_the_cli_reports_a_bad_connection_in_one_line() -> None:
    env = {**os.environ, "PROCWARDEN_CLICKHOUSE_PORT": "nine",
           "PROCWARDEN_CLICKHOUSE_PASSWORD": SECRET}
    run = subprocess.run([sys.executable, "-m", "procwarden.cli", "sink-clickhouse"], env=env,
                         capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        "procwarden sink-clickhouse: bad setting: PROCWARDEN_CLICKHOUSE_PORT: expected an "
        "integer, got 'nine'"]


def _module_level_environment_reads(path: Path) -> list[int]:
    """Lines outside any function that touch os.environ / os.getenv: read as it is imported."""
    found: list[int] = []
    stack: list[ast.AST] = list(ast.parse(path.read_text()).body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "getenvb"):
            found.append(node.lineno)
        stack.extend(ast.iter_child_nodes(node))
    return found


def test_no_module_reads_the_environment_as_it_is_imported() -> None:
    offenders = {}
    for package in ("schemas", "transport", "collectors", "streams", "sinks", "procwarden"):
        for path in (ROOT / package).rglob("*.py"):
            lines = _module_level_environment_reads(path)
            if lines:
                offenders[str(path.relative_to(ROOT))] = lines
    assert offenders == {}


def test_schemas_reads_no_environment_by_hand() -> None:
    """schemas/ reads settings through pydantic-settings only (schemas/env_settings.py)."""
    by_hand = {}
    for path in (ROOT / "schemas").rglob("*.py"):
        lines = [n.lineno for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv")]
        if lines:
            by_hand[path.name] = lines
    assert by_hand == {}


def test_the_codec_bounds_are_settings_too() -> None:
    from schemas import codec
    from schemas.env_settings import MessageLimitSettings

    assert codec.limits_from_env({"PROCWARDEN_MAX_NESTING": " 20 "}).max_depth == 20
    assert set(MessageLimitSettings.model_fields) == {"max_message_bytes", "max_nesting"}
    with pytest.raises(ConfigError, match=r"^PROCWARDEN_MAX_MESSAGE_BYTES / "
                                          r"PROCWARDEN_MAX_NESTING: max_message_bytes must"):
        codec.limits_from_env({"PROCWARDEN_MAX_MESSAGE_BYTES": "10"})


def test_the_detector_sees_an_import_time_read(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nPORT = int(os.environ.get('X', '1'))\n"
                      "class C:\n    y = os.getenv('Y')\n"
                      "def f():\n    return os.environ['Z']\n")
    assert sorted(_module_level_environment_reads(module)) == [2, 4]


def test_the_role_runner_reads_the_api_port_when_it_runs(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    # A bad value used to stop every command that imported procwarden.roles, `status` too.
    env = {**os.environ, "STREAMS_WEB_PORT": "not-a-port"}
    run = subprocess.run([sys.executable, "-c", "import procwarden.roles, procwarden.demo"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stderr
    from procwarden.roles import Roles

    monkeypatch.setenv("STREAMS_WEB_PORT", "7123")
    roles = Roles(tmp_path)
    assert roles.api_port == 7123
    assert any(r.name == "streams" and "127.0.0.1:7123" in r.what for r in roles.roles)

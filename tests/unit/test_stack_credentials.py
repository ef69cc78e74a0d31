"""The local stack's Kafka secrets: made once, private, never printed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from procwarden.stack.credentials import ROLE_PRINCIPALS, Credentials
from procwarden.stack.kafka import KafkaServer, redact_format_output
from procwarden.stack.layout import StackLayout
from schemas.connections import ConfigError, KafkaConnection


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cas_broker_keys_and_passwords_are_made_once_and_private(tmp_path: Path) -> None:
    creds = Credentials(tmp_path / "kafka")
    assert creds.ensure()
    for folder in (creds.tls, creds.controller_tls, creds.secrets):
        assert mode(folder) == 0o700
    for key in ("ca.key", "broker.pem"):
        assert mode(creds.tls / key) == 0o600
        assert mode(creds.controller_tls / key) == 0o600
    for principal in ROLE_PRINCIPALS:
        assert mode(creds.password_file(principal)) == 0o600
    first = {p: creds.password(p) for p in ROLE_PRINCIPALS}
    ca = creds.ca.read_bytes()
    assert not creds.ensure()  # a second `stack up` keeps them
    assert {p: creds.password(p) for p in ROLE_PRINCIPALS} == first
    assert creds.ca.read_bytes() == ca
    assert len(set(first.values())) == len(first)
    # Two CAs: a client certificate of the first never passes TLS on the controller port.
    assert (creds.controller_tls / "ca.pem").read_bytes() != ca


def test_the_broker_certificate_names_127_0_0_1_and_is_not_a_ca(tmp_path: Path) -> None:
    from cryptography import x509

    creds = Credentials(tmp_path / "kafka")
    creds.ensure()
    pem = creds.keystore().read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, what Kafka's PEM store takes
    cert = x509.load_pem_x509_certificates(pem[pem.index(b"-----BEGIN CERTIFICATE"):])[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.subject.rfc4514_string() == "CN=broker,O=procwarden"


def test_the_format_tools_scram_records_are_redacted() -> None:
    out = ("Formatting metadata directory /x with metadata.version 4.4.\n"
           "UserScramCredentialRecord(name='admin', mechanism=2, salt=(redacted)"
           "6f2a, storedKey=abcd, serverKey=ef01, iterations=4096)\nsaltedPassword=zz\n")
    text = redact_format_output(out)
    assert "abcd" not in text and "ef01" not in text and "6f2a" not in text and "zz" not in text
    assert "Formatting metadata directory" in text


def test_a_role_connection_takes_its_password_from_a_file_never_shown(tmp_path: Path) -> None:
    layout = StackLayout(root=tmp_path, var=tmp_path / "var", cache=tmp_path / "cache")
    kafka = KafkaServer(layout, 9092, 9093)
    env = kafka.environment("streams")
    password = kafka.credentials.password("streams")
    assert env["PROCWARDEN_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["PROCWARDEN_KAFKA_SASL_USERNAME"] == "streams"
    assert password not in "".join(env.values())  # the file's path, not the password
    conn = KafkaConnection.from_env(env)
    assert conn.sasl_password == password
    assert conn.confluent_config()["sasl.password"] == password
    assert password not in repr(conn) and password not in conn.describe()
    plain = KafkaServer(layout, 9092, 9093, secure=False).environment("streams")
    assert plain == {"PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
                     "PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}


def test_password_file_settings_are_checked(tmp_path: Path) -> None:
    good = tmp_path / "pw"
    good.write_text("s3cret\n")
    base = {"PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "PROCWARDEN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
    with pytest.raises(ConfigError, match="not both"):
        KafkaConnection.from_env({**base, "PROCWARDEN_KAFKA_SASL_PASSWORD": "x",
                                  "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE": str(good)})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * 5000)
    for path, says in ((tmp_path / "missing", "cannot read"), (empty, "empty"),
                       (huge, "over 4096 bytes")):
        with pytest.raises(ConfigError, match=f"PROCWARDEN_KAFKA_SASL_PASSWORD_FILE: .*{says}"):
            KafkaConnection.from_env({**base, "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE": str(path)})
    conn = KafkaConnection.from_env({**base, "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE": str(good)})
    good.write_text("changed\n")  # read once: a copy keeps what was read
    from dataclasses import replace
    assert replace(conn, topic_prefix="p.").sasl_password == "s3cret"


def test_a_password_asked_for_by_two_processes_is_one_password(tmp_path: Path) -> None:
    """The race that left a broker formatted with one admin password and the file holding
    another: a second creator must read the first's password, never replace it."""
    from procwarden.stack.credentials import create_private

    first, second = Credentials(tmp_path / "kafka"), Credentials(tmp_path / "kafka")
    path = first.password_file("admin")
    path.parent.mkdir(parents=True)
    assert create_private(path, b"one\n")
    assert not create_private(path, b"two\n")  # what the later of two creators does
    assert second.password("admin") == first.password("admin") == "one"
    assert mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["admin.password"]  # no temporaries


def test_storage_formatted_with_another_admin_password_is_not_the_same_mode(
        tmp_path: Path) -> None:
    layout = StackLayout(root=tmp_path, var=tmp_path / "var", cache=tmp_path / "cache")
    kafka = KafkaServer(layout, 9092, 9093)
    (kafka.data).mkdir(parents=True)
    (kafka.data / "meta.properties").write_text("x")
    kafka.mode_file.write_text(kafka.mode + "\n")
    assert kafka.formatted_mode() == kafka.mode
    kafka.credentials.password_file("admin").write_text("another\n")
    assert kafka.formatted_mode() != kafka.mode  # `stack up` formats it again
    kafka.mode_file.write_text("sasl_ssl\n")  # the first secure format wrote no digest
    assert kafka.formatted_mode() != kafka.mode

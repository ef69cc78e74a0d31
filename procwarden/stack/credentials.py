"""The local Kafka's identities: two CAs, the broker's certificates and one SCRAM password per
principal, made once by `procwarden stack up` and kept in the stack's state folder.

Layout under `<var>/kafka/` (folders 0700, keys and passwords 0600):
- `tls/ca.pem`, `tls/ca.key`, `tls/broker.pem` (key + chain): the client listener (SASL_SSL).
- `tls/controller/…`: the same for the controller listener, from its own CA, so that no client
  certificate the first CA ever signs gets through TLS on the controller port.
- `secrets/<principal>.password`: what `PROCWARDEN_KAFKA_SASL_PASSWORD_FILE` points a role at.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from pathlib import Path
from typing import Any

from procwarden.stack.processes import StackError

__all__ = ["ADMIN", "BROKER", "ROLE_PRINCIPALS", "SIEM", "SINK_CLICKHOUSE", "STREAMS",
           "Credentials", "node_principal", "valid_node"]

ADMIN = "admin"  # super user: topics, ACLs, users (the stack itself, `procwarden status`)
BROKER = "broker"  # the broker's own controller link (its certificate's CN); super user
STREAMS = "streams"
SINK_CLICKHOUSE = "sink-clickhouse"
SIEM = "siem"
ROLE_PRINCIPALS = (ADMIN, STREAMS, SINK_CLICKHOUSE, SIEM)
NODE_PREFIX = "node-"

# Node names become principal names and file names: letters, digits, '.', '_' and '-', as a
# hostname is, bounded. "node-" keeps them apart from the role principals (a node named "admin"
# is User:node-admin, never the super user).
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def valid_node(name: str) -> bool:
    return bool(_NODE.fullmatch(name))


def node_principal(node: str) -> str:
    if not valid_node(node):
        raise StackError(f"{node!r} is not a node name (letters, digits, '.', '_', '-'; up to "
                         "200, starting with a letter or digit)")
    return NODE_PREFIX + node


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """0600 from its first byte (a fresh O_EXCL temporary, then a rename): never readable by
    others, not even for the moment a chmod after the write would leave."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_private(path: Path, data: bytes) -> bool:
    """Like write_private, but never replaces an existing file (a hard link fails if the name
    is taken). True if this call made it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    write_private(tmp, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class Credentials:
    """The stack's CAs, broker certificates and passwords, made on first use."""

    def __init__(self, kafka_home: Path) -> None:
        self.home = kafka_home
        self.tls = kafka_home / "tls"
        self.controller_tls = self.tls / "controller"
        self.secrets = kafka_home / "secrets"

    @property
    def ca(self) -> Path:
        return self.tls / "ca.pem"

    def keystore(self, controller: bool = False) -> Path:
        return (self.controller_tls if controller else self.tls) / "broker.pem"

    def truststore(self, controller: bool = False) -> Path:
        return (self.controller_tls if controller else self.tls) / "ca.pem"

    def password_file(self, principal: str) -> Path:
        return self.secrets / f"{principal}.password"

    def password(self, principal: str) -> str:
        """The principal's password, made (and kept) the first time it is asked for. Any
        process may ask first (`stack up`, `status`, a test session): the first file linked in
        place wins and every other reads it, never two passwords for one principal."""
        path = self.password_file(principal)
        if not path.exists():
            _private_dir(self.secrets)
            create_private(path, (secrets.token_urlsafe(32) + "\n").encode())
        return path.read_text().strip()

    def nodes(self) -> list[str]:
        """The nodes given a password so far."""
        if not self.secrets.is_dir():
            return []
        return sorted(p.name[len(NODE_PREFIX):-len(".password")]
                      for p in self.secrets.glob(f"{NODE_PREFIX}*.password"))

    def ensure(self) -> bool:
        """Make what is missing (both CAs, the broker's certificates, the role passwords).
        True if anything was made."""
        made = False
        for folder in (self.tls, self.controller_tls):
            _private_dir(folder)
            if not (folder / "broker.pem").exists() or not (folder / "ca.pem").exists():
                _make_pki(folder)
                made = True
        for principal in ROLE_PRINCIPALS:
            made |= not self.password_file(principal).exists()
            self.password(principal)
        return made


def _make_pki(folder: Path) -> None:
    # Imported here: only `stack up` needs cryptography, not the roles.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        # Java renders this "CN=<cn>,O=procwarden", the form ssl.principal.mapping.rules matches.
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "procwarden"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key: Any) -> bytes:  # Kafka's PEM keystore takes unencrypted PKCS#8 only
        return bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"procwarden local CA {folder.name}")
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    broker = (x509.CertificateBuilder()
              .subject_name(name(BROKER)).issuer_name(ca.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=825))
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              # serverAuth for its listeners, clientAuth for its own link to the controller
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                    ExtendedKeyUsageOID.CLIENT_AUTH]),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              # librdkafka, Python's ssl and Java all check the name: clients dial 127.0.0.1
              .add_extension(x509.SubjectAlternativeName([
                  x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                  critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    write_private(folder / "ca.key", pem_key(ca_key))
    write_private(folder / "broker.pem", pem_key(key) + broker.public_bytes(pem)
                  + ca.public_bytes(pem))
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))  # public: what clients trust

"""Apache Kafka 4.x in KRaft mode (combined broker and controller), loopback only.

Its jars come from Maven Central through `deploy/kafka/pom.xml` into the project's cache; storage
is formatted once; readiness means the broker answers a metadata request (as `admin`).

By default clients reach it over SASL_SSL (SCRAM-SHA-512) with Kafka's StandardAuthorizer and no
access without an ACL; its controller listener takes TLS with a client certificate from its own CA
(a PLAINTEXT one would reach the authorizer as User:ANONYMOUS: refused, or a super user for any
local process). `PROCWARDEN_STACK_INSECURE_PLAINTEXT=true` brings back the plaintext broker
(insecure, development only). docs/kafka-security.md says why each piece is as it is.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from procwarden.stack.credentials import ADMIN, Credentials, write_private
from procwarden.stack.layout import ProgressFn, StackLayout
from procwarden.stack.processes import (
    LocalServer,
    ManagedProcess,
    StackError,
    port_in_use,
    port_owner,
)
from schemas.connections import KafkaConnection

__all__ = ["KafkaServer", "kafka_version", "quiet_logger", "redact_format_output"]


def quiet_logger() -> logging.Logger:
    """librdkafka complains loudly while a broker is still starting; readiness probes mute it."""
    log = logging.getLogger("procwarden.stack.kafka-probe")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def kafka_version(pom: Path) -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom.read_text())
    if not match:
        raise StackError(f"{pom} does not pin kafka.version")
    return match.group(1)


_SERVER_PROPERTIES = """\
# Written by `procwarden stack up`; edit the stack settings instead.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
"""

# Every SSL setting per listener: a global keystore beside a listener's own is fatal at start.
_SECURE_PROPERTIES = """\
# Written by `procwarden stack up`; edit the stack settings instead. Holds the broker's own SCRAM
# login (mode 0600).
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=CLIENT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=CLIENT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SSL
inter.broker.listener.name=CLIENT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.client.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required \
username="{admin}" password="{admin_password}";
listener.name.client.ssl.keystore.type=PEM
listener.name.client.ssl.keystore.location={keystore}
listener.name.client.ssl.truststore.type=PEM
listener.name.client.ssl.truststore.location={truststore}
listener.name.controller.ssl.client.auth=required
listener.name.controller.ssl.keystore.type=PEM
listener.name.controller.ssl.keystore.location={controller_keystore}
listener.name.controller.ssl.truststore.type=PEM
listener.name.controller.ssl.truststore.location={controller_truststore}
# CN=broker,O=procwarden (its controller-link certificate) -> User:broker
ssl.principal.mapping.rules=RULE:^CN=([^,]+),O=procwarden$/$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{admin};User:broker
allow.everyone.if.no.acl.found=false
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
"""

def redact_format_output(text: str) -> str:
    """StorageTool's output without the SCRAM records it prints (salts and keys) or anything
    that looks like a key or a password."""
    lines = []
    for line in text.splitlines():
        if "UserScramCredentialRecord" in line or re.search(
                r"(?i)salt|storedkey|serverkey|password", line):
            lines.append("[a line naming SCRAM credentials, redacted]")
        else:
            lines.append(line)
    return "\n".join(lines)

_LOG4J2 = """\
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRefs = stdout
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.shutdown.name = kafka.server.BrokerServer
logger.shutdown.level = INFO
"""


class KafkaServer(LocalServer):
    def __init__(self, layout: StackLayout, port: int, controller_port: int,
                 heap_mb: int = 1024, secure: bool = True) -> None:
        home = layout.var / "kafka"
        super().__init__(home, ManagedProcess("Kafka", home / "kafka.pid", home / "kafka.log"))
        self.layout = layout
        self.port = port
        self.controller_port = controller_port
        self.heap_mb = heap_mb
        self.data = home / "data"
        self.secure = secure
        self.credentials = Credentials(home)
        # Which mode the data was formatted in (the SCRAM users live in the metadata log).
        self.mode_file = home / "security-mode"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        """What the storage must have been formatted with: plaintext, or SASL_SSL with this
        admin password (by digest: a storage formatted with another one never lets admin in)."""
        if not self.secure:
            return "plaintext"
        digest = hashlib.sha256(self.credentials.password(ADMIN).encode()).hexdigest()[:16]
        return f"sasl_ssl admin:{digest}"

    def connection(self, principal: str = ADMIN, topic_prefix: str = "") -> KafkaConnection:
        """How `principal` reaches this broker (its password by file, never inline)."""
        if not self.secure:
            return KafkaConnection(bootstrap_servers=self.bootstrap, topic_prefix=topic_prefix)
        self.credentials.password(principal)
        return KafkaConnection(
            bootstrap_servers=self.bootstrap, security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512", sasl_username=principal,
            sasl_password_file=str(self.credentials.password_file(principal)),
            ssl_ca_location=str(self.credentials.ca), topic_prefix=topic_prefix)

    def environment(self, principal: str = ADMIN) -> dict[str, str]:
        """`PROCWARDEN_KAFKA_*` variables that give a role process `principal`'s identity."""
        conn = self.connection(principal)
        env = {"PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS": conn.bootstrap_servers,
               "PROCWARDEN_KAFKA_SECURITY_PROTOCOL": conn.security_protocol}
        if self.secure:
            env |= {"PROCWARDEN_KAFKA_SASL_MECHANISM": conn.sasl_mechanism,
                    "PROCWARDEN_KAFKA_SASL_USERNAME": conn.sasl_username,
                    "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE": conn.sasl_password_file,
                    "PROCWARDEN_KAFKA_SSL_CA_LOCATION": conn.ssl_ca_location}
        return env

    @property
    def libs(self) -> Path:
        # Keyed by the POM's content: changing a pinned version fetches a fresh set of jars.
        digest = hashlib.sha256(self.layout.kafka_pom.read_bytes()).hexdigest()[:12]
        return self.layout.cache / "kafka" / f"{kafka_version(self.layout.kafka_pom)}-{digest}"

    # -- installation -------------------------------------------------------------------------

    def ensure_jars(self, say: ProgressFn) -> None:
        version = kafka_version(self.layout.kafka_pom)
        if any(self.libs.glob(f"kafka_2.13-{version}.jar")):
            return
        for tool, package in (("java", "openjdk-17-jre-headless"), ("mvn", "maven")):
            if shutil.which(tool) is None:
                raise StackError(f"{tool} is missing: Kafka runs on Java 17+ and is fetched with "
                                 f"Maven. Install it (apt-get install {package}) and retry.")
        say(f"fetching Apache Kafka {version} from Maven Central (once)")
        tmp = self.libs.with_name(self.libs.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        result = subprocess.run(
            ["mvn", "-B", "-q", "-f", str(self.layout.kafka_pom), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"],
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError("could not fetch Kafka's jars from Maven Central (is the network "
                             "up?). Maven said:\n" + (result.stdout + result.stderr)[-2000:])
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)

    def _java(self, *args: str, broker: bool = False) -> list[str]:
        # The broker gets the JVM options of Kafka's own start script: G1 aiming at 20 ms
        # pauses (Java's default aims at 200 ms, and a pause that long holds every fetch and
        # produce in the pipeline), with its pauses logged, rotated, beside its log. The heap
        # is touched at start: the first collections otherwise fault in fresh pages (one paused
        # the broker 177 ms half a minute after start; the largest since, 54 ms).
        tuning = ["-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                  "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                  "-XX:MaxInlineLevel=15", "-XX:+AlwaysPreTouch", "-Djava.awt.headless=true",
                  f"-Xlog:gc*:file={self.home / 'gc.log'}:time,uptime:filecount=5,filesize=10M"]
        return ["java", f"-Xmx{self.heap_mb}m", f"-Xms{self.heap_mb}m",
                *(tuning if broker else []),
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                "-cp", f"{self.libs}/*", *args]

    def configure(self, say: ProgressFn = print) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        if self.secure:
            if self.credentials.ensure():
                say(f"made the Kafka CAs, broker certificates and role passwords in "
                    f"{self.home} (kept; `stack reset` removes them)")
            c = self.credentials
            text = _SECURE_PROPERTIES.format(
                port=self.port, controller_port=self.controller_port, data=self.data,
                admin=ADMIN, admin_password=c.password(ADMIN),
                keystore=c.keystore(), truststore=c.truststore(),
                controller_keystore=c.keystore(controller=True),
                controller_truststore=c.truststore(controller=True))
        else:
            text = _SERVER_PROPERTIES.format(port=self.port, controller_port=self.controller_port,
                                             data=self.data)
        write_private(self.home / "server.properties", text.encode())
        (self.home / "log4j2.properties").write_text(_LOG4J2)

    def formatted_mode(self) -> str | None:
        """The mode the storage was formatted in; None if it is not formatted. Storage from
        before the secure mode has no mode file: it is plaintext."""
        if not (self.data / "meta.properties").exists():
            return None
        try:
            return self.mode_file.read_text().strip() or "plaintext"
        except FileNotFoundError:
            return "plaintext"

    def format_storage(self, say: ProgressFn) -> None:
        formatted = self.formatted_mode()
        if formatted == self.mode:
            return
        if formatted is not None:
            # Its users and ACLs (or their absence) are in the metadata log: a broker cannot
            # change modes on the same storage.
            say(f"Kafka's storage was formatted {formatted}, the stack is now {self.mode}: "
                "formatting it again (its topics' data is dropped)")
            shutil.rmtree(self.data)
        say("formatting Kafka storage (KRaft, standalone controller)")
        uuid = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"),
                              capture_output=True, text=True, check=True).stdout.split()[-1]
        # Only admin is made here (its password is on this command line for the ~3 s the tool
        # runs); every other user is added through the admin API once the broker is up.
        scram = ["--add-scram",
                 f"SCRAM-SHA-512=[name={ADMIN},password={self.credentials.password(ADMIN)}]"] \
            if self.secure else []
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", uuid,
                       "-c", str(self.home / "server.properties"), *scram),
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError("formatting Kafka storage failed:\n"
                             + redact_format_output(result.stdout + result.stderr))
        self.mode_file.write_text(self.mode + "\n")

    # -- running ------------------------------------------------------------------------------

    def ready(self) -> bool:
        """The broker answers metadata to `admin` (in the secure mode a probe without
        credentials never gets an answer, so readiness proves the login works too)."""
        if self.secure and not self.credentials.password_file(ADMIN).exists():
            return False
        try:
            # 3 s: a TLS handshake and a SCRAM login on a broker still replaying its log
            # (thousands of test partitions) can take over one.
            config: dict[str, Any] = {**self.connection().confluent_config(),
                                      "logger": quiet_logger(), "socket.timeout.ms": 3000}
            admin = AdminClient(config)
            metadata = admin.list_topics(timeout=3.0)
        except Exception:
            return False
        return bool(metadata.brokers)

    def start(self, say: ProgressFn, timeout: float = 90.0) -> bool:
        """Start and wait until the broker serves metadata. False if it was already running."""
        if self.process.running():
            if self.formatted_mode() not in (None, self.mode):
                say(f"Kafka runs {self.formatted_mode()}, the stack is now {self.mode}: "
                    "stopping it")
                self.stop()
            else:
                if self.ready():
                    return False
                self.process.wait_ready(self.ready, timeout, "answer metadata requests")
                return False
        for port in (self.port, self.controller_port):
            if port_in_use(port):
                raise StackError(f"port {port} is taken by {port_owner(port)}: stop it, or move "
                                 "Kafka with PROCWARDEN_STACK_KAFKA_PORT / "
                                 "PROCWARDEN_STACK_KAFKA_CONTROLLER_PORT")
        self.ensure_jars(say)
        self.configure(say)
        self.format_storage(say)
        say(f"starting Kafka on {self.bootstrap}")
        self.process.start(
            self._java("kafka.Kafka", str(self.home / "server.properties"), broker=True),
            cwd=self.home)
        self.process.wait_ready(self.ready, timeout, "answer metadata requests")
        return True

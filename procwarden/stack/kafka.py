"""Apache Kafka 4.x in KRaft mode (combined broker and controller), loopback only.

Its jars come from Maven Central through `deploy/kafka/pom.xml` into the project's cache; storage
is formatted once; readiness means the broker answers a metadata request.
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

from procwarden.stack.layout import ProgressFn, StackLayout
from procwarden.stack.processes import (
    LocalServer,
    ManagedProcess,
    StackError,
    port_in_use,
    port_owner,
)

__all__ = ["KafkaServer", "kafka_version", "quiet_logger"]


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
                 heap_mb: int = 1024) -> None:
        home = layout.var / "kafka"
        super().__init__(home, ManagedProcess("Kafka", home / "kafka.pid", home / "kafka.log"))
        self.layout = layout
        self.port = port
        self.controller_port = controller_port
        self.heap_mb = heap_mb
        self.data = home / "data"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

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

    def configure(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "server.properties").write_text(_SERVER_PROPERTIES.format(
            port=self.port, controller_port=self.controller_port, data=self.data))
        (self.home / "log4j2.properties").write_text(_LOG4J2)

    def format_storage(self, say: ProgressFn) -> None:
        if (self.data / "meta.properties").exists():
            return
        say("formatting Kafka storage (KRaft, standalone controller)")
        uuid = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"),
                              capture_output=True, text=True, check=True).stdout.split()[-1]
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", uuid,
                       "-c", str(self.home / "server.properties")),
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    # -- running ------------------------------------------------------------------------------

    def ready(self) -> bool:
        try:
            config: dict[str, Any] = {"bootstrap.servers": self.bootstrap,
                                      "logger": quiet_logger(), "socket.timeout.ms": 1000}
            admin = AdminClient(config)
            metadata = admin.list_topics(timeout=1.0)
        except Exception:
            return False
        return bool(metadata.brokers)

    def start(self, say: ProgressFn, timeout: float = 90.0) -> bool:
        """Start and wait until the broker serves metadata. False if it was already running."""
        if self.process.running():
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
        self.configure()
        self.format_storage(say)
        say(f"starting Kafka on {self.bootstrap}")
        self.process.start(
            self._java("kafka.Kafka", str(self.home / "server.properties"), broker=True),
            cwd=self.home)
        self.process.wait_ready(self.ready, timeout, "answer metadata requests")
        return True

#!/usr/bin/env python3
"""Start, stop and inspect the local services driftwatch needs: Kafka, Redis, Prometheus.

Everything listens on 127.0.0.1. Kafka is a single-node KRaft broker run straight from the
Apache Kafka jars on Maven Central (fetched once with Maven into a cache outside the
repository); Redis and Prometheus come from Debian's packages, installed when missing.

    python3 scripts/services.py install [kafka|redis|prometheus|all]
    python3 scripts/services.py start [kafka|redis|prometheus|kafka-secure|redis-tls|all]
    python3 scripts/services.py stop [kafka|redis|prometheus|kafka-secure|redis-tls|all|every]
    python3 scripts/services.py status [--json]

``kafka-secure`` and ``redis-tls`` are the secured twins of Kafka and Redis, for the security
tests: a broker whose only client listener is SASL_SSL (SCRAM-SHA-512 users, the
StandardAuthorizer: no ACL, no access) and a Redis that speaks TLS only, with ACL users. Their
certificates (a test CA, a server and a client certificate, PEM, made with openssl) and
generated passwords are kept in ``$DRIFTWATCH_RUN_DIR/secure`` (``secrets.json``, mode 0600).
``stop every`` stops whatever is running, secured services included.

Start is idempotent (a running service is left alone) and waits until the service accepts
connections. Stop sends SIGTERM to the service's process group, then SIGKILL after a grace
period. Only the standard library is used, so this runs before any virtualenv exists.

Environment:
    DRIFTWATCH_HOME            cache directory for the Kafka jars (default ~/.cache/driftwatch)
    DRIFTWATCH_RUN_DIR         data, logs and pid files (default $DRIFTWATCH_HOME/run)
    DRIFTWATCH_KAFKA_VERSION   Apache Kafka version (default 3.9.1)
    DRIFTWATCH_KAFKA_PORT      broker port (default 9092)
    DRIFTWATCH_KAFKA_CONTROLLER_PORT  controller port (default 9093)
    DRIFTWATCH_REDIS_PORT      Redis port (default 6379)
    DRIFTWATCH_KAFKA_SECURE_PORT  SASL_SSL port of kafka-secure (default 9094; controller 9095:
                               DRIFTWATCH_KAFKA_SECURE_CONTROLLER_PORT)
    DRIFTWATCH_REDIS_TLS_PORT  TLS port of redis-tls (default 6390)
    DRIFTWATCH_PROMETHEUS_PORT Prometheus port (default 9090)
    DRIFTWATCH_PROMETHEUS_CONFIG  its scrape config (default deploy/prometheus/prometheus.local.yml)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
HOME = Path(os.environ.get("DRIFTWATCH_HOME", Path.home() / ".cache" / "driftwatch"))
RUN = Path(os.environ.get("DRIFTWATCH_RUN_DIR", HOME / "run"))
KAFKA_VERSION = os.environ.get("DRIFTWATCH_KAFKA_VERSION", "3.9.1")
START_TIMEOUT_S = float(os.environ.get("DRIFTWATCH_START_TIMEOUT", "120"))
STOP_GRACE_S = 30.0

KAFKA_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>driftwatch.local</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>@KAFKA_VERSION@</version>
    </dependency>
    <!-- kafka_2.13's POM carries no logging backend (KAFKA-6317): add reload4j -->
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version>
    </dependency>
    <dependency>
      <groupId>ch.qos.reload4j</groupId><artifactId>reload4j</artifactId><version>1.2.25</version>
    </dependency>
  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId>
    <version>3.8.1</version>
    <configuration>
      <outputDirectory>${project.build.directory}/kafka-libs</outputDirectory>
      <includeScope>runtime</includeScope>
    </configuration>
  </plugin></plugins></build>
</project>
"""

KAFKA_PROPERTIES = """# single-node KRaft broker+controller for local development and tests
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:@CONTROLLER_PORT@
listeners=PLAINTEXT://127.0.0.1:@BROKER_PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@
advertised.listeners=PLAINTEXT://127.0.0.1:@BROKER_PORT@
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=@DATA_DIR@
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
log.cleaner.dedupe.buffer.size=16777216
"""

KAFKA_LOG4J = """log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
"""

# Kafka 4.x also loads log4j2 (for its dynamic log levels); without a configuration it prints
# an error to stdout. The log lines themselves still go through reload4j above.
KAFKA_LOG4J2 = """status = warn
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
"""


class ServiceError(RuntimeError):
    """A service could not be installed, started or stopped."""


def log(msg: str) -> None:
    print(f"[services] {msg}", file=sys.stderr, flush=True)


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def random_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes one (Kafka's ``Uuid.randomUuid``).

    A random UUID's 16 bytes in URL-safe base64 without padding (22 characters), never
    starting with ``-``. Made here rather than by the tool, whose stdout may carry log noise.
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass
class Service:
    name: str
    ports: tuple[int, ...]
    version: str = ""
    #: a line the service logs once it serves clients (an open port may come earlier)
    ready_line: ClassVar[str] = ""
    #: lines that mean a start-up has failed although the process lives on
    failed_lines: ClassVar[tuple[str, ...]] = ()

    @property
    def dir(self) -> Path:
        return RUN / self.name

    @property
    def pidfile(self) -> Path:
        return self.dir / "pid"

    @property
    def logfile(self) -> Path:
        return self.dir / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.ports[0]}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.ports[0])

    # -- subclasses fill these in
    def install(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files and data directories before the process starts."""

    def start(self) -> str:
        if self.running():
            log(f"{self.name} already running at {self.address} (pid {self.pid()})")
            return "already-running"
        if self.pid() is not None:
            log(f"{self.name} process {self.pid()} alive but not listening: stopping it first")
            self.stop()
        for port in self.ports:
            if port_open(port):
                raise ServiceError(
                    f"cannot start {self.name}: port {HOST}:{port} is already in use by another "
                    f"process (not one started by this script). Stop it, or choose another port "
                    f"with DRIFTWATCH_{self.name.upper().replace('-', '_')}_PORT."
                )
        self.install()
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._start_once()
        except ServiceError as exc:
            if not self.reset():
                raise
            log(f"{exc}\n{self.name}: starting once more from a fresh data directory")
            return self._start_once()

    def reset(self) -> bool:
        """Discard the service's data so that the next start begins afresh; whether it did."""
        return False

    def _start_once(self) -> str:
        self.prepare()
        t0 = time.monotonic()
        log_start = self.logfile.stat().st_size if self.logfile.exists() else 0
        with open(self.logfile, "ab") as out:
            proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.dir,
            )
        self.pidfile.write_text(str(proc.pid))
        deadline = t0 + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {proc.returncode} during start-up; "
                    f"see {self.logfile}:\n{self._errors(log_start)}"
                )
            if port_open(self.ports[0]) and self._logged(self.ready_line, log_start):
                elapsed = time.monotonic() - t0
                log(
                    f"{self.name} {self.version} ready at {self.address} in {elapsed:.1f}s "
                    f"(pid {proc.pid}, log {self.logfile})"
                )
                return "started"
            failed = next((m for m in self.failed_lines if self._logged(m, log_start)), None)
            if failed is not None:
                self.stop()
                raise ServiceError(
                    f"{self.name} failed during start-up ({failed!r} in its log); "
                    f"see {self.logfile}:\n{self._errors(log_start)}"
                )
            time.sleep(0.2)
        self.stop()
        raise ServiceError(
            f"{self.name} did not accept connections on {self.address} within "
            f"{START_TIMEOUT_S:.0f}s; see {self.logfile}:\n{self._errors(log_start)}"
        )

    def _errors(self, since: int) -> str:
        """The first error lines this start logged (the cause), then the log's last lines."""
        try:
            with open(self.logfile, "rb") as f:
                f.seek(since)
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        first = [ln for ln in lines if " ERROR " in ln or " FATAL " in ln][:5]
        head = "first errors:\n" + "\n".join(first) + "\nlast lines:\n" if first else ""
        return head + "\n".join(lines[-20:])

    def _logged(self, line: str, since: int) -> bool:
        """Whether ``line`` was logged after byte ``since`` of the log (this start)."""
        if not line:
            return True
        try:
            with open(self.logfile, "rb") as f:
                f.seek(since)
                return line.encode() in f.read()
        except OSError:
            return False

    def stop(self) -> str:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return "not-running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and pid_alive(pid):
            _reap(pid)
            time.sleep(0.2)
        if pid_alive(pid):
            log(f"{self.name} (pid {pid}) ignored SIGTERM for {STOP_GRACE_S:.0f}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while pid_alive(pid):
                _reap(pid)
                time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)
        log(f"{self.name} stopped (pid {pid})")
        return "stopped"

    def status(self) -> dict[str, object]:
        return {
            "name": self.name,
            "running": self.running(),
            "pid": self.pid(),
            "address": self.address,
            "version": self.version,
            "log": str(self.logfile),
        }


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def apt_install(*packages: str) -> None:
    if os.geteuid() != 0:
        raise ServiceError(
            f"{' '.join(packages)} missing; install it: sudo apt-get install {' '.join(packages)}"
        )
    log(f"installing {' '.join(packages)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env)
    except subprocess.CalledProcessError as exc:
        raise ServiceError(f"apt-get install {' '.join(packages)} failed:\n{exc.stderr}") from exc


class Kafka(Service):
    # a KRaft broker opens its port before it has registered with its controller; clients
    # that connect meanwhile get metadata without a broker (NodeNotReadyError)
    ready_line = "Kafka Server started"
    # a KRaft node whose start-up failed can stay alive, answering every request with an
    # error, instead of exiting
    failed_lines = ("Got exception while starting", "due to fatal exception")

    def __init__(self) -> None:
        super().__init__(
            "kafka",
            (
                int(os.environ.get("DRIFTWATCH_KAFKA_PORT", "9092")),
                int(os.environ.get("DRIFTWATCH_KAFKA_CONTROLLER_PORT", "9093")),
            ),
            KAFKA_VERSION,
        )

    @property
    def libs(self) -> Path:
        return HOME / f"kafka-{KAFKA_VERSION}" / "target" / "kafka-libs"

    def install(self) -> None:
        if (self.libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            return
        if shutil.which("java") is None or shutil.which("mvn") is None:
            apt_install("openjdk-17-jre-headless", "maven")
        build = self.libs.parent.parent
        build.mkdir(parents=True, exist_ok=True)
        (build / "pom.xml").write_text(KAFKA_POM.replace("@KAFKA_VERSION@", KAFKA_VERSION))
        log(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven into {self.libs}")
        try:
            run(["mvn", "-B", "-q", "dependency:copy-dependencies"], cwd=build)
        except subprocess.CalledProcessError as exc:
            raise ServiceError(
                f"mvn could not fetch Kafka {KAFKA_VERSION}:\n{exc.stdout}{exc.stderr}"
            ) from exc

    def _java(self, *args: str) -> list[str]:
        tmp = self.dir / "tmp"
        return [
            "java",
            f"-Dlog4j.configuration=file:{self.dir / 'log4j.properties'}",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            f"-Djava.io.tmpdir={tmp}",
            f"-DZstdTempFolder={tmp}",
            f"-Dorg.xerial.snappy.tempdir={tmp}",
            *args,
        ]

    def properties(self) -> str:
        return (
            KAFKA_PROPERTIES.replace("@BROKER_PORT@", str(self.ports[0]))
            .replace("@CONTROLLER_PORT@", str(self.ports[1]))
            .replace("@DATA_DIR@", str(self.dir / "data"))
        )

    def format_args(self) -> list[str]:
        """Extra arguments of ``kafka-storage format``."""
        return []

    def reset(self) -> bool:
        shutil.rmtree(self.dir / "data", ignore_errors=True)
        return True

    def prepare(self) -> None:
        data = self.dir / "data"
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        props = self.properties()
        cfg = self.dir / "server.properties"
        if (data / "meta.properties").exists() and cfg.exists() and cfg.read_text() != props:
            log("kafka ports or settings changed since the data dir was formatted: starting afresh")
            shutil.rmtree(data)
        write_private(cfg, props)
        (self.dir / "log4j.properties").write_text(KAFKA_LOG4J)
        (self.dir / "log4j2.properties").write_text(KAFKA_LOG4J2)
        if (data / "meta.properties").exists():
            return
        cp = f"{self.libs}/*"
        cluster_id = random_cluster_id()
        try:
            run(
                self._java(
                    "-Xmx256m",
                    "-cp",
                    cp,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(cfg),
                    *self.format_args(),
                )
            )
        except subprocess.CalledProcessError as exc:
            raise ServiceError(
                f"formatting Kafka storage failed:\n{exc.stdout}{exc.stderr}"
            ) from exc

    def command(self) -> list[str]:
        heap = os.environ.get("DRIFTWATCH_KAFKA_HEAP", "768m")
        return self._java(
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-server",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.dir}",
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(self.dir / "server.properties"),
        )


class Redis(Service):
    def __init__(self) -> None:
        super().__init__("redis", (int(os.environ.get("DRIFTWATCH_REDIS_PORT", "6379")),))

    def install(self) -> None:
        if shutil.which("redis-server") is None:
            apt_install("redis-server")
        self.version = run(["redis-server", "--version"]).stdout.split()[2].removeprefix("v=")

    def command(self) -> list[str]:
        return [
            "redis-server",
            "--bind",
            HOST,
            "--port",
            str(self.ports[0]),
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--maxmemory-policy",
            "noeviction",
        ]


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only (it may hold passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)


SECURE = RUN / "secure"
KAFKA_USERS = ("admin", "worker", "stranger")
REDIS_USERS = ("admin", "stranger")


def secure_material() -> dict[str, object]:
    """The test CA, server and client certificates (PEM) and the users' passwords.

    Made once per run directory: the CA signs a server certificate for 127.0.0.1/localhost
    (the brokers' and Redis's) and a client certificate (for mutual TLS); the passwords are
    random. Returned as ``secrets.json`` holds them: file paths and passwords.
    """
    store = SECURE / "secrets.json"
    if store.exists():
        loaded: dict[str, object] = json.loads(store.read_text())
        return loaded
    SECURE.mkdir(parents=True, exist_ok=True)
    if shutil.which("openssl") is None:
        apt_install("openssl")
    ca_key, ca = SECURE / "ca.key", SECURE / "ca.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
         "-subj", "/CN=driftwatch test CA", "-keyout", str(ca_key), "-out", str(ca)])  # fmt: skip
    for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
        key, csr, cert = SECURE / f"{name}.key", SECURE / f"{name}.csr", SECURE / f"{name}.pem"
        ext = SECURE / f"{name}.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            f"extendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
        )
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=driftwatch-{name}",
             "-keyout", str(key), "-out", str(csr)])  # fmt: skip
        run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "3650", "-extfile", str(ext),
             "-out", str(cert)])  # fmt: skip
        key.chmod(0o600)
    # Kafka's PEM keystore: the (PKCS#8, unencrypted) key followed by its certificate
    keystore = SECURE / "server-keystore.pem"
    write_private(
        keystore, (SECURE / "server.key").read_text() + (SECURE / "server.pem").read_text()
    )
    material: dict[str, object] = {
        "ca": str(ca),
        "server_cert": str(SECURE / "server.pem"),
        "server_key": str(SECURE / "server.key"),
        "server_keystore": str(keystore),
        "client_cert": str(SECURE / "client.pem"),
        "client_key": str(SECURE / "client.key"),
        "kafka_passwords": {user: secrets.token_hex(16) for user in KAFKA_USERS},
        "redis_passwords": {user: secrets.token_hex(16) for user in REDIS_USERS},
    }
    write_private(store, json.dumps(material, indent=2))
    return material


def users(material: dict[str, object], kind: str) -> dict[str, str]:
    """The passwords by user of ``secrets.json``'s ``kafka_passwords`` or ``redis_passwords``."""
    found = material[kind]
    if not isinstance(found, dict):
        raise ServiceError(f"{SECURE / 'secrets.json'}: {kind} is not an object; delete the file")
    return {str(k): str(v) for k, v in found.items()}


KAFKA_SECURE_PROPERTIES = """
# the secured twin: clients only over SASL_SSL (SCRAM-SHA-512, TLS with client certificates),
# the broker talks to itself over the same listener as the super user 'admin'
listeners=SASL_SSL://127.0.0.1:@BROKER_PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@
advertised.listeners=SASL_SSL://127.0.0.1:@BROKER_PORT@
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
  org.apache.kafka.common.security.scram.ScramLoginModule required \
  username="admin" password="@ADMIN_PASSWORD@";
ssl.keystore.type=PEM
ssl.keystore.location=@KEYSTORE@
ssl.truststore.type=PEM
ssl.truststore.location=@CA@
listener.name.sasl_ssl.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
# ANONYMOUS: the controller listener (PLAINTEXT, 127.0.0.1 only) that the broker part of
# this combined node uses to reach its own controller
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
"""


class KafkaSecure(Kafka):
    """A KRaft broker with a SASL_SSL listener, SCRAM users and the StandardAuthorizer."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "kafka-secure"
        self.ports = (
            int(os.environ.get("DRIFTWATCH_KAFKA_SECURE_PORT", "9094")),
            int(os.environ.get("DRIFTWATCH_KAFKA_SECURE_CONTROLLER_PORT", "9095")),
        )

    def properties(self) -> str:
        material = secure_material()
        passwords = users(material, "kafka_passwords")
        plain = super().properties()
        # the plaintext listener lines are replaced by the secured ones below
        kept = [
            line
            for line in plain.splitlines()
            if not line.startswith(("listeners=", "advertised.listeners=", "inter.broker.",
                                    "listener.security.protocol.map="))
        ]  # fmt: skip
        secured = (
            KAFKA_SECURE_PROPERTIES.replace("@BROKER_PORT@", str(self.ports[0]))
            .replace("@CONTROLLER_PORT@", str(self.ports[1]))
            .replace("@ADMIN_PASSWORD@", passwords["admin"])
            .replace("@KEYSTORE@", str(material["server_keystore"]))
            .replace("@CA@", str(material["ca"]))
        )
        return "\n".join(kept) + "\n" + secured

    def format_args(self) -> list[str]:
        # SCRAM credentials live in the metadata log: created at format time (KIP-900)
        passwords = users(secure_material(), "kafka_passwords")
        args: list[str] = []
        for user, password in passwords.items():
            args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        return args

    def status(self) -> dict[str, object]:
        return {**super().status(), "secrets": str(SECURE / "secrets.json")}


class RedisTls(Redis):
    """Redis over TLS only (client certificates required), ``default`` user disabled: an
    ``admin`` user with every right, and ``stranger`` who may only connect."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "redis-tls"
        self.ports = (int(os.environ.get("DRIFTWATCH_REDIS_TLS_PORT", "6390")),)

    def prepare(self) -> None:
        material = secure_material()
        passwords = users(material, "redis_passwords")
        conf = f"""bind {HOST}
port 0
tls-port {self.ports[0]}
tls-cert-file {material["server_cert"]}
tls-key-file {material["server_key"]}
tls-ca-cert-file {material["ca"]}
tls-auth-clients yes
dir {self.dir}
save ""
appendonly no
daemonize no
protected-mode yes
maxmemory-policy noeviction
user default off
user admin on >{passwords["admin"]} ~* &* +@all
user stranger on >{passwords["stranger"]} resetkeys -@all +@connection
"""
        write_private(self.dir / "redis.conf", conf)

    def command(self) -> list[str]:
        # the passwords are in the 0600 config file, not on the command line (ps shows that)
        return ["redis-server", str(self.dir / "redis.conf")]

    def status(self) -> dict[str, object]:
        return {**super().status(), "secrets": str(SECURE / "secrets.json")}


class Prometheus(Service):
    def __init__(self) -> None:
        super().__init__("prometheus", (int(os.environ.get("DRIFTWATCH_PROMETHEUS_PORT", "9090")),))

    def install(self) -> None:
        if shutil.which("prometheus") is None:
            apt_install("prometheus")

    def command(self) -> list[str]:
        config = os.environ.get(
            "DRIFTWATCH_PROMETHEUS_CONFIG",
            str(REPO / "deploy" / "prometheus" / "prometheus.local.yml"),
        )
        return [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={HOST}:{self.ports[0]}",
            "--web.enable-lifecycle",
        ]


SERVICES: dict[str, Callable[[], Service]] = {
    "kafka": Kafka,
    "redis": Redis,
    "prometheus": Prometheus,
    "kafka-secure": KafkaSecure,
    "redis-tls": RedisTls,
}
DEFAULT = ("kafka", "redis")


def select(name: str) -> list[Service]:
    names = DEFAULT if name == "all" else tuple(SERVICES) if name == "every" else (name,)
    return [SERVICES[n]() for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["install", "start", "stop", "status"])
    parser.add_argument("service", nargs="?", default="all", choices=["all", "every", *SERVICES])
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args(argv)
    results: dict[str, object] = {}
    try:
        for svc in select(args.service):
            if args.action == "install":
                svc.install()
                results[svc.name] = {"result": "installed", **svc.status()}
            elif args.action == "start":
                results[svc.name] = {"result": svc.start(), **svc.status()}
            elif args.action == "stop":
                results[svc.name] = {"result": svc.stop(), **svc.status()}
            else:
                results[svc.name] = svc.status()
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results))
    elif args.action == "status":
        for name, st in results.items():
            if not isinstance(st, dict):
                continue
            state = f"running at {st['address']} (pid {st['pid']})" if st["running"] else "stopped"
            print(f"{name:<11} {state}  log: {st['log']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

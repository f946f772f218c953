"""A local single-node Apache Kafka (KRaft) broker run from the release jars.

No PyPI or Debian package runs a real broker, so the jars come from Maven Central through
``infra/kafka/pom.xml`` and are cached outside git. Used by the local stack
(``billing/stack.py``) and by the test fixtures; settings follow STACK-NOTES.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from schemas import topics as schema_topics

POM = Path(__file__).resolve().parent.parent / "infra" / "kafka" / "pom.xml"
_MARKER = ".complete"
_T = TypeVar("_T")

# Kafka error codes seen when creating topics.
_TOPIC_ALREADY_EXISTS = 36
_TOPICS_READY_S = 30.0


class KafkaSetupError(RuntimeError):
    """The local broker cannot be fetched, started or configured."""


def default_cache_dir(version: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cinema-billing" / f"kafka-{version}"


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise KafkaSetupError(f"`{tool}` not found on PATH: {hint}")
    return path


def fetch_kafka_jars(version: str = "4.1.1", cache_dir: Path | None = None) -> Path:
    """Return a directory holding the broker's jars, fetching them with Maven once.

    The marker file is written only after a complete copy, and the copy lands in a temporary
    directory renamed into place, so an interrupted fetch is never mistaken for a cache hit.
    A file lock serialises concurrent first runs (stack and tests).
    """
    target = cache_dir or default_cache_dir(version)
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _MARKER).is_file():
            return target
        mvn = _require("mvn", "install Maven (apt-get install maven) to fetch the Kafka jars")
        _require("java", "install a JDK 17+ (apt-get install openjdk-17-jre-headless)")
        if not POM.is_file():
            raise KafkaSetupError(f"Kafka pom not found at {POM}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            proc = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(POM),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={tmp}",
                    "-DincludeScope=runtime",
                    f"-Dkafka.version={version}",
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            jars = sorted(p.name for p in tmp.glob("*.jar"))
            if proc.returncode != 0 or not any(j.startswith("kafka_") for j in jars):
                raise KafkaSetupError(
                    f"mvn could not fetch Kafka {version} (exit {proc.returncode}):\n"
                    f"{(proc.stdout + proc.stderr)[-3000:]}"
                )
            (tmp / _MARKER).write_text("\n".join(jars) + "\n")
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _new_cluster_id() -> str:
    """A Kafka Uuid string (url-safe base64 of 16 bytes); Kafka rejects ones starting '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion even when the caller is inside a running event loop."""
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="kafka-local-check", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


_LOG4J2 = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


@dataclass(frozen=True)
class BrokerSecurity:
    """SASL/SCRAM-SHA-512 over TLS on the client listener, with ACLs (StandardAuthorizer,
    nothing allowed without an ACL). ``keystore_pem`` holds the broker's PKCS#8 key and its
    certificate, ``ca_pem`` the CA that signed it. ``users`` (name -> password) exist from
    format time; ``admin`` is one of them, the brokers' own and the only super user besides
    the controller listener's (KRaft cannot use SCRAM there: it stays PLAINTEXT, on
    loopback)."""

    keystore_pem: Path
    ca_pem: Path
    users: Mapping[str, str]
    admin: str = "admin"


class KafkaBroker:
    """One KRaft broker+controller process listening on 127.0.0.1 only.

    Everything (KRaft metadata, topic logs, the cluster id, the process log) lives in
    ``data_dir``, so a restart on the same directory keeps topics and committed offsets.
    Alone by default; :class:`KafkaCluster` runs several as one cluster (``node_id``,
    ``voters``, ``cluster_id``, ``replication``).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        controller_port: int,
        jars: Path,
        *,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        replication: int = 1,
        min_insync: int = 1,
        security: BrokerSecurity | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.controller_port = controller_port
        self.jars = Path(jars)
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{controller_port}"
        self.cluster_id = cluster_id
        self.replication = replication
        self.min_insync = min_insync
        self.security = security
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------------ config
    def _properties(self) -> str:
        rf, isr = str(self.replication), str(self.min_insync)
        client = "SASL_SSL" if self.security else "PLAINTEXT"
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": (
                f"{client}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"{client}://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": client,
            "listener.security.protocol.map": f"{client}:{client},CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            "num.partitions": "1",
            "default.replication.factor": rf,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "min.insync.replicas": isr,
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "2000",
            "auto.create.topics.enable": "false",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            "log.retention.hours": "-1",
            # After a SIGKILL the restarted broker waits out its old registration: keep it short.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
        }
        if self.security is not None:
            sec = self.security
            admin_password = sec.users[sec.admin]
            settings.update(
                {
                    "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                    "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required "
                        f'username="{sec.admin}" password="{admin_password}";'
                    ),
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.location": str(sec.keystore_pem),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.location": str(sec.ca_pem),
                    "ssl.endpoint.identification.algorithm": "https",
                    "authorizer.class.name": (
                        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
                    ),
                    "allow.everyone.if.no.acl.found": "false",
                    # ANONYMOUS: the brokers on the controller listener (loopback only).
                    "super.users": f"User:{sec.admin};User:ANONYMOUS",
                }
            )
        return "".join(f"{k}={v}\n" for k, v in settings.items())

    def _java(self, main: str, *args: str) -> list[str]:
        java = _require("java", "install a JDK 17+ (apt-get install openjdk-17-jre-headless)")
        return [
            java,
            "-Xmx512m",
            "-Xms64m",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{self.jars}/*",
            main,
            *args,
        ]

    def _prepare(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self._properties())
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        if not (self.data_dir / "data" / "meta.properties").is_file():
            id_file = self.data_dir / "cluster.id"
            if not id_file.is_file():
                id_file.write_text(self.cluster_id or _new_cluster_id())
            scram: list[str] = []
            for name, password in (self.security.users if self.security else {}).items():
                scram += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
            cmd = self._java(
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                id_file.read_text().strip(),
                "-c",
                str(props),
                *scram,
            )
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            if proc.returncode != 0:
                raise KafkaSetupError(
                    f"kafka StorageTool format failed (exit {proc.returncode}):\n"
                    f"{(proc.stdout + proc.stderr)[-3000:]}"
                )
        return props

    # ------------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60) -> None:
        """Start the broker and return once it serves metadata; raise with its log if not."""
        if self.is_running():
            return
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def admin_kwargs(self) -> dict[str, Any]:
        """aiokafka arguments that reach this broker as its super user (setup, checks)."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.bootstrap}
        if self.security is not None:
            from aiokafka.helpers import create_ssl_context

            sec = self.security
            kwargs.update(
                security_protocol="SASL_SSL",
                ssl_context=create_ssl_context(cafile=str(sec.ca_pem)),
                sasl_mechanism="SCRAM-SHA-512",
                sasl_plain_username=sec.admin,
                sasl_plain_password=sec.users[sec.admin],
            )
        return kwargs

    def launch(self) -> None:
        """Start the process without waiting (a cluster starts all its nodes, then waits)."""
        if self.is_running():
            return
        if not any(self.jars.glob("kafka_*.jar")):
            raise KafkaSetupError(f"no Kafka jars in {self.jars} (use fetch_kafka_jars())")
        props = self._prepare()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._java("kafka.Kafka", str(props)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal must not kill it mid-write
            )

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if not self.is_running():
                raise KafkaSetupError(
                    f"Kafka broker exited with {self._proc and self._proc.returncode}; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if _run_sync(_metadata_ready(self.admin_kwargs())):
                    return
            except Exception as exc:
                last_error = exc
            time.sleep(0.2)
        raise KafkaSetupError(
            f"Kafka broker not ready after {timeout}s ({last_error!r}); "
            f"log {self.log_path}:\n{self._log_tail()}"
        )

    def stop(self, timeout: float = 30) -> None:
        """Graceful stop (SIGTERM: the broker flushes and closes its logs), SIGKILL if stuck."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, no shutdown: for chaos tests (the next start recovers its logs)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        self.start(timeout)


class KafkaCluster:
    """``size`` KRaft nodes with combined roles on one machine, one controller quorum, from
    the same jars: the cluster tests' stand-in for a production cluster (STACK-NOTES: ports
    below 32768). Node i's directory is ``root/node-i``; ``replication`` and ``min_insync``
    are the brokers' defaults (offsets, transactions, topics created without them)."""

    def __init__(
        self,
        root: Path,
        jars: Path,
        *,
        size: int = 3,
        replication: int = 3,
        min_insync: int = 2,
        ports: list[tuple[int, int]] | None = None,
        security: BrokerSecurity | None = None,
    ) -> None:
        ports = ports or [(_low_free_port(), _low_free_port()) for _ in range(size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_p, c) in enumerate(ports))
        cluster_id = _new_cluster_id()
        self.brokers = [
            KafkaBroker(
                Path(root) / f"node-{i + 1}",
                port,
                controller_port,
                jars,
                node_id=i + 1,
                voters=voters,
                cluster_id=cluster_id,
                replication=replication,
                min_insync=min_insync,
                security=security,
            )
            for i, (port, controller_port) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    def start(self, timeout: float = 90) -> None:
        for b in self.brokers:
            b.launch()
        try:
            for b in self.brokers:
                b.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for b in self.brokers:
            b.stop()


def _low_free_port() -> int:
    """A free port below the ephemeral range (a broker on one in it may clash, STACK-NOTES)."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise KafkaSetupError("no free port below 32768")


async def _metadata_ready(client: Mapping[str, Any]) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**client, request_timeout_ms=5000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
        return bool(cluster.get("brokers")) and cluster.get("controller_id", -1) >= 0
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap: str,
    partitions: int,
    topics: Iterable[str] = schema_topics.BILLING_TOPICS,
    replication: int = 1,
    *,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    client: Mapping[str, Any] | None = None,
) -> None:
    """Create the missing topics, then wait until every partition has a leader.

    Idempotent. Never relies on auto-create (it is disabled: a topic created by a stray
    producer would get the wrong partition count and break co-partitioning), and refuses an
    existing topic with a different partition count rather than silently mis-keying.
    ``configs`` (topic -> Kafka config) are applied at creation and set again on topics that
    exist (retention and the like can change; replication cannot, the start check says so).
    ``client``: aiokafka connection arguments (billing.kafka_client.client_kwargs).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    wanted = list(dict.fromkeys(topics))
    if not wanted:
        return
    configs = configs or {}
    connect = dict(client or {"bootstrap_servers": bootstrap})
    admin = AIOKafkaAdminClient(**connect, request_timeout_ms=10000)
    await admin.start()
    try:
        counts = await _partition_counts(admin, wanted)
        missing = [t for t in wanted if t not in counts]
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(t, partitions, replication, topic_configs=dict(configs.get(t, {})))
                    for t in missing
                ]
            )
            for name, code, message in _topic_errors(response):
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise KafkaSetupError(f"cannot create topic {name!r}: {code} {message}")
        existing = [t for t in wanted if t in counts and configs.get(t)]
        if existing:
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t, dict(configs[t])) for t in existing]
            )
        deadline = time.monotonic() + _TOPICS_READY_S
        while True:
            counts = await _partition_counts(admin, wanted, need_leaders=True)
            wrong = {t: n for t, n in counts.items() if n != partitions}
            if wrong:
                raise KafkaSetupError(
                    f"topics exist with a partition count other than {partitions}: {wrong}"
                )
            if len(counts) == len(wanted):
                return
            if time.monotonic() > deadline:
                late = sorted(set(wanted) - set(counts))
                raise KafkaSetupError(f"topics not ready after {_TOPICS_READY_S}s: {late}")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


# Kafka's ACL codes (org.apache.kafka.common.acl / resource).
_RESOURCE = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
_OPERATION = {
    "all": 2,
    "read": 3,
    "write": 4,
    "create": 5,
    "describe": 8,
    "describe_configs": 10,
    "idempotent_write": 12,
}
_PATTERN = {"literal": 3, "prefixed": 4}
_ALLOW = 3


@dataclass(frozen=True)
class Grant:
    """Allow ``principal`` (``User:name``) ``operation`` on a resource, from any host."""

    principal: str
    operation: str
    resource: str  # topic | group | cluster | transactional_id
    name: str
    pattern: str = "literal"  # or prefixed


async def ensure_acls(client: Mapping[str, Any], grants: Iterable[Grant]) -> None:
    """Create ACLs through the broker's CreateAcls API (aiokafka has no admin call for it;
    its protocol classes have the request). Creating an existing ACL is a no-op."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    admin = AIOKafkaAdminClient(**client, request_timeout_ms=10000)
    await admin.start()
    try:
        for g in grants:
            request = CreateAclsRequest(
                _RESOURCE[g.resource],
                g.name,
                _PATTERN[g.pattern],
                g.principal,
                "*",
                _OPERATION[g.operation],
                _ALLOW,
            )
            response = await admin._send_request(request)
            for code, message in response.creation_responses:
                if code != 0:
                    raise KafkaSetupError(f"cannot create ACL {g}: {code} {message}")
    finally:
        await admin.close()


async def _partition_counts(
    admin: Any, names: list[str], *, need_leaders: bool = False
) -> dict[str, int]:
    """Partition count per existing topic; with need_leaders, only topics fully led."""
    counts: dict[str, int] = {}
    for t in await admin.describe_topics(names):
        if t["error_code"] != 0:
            continue
        parts = t["partitions"]
        if need_leaders and any(p["error_code"] != 0 or p["leader"] < 0 for p in parts):
            continue
        counts[t["topic"]] = len(parts)
    return counts


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    out: list[tuple[str, int, str | None]] = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 else None
        out.append((str(name), int(code), message))
    return out


# Who may write each billing topic (role -> the processes of billing/config.py): above all,
# billing.provider-events and billing.commands only from the API and the worker; the history
# worker and the reconciliation CLI only feed reports. Every role may read and describe the
# billing topics and use consumer groups.
TOPIC_WRITERS: dict[str, tuple[str, ...]] = {
    schema_topics.COMMANDS: ("api", "worker"),
    schema_topics.PROVIDER_EVENTS: ("api", "worker"),
    schema_topics.EVENTS: ("worker",),
    schema_topics.PROVIDER_REPORT: ("worker", "history", "reconciler"),
    schema_topics.NOTIFICATIONS: ("worker",),
    schema_topics.ENTITLEMENTS: ("worker",),
}


def acl_grants(users: Mapping[str, str], *, faust_prefixes: Iterable[str] = ()) -> list[Grant]:
    """The ACLs of the billing topics for ``users`` (role -> Kafka user name): reads for
    every role, writes per :data:`TOPIC_WRITERS`, and for the worker and history roles their
    Faust apps' own topics (changelogs: names starting with an app id in ``faust_prefixes``).
    """
    grants: list[Grant] = []
    for role, user in users.items():
        principal = f"User:{user}"
        grants += [
            Grant(principal, "read", "group", "*"),
            Grant(principal, "describe", "group", "*"),
        ]
        for topic in schema_topics.BILLING_TOPICS:
            grants += [
                Grant(principal, "read", "topic", topic),
                Grant(principal, "describe", "topic", topic),
                Grant(principal, "describe_configs", "topic", topic),
            ]
            if role in TOPIC_WRITERS[topic]:
                grants.append(Grant(principal, "write", "topic", topic))
        if role in ("worker", "history"):
            grants += [
                Grant(principal, "all", "topic", prefix, "prefixed") for prefix in faust_prefixes
            ]
    return grants

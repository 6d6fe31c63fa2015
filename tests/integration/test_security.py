"""Secured connections against a real secured broker and Redis (``kafka-secure``,
``redis-tls`` of scripts/services.py): SASL_SSL with SCRAM-SHA-512 and client certificates,
the StandardAuthorizer with exactly the ACLs the README lists, Redis over TLS with an ACL
user restricted to the worker's key prefix.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest
from pydantic import SecretStr

from stream.model.snapshots import SnapshotStore
from stream.service.config import Settings, TopicSettings, WorkerSettings, load_settings
from stream.service.kafka_access import OPERATIONS, Acl, required_acls
from stream.service.kafka_security import client_options
from stream.service.redis_client import acl_rules, redis_client
from stream.service.topics import ensure_topics
from stream.tools.synthetic import CardStream
from tests.integration.conftest import Secure
from tests.integration.worker_process import WorkerProcess, settings_env

REPO = Path(__file__).resolve().parents[2]
KEY = "integration-test-key"
pytestmark = pytest.mark.integration


# -- settings, grants, clients ---------------------------------------------------------


def secure_settings(
    secure: Secure,
    uid: str,
    kafka_user: str = "worker",
    kafka_password: str | None = None,
    redis_user: str = "",
    redis_password: str = "",
    metrics_port: int = 0,
) -> Settings:
    sample = load_settings(REPO / "driftwatch.toml")
    return Settings(
        kafka=secure.kafka_settings(kafka_user),
        kafka_sasl_password=kafka_password or secure.kafka_passwords[kafka_user],
        topics=TopicSettings(
            events=f"events-{uid}",
            labels=f"labels-{uid}",
            predictions=f"predictions-{uid}",
            alerts=f"alerts-{uid}",
            dlq=f"events.dlq-{uid}",
            monitor=f"monitor-{uid}",
            partitions=2,
        ),
        redis=secure.redis_settings(redis_user or "admin", f"sec-{uid}"),
        redis_password=redis_password or secure.redis_passwords["admin"],
        worker=WorkerSettings(
            app_id=f"dwsec-{uid}",
            batch_max_latency="0s",
            metrics_address=f"127.0.0.1:{metrics_port}",
        ),
        features=sample.features,
        windows=sample.windows,
        model=sample.model.model_copy(update={"publish_every": 200}),
    )


def as_admin(s: Settings, secure: Secure) -> Settings:
    """The same names, connected as the Kafka super user and the Redis admin."""
    return s.model_copy(
        update={
            "kafka": s.kafka.model_copy(update={"sasl_username": "admin"}),
            "kafka_sasl_password": SecretStr(secure.kafka_passwords["admin"]),
            "redis": s.redis.model_copy(update={"username": "admin"}),
            "redis_password": SecretStr(secure.redis_passwords["admin"]),
        }
    )


async def grant(admin: Settings, principal: str, acls: list[Acl]) -> None:
    """Create ``acls`` for ``principal`` (as kafka-acls.sh --add would), as the super user."""
    client = AIOKafkaAdminClient(**client_options(admin))
    await client.start()
    try:
        for acl in acls:
            request = CreateAclsRequest(
                resource_type=2 if acl.resource == "topic" else 3,
                resource_name=acl.name,
                resource_pattern_type_filter=4 if acl.prefixed else 3,  # PREFIXED / LITERAL
                principal=f"User:{principal}",
                host="*",
                operation=OPERATIONS[acl.operation],
                permission_type=3,  # ALLOW
            )
            response = await client._send_request(request)  # noqa: SLF001
            errors = [r for r in response.creation_responses if r[0]]
            assert not errors, f"creating {acl}: {errors}"
    finally:
        await client.close()


async def add_redis_user(admin: Settings, user: str, password: str, rules: str) -> None:
    client = redis_client(admin)
    try:
        await client.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}",
                                     *rules.split())  # fmt: skip
    finally:
        await client.aclose()


async def produce(s: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(**client_options(s), acks="all", linger_ms=5)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def consume(s: Settings, topic: str, expected: int, timeout: float) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(s),
        group_id=f"test-reader-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < expected:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return out


async def committed(s: Settings, group: str) -> dict[object, object]:
    client = AIOKafkaAdminClient(**client_options(s))
    await client.start()
    try:
        return dict(await client.list_consumer_group_offsets(group))
    finally:
        await client.close()


async def learned(s: Settings, wait_for: int, timeout: float) -> int:
    client = redis_client(s)
    store = SnapshotStore(client, s.redis.prefix, s.model.name, KEY.encode())
    deadline = time.monotonic() + timeout
    n = 0
    try:
        while time.monotonic() < deadline:
            checkpoint = await store.load_checkpoint()
            n = checkpoint[0].n_learned if checkpoint is not None else 0
            if n >= wait_for:
                return n
            await asyncio.sleep(0.5)
    finally:
        await client.aclose()
    return n


def events(n: int, seed: int) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    cards = CardStream(seed=seed, n_cards=50, run_id=f"sec{seed}")
    pairs = list(cards.events(n))
    records = [(e["entity_id"].encode(), orjson.dumps(e)) for e, _ in pairs]
    labels = [
        (e["event_id"].encode(), orjson.dumps({"event_id": e["event_id"], "label": y}))
        for e, y in pairs
    ]
    return records, labels


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def worker_settings(secure: Secure, uid: str) -> Settings:
    """A worker's settings with exactly the README's Kafka ACLs and Redis ACL rules."""
    password = secrets.token_hex(12)
    s = secure_settings(
        secure, uid, redis_user=f"dw-{uid}", redis_password=password, metrics_port=free_port()
    )
    admin = as_admin(s, secure)
    asyncio.run(grant(admin, "worker", required_acls(s)))
    asyncio.run(add_redis_user(admin, f"dw-{uid}", password, acl_rules(s.redis.prefix)))
    return s


def start_worker(s: Settings, workdir: Path, started: list[WorkerProcess]) -> WorkerProcess:
    proc = WorkerProcess(s, workdir, {"DRIFTWATCH_SNAPSHOT_KEY": KEY})
    started.append(proc)
    proc.start(timeout=120)
    return proc


def secret_values(s: Settings) -> list[str]:
    return [
        v.get_secret_value()
        for v in (s.kafka_sasl_password, s.redis_password, s.snapshot_key)
        if v is not None
    ] + [KEY]


# -- end to end ------------------------------------------------------------------------


def test_worker_scores_and_learns_over_sasl_ssl_and_tls_redis(
    secure: Secure, worker_settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    s = worker_settings
    admin = as_admin(s, secure)
    n = 1200
    records, labels = events(n, seed=5)
    proc = start_worker(s, tmp_path / "worker", workers)
    asyncio.run(produce(admin, s.topics.events, records))
    out = asyncio.run(consume(admin, s.topics.predictions, n, 120))
    ids = {orjson.loads(v)["event_id"] for v in out}
    assert ids == {orjson.loads(v)["event_id"] for _, v in records}

    asyncio.run(produce(admin, s.topics.labels, labels))
    assert asyncio.run(learned(admin, n, 120)) == n  # every label joined and learned once

    # no secret in a log line, in a metric, or in `driftwatch config`
    metrics = urllib.request.urlopen(  # noqa: S310 - a fixed http URL on 127.0.0.1
        f"http://{s.worker.metrics_address}/metrics", timeout=10
    ).read()
    assert b"driftwatch_" in metrics
    config = subprocess.run(
        [sys.executable, "-m", "stream.service.cli", "config"],
        env={**settings_env(s), "DRIFTWATCH_SNAPSHOT_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"sasl_username": "worker"' in config.stdout
    log = proc.log_text()
    assert "effective configuration" in log
    for secret in secret_values(s):
        assert secret not in log
        assert secret.encode() not in metrics
        assert secret not in config.stdout + config.stderr


# -- start-up failures: one line, nothing consumed -----------------------------------


def run_to_exit(s: Settings, workdir: Path, timeout: float = 90) -> tuple[int, list[str]]:
    """Run a worker that must exit by itself within ``timeout``; its exit code and output."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**settings_env(s), "DRIFTWATCH_SNAPSHOT_KEY": KEY}
    proc = subprocess.run(
        [sys.executable, "-m", "stream.service.cli", "worker"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, (proc.stdout + proc.stderr).splitlines()


def change(s: Settings, **kafka: object) -> Settings:
    return s.model_copy(update={"kafka": s.kafka.model_copy(update=kafka)})


def change_redis(s: Settings, **redis: object) -> Settings:
    return s.model_copy(update={"redis": s.redis.model_copy(update=redis)})


CASES = {
    "wrong SASL password": (
        lambda s: s.model_copy(update={"kafka_sasl_password": SecretStr("not-the-password")}),
        ["kafka at", "SaslAuthenticationFailed"],
    ),
    "wrong Redis password": (
        lambda s: s.model_copy(update={"redis_password": SecretStr("not-the-password")}),
        ["redis at rediss://", "AuthenticationError: invalid username-password pair"],
    ),
    "no CA for the broker": (
        lambda s: change(s, ssl_cafile=None),
        ["kafka at", "CERTIFICATE_VERIFY_FAILED"],
    ),
    "no CA for Redis": (
        lambda s: change_redis(s, ssl_cafile=None),
        ["redis at rediss://", "CERTIFICATE_VERIFY_FAILED"],
    ),
    "plaintext against the SASL_SSL port": (
        lambda s: s.model_copy(
            update={
                "kafka": s.kafka.model_construct(bootstrap=s.kafka.bootstrap),
                "kafka_sasl_password": None,
            }
        ),
        ["kafka at", "Unable to bootstrap"],
    ),
    "plaintext against the Redis TLS port": (
        lambda s: change_redis(
            s,
            url=s.redis.url.replace("rediss://", "redis://"),
            ssl_cafile=None,
            ssl_certfile=None,
            ssl_keyfile=None,
        ),
        ["redis at redis://", "Error"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_wrong_connection_setting_stops_start_up_with_one_line(
    case: str, secure: Secure, worker_settings: Settings, tmp_path: Path
) -> None:
    s = worker_settings
    admin = as_admin(s, secure)
    asyncio.run(ensure_topics(admin))
    records, _ = events(20, seed=7)
    asyncio.run(produce(admin, s.topics.events, records))
    make_wrong, expected = CASES[case]

    t0 = time.monotonic()
    code, lines = run_to_exit(make_wrong(s), tmp_path / "worker")
    said = [line for line in lines if line.startswith("driftwatch:")]
    assert code == 1, lines
    assert len(said) == 1 and said[0].startswith("driftwatch: cannot start: "), lines
    assert all(text in said[0] for text in expected), said
    assert not [line for line in lines if "Traceback" in line], lines
    assert time.monotonic() - t0 < 60
    # nothing consumed: neither of the worker's groups committed anything, no prediction
    assert asyncio.run(committed(admin, s.worker.app_id)) == {}
    assert asyncio.run(committed(admin, f"{s.worker.app_id}-ingest")) == {}
    assert asyncio.run(consume(admin, s.topics.predictions, 1, 3)) == []
    for secret in secret_values(s) + ["not-the-password"]:
        assert all(secret not in line for line in lines)


def test_a_missing_ca_file_stops_start_up_naming_the_field(
    worker_settings: Settings, tmp_path: Path
) -> None:
    env = settings_env(worker_settings)
    env["DRIFTWATCH_KAFKA"] = orjson.dumps(
        {**worker_settings.kafka.model_dump(mode="json"), "ssl_cafile": str(tmp_path / "no.pem")}
    ).decode()
    proc = subprocess.run(
        [sys.executable, "-m", "stream.service.cli", "worker"],
        env={**env, "DRIFTWATCH_SNAPSHOT_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"invalid config field 'kafka.ssl_cafile' (got '{tmp_path / 'no.pem'}')" in proc.stderr


# -- missing rights -----------------------------------------------------------------


def test_a_principal_without_acls_is_told_which_are_missing(
    secure: Secure, uid: str, tmp_path: Path
) -> None:
    s = secure_settings(secure, uid, kafka_user="stranger")
    code, lines = run_to_exit(s, tmp_path / "worker")
    said = [line for line in lines if line.startswith("driftwatch:")]
    assert code == 1, lines
    assert len(said) == 1, lines
    assert "principal stranger lacks ACLs" in said[0]
    assert f"Read on topic 'events-{uid}'" in said[0]
    assert f"Read on group 'dwsec-{uid}-ingest'" in said[0]


def test_one_missing_acl_is_named(secure: Secure, uid: str, tmp_path: Path) -> None:
    s = secure_settings(secure, uid)
    admin = as_admin(s, secure)
    gap = Acl("topic", s.topics.predictions, "Write")
    asyncio.run(grant(admin, "worker", [a for a in required_acls(s) if a != gap]))
    code, lines = run_to_exit(s, tmp_path / "worker")
    said = [line for line in lines if line.startswith("driftwatch:")]
    assert code == 1, lines
    assert said[-1].endswith(
        f"principal worker lacks ACLs: Write on topic 'predictions-{uid}' (README: Least privilege)"
    ), said
    assert asyncio.run(committed(admin, f"{s.worker.app_id}-ingest")) == {}


def test_a_redis_user_without_rights_is_told_the_command(
    secure: Secure, uid: str, tmp_path: Path
) -> None:
    s = secure_settings(
        secure, uid, redis_user="stranger", redis_password=secure.redis_passwords["stranger"]
    )
    code, lines = run_to_exit(s, tmp_path / "worker")
    said = [line for line in lines if line.startswith("driftwatch:")]
    assert code == 1, lines
    assert len(said) == 1 and "NoPermissionError" in said[0] and "'set' command" in said[0], lines

"""Create driftwatch's Kafka topics before the worker subscribes to them.

Faust only declares its internal topics; a source topic that does not exist yet is
ignored at assignment until the next metadata refresh (minutes), and one created
implicitly by a producer gets the broker's default partition count. Creating them
up front avoids both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.structs import TopicPartition

from stream.exceptions import DriftwatchError
from stream.service.config import KafkaSettings, Settings
from stream.service.group_offsets import committed_offsets
from stream.service.kafka_security import client_options

log = logging.getLogger(__name__)


def train_topic_name(settings: Settings) -> str:
    """The single-partition topic that serialises learning for one model.

    >>> train_topic_name(Settings(worker={"app_id": "dw"}, model={"name": "fraud"}))
    'dw-train-fraud'
    """
    return f"{settings.worker.app_id}-train-{settings.model.name}"


def topic_partitions(settings: Settings) -> dict[str, int]:
    """Every topic the worker uses, with its partition count."""
    topics = {name: settings.topics.partitions for name in settings.topics.names}
    if settings.challenged:
        topics[settings.topics.shadow] = settings.topics.partitions
    topics[train_topic_name(settings)] = 1  # one partition: one learner, in arrival order
    return topics


async def ensure_topics(settings: Settings, replication: int = 1) -> list[str]:
    """Create the missing topics; returns the names that were created."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = topic_partitions(settings)
        missing = [name for name in wanted if name not in existing]
        if missing:
            new = [NewTopic(n, wanted[n], replication) for n in missing]
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                response = await admin.create_topics(new)
                missing = _created(response.topic_errors)
            if missing:
                await _wait_for_leaders(admin, missing)
            log.info("created topics %s with %d partitions", missing, settings.topics.partitions)
        return missing
    finally:
        await admin.close()


def _created(topic_errors: list[tuple[Any, ...]]) -> list[str]:
    """The topics a CreateTopics response created (or found created by another worker).

    Not authorized (29, 31): left to the access check, which names every missing right;
    any other error is raised.
    """
    created = []
    for name, code, *rest in topic_errors:
        if code in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
            created.append(name)
        elif code not in (29, 31):  # TOPIC_/CLUSTER_AUTHORIZATION_FAILED
            message = rest[0] if rest and rest[0] else ""
            raise for_code(code)(f"creating topic {name}: {message}")
    return created


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str]) -> None:
    """New partitions answer NOT_LEADER until a leader is elected: wait (bounded) for it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        described = await admin.describe_topics(topics)
        ready = [
            d.get("error_code", 1) == 0
            and d["partitions"]
            and all(p.get("leader", -1) >= 0 for p in d["partitions"])
            for d in described
        ]
        if len(ready) == len(topics) and all(ready):
            return
        await asyncio.sleep(0.2)


async def wait_consumed(kafka: Settings | str, group: str, topic: str, wait_s: float) -> None:
    """Wait until ``group`` has committed every partition of ``topic`` up to its end.

    ``kafka`` is the settings, or the bootstrap address of a PLAINTEXT cluster.
    """
    # model_construct: a bare address must not pick up DRIFTWATCH_* from the environment
    plain = KafkaSettings(bootstrap=str(kafka))
    settings = kafka if isinstance(kafka, Settings) else Settings.model_construct(kafka=plain)
    admin = AIOKafkaAdminClient(**client_options(settings))
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        described = await admin.describe_topics([topic])
        parts = [p["partition"] for d in described for p in d.get("partitions", [])]
        if not parts:
            raise TimeoutError(f"topic {topic} has no partitions (does it exist?)")
        tps = [TopicPartition(topic, p) for p in parts]
        deadline = time.monotonic() + wait_s
        while True:
            ends = await consumer.end_offsets(tps)
            left = max(0.0, deadline - time.monotonic())
            committed = await committed_offsets(admin, group, tps, left)
            # a partition the group never committed is absent: nothing consumed
            done = {tp: committed.get(tp, 0) for tp in tps}
            behind = {tp: ends[tp] - done[tp] for tp in tps}
            if all(v <= 0 for v in behind.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {group} still behind on {topic}: {behind}")
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
        await admin.close()


async def partitions_of(settings: Settings, topics: Sequence[str]) -> dict[str, list[int]]:
    """Each topic's partition numbers, from the broker's metadata (a consumer that has not
    subscribed knows none yet). Raises :class:`~stream.exceptions.DriftwatchError` naming the
    topics that do not exist."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    missing = [d["topic"] for d in described if d.get("error_code", 0) or not d["partitions"]]
    if missing:
        raise DriftwatchError(f"topics {missing} do not exist")
    return {d["topic"]: sorted(p["partition"] for p in d["partitions"]) for d in described}

"""A consumer group's committed offsets, read the way the broker means them.

aiokafka's ``AIOKafkaAdminClient.list_consumer_group_offsets`` (0.14) checks only the
per-partition error codes of an OffsetFetch answer. From version 2 on, a group-level error
comes as the answer's own ``error_code`` with *no partitions at all* (Kafka's
``OffsetFetchRequest.getErrorResponse``): a coordinator still loading its groups after a
broker restart (14, COORDINATOR_LOAD_IN_PROGRESS), or no longer the group's coordinator
(15, 16), reads as "this group committed nothing". A worker that looked up where the group
of an earlier version had stopped then started from the earliest offset and replayed all
of it. :func:`committed_offsets` reads the group-level error and asks again while the
coordinator is busy, up to a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.commit import OffsetFetchRequest

COORDINATOR_BUSY = frozenset({14, 15, 16})
"""Group-level errors that pass: COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE,
NOT_COORDINATOR (the last two: find the coordinator again)."""

RETRY_S = 0.5
"""Pause before asking a busy coordinator again."""


async def committed_offsets(
    admin: AIOKafkaAdminClient,
    group: str,
    partitions: Sequence[TopicPartition] | None = None,
    wait_s: float = 30.0,
) -> dict[TopicPartition, int]:
    """The offsets ``group`` committed, by partition; a partition without one is left out.

    ``partitions``: the partitions to ask about (``None``: every partition the group
    committed). While the group's coordinator is busy it is asked again, for up to
    ``wait_s`` seconds.

    Raises
    ------
    aiokafka.errors.KafkaError
        A group-level or partition-level error (the busy ones once ``wait_s`` has passed).
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await _fetch(admin, group, partitions)
        except KafkaError as exc:
            if getattr(exc, "errno", None) not in COORDINATOR_BUSY:
                raise
            if time.monotonic() + RETRY_S > deadline:
                raise
        await asyncio.sleep(RETRY_S)


async def _fetch(
    admin: AIOKafkaAdminClient, group: str, partitions: Sequence[TopicPartition] | None
) -> dict[TopicPartition, int]:
    by_topic: dict[str, list[int]] = defaultdict(list)
    for tp in partitions or ():
        by_topic[tp.topic].append(tp.partition)
    request = OffsetFetchRequest(group, list(by_topic.items()) if partitions is not None else None)
    coordinator = await admin.find_coordinator(group)
    response = await admin._send_request(request, coordinator)  # noqa: SLF001
    code = getattr(response, "error_code", 0)  # v2+: the group's own error
    if code:
        raise for_code(code)(f"offsets of group {group}")
    offsets: dict[TopicPartition, int] = {}
    for topic, answers in response.topics:
        for partition, offset, _metadata, error in answers:
            if error:
                raise for_code(error)(f"offset of group {group} on {topic}[{partition}]")
            if offset >= 0:
                offsets[TopicPartition(topic, partition)] = offset
    return offsets

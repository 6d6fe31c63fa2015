"""Committed offsets read with the OffsetFetch answer's group-level error: a coordinator
still loading its groups (a restarted broker) answers error 14 and no partitions, which is
not "the group committed nothing"."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupAuthorizationFailedError, GroupLoadInProgressError

from stream.service import group_offsets
from stream.service.group_offsets import committed_offsets
from tests.stream.admin_fakes import CoordinatorAdmin, no_wait

TPS = [TopicPartition("events", 0), TopicPartition("events", 1)]


class Admin(CoordinatorAdmin):
    """Answers OffsetFetch with each group-level code of ``codes`` in turn (no partitions, as
    Kafka does from v2 on), then with offset 7 on partition 0 and none (-1) on partition 1."""

    def answer(self, code: int) -> Any:
        if code:
            return SimpleNamespace(error_code=code, topics=[])
        return SimpleNamespace(error_code=0, topics=[("events", [(0, 7, "", 0), (1, -1, "", 0)])])


@pytest.fixture(autouse=True)
def _no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_offsets.asyncio, "sleep", no_wait)


def test_a_loading_coordinator_is_asked_again() -> None:
    admin = Admin([14, 15, 16])
    offsets = asyncio.run(committed_offsets(admin, "g", TPS))  # type: ignore[arg-type]
    assert offsets == {TPS[0]: 7}
    assert admin.asked == 4


def test_a_coordinator_loading_past_the_wait_raises_instead_of_reading_as_no_offsets() -> None:
    with pytest.raises(GroupLoadInProgressError):
        asyncio.run(committed_offsets(Admin([14] * 1000), "g", TPS, wait_s=0.0))  # type: ignore[arg-type]


def test_other_group_errors_raise_at_once() -> None:
    admin = Admin([30])
    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(committed_offsets(admin, "g", TPS))  # type: ignore[arg-type]
    assert admin.asked == 1


def test_aiokafka_alone_reads_a_loading_coordinator_as_no_offsets() -> None:
    """Why the module exists: if this starts failing, aiokafka reads the error itself."""
    admin = Admin([14])
    offsets = asyncio.run(
        AIOKafkaAdminClient.list_consumer_group_offsets(admin, "g", partitions=TPS)  # type: ignore[arg-type]
    )
    assert offsets == {}

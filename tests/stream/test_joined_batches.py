"""A monitor-topic read's batches of one subject, judged as one (stream.monitoring.hub.joined)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from stream.messages import QualityBatch, SubjectBatch
from stream.monitoring.drift import SubjectMonitor
from stream.monitoring.hub import MonitorHub, Routed, joined
from stream.monitoring.state_store import Owned
from stream.service.config import MonitoringSettings, Settings
from stream.service.metrics import Metrics
from stream.service.resilience import Poisoned

SMALL = MonitoringSettings(reference_size=200, window=100, check_every=10, ert=1000)


def stream_messages(seed: int) -> list[SubjectBatch]:
    """A drifting stream from two source partitions, each in event-time order, the second
    20 to 60 ms behind the first, cut into messages of 3 to 60 values; four of them come
    twice."""
    rng, cut = np.random.default_rng(seed), random.Random(seed)
    values = np.concatenate([rng.normal(size=700), rng.normal(1.5, 1, 700)])
    parts = rng.integers(0, 2, len(values))
    behind = np.maximum.accumulate(np.where(parts == 1, np.arange(len(values)), 0)) // 35
    ts = 1_000 + np.arange(len(values)) - parts * (20 + behind % 40)
    for p in (0, 1):  # each partition's times never go back
        ts[parts == p] = np.maximum.accumulate(ts[parts == p])
    out, i = [], 0
    while i < len(values):
        j = min(len(values), i + cut.randint(3, 60))
        out.append(SubjectBatch("amount", "numeric", values[i:j].tolist(), ts[i:j].tolist(),
                                1, parts[i:j].tolist()))  # fmt: skip
        i = j
    # a worker killed after scoring messages 20-23 but before committing their events: its
    # successor scores them again, and their values come again, older than the last ones
    return out[:24] + out[20:24] + out[24:]


def monitor() -> SubjectMonitor:
    detectors = ("ks", "psi", "wasserstein")
    return SubjectMonitor("amount", "numeric", detectors, SMALL, 3, "m", partitions=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joined_batches_raise_the_alerts_of_one_batch_at_a_time(seed: int) -> None:
    messages = stream_messages(seed)
    one = monitor()
    expected = [a for m in messages for a in one.update(m, 5_000)]
    assert any(a["status"] == "firing" for a in expected)

    joined_monitor, found, reads, offset = monitor(), [], random.Random(seed), 0
    while offset < len(messages):
        read = messages[offset : offset + reads.randint(1, 9)]
        routed: list[Routed] = [(0, offset + k, "amount", m) for k, m in enumerate(read)]
        for (_, _, _, batch), _ in joined(routed):
            found += joined_monitor.update(batch, 5_000)
        offset += len(read)

    assert found == expected
    assert joined_monitor.dropped == one.dropped and joined_monitor.order.late == one.order.late
    assert one.order.late > 0  # the values scored again, behind the watermark


def batch(version: int = 1, partitions: list[int] | None = None, kind: Any = "numeric") -> Any:
    return SubjectBatch("x", kind, [1.0], [10], version, partitions)


@pytest.mark.parametrize(
    ("second", "monitor_partition"),
    [
        (batch(version=2, partitions=[0]), 0),  # another model version: judged by another rule
        (batch(partitions=None), 0),  # arrival order after event-time order
        (batch(partitions=[0], kind="categorical"), 0),
        (batch(partitions=[0]), 1),  # another monitor-topic partition
    ],
)
def test_batches_that_differ_stay_apart(second: SubjectBatch, monitor_partition: int) -> None:
    routed: list[Routed] = [(0, 4, "x", batch(partitions=[0])), (monitor_partition, 5, "x", second)]
    assert [len(parts) for _, parts in joined(routed)] == [1, 1]


def test_subjects_keep_their_order_and_quality_counts_go_one_by_one() -> None:
    q = QualityBatch("x", 1, {}, (10, 10))
    routed: list[Routed] = [
        (0, 1, "x", batch(partitions=[0])),
        (0, 1, "quality:x", q),
        (0, 2, "y", SubjectBatch("y", "numeric", [5.0], [11], 1, [0])),
        (0, 2, "quality:x", q),
        (0, 3, "x", SubjectBatch("x", "numeric", [2.0, 3.0], [11, 12], 1, [1, 0])),
    ]
    found = joined(routed)
    assert [(r[2], [o for _, o, _, _ in parts]) for r, parts in found] == [
        ("x", [1, 3]),
        ("quality:x", [1]),
        ("quality:x", [2]),
        ("y", [2]),
    ]
    x = found[0][0][3]
    assert isinstance(x, SubjectBatch)
    assert (x.values, x.ts, x.partitions) == ([1.0, 2.0, 3.0], [10, 11, 12], [0, 1, 0])


class Refusing(SubjectMonitor):
    def update(self, batch: SubjectBatch, now_ms: int = 0) -> list[dict[str, Any]]:
        raise ValueError("cannot take this batch")


def test_a_joined_batch_the_monitor_refuses_reports_each_of_its_messages() -> None:
    settings = Settings.model_validate({"monitoring": {"subjects": ["amount"]}})
    hub = MonitorHub(settings, aioredis.Redis(), Metrics(), b"k" * 32)  # no I/O here
    refusing = Refusing("amount", "numeric", ("ks",), SMALL, 1, "m")
    hub.owned["amount"] = Owned(refusing, 0, offset=6)
    messages = stream_messages(0)[:4]
    routed: list[Routed] = [(0, 5 + k, "amount", m) for k, m in enumerate(messages)]
    poisoned: list[Poisoned] = []

    assert hub._apply_routed(routed, poisoned, 5_000) == []

    # offsets 5 and 6 were applied before a restart; 7 and 8 were joined and refused
    assert [(p.item[0], p.item[1], p.error) for p in poisoned] == [
        (0, 7, "ValueError: cannot take this batch"),
        (0, 8, "ValueError: cannot take this batch"),
    ]
    assert hub.owned["amount"].offset == 8

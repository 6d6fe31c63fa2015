"""Drift decisions in event time on the real broker: partition skew, a SIGKILL, and
calibration kept off the event loop.

Two workers share four partitions. One partition's events are held back and produced only
after the others have run through a mean shift and well past it, with their old event
times; one worker is SIGKILLed during the shift and restarted. The monitors must merge the
partitions by event time (the scorer names each value's partition): exactly one firing and
one resolved alert per (amount, detector), resolved after the shift ended in event time,
and nothing on the stationary subjects.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka.partitioner import DefaultPartitioner

from stream.monitoring.drift import SubjectMonitor
from stream.monitoring.state_store import MonitorStateStore
from stream.service.config import Settings
from stream.tools.synthetic import CardStream, Drift
from tests.integration.kafka_io import consume, consume_until, produce
from tests.integration.test_monitoring import (
    START_MS,
    STEP_MS,
    card_records,
    monitored,
    with_monitoring,
)
from tests.integration.worker_process import ASSIGNED_LINE, WorkerProcess

pytestmark = pytest.mark.integration
KEY = b"integration-test-key"  # the snapshot key worker_factory gives the workers
N, SHIFT_AT, SHIFT_END = 16_000, 4000, 7000
HELD = 3  # the partition held back
SUBJECTS = ("amount", "hour", "merchant_category")


def labelled_records(n: int, drifts: tuple[Drift, ...], seed: int) -> list[tuple[bytes, bytes]]:
    """Card events with their label on them: the model learns right after scoring."""
    cards = CardStream(seed=seed, drifts=drifts, run_id="t", start_ms=START_MS, step_ms=STEP_MS)
    return [(e["entity_id"].encode(), orjson.dumps({**e, "label": y})) for e, y in cards.events(n)]


def partition_of(key: bytes, partitions: int = 4) -> int:
    """The partition the producer's default (murmur2) partitioner gives ``key``."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


async def produce_paced(s: Settings, records: list[tuple[bytes, bytes]], rate: float) -> None:
    for i in range(0, len(records), 200):
        await produce(s.kafka.bootstrap, s.topics.events, records[i : i + 200])
        await asyncio.sleep(200 / rate)


async def delayed(seconds: float, then: Any) -> Any:
    await asyncio.sleep(seconds)
    return await then


def index_of(ts: int) -> int:
    return (ts - START_MS) // STEP_MS


def alerts_of(s: Settings, expected: int, timeout: float) -> list[dict[str, Any]]:
    records = asyncio.run(consume(s.kafka.bootstrap, s.topics.alerts, expected, timeout, settle=5))
    unique = {}
    for r in records:  # at-least-once: a republished alert has the same (alert_id, status)
        alert = orjson.loads(r.value)
        unique[(alert["alert_id"], alert["status"])] = alert
    return list(unique.values())


def saved_monitor(s: Settings, subject: str) -> SubjectMonitor:
    async def load() -> Any:
        redis = aioredis.from_url(s.redis.url)
        try:
            return await MonitorStateStore(redis, s.redis.prefix, KEY).load(subject)
        finally:
            await redis.aclose()

    owned = asyncio.run(load())
    assert owned is not None, f"no saved monitor state for {subject}"
    assert isinstance(owned.monitor, SubjectMonitor)
    return owned.monitor


def wait_predictions(s: Settings, n: int, timeout: float) -> None:
    def done(records: list[Any]) -> bool:
        return len({orjson.loads(r.value)["event_id"] for r in records}) >= n

    asyncio.run(consume_until(s.kafka.bootstrap, [s.topics.predictions], done, timeout))


def test_held_back_partition_and_a_sigkill_give_one_episode_per_detector(
    settings: Settings, worker_factory
) -> None:
    s = with_monitoring(settings, subjects=SUBJECTS)
    records = labelled_records(N, (Drift("mean_shift", SHIFT_AT, SHIFT_END),), seed=31)
    on_time = [r for r in records if partition_of(r[0]) != HELD]
    held = [r for r in records if partition_of(r[0]) == HELD]
    worker_factory(s, name="a")
    doomed = worker_factory(s, name="b")

    async def run() -> float:
        # the three partitions on time (~800 events/s): through the shift and past it
        kill_at = sum(1 for r in on_time if index_of(orjson.loads(r[1])["ts"]) < 5500)
        await produce_paced(s, on_time[:kill_at], 800)
        killed = time.monotonic()
        doomed.kill()  # mid-shift: its partitions wait for the session timeout
        restart = asyncio.to_thread(worker_factory, s, "b-restarted")  # back 2 s later
        await asyncio.gather(produce_paced(s, on_time[kill_at:], 800), delayed(2, restart))
        await asyncio.sleep(2)
        # the held partition, tens of seconds late, with its old event times
        await produce_paced(s, held, 1500)
        return killed

    killed = asyncio.run(run())
    print(f"held partition produced {time.monotonic() - killed:.0f} s after the kill")
    wait_predictions(s, N, 300)
    monitored(s, 300)
    alerts = alerts_of(s, 6, 120)

    drift = Counter(
        (a["subject"], a["detector"], a["status"]) for a in alerts if a["kind"] == "data_drift"
    )
    assert drift == Counter(
        {
            ("amount", d, st): 1
            for d in ("ks", "psi", "wasserstein")
            for st in ("firing", "resolved")
        }
    ), drift
    for a in alerts:
        if a["kind"] == "data_drift" and a["status"] == "resolved":
            assert index_of(a["ts"]) >= SHIFT_END, a  # resolved after the shift, in event time
        if a["kind"] == "data_drift" and a["status"] == "firing":
            start = int(a["alert_id"].rsplit(":", 1)[1])
            print(f"{a['detector']}: shift at {SHIFT_AT}, episode from {index_of(start)}")
            assert SHIFT_AT <= index_of(start) <= SHIFT_AT + 1000, a
            window = a["window"]
            assert index_of(window["to_ts"]) - index_of(window["from_ts"]) < 2 * window["n"], a
    amount = saved_monitor(s, "amount")
    order = amount.order
    print(f"amount (last saved state): late values {order.late}, buffered {order.buffered}, "
          f"watermark delay {order.delay_ms / 1000:.1f} s")  # fmt: skip


# the worker's log lines once Faust has set up logging: [time] [pid] [LEVEL] message
CALIBRATED = re.compile(
    r"^\[(\S+ \S+)\] \[\d+\] \[INFO\] (\S+): reference .* calibrated in ([0-9.]+) s\s*$", re.M
)


def calibrations(worker: WorkerProcess) -> list[tuple[str, float, float]]:
    """(subject, start, end) of every calibration in the worker's log, in epoch seconds."""
    out = []
    for stamp, subject, seconds in CALIBRATED.findall(worker.log_text()):
        end = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append((subject, end - float(seconds), end))
    return out


def test_a_dead_workers_partitions_move_within_the_session_timeout_while_monitors_calibrate(
    settings: Settings, worker_factory
) -> None:
    # every subject of the sample config, calibrated at check_every=10 (five times the work
    # of the default): seconds of calibration as the references complete
    s = with_monitoring(settings, check_every=10)
    survivor = worker_factory(s, name="survivor")
    doomed = worker_factory(s, name="doomed")
    records = card_records(12_000, seed=17)
    stop = threading.Event()

    def produce_paced() -> None:
        for i in range(0, len(records), 200):
            if stop.is_set():
                return
            asyncio.run(produce(s.kafka.bootstrap, s.topics.events, records[i : i + 200]))
            time.sleep(0.2)

    producer = threading.Thread(target=produce_paced, daemon=True)
    producer.start()
    try:
        survivor.wait_for_log("calibrated in", 180)  # the first subject is done: others follow
        before = survivor.log_text().count(ASSIGNED_LINE)
        killed, killed_at = time.monotonic(), time.time()
        doomed.kill()
        survivor.wait_for_log(ASSIGNED_LINE, 60, occurrences=before + 1)
        moved = time.monotonic() - killed
    finally:
        stop.set()
        producer.join(timeout=60)
    until = killed_at + moved
    busy = [(n, a, b) for n, a, b in calibrations(survivor) if a <= until and b >= killed_at]
    print(
        f"partitions moved {moved:.1f} s after the SIGKILL (session timeout "
        f"{s.worker.session_timeout_s:.0f} s); the survivor calibrated "
        f"{len(calibrations(survivor))} subjects, {len(busy)} of them meanwhile "
        f"({sum(min(b, until) - max(a, killed_at) for _, a, b in busy):.1f} s)"
    )
    last = survivor.log_text().rsplit(ASSIGNED_LINE, 1)[1].splitlines()[0]
    assert all(f"{s.topics.events}[{p}]" in last for p in range(4)), last
    assert busy, "no calibration overlapped the rebalance: the test measured nothing"
    assert moved <= s.worker.session_timeout_s + 5

"""subject_batches: the per-subject comprehensions give what one call per value gave."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from stream.features.plan import SINCE_LAST
from stream.messages import SubjectBatch, SubjectColumns, SubjectKind, decode_monitor_message
from stream.monitoring.hub import monitor_messages
from stream.monitoring.subjects import (
    PREDICTION_CLASS,
    PREDICTION_SCORE,
    subject_batches,
    value_of,
)
from stream.records import BatchResult, ScoredEvent, ValidEvent

SUBJECTS: dict[str, SubjectKind] = {
    "amount": "numeric",
    "hour": "numeric",
    "kind": "categorical",
    SINCE_LAST: "numeric",
    PREDICTION_SCORE: "numeric",
    PREDICTION_CLASS: "categorical",
}
# every sort of raw value a feature may hold: numbers, non-finite, wrong types, None
ODD: list[Any] = [
    1.5, 0, 7, -1.0, True, False, None, float("nan"), float("inf"), -float("inf"), "x",
    np.float64(2.5), np.float64("nan"), np.int64(3), [1], 10**12,
]  # fmt: skip


def reference_batches(
    scored: Sequence[ScoredEvent],
    subjects: Mapping[str, SubjectKind],
    partitions: Sequence[int] | None = None,
) -> list[SubjectBatch]:
    """The former implementation: value_of called once per (event, subject)."""
    if not scored:
        return []
    out = []
    for subject, kind in subjects.items():
        values, ts, parts = [], [], []
        for i, s in enumerate(scored):
            if subject in s.event.missing:
                continue
            value = value_of(subject, kind, score=s.score, prediction=s.prediction, features=s.x)
            if value is not None:
                values.append(value)
                ts.append(s.event.ts_ms)
                parts.append(partitions[i] if partitions is not None else 0)
        if values:
            p = parts if partitions is not None else None
            out.append(SubjectBatch(subject, kind, values, ts, scored[-1].model_version, p))
    return out


def random_scored(rng: random.Random, n: int) -> list[ScoredEvent]:
    events = []
    for i in range(n):
        x = {name: rng.choice(ODD) for name in ("amount", "hour", "kind", SINCE_LAST)}
        if rng.random() < 0.3:
            x["kind"] = rng.choice(["a", "b", "c"])
        if rng.random() < 0.2:
            del x["hour"]
        missing = frozenset(rng.sample(["amount", "kind", "hour"], rng.randint(0, 2)))
        ev = ValidEvent(f"e{i}", "c1", 1000 + i, {}, None, (), missing)
        prediction = rng.choice([0, 1, "a", None])
        events.append(ScoredEvent(ev, x, prediction, None, rng.choice(ODD[:4]), 3))
    return events


@pytest.mark.parametrize("seed", range(20))
def test_the_same_batches_as_one_call_per_value(seed: int) -> None:
    rng = random.Random(seed)
    assert_same_batches(random_scored(rng, rng.randint(0, 60)), rng)


def assert_same_batches(scored: list[ScoredEvent], rng: random.Random) -> None:
    """``subject_batches`` equals the value-by-value reference, with and without partitions,
    and its values, times and partitions are plain Python numbers and strings."""
    partitions = [rng.randrange(4) for _ in scored]
    assert subject_batches(scored, SUBJECTS) == reference_batches(scored, SUBJECTS)
    with_parts = subject_batches(scored, SUBJECTS, partitions)
    assert with_parts == reference_batches(scored, SUBJECTS, partitions)
    for batch in with_parts:
        assert all(type(v) is (float if batch.kind == "numeric" else str) for v in batch.values)
        assert all(type(t) is int for t in batch.ts)
        assert batch.partitions is not None and all(type(p) is int for p in batch.partitions)
    # and the same again once through the monitor topic, grouped by partition or not
    for route in (None, lambda name: len(name) % 3):
        for parts in (None, partitions):
            assert through_the_topic(scored, parts, route) == reference_batches(
                scored, SUBJECTS, parts
            )


def through_the_topic(
    scored: list[ScoredEvent], partitions: list[int] | None, route: Any
) -> list[SubjectBatch]:
    """The subject batches the monitors read from ``monitor_messages``' values, in the order
    of SUBJECTS; every message holds subjects of one partition only, keyed by one of them."""
    messages = monitor_messages(BatchResult([], scored, [], 0), SUBJECTS, partitions, route=route)
    found: list[SubjectBatch] = []
    for key, value in messages:
        batches = [b for b in decode_monitor_message(value) if isinstance(b, SubjectBatch)]
        if route is None:
            assert [b.subject.encode() for b in batches] in ([key], [])
        else:
            assert {route(b.subject) for b in batches} <= {route(key.decode())}
        found += batches
    rank = {name: i for i, name in enumerate(SUBJECTS)}
    return sorted(found, key=lambda b: rank[b.subject])


@pytest.mark.parametrize("seed", range(10))
def test_the_matrix_of_plain_numbers_gives_the_same_batches(seed: int) -> None:
    # floats, ints and None only (and every subject in every event): the numeric features
    # go through one float matrix instead of value by value
    rng = random.Random(seed)
    plain: list[Any] = [1.5, 0, 7, -1.0, None, float("nan"), float("inf"), -float("inf"), 10**12]
    scored = []
    for i in range(rng.randint(1, 60)):
        x = {name: rng.choice(plain) for name in ("amount", "hour", SINCE_LAST)}
        x["kind"] = rng.choice(["a", "b"])
        missing = frozenset(rng.sample(["amount", "kind", "hour"], rng.randint(0, 2)))
        ev = ValidEvent(f"e{i}", "c1", 1000 + i, {}, None, (), missing)
        scored.append(ScoredEvent(ev, x, rng.choice([0, 1]), None, rng.choice(plain[:4]), 3))
    assert_same_batches(scored, rng)


def test_cheaper_than_one_call_per_value() -> None:
    rng = np.random.default_rng(0)
    subjects: dict[str, SubjectKind] = {f"f{j}": "numeric" for j in range(60)}
    x = {name: float(v) for name, v in zip(subjects, rng.normal(size=60), strict=True)}
    ev = ValidEvent("e", "c1", 1, {}, None, (), frozenset())
    scored = [ScoredEvent(ev, x, 1, None, 0.5, 2) for _ in range(500)]

    def best(fn: Any) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn(scored, subjects)
            times.append(time.perf_counter() - start)
        return min(times)

    new, old = best(subject_batches), best(reference_batches)
    per_value_us = new / (500 * 60) * 1e6
    print(f"subject_batches: {per_value_us:.3f} us per (event, subject), {old / new:.1f}x faster")
    assert new < old / 2


def test_one_message_per_monitor_partition() -> None:
    x = {f"f{j}": float(j) for j in range(10)}
    kinds: dict[str, SubjectKind] = {name: "numeric" for name in x}
    scored = [ScoredEvent(ValidEvent(f"e{i}", "c1", i, {}, None, (), frozenset()), x, 1,
                          None, 0.5, 2) for i in range(5)]  # fmt: skip
    result = BatchResult([], scored, [], 0)
    subject = [m for m in monitor_messages(result, kinds, route=lambda n: int(n[1:]) % 4)
               if not m[0].startswith(b"quality:")]  # fmt: skip
    assert [key for key, _ in subject] == [b"f0", b"f1", b"f2", b"f3"]
    alone = [m for m in monitor_messages(result, kinds) if not m[0].startswith(b"quality:")]
    assert len(alone) == 10
    # the shared event times travel once: ten subjects in four messages are smaller
    assert sum(len(v) for _, v in subject) < sum(len(v) for _, v in alone)


@pytest.mark.parametrize("cut", [1, 5, 9, -1, -8])
def test_a_damaged_columns_message_is_refused(cut: int) -> None:
    ts, parts = np.array([1, 2]), np.array([0, 1])
    good = SubjectColumns(ts, parts, [("a", 1)], np.array([[1.0, 2.0]]), []).encode()
    assert decode_monitor_message(good)[0] == SubjectBatch("a", "numeric", [1.0, 2.0], [1, 2],
                                                           1, [0, 1])  # fmt: skip
    with pytest.raises(ValueError):
        decode_monitor_message(good[:cut])
    bad = SubjectColumns(ts, None, [], np.empty((0, 2)), [("k", 1, ["x"])]).encode()
    with pytest.raises(ValueError, match="one value per event"):
        decode_monitor_message(bad)


def test_monitor_messages_send_the_partitions_scored_events_carry() -> None:
    @dataclass(slots=True)
    class Sourced(ScoredEvent):  # a scorer that records each event's source partition
        partition: int = 0

    def event(i: int, partition: int) -> Sourced:
        ev = ValidEvent(f"e{i}", "c1", i, {}, None, (), frozenset())
        return Sourced(ev, {"amount": float(i)}, 1, None, 0.5, 2, partition)

    plain = [ScoredEvent(ev.event, ev.x, 1, None, 0.5, 2) for ev in [event(0, 0)]]
    kinds: dict[str, SubjectKind] = {"amount": "numeric"}
    sourced = monitor_messages(BatchResult([], [event(1, 3), event(2, 1)], [], 0), kinds)
    unsourced = monitor_messages(BatchResult([], plain, [], 0), kinds)
    [batch], [other] = (
        decode_monitor_message(sourced[0][1]),
        decode_monitor_message(unsourced[0][1]),
    )
    assert isinstance(batch, SubjectBatch) and batch.partitions == [3, 1]
    assert isinstance(other, SubjectBatch) and other.partitions is None

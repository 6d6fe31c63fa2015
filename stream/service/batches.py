"""Events, labels and training examples, consumed in batches beside Faust's agents.

Faust hands an agent one message at a time (about 127 µs of CPU per message in its
consumer, conductor and stream, whatever the settings), which caps a worker far below the
broker. The inputs that arrive at the event rate are therefore read by plain aiokafka
consumers in batches of up to ``worker.batch_size``, inside the worker process and its
lifecycle (Faust tasks): events and labels by the ingest consumer (group
``<app_id>-ingest``), the training examples a label makes by the learn consumer (group
``<app_id>-learn``, one partition: one trainer per model), the monitor topic (one message
per subject per scoring batch) by the monitor consumer (group ``<app_id>-monitor``).

Delivery is at-least-once, as on the agents:

- a batch's outputs are published and acknowledged by the broker before its offsets are
  committed (one batch is processed while the one before waits for its acknowledgements;
  commits come at most every :data:`COMMIT_INTERVAL_S` while batches keep coming, at once
  when the input goes idle);
- a batch that fails on an outage is retried (nothing is committed meanwhile); a worker
  stopped mid-batch commits nothing for it, so it is redelivered;
- before partitions move (a rebalance), the revocation waits for the batch in flight to
  finish and commit; a batch's records of partitions already revoked are left to their
  new owner;
- a step whose work is saved later than its outputs are published (:class:`Checkpointed`:
  the monitors save their state every checkpoint interval) has its offsets committed only
  as far as its saved work goes, and saves at a revocation and at shutdown.

The first time such a group owns a partition without a committed offset, it starts where
the worker's Faust group (``<app_id>``, which consumed these topics in earlier versions)
had committed, so an upgrade neither replays nor skips the backlog.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from stream.records import Incoming, Later, Outgoing, Outputs
from stream.service.config import Settings
from stream.service.group_offsets import committed_offsets
from stream.service.kafka_security import client_options
from stream.service.lag import LagSampler, aiokafka_source
from stream.service.publish import Publisher
from stream.service.resilience import Health, describe, until_done
from stream.service.topics import train_topic_name

log = logging.getLogger(__name__)

#: The line logged when the ingest consumer gets its partitions (tests wait for it).
ASSIGNED = "ingest partitions assigned"

#: Suffixes of the consumer groups, after the worker's ``app_id``.
INGEST, LEARN, MONITOR = "ingest", "learn", "monitor"

#: Batches whose outputs may be waiting for the broker while the next one is processed.
PUBLISHING = 1

#: Least time between two commits while batches keep coming. A commit is a round trip to
#: the group coordinator that the next batch waited for: committing every batch made it a
#: fixed part of each batch's latency (p50 at 3,000 events/s 87-90 ms against 55-64 ms, in
#: scripts/bench_pipeline.py's sample config). Offsets acknowledged meanwhile are committed
#: with the next commit, when the input goes idle, before partitions move and at shutdown;
#: a worker killed in between delivers at most this much again (at-least-once either way).
COMMIT_INTERVAL_S = 0.5

#: Longest time between two fetches before the group rebalances (Faust's default too).
MAX_POLL_INTERVAL_MS = 1_000_000

#: Longest wait of one fetch when nothing arrives; a fetch returns as soon as records do.
POLL_TIMEOUT_MS = 500

#: Longest time the broker holds a fetch request for partitions with nothing new. aiokafka
#: keeps one fetch in flight per broker and does not refetch a partition until its buffered
#: records are consumed: while a backlog's events are buffered, the next request asks only
#: for the empty labels partitions, and the broker holds it for this long. Once the buffers
#: run dry the worker waits for it: at Kafka's 500 ms, two stalls of ~400 ms in every 60,000
#: events of backlog (17 us/event of idle, about 10 % of the rate), and up to 500 ms of
#: latency for an event arriving during it. 100 ms bounds both; an idle worker asks the
#: broker 10 times a second instead of twice.
FETCH_MAX_WAIT_MS = 100

#: Seconds BatchConsumer.resume_from_legacy waits for a group's coordinator that is still
#: loading (a restarted broker) before the unseen partitions start at the earliest offset.
LEGACY_LOOKUP_S = 30.0

#: Seconds between two ticks of a :class:`Checkpointed` step.
TICK_S = 1.0


class Step(Protocol):
    """A topic's work on one batch: the consumed records in, the messages to publish out."""

    async def process(self, records: Sequence[Incoming]) -> list[Outgoing]: ...


@runtime_checkable
class Checkpointed(Protocol):
    """A step that saves its work later than it publishes its outputs.

    Its topic's offsets are committed only up to :meth:`durable`; :meth:`tick` runs about
    every :data:`TICK_S` between batches (with nothing in flight: every output before it is
    acknowledged) and saves when a save is due; :meth:`checkpoint` saves now (before
    partitions move, and at shutdown).
    """

    async def process(self, records: Sequence[Incoming]) -> list[Outgoing]: ...

    def durable(self, partition: int) -> int | None:
        """The next offset of ``partition`` not saved yet (``None``: nothing saved)."""
        ...

    async def tick(self) -> list[Outgoing]: ...

    async def checkpoint(self) -> None: ...


def ingest_group(settings: Settings) -> str:
    """The consumer group of the events and labels topics.

    >>> ingest_group(Settings(worker={"app_id": "dw"}))
    'dw-ingest'
    """
    return f"{settings.worker.app_id}-{INGEST}"


def consumer_group(settings: Settings, topic: str) -> str:
    """The consumer group that consumes ``topic`` (and commits its offsets).

    >>> s = Settings(worker={"app_id": "dw"}, model={"name": "fraud"})
    >>> [consumer_group(s, t) for t in (s.topics.events, "dw-train-fraud", s.topics.monitor)]
    ['dw-ingest', 'dw-learn', 'dw-monitor']
    """
    if topic in (settings.topics.events, settings.topics.labels):
        return ingest_group(settings)
    if topic == train_topic_name(settings):
        return f"{settings.worker.app_id}-{LEARN}"
    if topic == settings.topics.monitor:
        return f"{settings.worker.app_id}-{MONITOR}"
    raise ValueError(f"topic {topic!r}: not consumed by a driftwatch worker")


class BatchConsumer:
    """Consumes ``steps``' topics in batches: step → publish → commit, one batch at a time.

    Parameters
    ----------
    steps
        The step of each topic, in the order a batch runs them (events before labels, so a
        label that arrives in the same batch as its event joins at once).
    lag
        Told about assignments and revocations; samples this consumer's lag.
    name
        ``ingest``, ``learn`` or ``monitor``: the group is ``<app_id>-<name>``.
    on_assigned
        Called with every new assignment, before its first batch.
    linger_s
        How long a fetch waits after its first record for the batch to fill (default:
        ``worker.batch_max_latency``).
    after_batch
        Called after each batch is processed (the monitors' child sends its metrics).
    """

    def __init__(
        self,
        settings: Settings,
        steps: Mapping[str, Step],
        publisher: Publisher,
        health: Health,
        lag: LagSampler,
        name: str = INGEST,
        on_assigned: Callable[[set[TopicPartition]], None] | None = None,
        linger_s: float | None = None,
        after_batch: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.linger_s = settings.worker.batch_max_latency_s if linger_s is None else linger_s
        self.after_batch = after_batch
        self.steps = dict(steps)
        self.publisher = publisher
        self.health = health
        self.lag = lag
        self.name = name
        self.group = f"{settings.worker.app_id}-{name}"
        self.on_assigned = on_assigned
        # the checkpointed steps by topic (the protocol check once, not at every commit)
        self._durable: dict[str, Checkpointed] = {
            topic: step for topic, step in self.steps.items() if isinstance(step, Checkpointed)
        }
        self.checkpointed = list(self._durable.values())
        self.consumer: AIOKafkaConsumer | None = None
        # offsets published but not committed yet (beyond a checkpointed step's saved work),
        # and the last committed, per partition
        self._pending: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._committed_at = 0.0  # monotonic time of the last commit
        self._ticked = time.monotonic()
        self._in_flight = asyncio.Lock()
        # batches processed and being published, oldest first, with the offsets to commit
        # once the broker acknowledged their outputs
        self._publishing: deque[tuple[asyncio.Future[None], dict[TopicPartition, int]]] = deque()
        self._stopping = asyncio.Event()
        self._running = False
        self._stopped = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in flight, commit what is published, leave the group.

        Called when the worker stops; a batch still failing after ``timeout_s`` (an outage)
        is left uncommitted (delivered again), as when the worker is killed.
        """
        self._stopping.set()
        if self._running:
            try:
                await asyncio.wait_for(self._stopped.wait(), timeout=timeout_s)
            except TimeoutError:
                log.warning("%s consumer did not stop within %g s", self.name, timeout_s)

    async def run(self) -> None:
        """Consume until :meth:`stop` or cancelled; leaves the group on the way out."""
        w = self.settings.worker
        consumer = AIOKafkaConsumer(
            group_id=self.group,
            client_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=w.batch_size,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            # as Faust's consumer: a batch waiting out an outage keeps the partitions this
            # long before the group gives them to another worker
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            session_timeout_ms=int(w.session_timeout_s * 1000),
            heartbeat_interval_ms=int(max(1.0, w.session_timeout_s / 4) * 1000),
            **client_options(self.settings),
        )
        consumer.subscribe(list(self.steps), listener=_Rebalance(self, consumer))
        self.consumer = consumer
        self.lag.watch(self.group, aiokafka_source(consumer))
        self._running = True
        self._stopped.clear()
        try:
            await self.health.retry(self.name, consumer.start)
            while not self._stopping.is_set():
                batches = await fetch_balanced(consumer, w.batch_size, linger_s=self.linger_s)
                if batches and not self._stopping.is_set():
                    await self.consume(consumer, batches)
                    self._after_batch()
                elif self._publishing or self._pending:  # nothing new: commit what is published
                    async with self._in_flight:
                        await self.settle(consumer)
                if self.checkpointed and time.monotonic() - self._ticked >= TICK_S:
                    await self.tick(consumer)
            async with self._in_flight:
                await self.settle(consumer)
                await self.checkpoint(consumer)
        finally:
            await self._stop(consumer)
            self._running = False
            self._stopped.set()

    def _after_batch(self) -> None:
        if self.after_batch is not None:
            try:
                self.after_batch()
            except Exception:  # a report only: the batch is processed, say so, go on
                log.exception("%s: after_batch failed", self.name)

    async def _stop(self, consumer: AIOKafkaConsumer) -> None:
        """Commit the batches whose outputs are acknowledged; abandon the others."""
        try:
            while self._publishing and self._publishing[0][0].done():
                published, offsets = self._publishing.popleft()
                if published.cancelled() or published.exception() is not None:
                    break
                self._pending.update(offsets)
            commit = self._committable()
            if commit:
                await asyncio.wait_for(consumer.commit(commit), timeout=5.0)
        except Exception as exc:  # stopping: the batches are delivered again, not lost
            log.warning("last offsets not committed at shutdown: %s", describe(exc))
        finally:
            for published, _ in self._publishing:
                published.cancel()
            self._publishing.clear()
            self.lag.unwatch(self.group)
            self.consumer = None
            await consumer.stop()

    async def consume(
        self, consumer: AIOKafkaConsumer, batches: Mapping[TopicPartition, Sequence[Any]]
    ) -> None:
        """Process one fetched batch and start publishing its outputs; wait for the previous
        batch's acknowledgements and commit them when a commit is due (the rebalance waits
        for both and commits).

        One batch is processed while the one before waits for the broker's acknowledgements:
        the worker's CPU and the broker's round trip overlap. Offsets are committed in
        order, each only after its batch's outputs were acknowledged, at most every
        :data:`COMMIT_INTERVAL_S`.
        """
        async with self._in_flight:
            assigned = consumer.assignment()
            owned = {tp: rs for tp, rs in batches.items() if rs and tp in assigned}
            if not owned:
                return
            by_topic: dict[str, list[Incoming]] = {}
            for topic in self.steps:
                # the partitions interleaved by record time (each keeps its own order): the
                # monitors see the stream's values as they were produced, not one partition
                # after another
                lists = [rs for tp, rs in owned.items() if tp.topic == topic]
                by_topic[topic] = [
                    Incoming(r.topic, r.partition, r.offset, r.key, r.value)
                    for r in heapq.merge(*lists, key=_timestamp)
                ]
            n = sum(len(v) for v in by_topic.values())
            out = Outputs()
            await until_done(self.name, self._step(by_topic, out), n, self.health)
            published = asyncio.ensure_future(self._deliver(out, n))
            self._publishing.append(
                (published, {tp: rs[-1].offset + 1 for tp, rs in owned.items()})
            )
            while len(self._publishing) > PUBLISHING:
                await self._settle_oldest(consumer, lazy=True)

    async def tick(self, consumer: AIOKafkaConsumer) -> None:
        """Tick the checkpointed steps with every batch acknowledged: publish what they
        return, then commit what they saved."""
        async with self._in_flight:
            await self.settle(consumer)
            self._ticked = time.monotonic()
            out: list[Outgoing] = []

            async def run() -> None:
                outputs: list[Outgoing] = []
                for step in self.checkpointed:
                    outputs += await step.tick()
                out[:] = outputs

            await until_done(f"{self.name}_tick", run, 0, self.health)
            if out:
                await until_done("publish", lambda: self.publisher.publish(out), len(out),
                                 self.health)  # fmt: skip
            await self._commit(consumer, {})

    async def checkpoint(self, consumer: AIOKafkaConsumer) -> None:
        """Save the checkpointed steps' work now and commit it (hold ``_in_flight``, with
        nothing being published). A save that fails leaves its offsets uncommitted: the
        messages go to the partitions' next owner, which applies them from the last save."""
        for step in self.checkpointed:
            try:
                await step.checkpoint()
            except Exception as exc:  # noqa: BLE001 - redelivered, not lost: say so, go on
                log.warning("%s: work not saved (%s): its messages since the last save will "
                            "be applied again", self.name, describe(exc))  # fmt: skip
        await self._commit(consumer, {})

    async def settle(self, consumer: AIOKafkaConsumer) -> None:
        """Wait for every batch being published and commit it, and what earlier batches left
        to the next commit (hold ``_in_flight``)."""
        while self._publishing:
            await self._settle_oldest(consumer)
        await self._commit(consumer, {})

    async def _settle_oldest(self, consumer: AIOKafkaConsumer, lazy: bool = False) -> None:
        """Wait for the oldest batch's acknowledgements; commit, unless ``lazy`` and the
        last commit is less than :data:`COMMIT_INTERVAL_S` old (its offsets then wait)."""
        published, offsets = self._publishing[0]
        await asyncio.shield(published)  # a cancelled wait leaves it to _stop
        self._publishing.popleft()
        if lazy and time.monotonic() - self._committed_at < COMMIT_INTERVAL_S:
            self._pending.update(offsets)
            return
        await self._commit(consumer, offsets)

    def _step(
        self, by_topic: Mapping[str, Sequence[Incoming]], out: Outputs
    ) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            outputs = Outputs()
            for topic, records in by_topic.items():
                if records:
                    got = await self.steps[topic].process(records)
                    outputs += got
                    outputs.later += getattr(got, "later", ())
            out[:], out.later = outputs, outputs.later

        return run

    async def _deliver(self, out: Outputs, n: int) -> None:
        """Publish a batch's outputs, then what its steps give once those are out
        (:class:`~stream.records.Outputs`): done when every one is acknowledged."""
        await until_done("publish", lambda: self.publisher.publish(out), n, self.health)
        for later in out.later:
            await self._deliver_later(later, n)

    async def _deliver_later(self, later: Later, n: int) -> None:
        more: list[Outgoing] = []

        async def fetch() -> None:
            more[:] = await later()

        await until_done("publish_later", fetch, n, self.health)
        if more:
            await until_done("publish", lambda: self.publisher.publish(more), n, self.health)

    async def _commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` and what waited before, as far as each step's work is saved."""
        self._pending.update(offsets)
        commit = self._committable()
        if not commit:
            return
        try:
            self._committed_at = time.monotonic()
            await self.health.retry("commit", lambda: consumer.commit(commit))
            self._committed.update(commit)
            self._pending = {
                tp: o for tp, o in self._pending.items() if self._committed.get(tp, -1) < o
            }
        except (CommitFailedError, IllegalStateError) as exc:
            # the group moved on (this worker was too slow or was fenced): the partitions'
            # new owner starts from the last commit and processes this batch again
            log.warning("batch processed but not committed (%s): it will be delivered again",
                        describe(exc))  # fmt: skip

    def _committable(self) -> dict[TopicPartition, int]:
        """The pending offsets that may be committed now (a checkpointed step's as far as
        its work is saved) and were not yet."""
        commit = {}
        for tp, offset in self._pending.items():
            step = self._durable.get(tp.topic)
            if step is not None:
                durable = step.durable(tp.partition)
                offset = min(offset, -1 if durable is None else durable)
            if offset > self._committed.get(tp, -1):
                commit[tp] = offset
        return commit

    async def resume_from_legacy(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> None:
        """Start partitions the ingest group never committed where the Faust group did."""
        if not assigned:
            return
        admin = AIOKafkaAdminClient(**client_options(self.settings))
        await admin.start()
        try:
            tps = sorted(assigned)
            ours = await committed_offsets(admin, self.group, tps, LEGACY_LOOKUP_S)
            fresh = [tp for tp in tps if tp not in ours]
            if not fresh:
                return
            legacy = self.settings.worker.app_id
            theirs = await committed_offsets(admin, legacy, fresh, LEGACY_LOOKUP_S)
        finally:
            await admin.close()
        for tp in fresh:
            if tp in theirs:
                consumer.seek(tp, theirs[tp])
                log.info("%s[%d]: starting at offset %d, where group %s had committed",
                         tp.topic, tp.partition, theirs[tp], legacy)  # fmt: skip


def forever(consumer: BatchConsumer, health: Health) -> Callable[[], Coroutine[Any, Any, None]]:
    """A task's body that runs ``consumer`` until it stops, and again after a pause if it
    ever fails (counted in ``driftwatch_task_errors_total`` under the consumer's name)."""

    async def consume() -> None:
        attempt = 0
        while not consumer.stopping:
            try:
                await consumer.run()
            except Exception as exc:  # the consumer itself failed: a new one after a pause
                health.metrics.task_errors.labels(consumer.name).inc()
                log.exception("%s consumer stopped (%s); starting a new one",
                              consumer.name, describe(exc))  # fmt: skip
            await asyncio.sleep(health.backoff_s(attempt))
            attempt += 1

    consume.__name__ = consume.__qualname__ = f"consume_{consumer.name}"
    return consume


async def fetch_balanced(
    consumer: AIOKafkaConsumer, size: int, timeout_ms: int = POLL_TIMEOUT_MS, linger_s: float = 0.0
) -> dict[TopicPartition, list[Any]]:
    """Up to ``size`` fetched records, shared fairly among the partitions that have some.

    aiokafka's ``getmany(max_records=...)`` drains the partitions one after another: a
    backlog would come as thousands of records of one partition, then of the next, and
    partitions would drift apart in event time. Here the batch is filled in rounds, each
    taking an equal share of what is left from every partition that still has records, so
    a batch holds about ``size / n`` records of each of ``n`` busy partitions, and all of
    one busy partition when the others are idle. Waits up to ``timeout_ms`` for the first
    record, then up to ``linger_s`` after it for the batch to fill (``worker.
    batch_max_latency``; 0: what has arrived).
    """
    got: dict[TopicPartition, list[Any]] = {
        tp: list(rs)
        for tp, rs in (await consumer.getmany(timeout_ms=timeout_ms, max_records=1)).items()
    }
    if not got:
        return got
    deadline = time.monotonic() + linger_s
    total = await _top_up(consumer, got, size)
    while total < size and (remaining := deadline - time.monotonic()) > 0:
        more = await consumer.getmany(timeout_ms=max(1, int(remaining * 1000)), max_records=1)
        if not more:
            break
        for tp, records in more.items():
            got.setdefault(tp, []).extend(records)
        total = await _top_up(consumer, got, size)
    return got


async def _top_up(
    consumer: AIOKafkaConsumer, got: dict[TopicPartition, list[Any]], size: int
) -> int:
    """Fill ``got`` towards ``size`` from what the fetcher holds, in fair rounds; the total."""
    total = sum(len(rs) for rs in got.values())
    busy = sorted(consumer.assignment())
    while total < size and busy:
        share = max(1, (size - total) // len(busy))
        more: list[TopicPartition] = []
        for tp in busy:
            take = min(share, size - total)
            if take <= 0:
                break
            records = (await consumer.getmany(tp, timeout_ms=0, max_records=take)).get(tp)
            if records:
                got.setdefault(tp, []).extend(records)
                total += len(records)
                if len(records) == take:  # it may have more
                    more.append(tp)
        busy = more
    return total


def _timestamp(record: Any) -> int:
    return int(record.timestamp)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer, consumer: AIOKafkaConsumer) -> None:
        self.owner = owner
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # aiokafka waits for this before rejoining: the batch in flight finishes, publishes
        # and commits (checkpointed steps save first) while this worker owns its partitions
        owner = self.owner
        async with owner._in_flight:
            await owner.settle(self.consumer)
            if owner.checkpointed:
                await owner.checkpoint(self.consumer)
            for tp in revoked:  # the next owner commits from here on
                owner._pending.pop(tp, None)
                owner._committed.pop(tp, None)
            owner.lag.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        try:
            await self.owner.resume_from_legacy(self.consumer, assigned)
        except (TimeoutError, KafkaError, OSError) as exc:
            log.warning("offsets of group %s not read (%s): unseen partitions start at "
                        "the earliest offset", self.owner.settings.worker.app_id,
                        describe(exc))  # fmt: skip
        self.owner.lag.assigned(assigned, self.owner.group)
        if self.owner.on_assigned is not None:
            self.owner.on_assigned(assigned)
        partitions = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(assigned))
        if self.owner.name == INGEST:
            log.info("%s: %s", ASSIGNED, partitions)
        else:
            log.info("%s partitions assigned: %s", self.owner.name, partitions)

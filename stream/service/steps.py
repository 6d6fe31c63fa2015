"""What the agents do with a batch: decode → step → publish, one step object per agent.

Each step's ``process(records)`` takes the batch's consumed records and returns the messages
to publish (predictions, dead letters, training examples, monitor batches, alerts). A step
retries outages and isolates poison itself (:mod:`stream.service.resilience`); the agent
publishes what it returns and only then lets Faust ack the batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from stream.exceptions import RejectedInput
from stream.ingest.scoring import EventProcessor, LabelProcessor, reject
from stream.messages import TrainingExample
from stream.model.lifecycle import Batch, Learners
from stream.model.lineup import Lineup
from stream.model.served import ModelSet
from stream.monitoring.hub import MonitorHub, monitor_messages
from stream.monitoring.subjects import monitored_subjects
from stream.records import BatchResult, Incoming, Joins, Later, Outgoing, Outputs, ScoredEvent
from stream.service.config import Settings
from stream.service.metrics import Metrics, observe_many
from stream.service.publish import Publisher, partition_for
from stream.service.resilience import Health, Poisoned, describe, isolate
from stream.timestamps import now_ms

log = logging.getLogger(__name__)


class _Step:
    """What every step shares: settings, metrics, the outage guard, dead letters."""

    def __init__(self, settings: Settings, metrics: Metrics, health: Health) -> None:
        self.settings = settings
        self.metrics = metrics
        self.health = health

    def dead_letters(self, poisoned: Sequence[Poisoned], stage: str) -> list[Outgoing]:
        """Dead letters (code ``exception``) for messages that raised on their own."""
        return [self.dead_letter(p.item, p.error, stage) for p in poisoned]

    def dead_letter(self, source: Incoming, error: str, stage: str) -> Outgoing:
        exc = RejectedInput(error, stage=stage, code="exception")
        return reject(self.settings, self.metrics, source, exc)


class TrainingTopic:
    """The single-partition topic one model learns from, and its messages."""

    def __init__(self, name: str, model: str) -> None:
        self.name = name
        self.key = model.encode()

    def messages(self, examples: Sequence[TrainingExample]) -> list[Outgoing]:
        return [Outgoing(self.name, self.key, x.encode()) for x in examples]


class ScoreStep(_Step):
    """Events → predictions, dead letters, training examples and monitor batches."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        health: Health,
        scorer: EventProcessor,
        holder: ModelSet,
        train: TrainingTopic,
        partitions: Callable[[str], Awaitable[list[int]]] | None = None,
    ) -> None:
        """``partitions``: a topic's partitions (the publisher's), to send the monitor batches
        one message per monitor-topic partition; without it, one message per subject."""
        super().__init__(settings, metrics, health)
        self.scorer = scorer
        self.holder = holder
        self.train = train
        self.partitions = partitions
        self.monitoring = settings.monitoring.enabled
        self.kinds = {name: kind for name, (kind, _) in monitored_subjects(settings).items()}

    async def process(self, records: Sequence[Incoming]) -> list[Outgoing]:
        await self.health.retry("model", self.holder.ready)
        poisoned: list[Poisoned] = []

        async def score(part: Sequence[Incoming]) -> BatchResult:
            return await self.health.retry("score", lambda: self.scorer.process(part))

        result = BatchResult.merge(await isolate(records, score, poisoned))
        try:
            result.outgoing += self.dead_letters(poisoned, "process")
            result.rejected += len(poisoned)
            out = [*result.outgoing, *self.train.messages(result.examples)]
            if self.monitoring:
                topic = self.settings.topics.monitor
                reference = self.holder.reference.model
                route = None
                if self.partitions is not None:
                    every = await self.partitions(topic)
                    route = lambda name: partition_for(name.encode(), every)  # noqa: E731
                messages = monitor_messages(result, self.kinds, reference=reference, route=route)
                out += [Outgoing(topic, k, v) for k, v in messages]
            self._observe(len(records), result.scored)
        except BaseException:  # the batch is processed again: its stores' replies are not read
            for joins in result.joins:
                await joins.abandon()
            raise
        return Outputs(out, [self._learn_later(joins) for joins in result.joins])

    def _learn_later(self, joins: Joins) -> Later:
        """The training examples of the labels the batch's store claimed, once it answers."""

        async def messages() -> list[Outgoing]:
            return self.train.messages(await joins.examples())

        return messages

    def _observe(self, n: int, scored: Sequence[ScoredEvent]) -> None:
        m, model = self.metrics, self.holder.model
        m.events_received.inc(n)
        m.batch_size.observe(n)
        m.model_version.labels(model.name).set(model.version)
        m.model_info.info(
            {"model": model.name, "task": model.task, "pipeline": model.pipeline,
             "version": str(model.version)}
        )  # fmt: skip
        now = now_ms()
        observe_many(m.event_latency, [max(0.0, (now - s.event.ts_ms) / 1000.0) for s in scored])
        observe_many(m.score.labels(model.name), [s.score for s in scored])
        counts = Counter((s.model, m.prediction_label(model.task, s.prediction)) for s in scored)
        for (name, prediction), k in counts.items():  # by the model that served (A/B arms)
            m.predictions.labels(name or model.name, prediction).inc(k)


class WatchStep(_Step):
    """Monitor batches → drift and data-quality alerts.

    A :class:`~stream.service.batches.Checkpointed` step: the monitors' states are saved
    every ``checkpoint_interval`` (from :meth:`tick`, once the alerts before are
    acknowledged), and the monitor topic is committed only as far as they are.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        health: Health,
        hub: MonitorHub,
        publisher: Publisher,
    ) -> None:
        super().__init__(settings, metrics, health)
        self.hub = hub
        self.publisher = publisher
        self.lineup = Lineup(hub.redis, settings.redis.prefix)
        lifecycle = settings.lifecycle
        self.triggers = (
            set(lifecycle.retrain_subjects) if "data_drift" in lifecycle.retrain_on else set()
        )

    async def _hand_over(self, alerts: Sequence[dict[str, Any]]) -> None:
        """Hand the data_drift alerts that start retraining to the learner (before they are
        published: a redelivered batch raises them again, with the same alert_id)."""
        triggers = [
            a for a in alerts
            if a["kind"] == "data_drift" and a["status"] == "firing"
            and a["subject"] in self.triggers
        ]  # fmt: skip
        if triggers:
            await self.health.retry("lifecycle", lambda: self.lineup.hand_over(triggers))

    async def process(self, records: Sequence[Incoming]) -> list[Outgoing]:
        items = [(r.partition or 0, r.offset or 0, r.value or b"") for r in records]
        alerts, poisoned = await self.health.retry("monitor", lambda: self.hub.apply(items))
        await self._hand_over(alerts)
        topic = self.settings.topics.monitor
        dlq = [
            self.dead_letter(Incoming(topic, part, off, None, _bytes(value)), p.error, "monitor")
            for p in poisoned
            for part, off, value in [p.item]
        ]
        return [*self.publisher.alerts(alerts), *dlq]

    def durable(self, partition: int) -> int | None:
        return self.hub.durable(partition)

    async def tick(self) -> list[Outgoing]:
        """Release what idle partitions held back; save the monitors when a save is due.

        A tick whose release raised alerts saves at the next one, once they are published
        (a state saved with an alert not yet published would never raise it again)."""
        alerts = await self.health.retry("monitor", self.hub.flush)
        await self._hand_over(alerts)
        if not alerts:
            await self.health.retry("monitor_save", self.hub.save)
        return self.publisher.alerts(alerts)

    async def checkpoint(self) -> None:
        await self.hub.save(force=True)


class JoinStep(_Step):
    """Labels → training examples, joined to their stored predictions."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        health: Health,
        joiner: LabelProcessor,
        train: TrainingTopic,
    ) -> None:
        super().__init__(settings, metrics, health)
        self.joiner = joiner
        self.train = train

    async def process(self, records: Sequence[Incoming]) -> list[Outgoing]:
        poisoned: list[Poisoned] = []

        async def join(part: Sequence[Incoming]) -> tuple[list[TrainingExample], list[Outgoing]]:
            return await self.health.retry("join", lambda: self.joiner.process(part))

        parts = await isolate(records, join, poisoned)
        examples = [x for part_examples, _ in parts for x in part_examples]
        dlq = [m for _, part_dlq in parts for m in part_dlq]
        self.metrics.labels_received.inc(len(records))
        return [*self.train.messages(examples), *dlq, *self.dead_letters(poisoned, "join")]


class LearnStep(_Step):
    """Training examples → every model learned, checkpointed and (when due) published; the
    champion's performance alerts and the lifecycle policy's (:mod:`stream.model.lifecycle`)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        health: Health,
        learners: Learners,
        holder: ModelSet,
        publisher: Publisher,
    ) -> None:
        super().__init__(settings, metrics, health)
        self.learners = learners
        self.holder = holder
        self.publisher = publisher

    async def process(self, records: Sequence[Incoming]) -> list[Outgoing]:
        items: list[tuple[int, TrainingExample]] = []
        dlq: list[Outgoing] = []
        for r in records:
            try:
                items.append((r.offset or 0, TrainingExample.decode(r.value or b"")))
            except Exception as exc:  # not an example this version can read: its own fault
                dlq.append(self.dead_letter(r, describe(exc), "learn"))
        learners = self.learners
        await self.health.retry("train", learners.sync)
        unlearned = await self.health.retry("train", lambda: learners.unlearned(items))
        alerts = self._judge(unlearned)
        outcomes = learners.learn(unlearned)
        versions = await self.health.retry("train", learners.save)
        alerts += learners.take_alerts()
        champion = outcomes.get(learners.champion)
        for skipped in [] if champion is None else champion.skipped:
            source = next(r for r in records if r.offset == skipped.offset)
            why = RejectedInput(skipped.reason, stage="learn", code=skipped.code)
            dlq.append(reject(self.settings, self.metrics, source, why))
        newest = max((x.event_ts_ms for _, x in items), default=now_ms())
        lifecycle = await self._decide(alerts, newest)
        if versions or lifecycle:
            await self.health.retry("model", self.holder.refresh)
        return [*self.publisher.alerts([*alerts, *lifecycle]), *dlq]

    def _judge(self, unlearned: dict[str, Batch]) -> list[dict[str, Any]]:
        if not self.settings.monitoring.enabled:
            return []
        try:
            return self.learners.judge(unlearned, now_ms())
        except Exception as exc:  # judging must never stop learning
            self.metrics.task_errors.labels("performance").inc()
            log.exception("performance monitor skipped a batch: %s", describe(exc))
            return []

    async def _decide(self, alerts: list[dict[str, Any]], ts: int) -> list[dict[str, Any]]:
        try:  # an outage waits (a retraining trigger is not lost); a bug skips the batch
            return await self.health.retry("lifecycle", lambda: self.learners.decide(alerts, ts))
        except Exception as exc:  # the policy must never stop learning: it decides again
            self.metrics.task_errors.labels("lifecycle").inc()  # at the next batch
            log.exception("lifecycle policy skipped a batch: %s", describe(exc))
            return []


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else repr(value).encode()

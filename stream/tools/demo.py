"""``driftwatch demo``: push a synthetic card-transaction stream through running workers.

Produces events (and a few malformed ones), sends each fraud label ``label_delay`` events
later on the labels topic, reads the predictions, dead letters and alerts back, and ends
with a summary: what went in and came out, labels joined, the model's accuracy over time
against the best constant predictor of each slice and, from a concept change on, against a
reference learner (:mod:`stream.tools.demo_accuracy`), and where each detector caught each
injected drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream.model.online import OnlineModel, create_model
from stream.service.batches import consumer_group
from stream.service.config import Settings
from stream.service.kafka_security import client_options
from stream.service.topics import ensure_topics, wait_consumed
from stream.timestamps import now_ms
from stream.tools.demo_accuracy import (
    accuracy_slices,
    accuracy_table,
    adaptation_line,
    concept_change,
    lifecycle_report,
    reference_predictions,
    scored_events,
)
from stream.tools.synthetic import CardStream, Drift, bad_event


@dataclass(frozen=True)
class DemoOptions:
    events: int = 20_000
    rate: float = 0.0  # events per second; 0 = as fast as the producer goes
    label_delay: int = 200
    bad_every: int = 200  # one malformed event after every this many (0 = none)
    drifts: tuple[Drift, ...] = ()
    seed: int = 7
    timeout: float = 120.0
    metrics_url: str | None = None


@dataclass
class Collected:
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    dlq: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    target: int = 0
    complete: asyncio.Event = field(default_factory=asyncio.Event)


def run_demo(settings: Settings, options: DemoOptions) -> int:
    return asyncio.run(_demo(settings, options))


async def _demo(settings: Settings, opts: DemoOptions) -> int:
    run_id = uuid.uuid4().hex[:8]
    stream = CardStream(seed=opts.seed, drifts=opts.drifts, run_id=run_id, start_ms=now_ms())
    t = settings.topics
    await ensure_topics(settings)  # subscribe to topics that exist, whoever starts first
    consumer = AIOKafkaConsumer(
        t.predictions,
        t.dlq,
        t.alerts,
        **client_options(settings),
        group_id=f"driftwatch-demo-{run_id}",
        auto_offset_reset="latest",
    )
    await consumer.start()
    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=5)
    await producer.start()
    got = Collected(target=opts.events)
    try:
        await _wait_assigned(consumer, 60.0)
        reader = asyncio.create_task(_collect(consumer, settings, run_id, got))
        labels, n_bad, elapsed = await _produce(producer, settings, stream, opts)
        await _wait_for(got, opts.timeout)
        joined = await _labels_joined(opts.metrics_url, len(labels), opts.timeout)
        if opts.drifts:  # let the monitors finish what the scorers sent them
            print("waiting for the monitors to catch up ...", file=sys.stderr)
            with contextlib.suppress(TimeoutError):
                await wait_consumed(
                    settings,
                    consumer_group(settings, settings.topics.monitor),
                    settings.topics.monitor,
                    opts.timeout,
                )
            await asyncio.sleep(2.0)  # the last alerts reach the reader
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    finally:
        await producer.stop()
        await consumer.stop()
    reference = create_model(settings.model, settings.features)  # the worker's pipeline
    print(summary(opts, got, labels, n_bad, elapsed, joined, stream.start_ms, stream.step_ms,
                  reference))  # fmt: skip
    return 0 if len(got.predictions) == opts.events else 1


async def _produce(
    producer: AIOKafkaProducer, settings: Settings, stream: CardStream, opts: DemoOptions
) -> tuple[dict[str, int], int, float]:
    labels: dict[str, int] = {}
    queue: list[tuple[str, int, int]] = []
    n_bad = 0
    t0 = time.monotonic()
    progress = Progress(opts.events)
    for i, (event, label) in enumerate(stream.events(opts.events)):
        key = event["entity_id"].encode()
        await producer.send(settings.topics.events, orjson.dumps(event), key=key)
        labels[event["event_id"]] = label
        queue.append((event["event_id"], label, event["ts"]))
        if len(queue) > opts.label_delay:
            await _send_label(producer, settings, *queue.pop(0), stream.step_ms * opts.label_delay)
        if opts.bad_every and i % opts.bad_every == opts.bad_every - 1:
            await producer.send(settings.topics.events, bad_event(n_bad), key=b"bad")
            n_bad += 1
        if opts.rate > 0:
            ahead = (i + 1) / opts.rate - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
        progress.update(i + 1)
    for item in queue:
        await _send_label(producer, settings, *item, stream.step_ms * opts.label_delay)
    await producer.flush()
    progress.done()
    return labels, n_bad, time.monotonic() - t0


async def _send_label(
    producer: AIOKafkaProducer, settings: Settings, event_id: str, label: int, ts: int, lag: int
) -> None:
    value = orjson.dumps({"event_id": event_id, "label": label, "ts": ts + lag})
    await producer.send(settings.topics.labels, value, key=event_id.encode())


async def _collect(
    consumer: AIOKafkaConsumer, settings: Settings, run_id: str, got: Collected
) -> None:
    t = settings.topics
    while True:
        batches = await consumer.getmany(timeout_ms=200)
        for tp, records in batches.items():
            for rec in records:
                value = orjson.loads(rec.value or b"null")
                if tp.topic == t.predictions and str(value.get("event_id", "")).startswith(run_id):
                    if value["event_id"] in got.predictions:
                        got.duplicates += 1
                    got.predictions[value["event_id"]] = value
                    if len(got.predictions) >= got.target:
                        got.complete.set()
                elif tp.topic == t.dlq:
                    got.dlq.append(value)
                elif tp.topic == t.alerts:
                    got.alerts.append(value)
                    lead = "\n" if sys.stderr.isatty() else ""  # past the progress bar
                    print(f"{lead}ALERT {_alert_line(value)}", file=sys.stderr)


async def _wait_for(got: Collected, wait_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(got.complete.wait(), wait_s)
    await asyncio.sleep(1.0)  # late dead letters and alerts


async def _wait_assigned(consumer: AIOKafkaConsumer, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not consumer.assignment():
        if time.monotonic() > deadline:
            raise TimeoutError("demo consumer got no partition assignment")
        await consumer.getmany(timeout_ms=200)


def _alert_line(a: dict[str, Any]) -> str:
    what = f"{a.get('kind')} {a.get('subject')}/{a.get('detector')}"
    return f"{a.get('status')} {what}: {a.get('message')}"


def summary(
    opts: DemoOptions,
    got: Collected,
    labels: dict[str, int],
    n_bad: int,
    elapsed: float,
    joined: float | None,
    start_ms: int = 0,
    step_ms: int = 50,
    reference_model: OnlineModel | None = None,
) -> str:
    """The end-of-demo report.

    With a concept change in ``opts.drifts`` and a fresh ``reference_model`` (the worker's
    pipeline), the reference learns in here from the change on (:func:`reference_predictions`)
    and the report ends with the :func:`adaptation_line`.
    """
    rate = opts.events / elapsed if elapsed > 0 else 0.0
    events = scored_events(got.predictions, labels, start_ms, step_ms)
    change = concept_change(opts.drifts)
    reference: dict[int, int] = {}
    if change is not None and reference_model is not None:
        after = [e for e in events if e.i >= change]
        reference = reference_predictions(reference_model, after, opts.label_delay)
    adaptation = adaptation_line(events, reference, change)
    lines = [
        "",
        "driftwatch demo summary",
        f"  events sent          {opts.events} good + {n_bad} malformed in {elapsed:.1f}s "
        f"({rate:.0f} events/s)",
        f"  predictions          {len(got.predictions)} distinct event_ids "
        f"({got.duplicates} redelivered duplicates)",
        f"  dead letters         {len(got.dlq)} "
        f"({', '.join(f'{k}: {v}' for k, v in _dlq_reasons(got.dlq).most_common(3))})",
        f"  labels               {len(labels)} sent, "
        + (f"{joined:.0f} joined by the workers" if joined is not None else "joined: n/a"),
        f"  alerts               {len(got.alerts)}",
        "",
        *accuracy_table(accuracy_slices(events, reference, opts.events, change)),
        *drift_report(opts, got.alerts, start_ms, step_ms),
        *lifecycle_report(got.alerts, start_ms, step_ms, change),
        *(["", adaptation] if adaptation is not None else []),
    ]
    return "\n".join(lines)


def drift_report(
    opts: DemoOptions, alerts: list[dict[str, Any]], start_ms: int, step_ms: int
) -> list[str]:
    """For each injected drift: where it started and where each detector caught it."""
    if not opts.drifts:
        return []
    rows = ["", "  injected drift and where each detector caught it (event number, delay)"]
    starts = sorted(d.start for d in opts.drifts)
    for drift in sorted(opts.drifts, key=lambda d: d.start):
        nxt = min((s for s in starts if s > drift.start), default=None)
        end = f"-{drift.end}" if drift.end is not None else ""
        rows.append(f"  {drift.kind} at {drift.start}{end}:")
        caught: dict[tuple[str, str, str], int] = {}
        for a in alerts:
            if a.get("status") != "firing":
                continue
            to_ts = (a.get("window") or {}).get("to_ts")
            if to_ts is None:
                continue
            at = (int(to_ts) - start_ms) // step_ms
            if at >= drift.start and (nxt is None or at < nxt):
                caught.setdefault((a["kind"], a["subject"], a["detector"]), at)
        if not caught:
            rows.append("      not caught")
        for (kind, subject, detector), at in sorted(caught.items(), key=lambda kv: kv[1]):
            rows.append(f"      {kind:<16} {subject}/{detector:<12} at {at} (+{at - drift.start})")
    return rows


def _dlq_reasons(dlq: list[dict[str, Any]]) -> Counter[str]:
    return Counter(str(d.get("error", "?")).split(":")[0] for d in dlq)


async def _labels_joined(url: str | None, sent: int, wait_s: float) -> float | None:
    """Poll the worker's metrics until every label joined or the count stops moving."""
    deadline = time.monotonic() + wait_s
    last, stable = None, 0
    while time.monotonic() < deadline:
        joined = _scrape(url, "driftwatch_labels_joined_total")
        if joined is None or joined >= sent:
            return joined
        stable = stable + 1 if joined == last else 0
        if stable >= 10:  # 5 s without progress
            return joined
        last = joined
        await asyncio.sleep(0.5)
    return last


def _scrape(url: str | None, metric: str) -> float | None:
    if not url:
        return None
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - local worker
            text = resp.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Progress:
    """A progress bar on stderr (a line every 10 % when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self._last = -1

    def update(self, n: int) -> None:
        pct = n * 100 // self.total
        if pct == self._last or (not self.tty and pct % 10):
            return
        self._last = pct
        bar = "#" * (pct // 4)
        end = "\r" if self.tty else "\n"
        print(f"[{bar:<25}] {pct:3d}% {n}/{self.total} events", end=end, file=sys.stderr)

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr)

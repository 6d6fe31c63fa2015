"""The monitors in a child process of the worker: :class:`MonitorProcess`.

Drift monitoring costs the same order of CPU per event as scoring (0.3-0.6 us per value
per (subject, detector): tens of microseconds per event for a few dozen pairs, about 100
for two hundred), and a Python process runs on one core. With ``monitoring.process =
"child"`` (the default) the worker starts one child process that consumes the monitor topic
(group ``<app_id>-monitor``, :mod:`stream.service.batches`) and publishes the alerts, on a
core of its own; the scorer in the parent only sends the value batches.

The child is the monitor consumer of the worker, nothing more: its own Kafka consumer and
producer, Redis client and :class:`~stream.monitoring.hub.MonitorHub`. Delivery is the
consumer's (at-least-once; offsets committed as far as the monitors' state is saved).

Lifecycle
    The worker starts the child when it starts and stops it when it stops (the child
    finishes its batch, saves the monitors' state and commits, like the in-process
    consumer). A child that dies is started again after a pause (counted in
    ``driftwatch_task_errors_total{task="monitor_process"}``); its partitions go to it again
    or to another worker's child, which resumes from the saved state. A child whose parent
    dies (even by SIGKILL) stops: it watches the control pipe, which closes with the parent.
Priority
    The child runs at a lower CPU priority than the worker (niceness +:data:`NICENESS`):
    when the cores are short, the scorer, whose latency the users see, runs first, and the
    monitors catch up when it waits (``driftwatch_consumer_lag_messages`` of group
    ``<app_id>-monitor`` shows how far behind they are). On the benchmark's two cores this
    moved the sample config from 5,024-5,489 to 6,237-6,390 events/s sustained, monitors
    0.3-0.6 s behind either way (scripts/bench_pipeline.py). The worker lowers it as soon
    as the child exists, so that its start-up (a fresh interpreter importing numpy, scipy
    and river: about 3 s of CPU, while the scorer works through its first batches) runs
    at the lower priority too; on the benchmark's two cores, which were not full then, this
    made no difference to the rate. The worker starts the child before its own start-up
    (Faust's app, joining the consumer groups: a second or more of waiting on the broker),
    so that those imports are done when the first events come: with every subject of the
    10-feature config, alternating on a slow day, the sustained rate went from 3,313 /
    3,562 / 2,888 / 3,284 to 3,572 / 3,991 / 3,398 / 3,637 / 3,489 events/s and the monitors
    finished 1.6-4.5 s after the scorer instead of 6.8-7.9 s (the sample config's three
    subjects: no difference).

    A niced process still takes its share of a core it contends for, and a task that wakes
    (the scorer, or Redis answering it) may wait for the end of its time slice. With
    ``monitoring.priority = "idle"`` the child runs under ``SCHED_IDLE`` instead: it only
    gets CPU time nothing else wants, and gives a core up at once. On the benchmark's
    two cores, alternating the two on the sample config (100,000 events, three pairs), the
    scorer spent 7-8 % of its time waiting for a core instead of 10-12 %, and the sustained
    rate went from 6,395 / 6,110 / 7,034 to 7,161 / 7,939 / 7,383 events/s, the monitors
    0.2-1.1 s behind either way. The price: when the cores are full (every subject of the
    10-feature config, whose monitors need as much CPU as the scorer) the monitors fall
    behind while the scorer runs (5.9 s at the end of the backlog against 2.4 s) and
    catch up alone afterwards (sustained 2,639 against 2,800 events/s). That was before
    the monitors got cheaper: now (72-76 µs of CPU per event against the scorer's 92-99)
    ``"idle"`` is ahead there as well, 8,721 / 8,355 against 8,513 / 7,643 events/s
    sustained in two alternating pairs, the monitors 1.0-1.1 s behind at the end instead of
    0.4-1.4 s. ``"low"`` stays the default: a child under ``SCHED_IDLE`` next to a worker
    that keeps every core busy for good hardly runs at all, while niceness +10 keeps it a
    share.
Metrics
    The child sends a snapshot of its metrics every second, and after a batch if the last
    one is :data:`FRESH_S` old (the benchmark times the monitors' end of a backlog by their
    values counter, which was up to a second stale). The worker's ``/metrics`` serves them
    merged with its own (:func:`stream.service.metrics.merge_families`), so one scrape
    target still shows the whole worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from stream.monitoring.hub import MonitorHub
from stream.service.batches import MONITOR, BatchConsumer, forever
from stream.service.config import Settings
from stream.service.kafka_security import client_options
from stream.service.lag import INTERVAL_S, LagSampler
from stream.service.metrics import Metrics
from stream.service.publish import Publisher
from stream.service.redis_client import redis_client
from stream.service.resilience import Health, RepeatFilter, guarded
from stream.service.steps import WatchStep

log = logging.getLogger(__name__)

#: Seconds between two metric snapshots the child sends.
SNAPSHOT_S = 1.0
#: Least seconds between two snapshots the child sends after batches (about 1 ms of CPU
#: each with the 67 subjects of the 10-feature benchmark config).
FRESH_S = 0.1
#: Longest wait for the child to stop before it is killed.
STOP_TIMEOUT_S = 30.0
_STOP = "stop"


def monitor_consumer(
    settings: Settings,
    metrics: Metrics,
    health: Health,
    hub: MonitorHub,
    publisher: Publisher,
    lag: LagSampler,
    after_batch: Callable[[], None] | None = None,
) -> BatchConsumer:
    """The consumer of the monitor topic, in the worker or in its child process."""
    return BatchConsumer(
        settings,
        {settings.topics.monitor: WatchStep(settings, metrics, health, hub, publisher)},
        publisher,
        health,
        lag,
        name=MONITOR,
        # drop the monitors of partitions gone elsewhere (saved at the revocation); those of
        # new partitions are read from Redis as their first messages come
        on_assigned=lambda assigned: hub.keep_only({tp.partition for tp in assigned}),
        linger_s=settings.monitoring.batch_linger_s,
        after_batch=after_batch,
    )


class MonitorProcess:
    """The worker's side of the monitors' child process: start, supervise, stop, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")  # no fork of a running loop
        self._process: Any = None
        self._control: Connection | None = None
        self._snapshot: list[Any] = []
        self._stopping = False

    def families(self) -> list[Any]:
        """The child's latest metric families (empty before its first snapshot)."""
        return self._snapshot

    def start_early(self) -> None:
        """Start the child now, before the worker's own start-up (see "Priority" above);
        :meth:`supervise` takes it over."""
        if self._process is None:
            self._start()

    async def supervise(self, health: Health) -> None:
        """Run the child until :meth:`stop`; start a new one after a pause if it dies."""
        attempt = 0
        while not self._stopping:
            started = time.monotonic()
            if self._process is None or self._process.exitcode is not None:
                self._start()  # else: the one start_early started, still running
            process = self._process
            # until it exits (stop() makes it, and reaps it)
            await asyncio.to_thread(multiprocessing.connection.wait, [process.sentinel])
            if self._stopping:
                return
            process.join()
            self._snapshot = []  # its counters died with it; the next child starts from 0
            health.metrics.task_errors.labels("monitor_process").inc()
            log.error("monitor process %d exited with code %s; starting a new one",
                      process.pid, process.exitcode)  # fmt: skip
            attempt = 0 if time.monotonic() - started > 60 else attempt + 1
            await asyncio.sleep(health.backoff_s(attempt))

    def _start(self) -> None:
        control_in, control_out = self._context.Pipe(duplex=False)
        metrics_in, metrics_out = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=child_main,
            # the worker's log level (its root logger's, set by the CLI)
            args=(self.settings, control_in, metrics_out, logging.getLogger().level),
            name="driftwatch-monitors",
            daemon=False,  # it stops on its own when this process goes (the control pipe)
        )
        process.start()
        # before its imports, and before it starts threads (they inherit the priority)
        _lower_priority(process.pid, self.settings.monitoring.priority == "idle")
        control_in.close()
        metrics_out.close()
        self._process, self._control = process, control_out
        threading.Thread(
            target=self._receive, args=(metrics_in,), name="monitor-metrics", daemon=True
        ).start()
        log.info("monitor process %d started", process.pid)

    def _receive(self, metrics_in: Connection) -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                self._snapshot = metrics_in.recv()
        metrics_in.close()

    async def stop(self) -> None:
        """Ask the child to finish and wait for it (killed after :data:`STOP_TIMEOUT_S`)."""
        self._stopping = True
        process, control = self._process, self._control
        if process is None or control is None:
            return
        with contextlib.suppress(OSError):
            control.send(_STOP)
        await asyncio.to_thread(process.join, STOP_TIMEOUT_S)
        if process.is_alive():
            log.warning("monitor process %d did not stop in %g s: killed",
                        process.pid, STOP_TIMEOUT_S)  # fmt: skip
            process.kill()
            await asyncio.to_thread(process.join, 5.0)
        control.close()


#: How much lower the child's CPU priority is than the worker's (see "Priority" above).
NICENESS = 10


def _lower_priority(pid: int | None, idle: bool) -> None:
    """Give process ``pid`` the niceness of this process plus :data:`NICENESS` (at most 19),
    and with ``idle`` the ``SCHED_IDLE`` policy."""
    if pid is None:  # not started
        return
    nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
        if idle:
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # gone already (its supervisor sees it), or not permitted
        log.warning("monitor process %d: could not lower its priority (%s)", pid, exc)


def child_main(
    settings: Settings, control: Connection, metrics_out: Connection, log_level: int
) -> None:
    """The child process: the monitor consumer until told to stop or orphaned."""
    logging.basicConfig(
        level=log_level,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
    )
    repeats = RepeatFilter()  # as the worker's: an outage's repeated client errors, once
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeats)
    # Ctrl-C reaches the whole process group: the worker decides when its child stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_child(settings, control, metrics_out))


async def _child(settings: Settings, control: Connection, metrics_out: Connection) -> None:
    metrics = Metrics()
    redis = redis_client(settings)
    health = Health(metrics)
    publisher = Publisher(settings, metrics, health)
    lag = LagSampler(metrics, lambda: AIOKafkaAdminClient(**client_options(settings)))
    key = settings.snapshot_key.get_secret_value().encode() if settings.snapshot_key else b""
    hub = MonitorHub(settings, redis, metrics, key)

    sent = [0.0]  # monotonic time of the last snapshot

    def send_metrics() -> None:
        metrics_out.send(list(metrics.registry.collect()))
        sent[0] = time.monotonic()

    def after_batch() -> None:
        if time.monotonic() - sent[0] >= FRESH_S:
            send_metrics()

    consumer = monitor_consumer(settings, metrics, health, hub, publisher, lag, after_batch)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    threading.Thread(
        target=_watch_parent, args=(control, loop, stop), name="parent", daemon=True
    ).start()

    async def every(seconds: float, name: str, call: Any) -> None:
        while True:
            await guarded(name, call, health)
            await asyncio.sleep(seconds)

    async def snapshot() -> None:
        send_metrics()

    tasks = [
        asyncio.create_task(forever(consumer, health)()),
        asyncio.create_task(every(SNAPSHOT_S, "metrics_snapshot", snapshot)),
        asyncio.create_task(every(INTERVAL_S, "consumer_lag", lag.sample)),
    ]
    log.info("monitor process: consuming %s", settings.topics.monitor)
    await stop.wait()
    await consumer.stop()  # the batch in flight, the monitors' state saved, committed
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await publisher.close()
    with contextlib.suppress(OSError, ValueError):
        await snapshot()
    await redis.aclose()
    log.info("monitor process: stopped")


def _watch_parent(
    control: Connection, loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> None:
    """Block on the control pipe: a stop message, or its end (the worker is gone), stops."""
    with contextlib.suppress(EOFError, OSError):
        while control.recv() != _STOP:
            pass
    loop.call_soon_threadsafe(stop.set)

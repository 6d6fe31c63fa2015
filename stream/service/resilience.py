"""Keeping a worker's batches alive through outages and poison messages.

A batch whose processing raised must be neither committed nor dropped (Faust's
``take_events``, for one, acks every event of a batch in a ``finally`` block,
faust/streams.py, so an exception leaving an agent body is silent data loss; the worker's
batch consumers commit only what succeeded). Two kinds of failure are told apart:

Transient
    The infrastructure is away: Redis refuses, times out, is loading or rejects the
    credentials after a reconnect; Kafka does not answer or has no leader. The *same* step
    is retried with capped exponential backoff until it succeeds or the worker stops;
    nothing is acked meanwhile (:meth:`Health.retry`). One line is logged when an outage of
    a dependency starts and one when it ends, and ``driftwatch_dependency_degraded`` is 1
    in between.
Caused by the data
    Anything else raised while processing a batch. The batch is split in halves until the
    message that raises is alone (:func:`isolate`); that message is dead-lettered with the
    exception text and the rest of the batch goes on.

A batch is committed only once it succeeded (:func:`until_done` never gives up on one), so
a batch still failing when the worker stops is redelivered after the restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aiokafka.errors as kafka_errors
import redis.exceptions as redis_errors
from faust.exceptions import ProducerSendError

from stream.exceptions import StateConflictError
from stream.service.metrics import Metrics

log = logging.getLogger(__name__)

Dependency = Literal["redis", "kafka"]
T = TypeVar("T")
Item = TypeVar("Item")

BACKOFF_START_S = 0.2
BACKOFF_CAP_S = 5.0
STALL_S = 5.0
"""Seconds without an answer after which a call that does not fail counts as an outage."""

# Redis answers these while it starts, fails over or runs out of memory: not the data's fault
_REDIS_TRANSIENT_REPLIES = ("LOADING", "MISCONF", "OOM", "READONLY", "NOSCRIPT", "MASTERDOWN")


def dependency_of(exc: BaseException) -> Dependency | None:
    """The dependency whose outage ``exc`` is, or ``None`` if it is not a transient failure.

    Examples
    --------
    >>> dependency_of(redis_errors.ConnectionError("refused"))
    'redis'
    >>> dependency_of(kafka_errors.KafkaConnectionError()), dependency_of(ValueError("x"))
    ('kafka', None)
    >>> dependency_of(kafka_errors.MessageSizeTooLargeError())  # the message's fault
    """
    if isinstance(exc, ProducerSendError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, StateConflictError):
        return "redis"  # another worker writes the same entities: wait for it to let go
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError):
        return "redis"
    if isinstance(exc, redis_errors.ResponseError):
        return "redis" if str(exc).startswith(_REDIS_TRANSIENT_REPLIES) else None
    if isinstance(exc, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError):
        return "kafka"
    if isinstance(exc, kafka_errors.KafkaError):
        return "kafka" if getattr(exc, "retriable", False) else None
    if isinstance(exc, ProducerSendError):
        return "kafka"
    return None


@dataclass
class _Outage:
    since: float
    retries: int = 0


class Health:
    """Outage bookkeeping shared by every agent of a worker, and the retry loop.

    Parameters
    ----------
    metrics
        ``dependency_degraded`` and ``retries`` are updated here.
    backoff_start_s, backoff_cap_s
        The first wait and the longest wait between two tries.
    """

    def __init__(
        self,
        metrics: Metrics,
        backoff_start_s: float = BACKOFF_START_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        self.metrics = metrics
        self.backoff_start_s = backoff_start_s
        self.backoff_cap_s = backoff_cap_s
        self._reset()

    def _reset(self) -> None:
        self._down: dict[Dependency, _Outage] = {}
        self._failing_tasks: dict[str, Dependency] = {}
        self._random = random.Random()  # noqa: S311 - jitter, not security

    def degraded(self, dependency: Dependency) -> bool:
        """Whether an outage of ``dependency`` is going on."""
        return dependency in self._down

    def failed(self, dependency: Dependency, step: str, exc: BaseException) -> None:
        """Count one failed try; the first of an outage logs one line."""
        self.metrics.retries.labels(dependency, step).inc()
        outage = self._down.get(dependency)
        if outage is None:
            outage = self._down[dependency] = _Outage(time.monotonic())
            self.metrics.dependency_degraded.labels(dependency).set(1)
            log.warning(
                "%s unavailable (%s in %s: %s): retrying with backoff; nothing is acked meanwhile",
                dependency, type(exc).__name__, step, exc,
            )  # fmt: skip
        outage.retries += 1

    def recovered(self, dependencies: Iterable[Dependency]) -> None:
        """End the outages of ``dependencies`` (a try that had failed succeeded)."""
        for dependency in dependencies:
            outage = self._down.pop(dependency, None)
            if outage is None:
                continue
            self.metrics.dependency_degraded.labels(dependency).set(0)
            log.info(
                "%s available again after %.1f s (%d retries)",
                dependency, time.monotonic() - outage.since, outage.retries,
            )  # fmt: skip

    async def patient(
        self, dependency: Dependency, step: str, call: Awaitable[T], stall_s: float = STALL_S
    ) -> T:
        """Await ``call``, counting it as an outage of ``dependency`` while it stalls.

        Some clients retry on their own (the Kafka producer resends until the broker is
        back) and never raise: a call without an answer for ``stall_s`` starts an outage
        (one line, the degraded gauge), and its completion ends it.

        >>> h = Health(Metrics())
        >>> asyncio.run(h.patient("kafka", "publish", asyncio.sleep(0.05, "sent"), 0.01))
        'sent'
        >>> h.degraded("kafka")
        False
        """
        task = asyncio.ensure_future(call)
        stalled = False
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=stall_s)
                if done:
                    break
                stalled = True
                self.failed(dependency, step, TimeoutError(f"no answer for {stall_s:g} s"))
        except asyncio.CancelledError:
            task.cancel()
            raise
        if stalled:
            self.recovered([dependency])
        return task.result()

    def backoff_s(self, attempt: int) -> float:
        """The wait before try ``attempt + 1``: doubling from the start, capped, +-20 % jitter.

        >>> h = Health(Metrics(), backoff_start_s=0.2, backoff_cap_s=5.0)
        >>> [round(h.backoff_s(a) / (0.2 * 2**min(a, 5))) for a in range(3)]
        [1, 1, 1]
        >>> h.backoff_s(30) <= 5.0 * 1.2
        True
        """
        wait = min(self.backoff_cap_s, self.backoff_start_s * 2 ** min(attempt, 30))
        return wait * self._random.uniform(0.8, 1.2)

    async def retry(self, step: str, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()`` until it does not fail transiently; other errors propagate.

        Examples
        --------
        >>> h = Health(Metrics(), backoff_start_s=0.001)
        >>> tries = []
        >>> async def flaky():
        ...     tries.append(1)
        ...     if len(tries) < 3:
        ...         raise redis_errors.ConnectionError("down")
        ...     return "ok"
        >>> asyncio.run(h.retry("features", flaky)), len(tries), h.degraded("redis")
        ('ok', 3, False)
        """
        attempt = 0
        failing: set[Dependency] = set()
        while True:
            try:
                result = await call()
            except Exception as exc:
                dependency = dependency_of(exc)
                if dependency is None:
                    raise
                failing.add(dependency)
                self.failed(dependency, step, exc)
                await asyncio.sleep(self.backoff_s(attempt))
                attempt += 1
                continue
            self.recovered(failing)
            return result


@dataclass(frozen=True)
class Poisoned:
    """A message that raised while it was processed, and why."""

    item: Any
    error: str


def describe(exc: BaseException) -> str:
    """The text a dead letter carries for an exception: its type and message.

    >>> describe(ValueError("bad bucket"))
    'ValueError: bad bucket'
    """
    return f"{type(exc).__name__}: {exc}"[:2_000]


async def isolate(
    items: Sequence[Item],
    process: Callable[[Sequence[Item]], Awaitable[T]],
    poisoned: list[Poisoned],
) -> list[T]:
    """Process ``items``; a non-transient error splits them until the culprit is alone.

    Returns the results of the parts that succeeded, in order; every message that raised
    on its own is appended to ``poisoned``. ``process`` must be safe to call again on a
    part of a batch whose earlier call failed (the worker's steps are: feature updates are
    idempotent on event id).

    Examples
    --------
    >>> async def total(xs):
    ...     if 13 in xs:
    ...         raise ValueError("unlucky")
    ...     return sum(xs)
    >>> bad = []
    >>> asyncio.run(isolate([1, 2, 13, 4], total, bad)), [(p.item, p.error) for p in bad]
    ([3, 4], [(13, 'ValueError: unlucky')])
    """
    try:
        return [await process(items)]
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if len(items) <= 1:
            log.error("message dead-lettered: %s", describe(exc), exc_info=exc)
            poisoned.extend(Poisoned(item, describe(exc)) for item in items)
            return []
    middle = len(items) // 2
    return [
        *await isolate(items[:middle], process, poisoned),
        *await isolate(items[middle:], process, poisoned),
    ]


async def until_done(
    name: str, call: Callable[[], Awaitable[None]], n: int, health: Health
) -> None:
    """Run a batch's ``call`` until it succeeds; nothing escapes but cancellation.

    A step retries outages and isolates poison itself, so what reaches this loop is a
    failure outside those guards: the batch is tried again after a pause (delayed, never
    acked unprocessed). ``n`` (the batch's size) is for the log line.
    """
    attempt = 0
    failing: set[Dependency] = set()
    while True:
        try:
            await call()
            health.recovered(failing)
            return
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is not None:
                failing.add(dependency)
                health.failed(dependency, name, exc)
            else:
                health.metrics.task_errors.labels(name).inc()
                if attempt % 100 == 0:  # one traceback per hundred tries, not per try
                    log.exception("%s: batch of %d failed (%s); trying it again",
                                  name, n, describe(exc))  # fmt: skip
        await asyncio.sleep(health.backoff_s(attempt))
        attempt += 1


async def guarded(name: str, call: Callable[[], Awaitable[Any]], health: Health) -> None:
    """Run a timer's or background task's body: log and count failures, never raise.

    A transient failure is recorded as an outage (one line); anything else is logged
    once per call with its traceback. The next tick tries again.
    """
    try:
        await call()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        dependency = dependency_of(exc)
        if dependency is not None:
            health.failed(dependency, name, exc)
            health._failing_tasks[name] = dependency
            return
        health.metrics.task_errors.labels(name).inc()
        log.exception("%s failed: %s; trying again at the next tick", name, describe(exc))
    else:
        failed = health._failing_tasks.pop(name, None)
        if failed is not None:
            health.recovered([failed])


class RepeatFilter(logging.Filter):
    """Let through one warning or error per logger and message template every ``interval_s``.

    A Kafka client whose broker is away logs the same connection error many times a second
    (23,000 lines in a 15 s outage); the outage itself is logged once by :class:`Health`.
    Records of loggers outside ``prefixes`` and below WARNING pass untouched; the first
    record let through after a quiet spell says how many were suppressed.

    Examples
    --------
    >>> f = RepeatFilter(interval_s=60.0)
    >>> rec = lambda: logging.LogRecord("aiokafka.conn", logging.ERROR, "", 0,
    ...                                 "Unable to connect to %s", ("127.0.0.1:9092",), None)
    >>> [f.filter(rec()) for _ in range(3)]
    [True, False, False]
    """

    def __init__(
        self, interval_s: float = 30.0, prefixes: tuple[str, ...] = ("aiokafka", "faust", "mode")
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.prefixes = prefixes
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last, suppressed = self._seen.get(key, (-self.interval_s, 0))
        if now - last < self.interval_s:
            self._seen[key] = (last, suppressed + 1)
            return False
        if suppressed:
            record.msg = f"{record.getMessage()} [{suppressed} more like this suppressed]"
            record.args = None
        self._seen[key] = (now, 0)
        return True

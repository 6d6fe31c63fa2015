"""Values from several source partitions put back in event-time order: :class:`EventTimeOrder`.

Pure logic, no I/O, no clock (the caller passes the wall-clock time).  A subject's values
reach its monitor from every events-topic partition, through whichever worker scores that
partition, and partitions run apart: a worker falls behind, a dead worker's partitions wait
for a rebalance and then come as a backlog with old event times.  A detector judges its
values as one ordered stream, so the monitor holds each source partition's values in a
buffer and releases them merged by event time up to a *watermark* (as Flink's per-partition
watermarks, https://nightlies.apache.org/flink/flink-docs-stable/docs/concepts/time/):

* each partition's high-water mark is the latest event time it has sent;
* the watermark is the minimum of the high-water marks of the *active* partitions: a
  partition that has sent nothing for ``idle_ms`` of wall-clock time stops holding it (a
  partition with no traffic, or one whose worker is dead longer than a rebalance takes);
* it never lags the most advanced partition by more than ``max_delay_ms`` of event time, and
  never holds more than ``max_buffered`` values: past either bound the oldest values go out
  and the lagging partition's later values come late;
* buffered values with an event time at or before the watermark are released, merged by
  event time (a stable sort: equal times keep their arrival order).

Late values
-----------
A value whose event time is before the watermark already released cannot be put in order:
it is *late*, left out of the detectors and counted (:attr:`EventTimeOrder.late`, exported as
``driftwatch_monitor_late_values``).  Judging it out of order is what opened a second episode
on the backlog of a restarted worker's partitions; leaving it out costs a few values of the
sample and keeps the stream the detectors see in event-time order.

Examples
--------
>>> order = EventTimeOrder(idle_ms=30_000, max_delay_ms=600_000, max_buffered=1000, expected=2)
>>> order.push([0, 0], [1.0, 2.0], [10, 30], now_ms=0)  # partition 1 not heard yet: held
([], [])
>>> order.push([1, 1], [3.0, 4.0], [5, 20], now_ms=1)  # watermark min(30, 20)
([3.0, 1.0, 4.0], [5, 10, 20])
>>> order.push([1, 0], [5.0, 6.0], [15, 60], now_ms=2)  # 15 < 20: late
([], [])
>>> order.late, order.buffered, order.push([1], [7.0], [61], now_ms=3)
(1, 2, ([2.0, 6.0], [30, 60]))
>>> order.push([0], [8.0], [70], now_ms=40_000)  # partition 1 idle: 0 alone holds it
([7.0, 8.0], [61, 70])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: The watermark before any value was released.
NONE = -(2**62)


class EventTimeOrder:
    """Per-partition buffers released in event-time order up to a watermark (see above).

    Parameters
    ----------
    idle_ms
        Wall-clock time after which a silent partition stops holding the watermark.
    max_delay_ms
        Most event time the watermark may lag the most advanced partition.
    max_buffered
        Most values held; beyond it the oldest are released whatever the watermark.
    expected
        Partitions ``0 .. expected - 1`` hold the watermark from the first batch on, before
        they are heard from (up to ``idle_ms``), so that a partition whose first values come
        a little later than the others' is not late at start-up.
    """

    def __init__(
        self, idle_ms: int, max_delay_ms: int, max_buffered: int, expected: int = 0
    ) -> None:
        self.idle_ms = idle_ms
        self.max_delay_ms = max_delay_ms
        self.max_buffered = max_buffered
        self.expected = expected
        self._reset()

    def _reset(self) -> None:
        self._high: dict[int, int] = dict.fromkeys(range(self.expected), NONE)
        # partition -> wall-clock time last heard (None: not yet, counted from the first batch)
        self._heard: dict[int, int | None] = dict.fromkeys(range(self.expected))
        # the buffered values and their event times as arrays: each batch is converted
        # once, and the buffer is never converted again (a list of times converted at every
        # push cost about a microsecond per value per subject); the values are objects (any
        # subject's kind), reordered by a gather in C: the values a lagging partition holds
        # back were rebuilt as a list at every push, a tenth of the monitors' CPU with
        # every subject of the 10-feature config
        self._values: NDArray[np.object_] = np.empty(0, object)
        self._ts: NDArray[np.int64] = np.empty(0, np.int64)
        self.watermark = NONE
        self.late = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # pickled by an earlier version: the buffered values and event times were lists
        state["_ts"] = np.asarray(state.get("_ts", []), dtype=np.int64)
        state["_values"] = _objects(state.get("_values", []))
        self.__dict__.update(state)

    @property
    def buffered(self) -> int:
        """Values waiting for the watermark."""
        return len(self._ts)

    @property
    def delay_ms(self) -> int:
        """Event time between the most advanced partition and the watermark (0 if none)."""
        if not self._high or self.watermark == NONE:
            return 0
        return max(0, max(self._high.values()) - self.watermark)

    def active(self, now_ms: int) -> set[int]:
        """The partitions that hold the watermark at ``now_ms``: heard from within
        ``idle_ms`` (an expected partition not yet heard from counts from the first batch)."""
        return {p for p, h in self._heard.items() if h is None or now_ms - h < self.idle_ms}

    def resume(self, now_ms: int) -> None:
        """After a restart: every known partition gets a fresh ``idle_ms`` to be heard from
        (they were silent because this monitor was not running, not because they are idle)."""
        self._heard = dict.fromkeys(self._heard, now_ms)

    def push(
        self, partitions: Sequence[int], values: Sequence[Any], ts: Sequence[int], now_ms: int
    ) -> tuple[list[Any], list[int]]:
        """Take one batch (``partitions[i]`` sent ``values[i]`` at ``ts[i]``); return the
        values released by it, oldest event time first, with their event times."""
        if not (len(partitions) == len(values) == len(ts)):
            raise ValueError(
                f"partitions: expected one per value ({len(values)} values, {len(ts)} times), "
                f"got {len(partitions)}"
            )
        for p, heard in self._heard.items():
            if heard is None:
                self._heard[p] = now_ms
        times = np.asarray(ts, dtype=np.int64)
        if len(times):
            self._observe(partitions, times, now_ms)
            batch = _objects(values)
            if times.min() < self.watermark:
                fresh = times >= self.watermark
                self.late += len(times) - int(np.count_nonzero(fresh))
                batch, times = batch[fresh], times[fresh]
            if len(self._ts):
                batch = np.concatenate((self._values, batch))
                times = np.concatenate((self._ts, times))
            self._values, self._ts = batch, times
        return self._release(self._target(now_ms))

    def _observe(self, partitions: Sequence[int], ts: NDArray[np.int64], now_ms: int) -> None:
        """Each partition of the batch is heard from, and its high-water mark moves on."""
        present = set(partitions)
        if len(present) == 1:
            highs = {p: int(ts.max()) for p in present}
        else:
            parts = np.asarray(partitions, dtype=np.int64)
            highs = {p: int(ts[parts == p].max()) for p in present}
        for p, high in highs.items():
            self._heard[p] = now_ms
            if high > self._high.get(p, NONE):
                self._high[p] = high

    def _target(self, now_ms: int) -> int:
        if not self._high:
            return self.watermark
        heard = self._heard
        active = [h for p, h in self._high.items() if now_ms - (heard[p] or 0) < self.idle_ms]
        newest = max(self._high.values())
        target = min(active) if active else newest
        return max(target, newest - self.max_delay_ms, self.watermark)

    def _release(self, target: int) -> tuple[list[Any], list[int]]:
        ts = self._ts
        in_order = bool((ts[1:] >= ts[:-1]).all())
        order = None if in_order else np.argsort(ts, kind="stable")
        ordered = ts if order is None else ts[order]
        cut = int(np.searchsorted(ordered, target, side="right"))
        # bounded memory: the oldest go out past max_buffered, and the watermark with them
        cut = max(cut, len(ordered) - self.max_buffered)
        if cut == 0:
            return [], []
        self.watermark = max(target, int(ordered[cut - 1]))
        values = self._values if order is None else self._values[order]
        # copies, not views: the released values and times are let go
        self._values, self._ts = values[cut:].copy(), ordered[cut:].copy()
        return values[:cut].tolist(), ordered[:cut].tolist()


def _objects(values: Sequence[Any]) -> NDArray[np.object_]:
    """``values`` as a one-dimensional object array (whatever each value is)."""
    return np.fromiter(values, dtype=object, count=len(values))


__all__ = ["EventTimeOrder"]

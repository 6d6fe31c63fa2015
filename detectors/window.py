"""Sliding windows kept incrementally, and the two detector families built on them.

* :class:`SortedWindow` keeps the last ``size`` values in a ring buffer *and* sorted, updated in
  place (one binary search and one memmove per value), so an order statistic such as KS or
  Wasserstein needs no re-sort at a check.
* :class:`CountWindow` keeps the last ``size`` integer codes (PSI bins, categories) and their
  counts, so a binned statistic costs ``O(bins)`` per check.

:class:`SortedWindowDetector` (KS, Wasserstein) and :class:`CountWindowDetector` (PSI,
chi-square) implement :class:`~detectors.base.Detector` on top of them; a method only supplies
how to summarise the reference (its *state*), how to encode values, and a statistic vectorised
over many windows, which serves both the live checks and the calibration.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from detectors import calibration
from detectors.base import Detector


class SortedWindow:
    """The last ``size`` keys, in arrival order and sorted, each with an optional integer tag.

    The tag (e.g. the key's rank in the reference) travels with its key through the sort, so
    a statistic can read both without a search.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring = np.empty(size)
        self._ring_tags = np.zeros(size, dtype=np.int64)
        self._sorted = np.empty(size)
        self._tags = np.zeros(size, dtype=np.int64)
        self._head = 0
        self._count = 0

    @property
    def full(self) -> bool:
        """Whether ``size`` keys have been pushed."""
        return self._count == self.size

    @property
    def sorted(self) -> NDArray[np.float64]:
        """The keys currently in the window, sorted (a view: do not modify)."""
        return self._sorted[: self._count]

    @property
    def tags(self) -> NDArray[np.int64]:
        """The tags of :attr:`sorted`, in the same order (a view: do not modify)."""
        return self._tags[: self._count]

    def values(self) -> NDArray[np.float64]:
        """The keys currently in the window, oldest first (a copy)."""
        if self._count < self.size:
            return self._ring[: self._count].copy()
        return np.roll(self._ring, -self._head)

    def use_storage(self, keys: NDArray[np.float64], tags: NDArray[np.int64]) -> None:
        """Keep the sorted keys and tags in ``keys`` and ``tags`` (``size`` each, e.g. views of
        one buffer shared by several windows) from now on."""
        keys[:] = self._sorted
        tags[:] = self._tags
        self._sorted, self._tags = keys, tags

    def push(self, keys: NDArray[np.float64], tags: NDArray[np.int64] | None = None) -> None:
        """Append ``keys`` (and their ``tags``), evicting the oldest once the window is full."""
        if tags is None:
            tags = np.zeros(len(keys), dtype=np.int64)
        if len(keys) == 1 and self._count == self.size:
            self._push_one(float(keys[0]), int(tags[0]))
        elif len(keys) > self.size // 8 or self._count + len(keys) <= self.size:
            self._push_many(keys, tags)
        elif len(keys) > 6 and self.full:
            self._push_some(keys, tags)
        else:
            for key, tag in zip(keys.tolist(), tags.tolist(), strict=True):
                self._push_one(key, tag)

    def _push_one(self, key: float, tag: int) -> None:
        ordered, tags = self._sorted, self._tags
        if self._count < self.size:
            self._push_many(np.array([key]), np.array([tag]))
            return
        old = self._ring[self._head]
        self._ring[self._head] = key
        self._ring_tags[self._head] = tag
        self._head = (self._head + 1) % self.size
        out = int(ordered.searchsorted(old))
        at = int(ordered.searchsorted(key))
        # One memmove of the keys (and tags) between the evicted and the new position.
        if at > out:
            ordered[out : at - 1] = ordered[out + 1 : at]
            tags[out : at - 1] = tags[out + 1 : at]
            at -= 1
        else:
            ordered[at + 1 : out + 1] = ordered[at:out]
            tags[at + 1 : out + 1] = tags[at:out]
        ordered[at] = key
        tags[at] = tag

    def _push_some(self, keys: NDArray[np.float64], tags: NDArray[np.int64]) -> None:
        slots = (self._head + np.arange(len(keys))) % self.size
        old = np.sort(self._ring[slots])
        self._ring[slots] = keys
        self._ring_tags[slots] = tags
        self._head = (self._head + len(keys)) % self.size
        # Distinct positions for evicted duplicates: first copy + rank among equal evictees.
        position = self._sorted.searchsorted(old) + np.arange(len(old)) - old.searchsorted(old)
        keep = np.ones(self.size, dtype=bool)
        keep[position] = False
        kept, kept_tags = self._sorted[keep], self._tags[keep]
        order = np.argsort(keys, kind="stable")
        at = kept.searchsorted(keys[order])
        self._sorted[:] = np.insert(kept, at, keys[order])
        self._tags[:] = np.insert(kept_tags, at, tags[order])

    def _push_many(self, keys: NDArray[np.float64], tags: NDArray[np.int64]) -> None:
        keys, tags = keys[-self.size :], tags[-self.size :]
        if self._count < self.size:
            room = min(self.size - self._count, len(keys))
            self._ring[self._count : self._count + room] = keys[:room]
            self._ring_tags[self._count : self._count + room] = tags[:room]
            self._count += room
            keys, tags = keys[room:], tags[room:]
        if len(keys):
            slots = (self._head + np.arange(len(keys))) % self.size
            self._ring[slots] = keys
            self._ring_tags[slots] = tags
            self._head = (self._head + len(keys)) % self.size
        order = np.argsort(self._ring[: self._count], kind="stable")
        self._sorted[: self._count] = self._ring[order]
        self._tags[: self._count] = self._ring_tags[order]


class CountWindow:
    """The last ``size`` integer codes in ``[0, n_codes)`` and how often each occurs."""

    def __init__(self, size: int, n_codes: int) -> None:
        self.size = size
        self.counts = np.zeros(n_codes, dtype=np.int64)
        self._ring = np.zeros(size, dtype=np.int64)
        self._head = 0
        self._count = 0

    @property
    def full(self) -> bool:
        """Whether ``size`` codes have been pushed."""
        return self._count == self.size

    def values(self) -> NDArray[np.int64]:
        """The codes currently in the window, oldest first (a copy)."""
        if self._count < self.size:
            return self._ring[: self._count].copy()
        return np.roll(self._ring, -self._head)

    def push(self, codes: NDArray[np.int64]) -> None:
        """Append ``codes``, evicting the oldest ones once the window is full."""
        if len(codes) <= 4:
            for code in codes.tolist():
                self._push_one(code)
            return
        codes = codes[-self.size :]
        slots = (self._head + np.arange(len(codes))) % self.size
        if self._count < self.size:
            filled = min(self.size - self._count, len(codes))
            self._count += filled
            evicted = self._ring[slots[filled:]]
        else:
            evicted = self._ring[slots]
        n_codes = len(self.counts)
        self.counts += np.bincount(codes, minlength=n_codes)
        self.counts -= np.bincount(evicted, minlength=n_codes)
        self._ring[slots] = codes
        self._head = (self._head + len(codes)) % self.size

    def _push_one(self, code: int) -> None:
        if self._count < self.size:
            self._count += 1
        else:
            self.counts[self._ring[self._head]] -= 1
        self.counts[code] += 1
        self._ring[self._head] = code
        self._head = (self._head + 1) % self.size


Stats = list[tuple[int, float, Callable[[], float] | None]]


class SimulatedDetector(Detector):
    """Calibrates by simulating stationary streams (:func:`detectors.calibration.calibrate`)."""

    def _calibrate(self) -> NDArray[np.float64]:
        return calibration.calibrate(
            self._simulate,
            self._window_statistics,
            self.windows,
            self.check_every,
            self.ert,
            self.n_streams,
            self.random_state,
        )

    @abc.abstractmethod
    def _simulate(self, rng: np.random.Generator, size: int) -> tuple[Any, NDArray[Any]]:
        """A stationary (pseudo-reference state, encoded stream) pair, as in calibration."""

    @abc.abstractmethod
    def _window_statistics(
        self, state: Any, stream: NDArray[Any], window: int, ends: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """The statistic of each ``window``-sized stretch of ``stream`` ending at ``ends``."""


class SortedWindowDetector(SimulatedDetector):
    """A detector whose statistic is a function of the sorted window (KS, Wasserstein)."""

    def _reset(self) -> None:
        super()._reset()
        self._windows: list[SortedWindow] = []

    def _start_windows(self) -> None:
        self._windows = [SortedWindow(size) for size in self.windows]

    def _push(self, encoded: NDArray[Any]) -> None:
        tags = self._tags(encoded)
        for window in self._windows:
            window.push(encoded, tags)

    def _statistics(self) -> Stats:
        found = []
        for index, window in enumerate(self._windows):
            if window.full:
                stat = self._window_statistic(window)
                found.append((index, stat, self._p_value_fn(stat, window.size)))
        return found

    def _tags(self, encoded: NDArray[np.float64]) -> NDArray[np.int64] | None:
        """Integer tag kept with each key in the sorted windows (none by default)."""
        return None

    def _window_statistic(self, window: SortedWindow) -> float:
        return float(self._sorted_statistic(self._state, window.sorted[np.newaxis])[0])

    def _window_statistics(
        self, state: Any, stream: NDArray[Any], window: int, ends: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        views = sliding_window_view(stream, window)
        out = np.empty(len(ends))
        for start in range(0, len(ends), 256):
            rows = np.sort(views[ends[start : start + 256] - window], axis=1)
            out[start : start + 256] = self._sorted_statistic(state, rows)
        return out

    def _p_value_fn(self, statistic: float, window: int) -> Callable[[], float] | None:
        return None

    @abc.abstractmethod
    def _sorted_statistic(self, state: Any, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        """Statistic of each sorted row of encoded values against the reference ``state``."""


class CountWindowDetector(SimulatedDetector):
    """A detector whose statistic is a function of code counts (PSI bins, categories)."""

    def _reset(self) -> None:
        super()._reset()
        self._windows: list[CountWindow] = []

    def _start_windows(self) -> None:
        self._windows = [CountWindow(size, self._n_codes(self._state)) for size in self.windows]

    def _push(self, encoded: NDArray[Any]) -> None:
        for window in self._windows:
            window.push(encoded)

    def _statistics(self) -> Stats:
        found = []
        for index, window in enumerate(self._windows):
            if window.full:
                stat = float(self._count_statistic(self._state, window.counts[np.newaxis])[0])
                found.append((index, stat, self._p_value_fn(stat, window.counts)))
        return found

    def _window_statistics(
        self, state: Any, stream: NDArray[Any], window: int, ends: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        n_codes = self._n_codes(state)
        cumulative = np.zeros((len(stream) + 1, n_codes), dtype=np.int64)
        np.cumsum(np.eye(n_codes, dtype=np.int64)[stream], axis=0, out=cumulative[1:])
        return self._count_statistic(state, cumulative[ends] - cumulative[ends - window])

    def _p_value_fn(
        self, statistic: float, counts: NDArray[np.int64]
    ) -> Callable[[], float] | None:
        return None

    @abc.abstractmethod
    def _n_codes(self, state: Any) -> int:
        """Number of distinct codes (bins, categories) under the reference ``state``."""

    @abc.abstractmethod
    def _count_statistic(self, state: Any, counts: NDArray[np.int64]) -> NDArray[np.float64]:
        """Statistic of each row of window code counts against the reference ``state``."""

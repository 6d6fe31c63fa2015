"""Sliding windows kept incrementally, and the two detector families built on them.

* :class:`SortedWindow` keeps the last ``size`` values in a ring buffer and sorts them when a
  check reads them (once per check, not once per push; a single value arriving in a sorted
  window is inserted in place), so an order statistic such as KS or Wasserstein reads a sorted
  window.
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
    """The last ``size`` keys, in arrival order and sorted on demand, each with an integer tag.

    A push of several keys only writes them into a ring buffer; the sorted copy is rebuilt
    by :meth:`sort` (called by :attr:`sorted` and :attr:`tags`) once per check, not once per
    push: ``np.sort`` of 1,000 floats costs about as much as one incremental insertion, so a
    check that follows more than one value is cheaper this way.  A single key pushed into a
    sorted, full window is inserted in place (one binary search and one memmove), which
    keeps ``check_every=1`` fed one value at a time cheap.

    The tag (e.g. the key's rank in the reference) must be a non-decreasing function of its
    key: then sorting keys and tags separately keeps them aligned, and a statistic can read
    both without a search.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._ring = np.empty(size)
        self._ring_tags = np.zeros(size, dtype=np.int64)
        self._sorted = np.empty(size)
        self._tags = np.zeros(size, dtype=np.int64)
        self._head = 0
        self._count = 0
        self._stale = False  # the ring holds keys that _sorted does not

    @property
    def full(self) -> bool:
        """Whether ``size`` keys have been pushed."""
        return self._count == self.size

    @property
    def sorted(self) -> NDArray[np.float64]:
        """The keys currently in the window, sorted (a view: do not modify)."""
        self.sort()
        return self._sorted[: self._count]

    @property
    def tags(self) -> NDArray[np.int64]:
        """The tags of :attr:`sorted`, in the same order (a view: do not modify)."""
        self.sort()
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
        if len(keys) == 1 and self._count == self.size and not self._stale:
            self._push_one(float(keys[0]), 0 if tags is None else int(tags[0]))
            return
        keys = keys[-self.size :]
        tags = None if tags is None else tags[-self.size :]
        start = self._head if self._count == self.size else self._count
        first = min(len(keys), self.size - start)
        self._ring[start : start + first] = keys[:first]
        self._ring[: len(keys) - first] = keys[first:]
        if tags is not None:
            self._ring_tags[start : start + first] = tags[:first]
            self._ring_tags[: len(keys) - first] = tags[first:]
        filled = min(self.size - self._count, len(keys))
        self._count += filled
        self._head = (start + len(keys)) % self.size if self._count == self.size else 0
        self._stale = True

    def sort(self) -> None:
        """Bring :attr:`sorted` and :attr:`tags` up to date with the pushed keys."""
        if self._stale:
            self._sorted[: self._count] = np.sort(self._ring[: self._count])
            self._tags[: self._count] = np.sort(self._ring_tags[: self._count])
            self._stale = False

    def _push_one(self, key: float, tag: int) -> None:
        ordered, tags = self._sorted, self._tags
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
            self._calibration_stream,
            self._window_statistics,
            self.windows,
            self.check_every,
            self.ert,
            self.n_streams,
            self.random_state,
        )

    def _draw(self, rng: np.random.Generator, reference: NDArray[Any], size: int) -> NDArray[Any]:
        """``size`` stationary values: smoothed bootstrap of the sorted ``reference``, or
        moving blocks of the ``null`` stretch given to ``fit`` (blocks of the longest window:
        a simulated window then holds the stretch's values as one stretch of the stream
        holds them, with their correlation over a whole window; shorter blocks mixed parts
        of the stretch into every window and hid the slow wander of a learning model's
        scores, which fired PSI in 5 of 24 stationary runs against 3 of 24)."""
        if self._null is None:
            return calibration.smoothed_bootstrap(reference, size, rng)
        return calibration.block_bootstrap(self._null, size, max(self.windows), rng)

    def _floors(self) -> NDArray[np.float64]:
        level = calibration.stretch_level(self.windows, self.check_every, self.ert)
        return np.array([self._floor(size, level) for size in self.windows])

    def _floor(self, window: int, level: float) -> float:
        """The analytic critical value of one check of ``window`` values at ``level``."""
        return 0.0

    @abc.abstractmethod
    def _simulate(self, rng: np.random.Generator, size: int) -> tuple[Any, NDArray[Any]]:
        """A stationary (pseudo-reference state, encoded stream) pair, as in calibration."""

    def _calibration_stream(self, rng: np.random.Generator, size: int) -> tuple[Any, Any]:
        """:meth:`_simulate`'s pair, the stream in the form :meth:`_window_statistics` reads."""
        return self._simulate(rng, size)

    @abc.abstractmethod
    def _window_statistics(
        self, state: Any, stream: Any, window: int, ends: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        """The statistic of each ``window``-sized stretch of ``stream`` (as
        :meth:`_calibration_stream` returns it) ending at ``ends``."""


class RankedStream:
    """A simulated stream sorted once, for the statistics of all its windows.

    ``sorted_keys`` and ``sorted_tags`` are the stream's keys and tags in sorted order, and
    ``ranks`` each key's position among them, in stream order (``int16`` when they fit).
    The ranks of a window, sorted, index its keys and tags in sorted order: the same floats
    as sorting the window's keys and tags, from one sort of small integers (a calibration's
    windows of 1,000 and 150 of a 5,000-value stream: about half the time).
    """

    def __init__(
        self,
        order: NDArray[np.intp],
        sorted_keys: NDArray[np.float64],
        sorted_tags: NDArray[np.int64] | None,
    ) -> None:
        self.sorted_keys, self.sorted_tags = sorted_keys, sorted_tags
        size = len(order)
        kind = np.int16 if size <= np.iinfo(np.int16).max else np.int64
        self.ranks = np.empty(size, dtype=kind)
        self.ranks[order] = np.arange(size, dtype=kind)

    @classmethod
    def of(
        cls,
        keys: NDArray[np.float64],
        state: Any,
        tags: Callable[[Any, NDArray[np.float64]], NDArray[np.int64] | None],
    ) -> RankedStream:
        """Sort ``keys`` and tag them with ``tags(state, sorted_keys)`` (a search of sorted
        values is the fast one)."""
        order = np.argsort(keys)
        sorted_keys = keys[order]
        return cls(order, sorted_keys, tags(state, sorted_keys))

    def sorted_windows(
        self, window: int, ends: NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.int64] | None]:
        """The keys and tags of each window ``[end - window, end)``, each row sorted."""
        index = sliding_window_view(self.ranks, window)[ends - window]  # a copy
        index.sort(axis=1)
        tags = None if self.sorted_tags is None else self.sorted_tags[index]
        return self.sorted_keys[index], tags


class SortedWindowDetector(SimulatedDetector):
    """A detector whose statistic is a function of the sorted window (KS, Wasserstein)."""

    def _reset(self) -> None:
        super()._reset()
        self._windows: list[SortedWindow] = []

    def _start_windows(self) -> None:
        self._windows = [SortedWindow(size) for size in self.windows]

    def _push(self, encoded: NDArray[Any]) -> None:
        tags = self._tags(self._state, encoded)
        for window in self._windows:
            window.push(encoded, tags)

    def _statistics(self) -> Stats:
        found = []
        for index, window in enumerate(self._windows):
            if window.full:
                stat = self._window_statistic(window)
                found.append((index, stat, self._p_value_fn(stat, window.size)))
        return found

    def _tags(self, state: Any, encoded: NDArray[np.float64]) -> NDArray[np.int64] | None:
        """Integer tag kept with each key in the sorted windows, a non-decreasing function of
        the key under the reference ``state`` (none by default)."""
        return None

    def _window_statistic(self, window: SortedWindow) -> float:
        return float(self._sorted_statistic(self._state, window.sorted[np.newaxis], None)[0])

    def _calibration_stream(self, rng: np.random.Generator, size: int) -> tuple[Any, RankedStream]:
        state, stream = self._simulate(rng, size)
        return state, RankedStream.of(stream, state, self._tags)

    def _window_statistics(
        self, state: Any, stream: RankedStream, window: int, ends: NDArray[np.int64]
    ) -> NDArray[np.float64]:
        out = np.empty(len(ends))
        for start in range(0, len(ends), 256):
            rows, tags = stream.sorted_windows(window, ends[start : start + 256])
            out[start : start + 256] = self._sorted_statistic(state, rows, tags)
        return out

    def _p_value_fn(self, statistic: float, window: int) -> Callable[[], float] | None:
        return None

    @abc.abstractmethod
    def _sorted_statistic(
        self, state: Any, rows: NDArray[np.float64], tags: NDArray[np.int64] | None
    ) -> NDArray[np.float64]:
        """Statistic of each sorted row of encoded values (with their :meth:`_tags`, if any)
        against the reference ``state``."""


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

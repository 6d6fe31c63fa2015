"""Drift on one subject (a feature or the predictions): :class:`SubjectMonitor`.

Pure decision logic, no I/O.  A monitor consumes its subject's values in batches
(:class:`stream.monitoring.subjects.SubjectBatch`); what the subjects are, their warm-up and how the
batches reach the one worker that monitors each subject: :mod:`stream.monitoring.subjects`.

Lifecycle of a subject
----------------------
0. *Event-time order*: a batch that names its values' source partitions goes through
   :class:`~stream.monitoring.event_order.EventTimeOrder` first, so the rest of the monitor
   sees the values of every partition merged by event time up to the watermark (late values
   are counted and left out); a batch that does not is taken in arrival order.
1. *Warming up*: each value is dropped if its event time is before the first event time seen
   plus ``warmup_ms`` (the subject's warm-up:
   :func:`stream.monitoring.subjects.monitored_subjects`), judged per value.
2. *Collecting the reference*: the first ``reference_size`` values after the warm-up (and
   their event-time range).  The prediction subjects first wait for the online model to
   settle (*settling*; :mod:`stream.monitoring.settling`): version 0 and stale versions
   never enter, the model has settled when a block agrees with the block before it, and
   the newest version seen then becomes the *reference model* (:attr:`pin_wanted`, pinned
   in Redis by the hub: :meth:`follow`).  From then on they take only values scored by the
   reference model, whose outputs the scorers send alongside the served ones, and collect
   their reference from those as a feature does.
3. *Fitted*: one detector per configured method compares the sliding window against the
   reference every ``check_every`` values.  A detector's episode start gives one ``firing``
   alert and its end one ``resolved`` alert (hysteresis and patience: :mod:`detectors.base`).
   A (nearly) constant reference is judged against the detectors' analytic floors, never a
   threshold of 0 (:mod:`detectors.base`, "Degenerate references").

The reference is kept for the monitor's lifetime; pinning another one (a refit, a new model
deployment) is :meth:`SubjectMonitor.reset_reference`.

False alarms
------------
``MonitoringSettings.ert`` is the *family-wise* expected number of values between false alarms
over the whole deployment.  With ``k`` (subject, detector) pairs (``family_size``), each
detector is calibrated to ``ert * k``: a Bonferroni split, valid whatever the dependence
between subjects, as in :class:`detectors.Monitor`.
"""

from __future__ import annotations

import bisect
import logging
import zlib
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from detectors import (
    Chi2Detector,
    Detector,
    DetectorResult,
    KSDetector,
    PSIDetector,
    WassersteinDetector,
    bonferroni_ert,
)
from stream.exceptions import ConfigError
from stream.messages import MonitorBatch, SubjectBatch, SubjectKind
from stream.monitoring.alerts import EMPTY_SPAN, AlertKind, AlertStatus, Span, make_alert
from stream.monitoring.base import Reading, Reference
from stream.monitoring.event_order import NONE, EventTimeOrder
from stream.monitoring.evidence import contrast, drift_message, summary
from stream.monitoring.settling import blocks_agree, stale
from stream.service.config import MonitoringSettings

log = logging.getLogger(__name__)

_DETECTORS: dict[SubjectKind, dict[str, type[Detector]]] = {
    "numeric": {"ks": KSDetector, "psi": PSIDetector, "wasserstein": WassersteinDetector},
    "categorical": {"chi2": Chi2Detector},
}
_LABELS = {"ks": "KS", "psi": "PSI", "wasserstein": "Wasserstein", "chi2": "chi2"}
Phase = Literal["warming_up", "collecting", "settling", "fitted"]
#: ``driftwatch_monitor_phase`` of each phase
PHASES: dict[Phase, float] = {"warming_up": 0, "collecting": 1, "settling": 2, "fitted": 3}


class SubjectMonitor:
    """Drift detectors for one subject, from warm-up to episodes (see the module docstring).

    Parameters
    ----------
    subject
        Feature name, ``prediction.score`` or ``prediction.class``.
    kind
        ``"numeric"`` (KS, PSI, Wasserstein) or ``"categorical"`` (chi-square).
    detectors
        Methods to run, e.g. ``settings.numeric_detectors``; each must fit ``kind``.
    settings
        ``reference_size``, ``window``, ``check_every`` and the family-wise ``ert``.
    family_size
        Number of (subject, detector) pairs in the deployment; each detector gets
        ``ert * family_size`` (Bonferroni).
    model
        Model name for the alerts.
    warmup_ms
        Event time to drop after the first value seen.
    partitions
        Number of events-topic partitions: each holds the watermark from the start
        (:class:`~stream.monitoring.event_order.EventTimeOrder`, ``expected``).

    Notes
    -----
    ``update`` is cheap per value (a deque append, a ring-buffer write per detector, and a
    check every ``check_every`` values: under 1 us per value per detector at the defaults)
    except for the call that completes the reference: it calibrates every detector, ~0.05-0.2
    s each at the default sizes (0.2-0.5 s a numeric subject, six times that at
    ``check_every=10``).  Run it off the event loop.  The monitor
    pickles (detectors included) so it can be checkpointed and restored mid-stream.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> settings = MonitoringSettings(reference_size=200, window=100, check_every=10, ert=1000)
    >>> mon = SubjectMonitor("amount", "numeric", ("ks",), settings, family_size=1, model="m")
    >>> def batch(values, start):
    ...     ts = list(range(start, start + len(values)))
    ...     return SubjectBatch("amount", "numeric", [float(v) for v in values], ts, 1)
    >>> mon.update(batch(rng.normal(size=300), 0))
    []
    >>> alerts = mon.update(batch(rng.normal(3, 1, 300), 300))
    >>> [(a["status"], a["detector"], a["ts"]) for a in alerts]
    [('firing', 'ks', 319)]
    """

    #: once a prediction subject has settled: the version it asks the hub to pin as the
    #: reference model (:meth:`follow` answers)
    pin_wanted: int | None

    def __init__(
        self,
        subject: str,
        kind: SubjectKind,
        detectors: tuple[str, ...],
        settings: MonitoringSettings,
        family_size: int,
        model: str,
        warmup_ms: int = 0,
        partitions: int = 0,
    ) -> None:
        self.subject = subject
        self.kind = kind
        self.detectors = detectors
        self.settings = settings
        self.family_size = family_size
        self.model = model
        self.warmup_ms = warmup_ms
        self.partitions = partitions
        self._validate()
        self._pin: int | None = None  # the reference model's version (prediction subjects)
        self._reset()
        # the order outlives a reference: a new one is collected from the ordered stream
        self._order = self._new_order()

    def _new_order(self) -> EventTimeOrder:
        m = self.settings
        return EventTimeOrder(m.watermark_idle_ms, m.max_delay_ms, m.max_buffered,
                              self.partitions)  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a monitor pickled before event-time order (state format 2): no order, no blocks,
        # and settings pickled without the fields added since (their defaults apply)
        self.__dict__.update(state)
        known = vars(self.settings)
        if set(MonitoringSettings.model_fields) - set(known):
            fields = {k: v for k, v in known.items() if k in MonitoringSettings.model_fields}
            self.settings = MonitoringSettings(**fields)
        if "_order" not in state:
            self.partitions = 0
            self._order = self._new_order()
            self._candidate: list[Any] | None = None
            self._blocks = 0
        self.__dict__.setdefault("_pin_first", {})
        self.__dict__.setdefault("_aligned_from", None)
        self.__dict__.setdefault("_early", [])
        if "_pin" not in state:  # before the reference model (state format 4): a prediction
            # monitor settles anew (its reference held the served model's outputs)
            self.__dict__.pop("_stretch", None)
            self._pin = None
            self._newest_version = self._version_floor = 0
            self.pin_wanted = None
            if self._predictions:
                self._reset()

    def _validate(self) -> None:
        known = _DETECTORS.get(self.kind)
        if known is None:
            raise ConfigError(f"kind of {self.subject!r}: expected numeric or categorical, "
                              f"got {self.kind!r}")  # fmt: skip
        wrong = [d for d in self.detectors if d not in known]
        if wrong or not self.detectors:
            raise ConfigError(
                f"detectors of {self.kind} subject {self.subject!r}: expected some of "
                f"{sorted(known)}, got {list(self.detectors)}"
            )
        if self.family_size < 1:
            raise ConfigError(f"family_size: expected >= 1, got {self.family_size}")

    def _reset(self) -> None:
        self._first_ts: int | None = None
        self._warmed = False
        self._ref_values: list[Any] = []
        self._ref_ts: list[int] = []
        self._reference: Span = EMPTY_SPAN
        self._ref_summary: dict[str, Any] = {}
        self._fitted: dict[str, Detector] = {}
        self._last: dict[str, tuple[float | None, float, bool]] = {}
        self._episodes: dict[str, int] = {}  # detector -> event time its episode started
        self._values: deque[Any] = deque(maxlen=self.settings.window)
        self._ts: deque[int] = deque(maxlen=self.settings.window)
        self._n_seen = 0
        self._model_version: int | None = None
        # prediction subjects (stream.monitoring.settling): the previous block, the blocks
        # that did not agree with the one before, the newest model version seen and the
        # oldest one the block takes; once settled, the version to pin as the reference
        self._candidate = None
        self._blocks = 0
        self._newest_version = self._version_floor = 0
        self.pin_wanted = None
        # once pinned: each partition's first event time of the reference model's values,
        # the event time the reference starts at once every active partition sends them,
        # and the ordered values held until then (stream.monitoring.settling)
        self._pin_first: dict[int, int] = {}
        self._aligned_from: int | None = None
        self._early: list[tuple[Any, int]] = []
        self.dropped = 0  # values dropped during the warm-up (and version 0's predictions)

    # -- public API -------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        if self._fitted:
            return "fitted"
        if self._candidate is not None or self.pin_wanted is not None:
            return "settling"
        return "collecting" if self._warmed else "warming_up"

    @property
    def order(self) -> EventTimeOrder:
        """The event-time order of the values (watermark, late values, buffered values)."""
        return self._order

    @property
    def reference(self) -> Span:
        """Size and event-time range of the reference (``n == 0`` before it is fitted)."""
        return self._reference

    def update(self, batch: SubjectBatch, now_ms: int = 0) -> list[dict[str, Any]]:
        """Consume one batch; return the alerts it raised.

        ``now_ms`` is the wall-clock time, for the idle partitions of the event-time order.
        May take seconds when this batch completes the reference (calibration).
        """
        self._model_version = batch.model_version
        values: Sequence[Any] = batch.values
        ts: Sequence[int] = batch.ts
        if self._predictions and self._skip(batch.model_version):
            self.dropped += len(values)  # not the reference model's outputs (or not yet one)
            return []
        if self._pin is not None and not self._fitted and self._aligned_from is None:
            self._first_pinned(batch)
        if batch.partitions is None:  # arrival order
            return self._take(values, ts, now_ms, ordered=False)
        return self._take(*self._order.push(batch.partitions, values, ts, now_ms), now_ms)

    def flush(self, now_ms: int) -> list[dict[str, Any]]:
        """Release what the event-time order holds back for partitions that went idle by
        ``now_ms`` (no new values: the stream paused or ended); return the alerts raised."""
        if not self._order.buffered:
            return []
        return self._take(*self._order.push([], [], [], now_ms), now_ms)

    def _take(
        self, values: Sequence[Any], ts: Sequence[int], now_ms: int, ordered: bool = True
    ) -> list[dict[str, Any]]:
        """The values from the warm-up on: reference first, then the detectors (``ordered``:
        released by the event-time order, so ``ts`` is non-decreasing)."""
        values, ts = self._skip_warmup(values, ts, ordered)
        if self._pin is not None and not self._fitted:
            values, ts = self._align(values, ts, now_ms)
        start = 0 if self._fitted else self._collect(values, ts)
        if not self._fitted or start >= len(values):
            return []
        return self._consume(values, ts, start)

    def _skip(self, version: int) -> bool:
        """Whether a prediction subject leaves out values scored by ``version``: all but
        the reference model's once it is pinned; while settling, version 0 and versions
        older than the block's floor; once settled, everything until the pin is known.  A
        reference an operator pinned (``reference pin``) is judged against every value."""
        if self._pin is not None:
            return version != self._pin
        if self._fitted:
            return False
        if self.pin_wanted is not None:
            return True
        self._newest_version = max(self._newest_version, version)
        return stale(version, self._version_floor)

    def _first_pinned(self, batch: SubjectBatch) -> None:
        """Note each partition's first event time of the reference model's values."""
        if batch.partitions is None:  # arrival order: nothing to align
            self._aligned_from = NONE
            return
        first = self._pin_first
        for p, t in zip(batch.partitions, batch.ts, strict=True):
            if t < first.get(p, t + 1):
                first[p] = t

    def _align(
        self, values: Sequence[Any], ts: Sequence[int], now_ms: int
    ) -> tuple[Sequence[Any], Sequence[int]]:
        """The reference model's reference starts where every active partition sends its
        outputs: the scorers switch at slightly different times, and a reference begun
        before the last one did would hold the first partitions' values alone for a while
        (partitions differ in their entities, so in their scores: a false alarm on the real
        broker).  Values before that event time are left out; the ordered values wait
        (at most ``reference_size``) until every active partition has sent one."""
        if self._aligned_from is None:
            active = self._order.active(now_ms)
            if not active or not active <= self._pin_first.keys():
                self._early.extend(zip(values, ts, strict=True))
                del self._early[: max(0, len(self._early) - self.settings.reference_size)]
                return [], []
            self._aligned_from = max(self._pin_first[p] for p in active)
            log.info("%s: every partition sends the reference model's outputs from event "
                     "time %d on: the reference starts there", self.subject,
                     self._aligned_from)  # fmt: skip
            values = [v for v, _ in self._early] + list(values)
            ts = [t for _, t in self._early] + list(ts)
            self._early = []
        start = self._aligned_from
        keep = [i for i, t in enumerate(ts) if t >= start]
        self.dropped += len(ts) - len(keep)
        if len(keep) == len(ts):
            return values, ts
        return [values[i] for i in keep], [ts[i] for i in keep]

    def follow(self, version: int | None) -> list[dict[str, Any]]:
        """Judge the outputs of reference model ``version`` (``None``: none is pinned, settle
        and ask for one); called by the hub before every batch.  When the reference model
        moves, the reference is collected anew from its outputs (an open episode is closed
        with a ``resolved`` alert, returned)."""
        if version == self._pin:
            return []
        closing = [self._close(name) for name in list(self._episodes)]
        first_ts, warmed = self._first_ts, self._warmed
        self._reset()
        self._first_ts, self._warmed, self._pin = first_ts, warmed, version
        if version is not None:
            log.info("%s: judging the outputs of the reference model, version %d; collecting "
                     "its reference", self.subject, version)  # fmt: skip
        return closing

    @property
    def _predictions(self) -> bool:
        return self.subject.startswith("prediction.")

    def apply(self, batch: MonitorBatch) -> list[dict[str, Any]]:
        """:class:`~stream.monitoring.base.Monitor`: consume a :class:`SubjectBatch`."""
        if not isinstance(batch, SubjectBatch):
            raise TypeError(f"subject monitor {self.subject!r} got a {type(batch).__name__}")
        return self.update(batch)

    def readings(self) -> list[Reading]:
        """Per detector the latest statistic, the threshold and whether an episode is open;
        per subject the phase and the event-time order's late and buffered values and delay."""
        order, subject = self._order, (self.subject,)
        out = [
            Reading("monitor_phase", subject, PHASES[self.phase]),
            Reading("monitor_late_values", subject, float(order.late)),
            Reading("monitor_buffered_values", subject, float(order.buffered)),
            Reading("monitor_watermark_delay", subject, order.delay_ms / 1000.0),
        ]
        for detector, (stat, threshold, active) in self._last.items():
            labels = (self.subject, detector)
            if stat is not None:
                out.append(Reading("drift_statistic", labels, stat))
            out.append(Reading("drift_threshold", labels, threshold))
            out.append(Reading("drift_active", labels, 1.0 if active else 0.0))
        return out

    def repin(self, reference: Reference | None) -> list[dict[str, Any]]:
        """Refit on a pinned reference, or (``None``) collect a fresh one from now on."""
        if reference is None:
            self._reset()
            return []
        self._pin = None  # an operator's prediction values are the served model's outputs
        return self.reset_reference(reference.values, reference.ts)

    def statistics(self) -> dict[str, tuple[float | None, float, bool]]:
        """Detector -> (latest statistic or ``None`` before a check, threshold, episode on)."""
        return dict(self._last)

    def reset_reference(self, values: Sequence[Any], ts: Sequence[int]) -> list[dict[str, Any]]:
        """Pin ``values`` (with their event times) as the reference and refit the detectors.

        The window empties; an open episode is closed with a ``resolved`` alert (returned),
        since it was judged against the old reference.  Takes seconds (calibration).
        """
        closing = [self._close(name) for name in list(self._episodes)]
        keep_version = self._model_version
        self._reset()
        self._model_version = keep_version
        self._first_ts = min(ts) if len(ts) else None
        self._warmed = True
        self._fit(list(values), list(ts))
        return closing

    # -- lifecycle ----------------------------------------------------------------------------

    def _skip_warmup(
        self, values: Sequence[Any], ts: Sequence[int], ordered: bool = False
    ) -> tuple[Sequence[Any], Sequence[int]]:
        """Drop each value whose event time is before the warm-up's end (per value: values
        of a lagging partition may come after later ones; ``ordered``: ``ts`` is
        non-decreasing, so the values kept are a suffix, found by bisection)."""
        if not ts:
            return values, ts
        low = ts[0] if ordered else min(ts)
        if self._first_ts is None:
            self._first_ts = low
        end = self._first_ts + self.warmup_ms
        if self.warmup_ms <= 0 or low >= end:
            self._warmed = True
            return values, ts
        if ordered:
            cut = bisect.bisect_left(ts, end)
            self.dropped += cut
            self._warmed = self._warmed or cut < len(ts)
            return values[cut:], ts[cut:]
        keep = [i for i, t in enumerate(ts) if t >= end]
        self.dropped += len(ts) - len(keep)
        self._warmed = self._warmed or bool(keep)
        return [values[i] for i in keep], [ts[i] for i in keep]

    def _collect(self, values: Sequence[Any], ts: Sequence[int]) -> int:
        """Collect reference values from the start of ``values``; returns where it stopped
        (the batch's remaining values go to the detectors once the reference is fitted)."""
        start, size = 0, self.settings.reference_size
        while start < len(values) and not self._fitted:
            stop = min(len(values), start + size - len(self._ref_values))
            self._ref_values.extend(values[start:stop])
            self._ref_ts.extend(ts[start:stop])
            start = stop
            if len(self._ref_values) >= size:
                self._complete_block()
        return start

    def _complete_block(self) -> None:
        """A block of ``reference_size`` values is complete: the reference of a feature;
        for the prediction subjects a step of settling or of the null stretch."""
        block, block_ts = self._ref_values, self._ref_ts
        self._ref_values, self._ref_ts = [], []
        if not self._predictions or self._pin is not None:
            self._fit(block, block_ts)
        else:
            self._settle(block)

    def _settle(self, block: list[Any]) -> None:
        """Settled once ``block`` agrees with the block before it; then the newest version
        seen is the one to pin as the reference model.  Otherwise ``block`` is the one the
        next is compared with, and the next takes only values of versions at least as new
        as the newest seen so far."""
        previous = self._candidate
        if previous is not None and blocks_agree(
            self.kind, previous, block, self.settings.settle_level
        ):
            log.info("%s: the model settled after %d blocks of %d values; asking for version "
                     "%d as the reference model", self.subject, self._blocks + 1, len(block),
                     self._newest_version)  # fmt: skip
            self._candidate, self.pin_wanted = None, self._newest_version
            return
        if previous is None:
            log.info("%s: waiting for the model to settle (two blocks of %d values alike)",
                     self.subject, len(block))  # fmt: skip
            self._blocks = 0
        self._blocks += 1
        self._candidate, self._version_floor = block, self._newest_version

    def _fit(self, values: list[Any], ts: list[int]) -> None:
        """Fit the detectors on the reference ``values`` (``ts``: the event times it spans)."""
        self._reference = Span(len(values), min(ts), max(ts))
        self._ref_summary = summary(self.kind, values)
        self._fitted = {name: self._detector(name).fit(values) for name in self.detectors}
        self._last = {
            name: (None, float(det.thresholds[det.window]), False)
            for name, det in self._fitted.items()
        }
        self._ref_values, self._ref_ts = [], []  # the detectors keep what they need
        self._candidate = None

    def _detector(self, name: str) -> Detector:
        m = self.settings
        # a stable seed (not hash(): it is salted per process) so every worker that rebuilds
        # this monitor calibrates the same thresholds
        seed = zlib.crc32(f"{self.subject}:{name}".encode())
        return _DETECTORS[self.kind][name](
            window=m.window,
            check_every=m.check_every,
            ert=bonferroni_ert(m.ert, self.family_size),
            random_state=seed,
            # hysteresis: a drift that hovers near the threshold stays one episode
            release=m.release,
            patience=m.patience_checks,
        )

    # -- detection ----------------------------------------------------------------------------

    def _consume(
        self, values: Sequence[Any], ts: Sequence[int], start: int
    ) -> list[dict[str, Any]]:
        """Feed the detectors chunk by chunk up to each check, so an episode's start is known
        to the value, whatever the batching: replays give the same alert times and ids."""
        every = self.settings.check_every
        # numeric: one array per batch and views of it per chunk; categorical: list slices
        array: Any = (
            np.asarray(values[start:], np.float64) if self.kind == "numeric" else values[start:]
        )
        alerts: list[dict[str, Any]] = []
        position, total = start, len(values)
        while position < total:
            stop = min(total, position + every - self._n_seen % every)
            self._values.extend(values[position:stop])
            self._ts.extend(ts[position:stop])
            self._n_seen += stop - position
            chunk = array[position - start : stop - start]  # a view, not a copy
            for name, det in self._fitted.items():
                alerts.extend(self._judge(name, det.update(chunk)))
            position = stop
        return alerts

    def _judge(self, name: str, result: DetectorResult) -> list[dict[str, Any]]:
        self._last[name] = (result.statistic, result.threshold, result.drift)
        if result.started:
            self._episodes[name] = self._ts[-1]
            return [self._alert(name, "firing", result)]
        if result.ended and name in self._episodes:
            return [self._alert(name, "resolved", result)]
        return []

    def _close(self, name: str) -> dict[str, Any]:
        stat, threshold, _ = self._last[name]
        alert = self._build(name, "resolved", stat, None, threshold, len(self._values))
        alert["message"] += " (reference replaced)"
        return alert

    def _alert(self, name: str, status: AlertStatus, result: DetectorResult) -> dict[str, Any]:
        n = min(result.window or len(self._values), len(self._values))
        return self._build(name, status, result.statistic, result.p_value, result.threshold, n)

    def _build(
        self,
        name: str,
        status: AlertStatus,
        statistic: float | None,
        p_value: float | None,
        threshold: float,
        n: int,
    ) -> dict[str, Any]:
        start = self._episodes[name] if status == "firing" else self._episodes.pop(name)
        recent = list(self._values)[len(self._values) - n :]
        # values arrive in processing order, interleaved across partitions: the window's
        # event-time range is its min and max, not its first and last value
        recent_ts = list(self._ts)[len(self._ts) - n :]
        window = Span(n, min(recent_ts) if n else None, max(recent_ts) if n else None)
        window_summary = summary(self.kind, recent)
        return make_alert(
            self._alert_kind(),
            status,
            self.subject,
            name,
            statistic=statistic,
            p_value=p_value,
            threshold=threshold,
            reference=self._reference,
            window=window,
            model=self.model,
            model_version=self._model_version,
            ts=self._ts[-1] if n else start,
            message=drift_message(
                f"{self.subject}: {_LABELS[name]}",
                status,
                statistic,
                threshold,
                n,
                self._reference.n,
                contrast(window_summary, self._ref_summary),
            ),  # fmt: skip
            evidence={
                "reference": self._ref_summary,
                "window": window_summary,
                "episode_start_ts": start,
            },  # fmt: skip
            episode_start_ts=start,
        )

    def _alert_kind(self) -> AlertKind:
        return "prediction_drift" if self.subject.startswith("prediction.") else "data_drift"


__all__ = ["SubjectMonitor"]

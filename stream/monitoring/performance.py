"""Live model performance with delayed labels: :class:`PerformanceMonitor`.

Pure decision logic, no I/O.  The labelled examples arrive in label order (the learner's
order); the monitor keeps the last ``performance_window`` of them and, every
``performance_check_every`` examples, computes exact rolling metrics and their standard errors
(:mod:`stream.monitoring.performance_math`).

Metrics
    ``performance_metrics``, or when it is empty the task's stable defaults
    (:data:`~stream.monitoring.performance_metrics.DEFAULT_METRICS`): binary accuracy and
    ROC AUC, multiclass accuracy and macro F1, regression MAE and RMSE.  Precision, recall
    and F1 are computed over a fraction of the window only (predicted or actual positives),
    so they are noisier: ask for them by name.
Reference
    The metrics over the first ``performance_reference`` labelled examples the monitor sees
    (per monitor lifetime: a new monitor, e.g. after a model promotion, starts a new one).
``performance`` alerts (subject = metric, detector ``"margin"``)
    The *drop* of a higher-is-better metric (accuracy, precision, recall, F1, ROC AUC, macro
    F1, R²) is ``reference - current`` (absolute); of an error metric (MAE, RMSE) it is
    ``current / reference - 1`` (relative: errors have the data's scale).  An episode starts
    when the drop is both larger than ``performance_margin`` (it matters) and larger than
    :data:`Z` standard errors of the drop (it is not sampling noise):
    ``SE(drop) = sqrt(SE_ref² + SE_now²)``, reference and window taken as independent, each
    from its own sample (for MAE/RMSE the relative errors, times ``current / reference``):

    - accuracy, precision, recall: binomial, over all labels, the predicted positives and the
      actual positives (:func:`stream.monitoring.performance_math.proportion_se`);
    - F1 = ``2 q / (1 + q)`` with ``q = TP / (TP + FP + FN)`` binomial: delta method; macro F1:
      the mean of the class F1s' errors (an upper bound,
      :func:`stream.monitoring.performance_math.multiclass_standard_errors`);
    - ROC AUC: Hanley & McNeil (1982) (:func:`stream.monitoring.performance_math.roc_auc_se`);
    - MAE, RMSE, R²: delta method on ``|err|``, ``err²`` and ``SSE / SST``
      (:func:`stream.monitoring.performance_math.regression_standard_errors`).

    The episode resolves when the drop has been back under ``margin / 2`` for
    :data:`RESOLVE_CHECKS` consecutive checks (hysteresis, and a recovery that holds).  The
    evidence carries ``standard_error``, ``z`` and ``required_change`` (``max(margin, Z SE)``);
    the alert's ``p_value`` is the one-sided normal p-value of the drop at that check (not
    corrected for the repeated checks) and its ``threshold`` the limit the decision used.
``concept_drift`` alerts (subject ``"error_rate"``, detector ``"adwin"``)
    :class:`river.drift.ADWIN` watches the error stream (0/1 errors; for regression the
    absolute error divided by the reference MAE, so that ADWIN's bound sees a unit scale)
    from the end of the reference on.  It fires when ADWIN detects a change, the mean after
    the change is above the mean before it, and ADWIN's mean is above the reference error
    rate by more than the margin (relative for regression) and by more than :data:`Z`
    standard errors — so a detected change too small to matter, or a mean over too few
    labels, does not page anyone.  The standard error is that of the difference between
    ADWIN's mean over its ``n`` labels and the reference's, both taken as samples of the
    reference's errors: ``sqrt(var_ref (1 / n + 1 / n_ref))``, and ``n`` must be at least
    :data:`MIN_LABELS`.  ADWIN's cut often keeps part of the old window, so at the detection
    the mean after it may still be within the margin: the rise then stays *pending* for up to
    ``performance_window`` examples and fires at the first one where ADWIN's mean passes
    (a detected fall, or another detection, ends what was pending).  River's ADWIN empties
    its window at the update after a detection, so while a rise is pending its mean is over
    the labels since the detection alone: at first one, two, three labels, which is why the
    guard is needed (without it, a detected rise of 0.03 fired at "0.243 -> 0.333 over the
    last 3 labels").  Checked at the detection only, 6 of 20 label flips of the tests' noisy
    stream (seeds 200-219) went unreported; pending and guarded, all 20 fire, and 20
    stationary streams of 100,000 labels raise none.  It resolves when the error rate over
    the rolling window (or over the examples since the alarm, if fewer, and at least half a
    window of them) is back within ``margin / 2`` of the reference.

False alarms and detection delay
    The margin states how large a drop matters; the guard keeps noise out whatever the margin.
    A 0.05 margin alone is ~1.5 standard errors of a 500-label precision: on the tests'
    stationary stream (a calibrated model, 22 % error, 30 % positives; window 500, reference
    1000, checks every 10 labels) it started an episode every ~1,700 labels for precision,
    recall and F1 and every ~8,000 for accuracy.  With the guard, 60 seeds x 100,000 labels x
    5 binary metrics gave, per 100,000 labels and metric, 1.1 episodes at Z = 3, 0.2 at 3.5,
    0.03 at 4 and 0.003 (1 in 300 metric-streams, none for accuracy or ROC AUC) at Z = 4.5.
    The guard costs delay: a drop ``d`` that builds up over the window fires after about
    ``window * max(margin, Z SE) / d`` labels — 140-470 labels for a concept change taking
    0.3 off accuracy in the tests; a drop not much above ``Z SE`` (~0.11 for accuracy, ~0.13
    for ROC AUC there) may take longer than a window, or go unreported.

Each decision is taken at a check on a given example, so the alerts (and their ids) depend
only on the order of the examples, not on how they were batched.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from river.drift import ADWIN

from stream.exceptions import RejectedInput
from stream.messages import TrainingExample
from stream.model.online import coerce_label
from stream.monitoring.alerts import EMPTY_SPAN, AlertStatus, Span, make_alert
from stream.monitoring.performance_alerts import (
    ERROR_SUBJECT,
    concept_message,
    performance_message,
)
from stream.monitoring.performance_math import TINY
from stream.monitoring.performance_metrics import (
    ERROR_METRICS,
    Task,
    compute_metrics,
    example_error,
    monitored_metrics,
    shortfall,
)
from stream.service.config import MonitoringSettings

# One-sided z test of the drop: P(N(0, 1) > 4.5) = 3.4e-6 per check, before accounting for
# the repeated checks.  Those are many (every ``performance_check_every`` labels, for ever)
# and share one reference, whose own sampling error offsets every check alike, so 3
# (0.13 % per check) fired about once per 100,000 labels per metric on a stationary stream;
# see the module docstring for the measured rates.
Z = 4.5
RESOLVE_CHECKS = 3  # consecutive checks back within margin / 2 before an episode resolves
# fewest labels whose mean error can confirm a concept drift: the normal approximation of
# the standard-error guard needs a few dozen (a rate over 3 labels is 0, 1/3, 2/3 or 1)
MIN_LABELS = 30


class PerformanceMonitor:
    """Rolling metrics, margin alerts and ADWIN concept drift (see the module docstring).

    Parameters
    ----------
    task
        The model's task.
    settings
        ``performance_window``, ``performance_reference``, ``performance_margin``,
        ``performance_metrics`` (empty: the task's
        :data:`~stream.monitoring.performance_metrics.DEFAULT_METRICS`) and
        ``performance_check_every``.
    model
        Model name for the alerts.

    Examples
    --------
    >>> import numpy as np
    >>> from stream.messages import TrainingExample
    >>> rng = np.random.default_rng(0)
    >>> def example(i, flip):
    ...     x = float(rng.normal()); y = int((x > 0) != flip)
    ...     return TrainingExample(f"e{i}", {"x": x}, y, i, i, 1, int(x > 0), float(x > 0))
    >>> mon = PerformanceMonitor("binary", MonitoringSettings(performance_reference=200,
    ...                          performance_window=100, performance_metrics=("accuracy",)), "m")
    >>> mon.update([example(i, False) for i in range(400)], now_ms=0)
    []
    >>> alerts = mon.update([example(i, True) for i in range(400, 600)], now_ms=0)
    >>> [(a["kind"], a["subject"], a["ts"]) for a in alerts]
    [('performance', 'accuracy', 419), ('concept_drift', 'error_rate', 423)]
    >>> mon.metrics()
    {'accuracy': 0.0}
    """

    def __init__(self, task: Task, settings: MonitoringSettings, model: str) -> None:
        self.task = task
        self.settings = settings
        self.model = model
        self.metric_names = monitored_metrics(task, settings.performance_metrics)
        self._reset()

    def _reset(self) -> None:
        size = self.settings.performance_window
        self._y: deque[Any] = deque(maxlen=size)
        self._pred: deque[Any] = deque(maxlen=size)
        self._score: deque[float] = deque(maxlen=size)
        self._error: deque[float] = deque(maxlen=size)
        self._ts: deque[int] = deque(maxlen=size)
        self._ref: list[tuple[Any, Any, float, int]] = []  # (y, pred, score, event ts)
        self._reference: dict[str, float] | None = None
        self._reference_se: dict[str, float] = {}
        self._reference_span: Span = EMPTY_SPAN
        self._reference_error = math.nan
        self._reference_error_var = math.nan  # of the errors ADWIN sees, over the reference
        self._current: dict[str, float] = {}
        self._current_se: dict[str, float] = {}
        self._open: dict[str, int] = {}  # subject -> event time its episode started
        self._calm: dict[str, int] = {}  # open metric -> consecutive checks within margin / 2
        self._adwin = ADWIN()
        self._since_fire = 0  # examples since the open concept_drift alarm
        # a rise ADWIN detected, not yet above the margin: (examples it stays pending, the
        # error rate before it); see _concept
        self._rise: tuple[int, float] | None = None
        self._n = 0
        self._model_version: int | None = None
        self.skipped = 0  # labels that do not fit the task, or examples without a prediction

    # -- public API -------------------------------------------------------------------------

    def update(self, examples: Sequence[TrainingExample], now_ms: int) -> list[dict[str, Any]]:
        """Consume labelled examples in label order; return the alerts raised.

        ``now_ms`` (processing time) only goes into the evidence: decisions and alert times
        are event times (the example's label time), so replays give the same alerts.
        """
        alerts: list[dict[str, Any]] = []
        for example in examples:
            if self._add(example):
                alerts.extend(self._after(example))
        for alert in alerts:
            alert["evidence"]["processed_at"] = now_ms
        return alerts

    def metrics(self) -> dict[str, float]:
        """The rolling metrics at the last check (NaN where undefined, e.g. AUC of one class)."""
        return dict(self._current)

    @property
    def reference(self) -> dict[str, float] | None:
        """The reference metrics, ``None`` until ``performance_reference`` labels arrived."""
        return None if self._reference is None else dict(self._reference)

    # -- consuming --------------------------------------------------------------------------

    def _add(self, example: TrainingExample) -> bool:
        try:
            y = coerce_label(example.y, self.task)
            pred = (
                None if example.prediction is None else coerce_label(example.prediction, self.task)
            )
        except RejectedInput:
            self.skipped += 1
            return False
        if pred is None and self.task == "regression":
            self.skipped += 1
            return False
        error = example_error(self.task, y, pred)
        self._y.append(y)
        self._pred.append(pred)
        self._score.append(example.score)
        self._error.append(error)
        self._ts.append(example.event_ts_ms)
        self._n += 1
        self._model_version = example.model_version
        if self._reference is None:
            self._ref.append((y, pred, example.score, example.event_ts_ms))
        return True

    def _after(self, example: TrainingExample) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = []
        if self._reference is not None:
            alerts = self._concept(example)
        elif len(self._ref) >= self.settings.performance_reference:
            self._fix_reference()
        if (
            self._n % self.settings.performance_check_every == 0
        ):  # metrics for the dashboards from the start
            self._current, self._current_se = compute_metrics(
                self.task, self.metric_names, list(self._y), list(self._pred), list(self._score)
            )
            if self._reference is not None:
                alerts.extend(self._check(example.label_ts_ms))
        return alerts

    def _fix_reference(self) -> None:
        ys, preds, scores, ts = (list(col) for col in zip(*self._ref, strict=True))
        self._reference, self._reference_se = compute_metrics(
            self.task, self.metric_names, ys, preds, scores
        )
        self._reference_span = Span(len(ts), min(ts), max(ts))
        errors = np.array([example_error(self.task, y, p) for y, p in zip(ys, preds, strict=True)])
        self._reference_error = float(np.mean(errors))
        if self.task == "regression":  # ADWIN sees errors in units of the reference MAE
            errors = errors / max(self._reference_error, TINY)
        self._reference_error_var = float(np.var(errors))
        self._ref = []

    # -- performance alerts -----------------------------------------------------------------

    def _check(self, ts: int) -> list[dict[str, Any]]:
        assert self._reference is not None  # noqa: S101 - only called after the reference
        alerts: list[dict[str, Any]] = []
        margin = self.settings.performance_margin
        for name in self.metric_names:
            drop = shortfall(name, self._reference[name], self._current[name])
            if math.isnan(drop):
                continue
            if name not in self._open:
                # NaN standard errors compare False: no alarm without a noise estimate
                if drop > margin and drop > Z * self._drop_se(name):
                    self._open[name], self._calm[name] = ts, 0
                    alerts.append(self._performance_alert(name, "firing", ts))
                continue
            self._calm[name] = self._calm[name] + 1 if drop < margin / 2 else 0
            if self._calm[name] >= RESOLVE_CHECKS:  # the recovery held: no flapping
                del self._calm[name]
                alerts.append(self._performance_alert(name, "resolved", ts))
        return alerts

    def _drop_se(self, name: str) -> float:
        """Standard error of the shortfall, the reference and the window taken as independent
        (conservative while they overlap, as the overlap correlates them positively)."""
        assert self._reference is not None  # noqa: S101
        se = math.hypot(self._reference_se[name], self._current_se[name])
        if name in ERROR_METRICS:  # relative SEs; shortfall = now / ref - 1 (delta method)
            return se * self._current[name] / max(self._reference[name], TINY)
        return se

    def _performance_alert(self, name: str, status: AlertStatus, ts: int) -> dict[str, Any]:
        assert self._reference is not None  # noqa: S101
        ref, now, margin = (
            self._reference[name],
            self._current[name],
            self.settings.performance_margin,
        )
        se = self._drop_se(name)
        drop = shortfall(name, ref, now)
        # the decision's limit: the required drop when firing, margin / 2 when resolving
        required = max(margin, Z * se) if status == "firing" else margin / 2
        limit = ref * (1 + required) if name in ERROR_METRICS else ref - required
        p_value = 0.5 * math.erfc(drop / se / math.sqrt(2)) if se > 0 else None
        start = self._open[name] if status == "firing" else self._open.pop(name)
        message = performance_message(
            name, status, ref, now, margin, se, len(self._y), self._reference_span.n
        )
        return self._make("performance", status, name, "margin", now, limit, ts, start, {
            "metric": name, "reference_value": ref, "current_value": now,
            "change": now - ref, "margin": margin, "standard_error": se, "z": Z,
            "required_change": required,
        }, message, p_value)  # fmt: skip

    # -- concept drift ----------------------------------------------------------------------

    def _concept(self, example: TrainingExample) -> list[dict[str, Any]]:
        error = self._error[-1]
        if self.task == "regression":
            error /= max(self._reference_error, TINY)
        before = self._adwin.estimation
        self._adwin.update(error)
        ts = example.label_ts_ms
        if ERROR_SUBJECT in self._open:
            self._since_fire += 1
            # judge only errors made since the alarm, and enough of them: right after a fast
            # detection the rolling window still holds mostly pre-change errors
            enough = self._since_fire >= self.settings.performance_window // 2
            if enough and self._recent_error_excess() < self.settings.performance_margin / 2:
                return [self._concept_alert("resolved", ts, before)]
            return []
        after = self._adwin.estimation
        if self._adwin.drift_detected:
            # a rise: pending until the error rate after it is above the reference by the
            # margin (ADWIN's cut keeps part of the old window, so often not yet at the
            # detection); a fall, or another detection, ends what was pending
            self._rise = (self.settings.performance_window, before) if after > before else None
        if self._rise is None:
            return []
        left, before_rise = self._rise
        if self._confirmed():
            self._rise = None
            self._open[ERROR_SUBJECT], self._since_fire = ts, 0
            return [self._concept_alert("firing", ts, before_rise)]
        self._rise = (left - 1, before_rise) if left > 1 else None
        return []

    def _adwin_excess(self, mean: float) -> float:
        if self.task == "regression":  # ADWIN sees errors in units of the reference MAE
            return mean - 1.0
        return mean - self._reference_error

    def _adwin_se(self) -> float:
        """Standard error of ADWIN's mean minus the reference's, both samples of the
        reference's errors (in ADWIN's units)."""
        n = max(int(self._adwin.width), 1)
        return math.sqrt(self._reference_error_var * (1 / n + 1 / self._reference_span.n))

    def _required_excess(self) -> float:
        return max(self.settings.performance_margin, Z * self._adwin_se())

    def _confirmed(self) -> bool:
        """ADWIN's mean is above the reference by the margin and by Z standard errors,
        over at least MIN_LABELS labels."""
        excess = self._adwin_excess(self._adwin.estimation)
        return self._adwin.width >= MIN_LABELS and excess > self._required_excess()

    def _recent_error(self) -> float:
        """Mean error over the rolling window, or over the examples since the alarm if fewer."""
        n = min(self._since_fire, len(self._error)) or len(self._error)
        return float(np.mean(list(self._error)[-n:]))

    def _recent_error_excess(self) -> float:
        rate = self._recent_error()
        if self.task == "regression":
            return rate / max(self._reference_error, TINY) - 1.0
        return rate - self._reference_error

    def _concept_alert(self, status: AlertStatus, ts: int, before: float) -> dict[str, Any]:
        start = self._open[ERROR_SUBJECT] if status == "firing" else self._open.pop(ERROR_SUBJECT)
        rolling = self._recent_error()
        scale = self._reference_error if self.task == "regression" else 1.0
        after = self._adwin.estimation * scale
        statistic = after if status == "firing" else rolling
        # the decision's limit: the required excess when firing, margin / 2 when resolving
        required = (
            self._required_excess() if status == "firing" else self.settings.performance_margin / 2
        )
        limit = (
            self._reference_error * (1 + required)
            if self.task == "regression"
            else self._reference_error + required
        )
        width = int(self._adwin.width)
        n = width if status == "firing" else min(self._since_fire, len(self._error))
        message = concept_message(
            status, self.task == "regression", before * scale, statistic, n,
            self._reference_error, self._reference_span.n,
        )  # fmt: skip
        kind: Literal["concept_drift"] = "concept_drift"
        return self._make(kind, status, ERROR_SUBJECT, "adwin", statistic, limit, ts, start, {
            "before": before * scale, "after": after, "rolling": rolling,
            "reference_value": self._reference_error, "adwin_width": width,
            "adwin_delta": self._adwin.delta, "standard_error": self._adwin_se() * scale,
            "z": Z, "required_change": required * scale,
        }, message)  # fmt: skip

    # -- shared -----------------------------------------------------------------------------

    def _make(
        self,
        kind: Literal["performance", "concept_drift"],
        status: AlertStatus,
        subject: str,
        detector: str,
        statistic: float,
        threshold: float,
        ts: int,
        start: int,
        evidence: dict[str, Any],
        message: str,
        p_value: float | None = None,
    ) -> dict[str, Any]:
        return make_alert(
            kind,
            status,
            subject,
            detector,
            statistic=statistic,
            p_value=p_value,
            threshold=threshold,
            reference=self._reference_span,
            window=Span(len(self._ts), min(self._ts), max(self._ts)),
            model=self.model,
            model_version=self._model_version,
            ts=ts,
            message=message,
            evidence=evidence,
            episode_start_ts=start,
        )

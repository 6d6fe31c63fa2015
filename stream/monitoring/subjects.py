"""What is monitored, and how its values travel on the monitor topic: :class:`SubjectColumns`.

A *subject* is a feature or the predictions (:func:`monitored_subjects`); its drift is judged
by :class:`stream.monitoring.drift.SubjectMonitor`.  The scoring side turns each scored batch
into the subjects' values by event (:func:`subject_columns`), sent as one message per
monitor-topic partition (:func:`stream.monitoring.hub.monitor_messages`); a subject's values
always go to the partition its name hashes to, so each subject's detectors live on exactly
one worker, which is what makes "one ``firing`` alert per episode" hold whatever the number
of scoring workers.

Warm-up
-------
A subject's values are dropped until their event time reaches the first event time seen plus
its warm-up.  A window aggregate (``amount_mean_1h``) is not stationary until its window has
filled, so its warm-up is the window length (:func:`monitored_subjects`).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from stream.features.plan import SINCE_LAST, enriched_name, window_names
from stream.features.windows import FIRST_EVENT
from stream.messages import SubjectBatch, SubjectColumns, SubjectKind
from stream.records import ScoredEvent
from stream.service.config import Settings

SINCE_LAST_WARMUP_MS = 300_000


PREDICTION_SCORE = "prediction.score"
PREDICTION_CLASS = "prediction.class"
#: the subjects of the model's outputs (judged through the reference model once pinned)
PREDICTION_SUBJECTS = frozenset({PREDICTION_SCORE, PREDICTION_CLASS})


def subject_batches(
    scored: Sequence[ScoredEvent],
    subjects: Mapping[str, SubjectKind],
    partitions: Sequence[int] | None = None,
) -> list[SubjectBatch]:
    """One :class:`SubjectBatch` per subject with at least one value in ``scored``, in the
    order of ``subjects`` (what :func:`subject_columns` holds, subject by subject).

    Examples
    --------
    >>> from stream.records import ScoredEvent, ValidEvent
    >>> def scored(ts, amount, missing=()):
    ...     ev = ValidEvent(f"e{ts}", "c1", ts, {"amount": amount}, None, (), frozenset(missing))
    ...     return ScoredEvent(ev, {"amount": amount}, 1, None, 0.75, 2)
    >>> batches = subject_batches([scored(1, 5.0), scored(2, 0.0, {"amount"})],
    ...                           {"amount": "numeric", "prediction.class": "categorical"})
    >>> [(b.subject, b.values, b.ts) for b in batches]
    [('amount', [5.0], [1]), ('prediction.class', ['1', '1'], [1, 2])]
    """
    columns = subject_columns(scored, subjects, partitions)
    if columns is None:
        return []
    rank = {name: i for i, name in enumerate(subjects)}
    return sorted(columns.batches(), key=lambda b: rank[b.subject])


def subject_columns(
    scored: Sequence[ScoredEvent],
    subjects: Mapping[str, SubjectKind],
    partitions: Sequence[int] | None = None,
) -> SubjectColumns | None:
    """The subjects' values in ``scored``, by event (``None``: no events).

    Feature subjects read ``ScoredEvent.x`` (raw and enriched); ``prediction.score`` reads the
    score and ``prediction.class`` the predicted class as a string.  ``None``, non-finite
    numbers and wrongly typed values are skipped, and so is an imputed raw value (listed in
    ``event.missing``): it is a data-quality problem, not a sample of the distribution
    (the rule of :func:`subject_value`).  ``partitions`` (one per scored event: its
    events-topic partition) go with the values, for the monitor's event-time order.  A
    subject without any value in the batch is left out.

    This runs in the scorer for every (event, subject). The numeric features go through one
    float matrix when every event has every one of them as a float, an int or None (what
    the scorer's features are): with 65 of them, 13 instead of 23 us per event (0.2 us per
    (event, subject)). Otherwise, and for the predictions and the categorical subjects, one
    list comprehension per subject with the checks inline (a call per value cost ~1 us).
    """
    if not scored:
        return None
    n, version = len(scored), scored[-1].model_version
    ts = np.array([s.event.ts_ms for s in scored], dtype=np.int64)
    parts = None if partitions is None else np.array(partitions, dtype=np.int64)
    columns = _numeric_columns(scored, subjects)
    numeric: list[tuple[str, int]] = []
    matrix = np.empty((0, n))
    if columns is not None:
        some = np.asarray(columns.keep.any(axis=0), dtype=bool)
        numeric += [
            (name, version) for name, kept in zip(columns.names, some.tolist(), strict=True) if kept
        ]
        matrix = np.where(columns.keep, columns.values, np.nan).T[some]
    rows: list[NDArray[np.float64]] = []
    categorical: list[tuple[str, int, list[str | None]]] = []
    for subject, kind in subjects.items():
        if columns is not None and subject in columns.index:
            continue
        raw = _raw_values(scored, subject)
        if kind == "categorical":
            if any(v is not None for v in raw):
                found = [None if v is None else str(v) for v in raw]
                categorical.append((subject, version, found))
            continue
        since = subject == SINCE_LAST
        keep = [
            i
            for i, v in enumerate(raw)
            if v is not None
            and ((t := type(v)) is float or t is int or _number(v))
            and v - v == 0  # finite: inf - inf and nan - nan are nan
            and not (since and v == FIRST_EVENT)
        ]
        if keep:
            row = np.full(n, np.nan)
            row[keep] = [float(raw[i]) for i in keep]
            numeric.append((subject, version))
            rows.append(row)
    values = np.concatenate((matrix, np.array(rows).reshape(len(rows), n))) if rows else matrix
    return SubjectColumns(ts, parts, numeric, values, categorical)


class _Columns:
    """The numeric feature subjects of a batch as one float matrix (``nan``: no value), and
    which of its values a monitor takes (finite, not imputed, not a first event's gap)."""

    def __init__(self, names: list[str], values: NDArray[np.float64], keep: NDArray[np.bool_]):
        self.names = names
        self.index = {name: j for j, name in enumerate(names)}
        self.values = values
        self.keep = keep


#: the value types the matrix takes as they are (a bool, a numpy scalar... goes value by value)
_PLAIN = frozenset({float, int, type(None)})


def _numeric_columns(
    scored: Sequence[ScoredEvent], subjects: Mapping[str, SubjectKind]
) -> _Columns | None:
    """The numeric feature subjects as one matrix, when every event has every one of them
    and every value is a float, an int or None (else ``None``: value by value)."""
    names = [
        s for s, kind in subjects.items() if kind == "numeric" and s not in PREDICTION_SUBJECTS
    ]
    if len(names) < 2:
        return None
    getter = operator.itemgetter(*names)
    try:
        rows = [getter(s.x) for s in scored]
    except KeyError:
        return None
    if not set(map(type, itertools.chain.from_iterable(rows))) <= _PLAIN:
        return None
    values = np.array(rows, dtype=np.float64)  # None -> nan
    keep = np.isfinite(values)
    if SINCE_LAST in names:
        keep[:, names.index(SINCE_LAST)] &= values[:, names.index(SINCE_LAST)] != FIRST_EVENT
    index = {name: j for j, name in enumerate(names)}
    for i, s in enumerate(scored):
        for name in s.event.missing:  # imputed raw values: a data-quality problem, not a sample
            j = index.get(name)
            if j is not None:
                keep[i, j] = False
    return _Columns(names, values, keep)


def _raw_values(scored: Sequence[ScoredEvent], subject: str) -> list[Any]:
    """Each event's raw value of ``subject`` (``None`` where it was imputed)."""
    if subject == PREDICTION_SCORE:
        return [s.score for s in scored]
    if subject == PREDICTION_CLASS:
        return [s.prediction for s in scored]
    return [
        None if (missing := s.event.missing) and subject in missing else s.x.get(subject)
        for s in scored
    ]


def _number(value: object) -> bool:
    """A number that is not exactly an int or a float (numpy scalars), never a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def value_of(
    subject: str,
    kind: SubjectKind,
    *,
    score: object,
    prediction: object,
    features: Mapping[str, object],
) -> float | str | None:
    """The value of ``subject`` in one prediction (its score, class or a feature), or None.

    The one rule for the live stream and for pinned references (:mod:`.reference`).

    >>> value_of("prediction.class", "categorical", score=0.8, prediction=1, features={})
    '1'
    >>> value_of("amount", "numeric", score=0.8, prediction=1, features={"amount": 2})
    2.0
    """
    if subject == PREDICTION_SCORE:
        raw = score
    elif subject == PREDICTION_CLASS:
        raw = prediction
    else:
        raw = features.get(subject)
    return subject_value(subject, kind, raw)


def subject_value(subject: str, kind: SubjectKind, raw: object) -> float | str | None:
    """The value a monitor sees for ``raw`` (a feature, score or class), ``None`` to skip it.

    The rule for every source of values (see :func:`value_of`).

    >>> subject_value("amount", "numeric", 3), subject_value("amount", "numeric", float("nan"))
    (3.0, None)
    >>> subject_value("seconds_since_last", "numeric", -1.0), subject_value("c", "categorical", 1)
    (None, '1')
    """
    if raw is None:
        return None
    if kind == "categorical":
        return str(raw)
    if subject == SINCE_LAST and raw == FIRST_EVENT:
        return None  # "no earlier event" is not a gap: watching it sees new entities
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not np.isfinite(raw):
        return None
    return float(raw)


def monitored_subjects(settings: Settings) -> dict[str, tuple[SubjectKind, int]]:
    """Every monitored subject with its kind and warm-up (ms of event time).

    The subjects are every raw feature, every enriched feature (as
    :func:`stream.features.windows.window_names` names them, with ``seconds_since_last``),
    ``prediction.score`` and, unless the task is a regression (whose predictions are not
    classes), ``prediction.class``; narrowed to ``monitoring.subjects`` when it is not empty,
    minus ``monitoring.exclude``.

    Warm-up: an aggregate ``{feature}_{agg}_{window}`` grows while its window fills after the
    service starts, so its distribution is not stationary until then; its warm-up is the
    window length.  The prediction subjects' is the longest of every enriched feature's
    (monitored or not): the model sees them all, and the outputs of the reference model
    (:mod:`stream.monitoring.settling`) are stationary only once all of its inputs are (in
    a run shorter than that, a count over 24 h that grows with the run moves them).  Every
    other subject starts at once (warm-up 0).

    Examples
    --------
    >>> from stream.service.config import FeatureSpec, MonitoringSettings
    >>> s = Settings(features=(FeatureSpec(name="amount", windows=("1m",), aggregates=("mean",)),
    ...                        FeatureSpec(name="kind", kind="categorical")),
    ...              monitoring=MonitoringSettings(exclude=("seconds_since_last",)))
    >>> monitored_subjects(s)  # doctest: +NORMALIZE_WHITESPACE
    {'amount': ('numeric', 0), 'kind': ('categorical', 0), 'amount_mean_1m': ('numeric', 60000),
     'prediction.score': ('numeric', 300000), 'prediction.class': ('categorical', 300000)}

    (300,000 ms: ``seconds_since_last``'s warm-up, an input of the model though excluded.)
    """
    subjects: dict[str, tuple[SubjectKind, int]] = {f.name: (f.kind, 0) for f in settings.features}
    warmups = {
        enriched_name(f.name, agg, label): round(seconds * 1000)
        for f in settings.features
        for label, seconds in zip(f.windows, f.window_seconds, strict=True)
        for agg in f.aggregates
    }
    # gaps between an entity's events are capped by the time the stream has run: give them
    # SINCE_LAST_WARMUP_MS of event time to reach their stationary spread
    warmups[SINCE_LAST] = SINCE_LAST_WARMUP_MS
    inputs = [warmups.get(name, 0) for name in window_names(settings.features)]
    for name, warmup in zip(window_names(settings.features), inputs, strict=True):
        subjects[name] = ("numeric", warmup)
    outputs = max(inputs, default=0)
    subjects[PREDICTION_SCORE] = ("numeric", outputs)
    if settings.model.task != "regression":
        subjects[PREDICTION_CLASS] = ("categorical", outputs)
    m = settings.monitoring
    return {
        name: spec
        for name, spec in subjects.items()
        if (not m.subjects or name in m.subjects) and name not in m.exclude
    }


__all__ = [
    "PREDICTION_CLASS",
    "PREDICTION_SCORE",
    "PREDICTION_SUBJECTS",
    "SINCE_LAST_WARMUP_MS",
    "monitored_subjects",
    "subject_batches",
    "subject_columns",
    "subject_value",
]

"""The demo's accuracy judgement: served model, best constant and a reference learner.

Pure, no I/O. The stream is cut into slices; in each, the served predictions are scored
beside the best constant predictor *of that slice* (the share of its majority class: what
a model that learned nothing can reach with hindsight) and, from the concept change on,
beside a reference learner: the worker's pipeline trained from the change point on, on the
features as scored, with the demo's label delay (progressive validation, as River's
``evaluate.progressive_val_score`` with a ``delay``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.model.online import OnlineModel
from stream.tools.synthetic import Drift


@dataclass(frozen=True)
class ScoredEvent:
    """One labelled event of the run, as the summary judges it.

    Attributes
    ----------
    i
        The event's number in the stream (0-based, in event order).
    label
        Its true label.
    served
        The prediction the workers served for it.
    version
        The model version that served it.
    features
        The features as scored (the prediction's ``features``): what a reference learns from.
    model
        The model that served it (the prediction's ``model``).
    """

    i: int
    label: int
    served: int
    version: int
    features: dict[str, Any] = field(default_factory=dict)
    model: str = ""


def scored_events(
    predictions: dict[str, dict[str, Any]], labels: dict[str, int], start_ms: int, step_ms: int
) -> list[ScoredEvent]:
    """The labelled predictions in event order, numbered by their event time."""
    out = [
        ScoredEvent(
            i=(int(p["ts"]) - start_ms) // step_ms,
            label=labels[event_id],
            served=int(p["prediction"]),
            version=int(p["model_version"]),
            features=p.get("features") or {},
            model=str(p.get("model", "")),
        )
        for event_id, p in predictions.items()
        if event_id in labels
    ]
    return sorted(out, key=lambda e: e.i)


def concept_change(drifts: Sequence[Drift]) -> int | None:
    """Where the first concept change starts (``None``: no concept change).

    >>> concept_change([Drift("mean_shift", 10), Drift("concept", 900), Drift("concept", 500)])
    500
    >>> concept_change([Drift("mean_shift", 10)]) is None
    True
    """
    return min((d.start for d in drifts if d.kind == "concept"), default=None)


def reference_predictions(
    model: OnlineModel, events: Sequence[ScoredEvent], delay: int
) -> dict[int, int]:
    """Progressive validation of ``model`` on ``events`` with labels ``delay`` events late.

    Event *i* is predicted, then every example whose label has arrived by then (event
    number at most *i* - ``delay``) is learned, in event order: the demo sends the label of
    event *i* - ``delay`` right after event *i*. ``model`` learns in place: pass a fresh one.

    Returns
    -------
    dict
        The reference's prediction by event number.

    Examples
    --------
    >>> from stream.model.online import create_model
    >>> from stream.service.config import ModelSettings
    >>> events = [ScoredEvent(i, 1, 0, 0, {"a": 1.0}) for i in range(100)]
    >>> ref = reference_predictions(create_model(ModelSettings(), []), events, delay=10)
    >>> ref[0], ref[10], ref[11], ref[99]  # nothing learned before event 10's prediction
    (0, 0, 1, 1)
    """
    out: dict[int, int] = {}
    learned = 0
    for event in events:
        out[event.i] = int(model.predict(event.features).prediction or 0)
        while learned < len(events) and events[learned].i <= event.i - delay:
            model.learn(events[learned].features, events[learned].label)
            learned += 1
    return out


@dataclass(frozen=True)
class SliceAccuracy:
    """Accuracy over one slice of the stream (events ``first`` to ``last``, inclusive).

    ``best_constant`` is the accuracy of the best constant predictor of the slice (the share
    of its majority class); ``reference`` that of the reference learner (``None`` before the
    concept change). ``served_by``: each model that served events of the slice, in the order
    they first did, with its lowest and highest version.
    """

    first: int
    last: int
    versions: tuple[int, int]
    served: float
    best_constant: float
    reference: float | None
    served_by: tuple[tuple[str, int, int], ...] = ()


def accuracy_slices(
    events: Sequence[ScoredEvent],
    reference: Mapping[int, int],
    n: int,
    change: int | None = None,
    chunks: int = 8,
) -> list[SliceAccuracy]:
    """The accuracy of ``chunks`` equal slices of events ``0..n-1``, split at ``change`` too.

    >>> events = [ScoredEvent(i, int(i % 10 < 7), 1, 3) for i in range(20)]
    >>> accuracy_slices(events, {}, 20, chunks=2)[0]
    SliceAccuracy(first=0, last=9, versions=(3, 3), served=0.7, best_constant=0.7, \
reference=None, served_by=(('', 3, 3),))
    """
    starts = {k * n // chunks for k in range(chunks)}
    if change is not None and 0 < change < n:
        starts.add(change)
    bounds = sorted(starts)
    out = []
    for first, end in zip(bounds, [*bounds[1:], n], strict=True):
        part = [e for e in events if first <= e.i < end]
        if part:
            out.append(_judge(part, first, end - 1, reference))
    return out


def _judge(
    part: Sequence[ScoredEvent], first: int, last: int, reference: Mapping[int, int]
) -> SliceAccuracy:
    hits = sum(e.served == e.label for e in part)
    majority = Counter(e.label for e in part).most_common(1)[0][1]
    ref = [reference[e.i] == e.label for e in part if e.i in reference]
    versions = [e.version for e in part]
    by_model: dict[str, list[int]] = {}
    for e in part:
        by_model.setdefault(e.model, []).append(e.version)
    return SliceAccuracy(
        first=first,
        last=last,
        versions=(min(versions), max(versions)),
        served=hits / len(part),
        best_constant=majority / len(part),
        reference=sum(ref) / len(ref) if ref else None,
        served_by=tuple((m, min(v), max(v)) for m, v in by_model.items()),
    )


def accuracy_table(slices: Sequence[SliceAccuracy]) -> list[str]:
    """The slices as table rows; the reference column is empty before the concept change."""
    rows = [
        f"  {'events':<14} {'accuracy':>8} {'best constant':>15}{'reference':>12}   "
        "served by (model versions)"
    ]
    for s in slices:
        ref = f"{s.reference:>12.3f}" if s.reference is not None else " " * 12
        served_by = (
            ", ".join(
                f"{m or 'model'} {lo}-{hi}" if lo != hi else f"{m or 'model'} {lo}"
                for m, lo, hi in s.served_by
            )
            or f"{s.versions[0]}-{s.versions[1]}"
        )
        rows.append(
            f"  {s.first:>6}-{s.last:<7} {s.served:>8.3f} {s.best_constant:>15.3f}{ref}   "
            f"{served_by}"
        )
    return rows


def lifecycle_report(
    alerts: Sequence[Mapping[str, Any]], start_ms: int, step_ms: int, change: int | None
) -> list[str]:
    """The ``model_lifecycle`` alerts: what started, was promoted or retired, where (event
    number, and delay after the concept change) and on what evidence.

    >>> a = {"kind": "model_lifecycle", "detector": "promoted", "subject": "m.r1", "ts": 1500,
    ...      "evidence": {"labels": 900, "challenger_metric": 0.7, "champion_metric": 0.6,
    ...                   "p_value": 0.001, "previous_champion": "m"}}
    >>> rows = lifecycle_report([a], 0, 1, change=1000)
    >>> rows[2].split(": ")
    ['      promoted  m.r1          at 1500 (+500)', 'over m, accuracy 0.700 vs 0.600 on the \
same 900 labels, McNemar p = 0.001']
    """
    events = [a for a in alerts if a.get("kind") == "model_lifecycle"]
    if not events:
        return []
    rows = ["", "  model lifecycle (model_lifecycle alerts; event number, delay after the "
            "concept change)"]  # fmt: skip
    for a in sorted(events, key=lambda a: int(a["ts"])):
        at = (int(a["ts"]) - start_ms) // step_ms
        delay = f" (+{at - change})" if change is not None and at >= change else ""
        why = _why(a.get("evidence") or {}, a["detector"], start_ms, step_ms)
        rows.append(f"      {a['detector']:<9} {a['subject']:<13} at {at}{delay}: {why}")
    return rows


def _why(ev: Mapping[str, Any], action: str, start_ms: int, step_ms: int) -> str:
    if action == "started":
        since = (int(ev.get("learns_from_ts", start_ms)) - start_ms) // step_ms
        return f"on {ev.get('trigger_kind')} alert, learning from event {since}"
    over = f"over {ev['previous_champion']}, " if "previous_champion" in ev else ""
    challenger, champion = _fmt(ev.get("challenger_metric")), _fmt(ev.get("champion_metric"))
    return (
        f"{over}accuracy {challenger} vs {champion} on the same {ev.get('labels', '?')} "
        f"labels, McNemar p = {_fmt(ev.get('p_value'), '.2g')}"
    )


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


ADAPTATION_AFTER = 3_000
"""Events after the concept change before the adaptation line starts judging."""


def adaptation_line(
    events: Sequence[ScoredEvent],
    reference: Mapping[int, int],
    change: int | None,
    after: int = ADAPTATION_AFTER,
) -> str | None:
    """Served vs reference accuracy from ``after`` events past the change to the last event.

    ``None`` without a concept change (or without reference predictions in the stretch).

    >>> events = [ScoredEvent(i, 1, int(i % 4 > 0), 5) for i in range(100)]
    >>> adaptation_line(events, {i: 1 for i in range(50, 100)}, change=50, after=10)
    'adaptation: served 0.750 vs reference 1.000 over events 60-99'
    """
    if change is None:
        return None
    first = change + after
    stretch = [e for e in events if e.i >= first and e.i in reference]
    if not stretch:
        return None
    served = sum(e.served == e.label for e in stretch) / len(stretch)
    ref = sum(reference[e.i] == e.label for e in stretch) / len(stretch)
    return (
        f"adaptation: served {served:.3f} vs reference {ref:.3f} "
        f"over events {first}-{stretch[-1].i}"
    )

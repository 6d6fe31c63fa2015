"""Delayed labels: the prediction as scored waits under its event_id until its label arrives.

Pure logic: what is stored for a prediction, how a label joins it, and the training
example that results. The Redis side is in ``stream.labels.store``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.messages import Label, Outputs, TrainingExample


# Slotted, not frozen: the scorer builds one per event, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs about three times as much (scripts/bench_features.py).
# Nothing mutates it after it is built.
@dataclass(slots=True)
class PendingPrediction:
    """What a label needs to become a training example: the features as scored."""

    event_id: str
    entity_id: str
    ts_ms: int
    x: dict[str, float | str]
    model_version: int
    prediction: int | float | str | None
    score: float
    processed_at_ms: int
    model: str = ""  # the served model (empty: stored by a version before the lineup)
    shadow: dict[str, Outputs] = field(default_factory=dict)  # the other models' outputs
    #: ``x`` already encoded (by the scorer, once for all its messages); not stored itself
    x_json: orjson.Fragment | None = field(default=None, compare=False, repr=False)

    def encode(self) -> bytes:
        """The JSON stored under ``{prefix}:pred:{event_id}`` (read back by :meth:`decode`).

        An explicit object rather than orjson's dataclass support, which is slower for a
        slotted class; the keys and their order are those of the fields.

        >>> PendingPrediction("e1", "c1", 1000, {"a": 1.5}, 3, 0, 0.25, 1001).encode()
        b'{"event_id":"e1","entity_id":"c1","ts_ms":1000,"x":{"a":1.5},"model_version":3,\
"prediction":0,"score":0.25,"processed_at_ms":1001}'
        """
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "entity_id": self.entity_id,
                "ts_ms": self.ts_ms,
                "x": self.x if self.x_json is None else self.x_json,
                "model_version": self.model_version,
                "prediction": self.prediction,
                "score": self.score,
                "processed_at_ms": self.processed_at_ms,
                **({"model": self.model} if self.model else {}),
                **({"shadow": self.shadow} if self.shadow else {}),
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> PendingPrediction:
        data = orjson.loads(raw)
        if "shadow" in data:
            data["shadow"] = {k: tuple(v) for k, v in data["shadow"].items()}
        return cls(**data)


@dataclass(frozen=True)
class JoinResult:
    """``unmatched``: the labels with no stored prediction *yet*. The store parked them
    (``PredictionStore.take``); most join when their event is scored, and only those still
    parked after the horizon are unmatched for good (``PredictionStore.sweep_expired``)."""

    examples: list[TrainingExample]
    unmatched: list[Label]


def join_labels(
    labels: Sequence[Label], pending: Mapping[str, PendingPrediction], now_ms: int
) -> JoinResult:
    """Join labels to the stored predictions; a label without one is unmatched for now.

    A label without its own ``ts`` is taken to arrive at ``now_ms``. If the same event_id
    is labelled twice in one batch only the first label joins (the prediction was taken).

    >>> p = PendingPrediction("e1", "c1", 1000, {"a": 1.0}, 3, 0, 0.2, 1001)
    >>> r = join_labels([Label(event_id="e1", label=1), Label(event_id="e9", label=0)],
    ...                 {"e1": p}, now_ms=6000)
    >>> [(e.event_id, e.y, e.lag_s) for e in r.examples], [u.event_id for u in r.unmatched]
    ([('e1', 1, 5.0)], ['e9'])
    """
    examples: list[TrainingExample] = []
    unmatched: list[Label] = []
    used: set[str] = set()
    for label in labels:
        pred = pending.get(label.event_id)
        if pred is None or label.event_id in used:
            unmatched.append(label)
            continue
        used.add(label.event_id)
        examples.append(example_from(pred, label.label, label.ts or now_ms))
    return JoinResult(examples, unmatched)


def example_from(pred: PendingPrediction, y: Any, label_ts_ms: int) -> TrainingExample:
    return TrainingExample(
        event_id=pred.event_id,
        x=pred.x,
        y=y,
        event_ts_ms=pred.ts_ms,
        label_ts_ms=label_ts_ms,
        model_version=pred.model_version,
        prediction=pred.prediction,
        score=pred.score,
        model=pred.model,
        shadow=pred.shadow,
    )

"""Decode and validate input messages against the configured features.

A message that breaks the contract is rejected with a reason (it goes to the dead-letter
topic). A missing, null, out-of-range or unseen-category feature is a data-quality problem,
not an error: the event is accepted, the value imputed per config, and the problem counted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import orjson
from pydantic import ValidationError

from stream.config import FeatureSpec
from stream.exceptions import RejectedInput
from stream.messages import Event, Label

QualityKind = Literal["missing", "out_of_range", "unseen_category"]


@dataclass(frozen=True)
class QualityIssue:
    feature: str
    kind: QualityKind


@dataclass(frozen=True)
class ValidEvent:
    """An accepted event: raw features after imputation, and its data-quality problems."""

    event_id: str
    entity_id: str
    ts_ms: int
    values: dict[str, float | str]
    label: int | float | str | bool | None
    quality: tuple[QualityIssue, ...]
    missing: frozenset[str]


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int = 65_536
    max_fields: int = 256


def decode_object(raw: bytes | None, limits: Limits) -> dict[str, object]:
    """Parse one message into a JSON object, or raise RejectedInput with the reason.

    >>> decode_object(b'{"a": 1}', Limits())
    {'a': 1}
    >>> decode_object(b'[1]', Limits())
    Traceback (most recent call last):
    ...
    stream.exceptions.RejectedInput: not a JSON object: got list
    """
    if raw is None:
        raise RejectedInput("empty message (null value)", stage="decode", code="empty")
    if len(raw) > limits.max_payload_bytes:
        raise RejectedInput(
            f"payload of {len(raw)} bytes exceeds max_payload_bytes={limits.max_payload_bytes}",
            stage="decode",
            code="oversize",
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RejectedInput(f"not JSON: {exc}", stage="decode", code="not_json") from None
    if not isinstance(obj, dict):
        raise RejectedInput(
            f"not a JSON object: got {type(obj).__name__}", stage="decode", code="not_object"
        )
    return obj


def validate_event(
    raw: bytes | None, specs: Sequence[FeatureSpec], limits: Limits = Limits()
) -> ValidEvent:
    """Validate one event message; raise RejectedInput naming the first problem.

    >>> spec = FeatureSpec(name="amount", impute=0.0, max=100.0)
    >>> ev = validate_event(b'{"event_id":"e1","entity_id":"c1","ts":5,'
    ...                     b'"features":{"amount":250}}', [spec])
    >>> ev.values, [q.kind for q in ev.quality]
    ({'amount': 250.0}, ['out_of_range'])
    """
    obj = decode_object(raw, limits)
    features = obj.get("features")
    if isinstance(features, dict) and len(features) > limits.max_fields:
        raise RejectedInput(
            f"features has {len(features)} fields, more than max_fields={limits.max_fields}",
            code="too_many_fields",
        )
    try:
        event = Event.model_validate(obj)
    except ValidationError as exc:
        raise RejectedInput(*_first_error(exc)) from None
    values, quality, missing = _check_features(event.features, specs)
    return ValidEvent(
        event.event_id, event.entity_id, event.ts, values, event.label, quality, missing
    )


def validate_label(raw: bytes | None, limits: Limits = Limits()) -> Label:
    """Validate one label message; raise RejectedInput naming the problem.

    >>> validate_label(b'{"event_id":"e1","label":1,"ts":"2025-11-22T08:26:40Z"}').ts
    1763800000000
    """
    obj = decode_object(raw, limits)
    try:
        label = Label.model_validate(obj)
    except ValidationError as exc:
        raise RejectedInput(*_first_error(exc)) from None
    if isinstance(label.label, float) and not math.isfinite(label.label):
        raise RejectedInput("label: not a finite number", code="non_finite")
    return label


def _check_features(
    raw: Mapping[str, object], specs: Sequence[FeatureSpec]
) -> tuple[dict[str, float | str], tuple[QualityIssue, ...], frozenset[str]]:
    values: dict[str, float | str] = {}
    quality: list[QualityIssue] = []
    missing: set[str] = set()
    for spec in specs:
        value = raw.get(spec.name)
        if value is None:
            quality.append(QualityIssue(spec.name, "missing"))
            missing.add(spec.name)
            if spec.impute is not None:
                values[spec.name] = spec.impute
            continue
        if spec.kind == "numeric":
            values[spec.name] = _numeric(spec, value, quality)
        else:
            values[spec.name] = _categorical(spec, value, quality)
    return values, tuple(quality), frozenset(missing)


def _numeric(spec: FeatureSpec, value: object, quality: list[QualityIssue]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RejectedInput(
            f"features.{spec.name}: expected a number, got {type(value).__name__} {value!r}",
            code="wrong_type",
        )
    number = float(value)
    if not math.isfinite(number):
        raise RejectedInput(f"features.{spec.name}: not a finite number", code="non_finite")
    if (spec.min is not None and number < spec.min) or (spec.max is not None and number > spec.max):
        quality.append(QualityIssue(spec.name, "out_of_range"))
    return number


def _categorical(spec: FeatureSpec, value: object, quality: list[QualityIssue]) -> str:
    if not isinstance(value, str):
        raise RejectedInput(
            f"features.{spec.name}: expected a string category, got {type(value).__name__} "
            f"{value!r}",
            code="wrong_type",
        )
    if spec.categories and value not in spec.categories:
        quality.append(QualityIssue(spec.name, "unseen_category"))
    return value


def _first_error(exc: ValidationError) -> tuple[str, str, str]:
    """(reason, stage, code) of the first problem pydantic found."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(message)"
    value = err.get("input")
    if err["type"] == "missing":
        return f"{field}: required field is missing", "validate", "missing_field"
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{field}: {err['msg']} (got {shown})", "validate", "invalid_field"

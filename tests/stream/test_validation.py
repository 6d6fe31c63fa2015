"""Event and label validation: reasons for rejects, data-quality problems for the rest."""

from __future__ import annotations

import orjson
import pytest

from stream.config import FeatureSpec
from stream.exceptions import RejectedInput
from stream.validation import Limits, validate_event, validate_label

SPECS = [
    FeatureSpec(name="amount", impute=0.0, min=0.0, max=1000.0, windows=("1h",)),
    FeatureSpec(name="hour", impute=12),
    FeatureSpec(name="cat", kind="categorical", impute="unknown", categories=("a", "b")),
]


def event(**overrides: object) -> bytes:
    base: dict[str, object] = {
        "event_id": "e-1",
        "entity_id": "card-1",
        "ts": 1_763_800_000_000,
        "features": {"amount": 12.5, "hour": 3, "cat": "a"},
    }
    base.update(overrides)
    return orjson.dumps(base)


def test_valid_event() -> None:
    ev = validate_event(event(), SPECS)
    assert ev.values == {"amount": 12.5, "hour": 3.0, "cat": "a"}
    assert ev.quality == () and ev.ts_ms == 1_763_800_000_000


def test_iso_timestamp_and_extra_fields_ignored() -> None:
    ev = validate_event(event(ts="2025-11-22T08:26:40.5+00:00", extra={"x": [1]}), SPECS)
    assert ev.ts_ms == 1_763_800_000_500


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (None, "empty message"),
        (event(event_id=""), "event_id: String should have at least 1 character"),
        (event(entity_id=None), "entity_id: Input should be a valid string"),
        (orjson.dumps({"entity_id": "c", "ts": 1, "features": {}}), "event_id: required"),
        (event(ts="yesterday"), "ts: Value error, 'yesterday' is not an ISO-8601 timestamp"),
        (event(ts=-5), "ts: Value error, epoch milliseconds must be >= 0"),
        (event(features=[1]), "features: Input should be a valid dictionary"),
        (event(features={"amount": "12"}), "features.amount: expected a number, got str"),
        (event(features={"amount": True}), "features.amount: expected a number, got bool"),
        (event(features={"cat": 3}), "features.cat: expected a string category, got int"),
        (b'{"event_id":"e","entity_id":"c","ts":1,"features":{"amount":1e999}}', "not JSON"),
    ],
)
def test_rejections_name_the_problem(raw: bytes | None, reason: str) -> None:
    with pytest.raises(RejectedInput) as info:
        validate_event(raw, SPECS)
    assert reason in info.value.reason


def test_size_and_field_limits() -> None:
    with pytest.raises(RejectedInput, match="exceeds max_payload_bytes=300"):
        validate_event(event(pad="x" * 400), SPECS, Limits(max_payload_bytes=300))
    many = {f"f{i}": i for i in range(20)}
    with pytest.raises(RejectedInput, match="more than max_fields=10"):
        validate_event(event(features=many), SPECS, Limits(max_fields=10))


def test_quality_problems_are_counted_not_rejected() -> None:
    ev = validate_event(event(features={"amount": 5000, "hour": None, "cat": "zzz"}), SPECS)
    kinds = {(q.feature, q.kind) for q in ev.quality}
    assert kinds == {("amount", "out_of_range"), ("hour", "missing"), ("cat", "unseen_category")}
    assert ev.values == {"amount": 5000.0, "hour": 12, "cat": "zzz"}
    assert ev.missing == frozenset({"hour"})


def test_missing_feature_imputed() -> None:
    ev = validate_event(event(features={}), SPECS)
    assert ev.values == {"amount": 0.0, "hour": 12, "cat": "unknown"}
    assert {q.kind for q in ev.quality} == {"missing"}


def test_label_on_event_and_label_messages() -> None:
    assert validate_event(event(label=1), SPECS).label == 1
    label = validate_label(b'{"event_id": "e-1", "label": "fraud"}')
    assert label.label == "fraud" and label.ts is None
    with pytest.raises(RejectedInput, match="label: required"):
        validate_label(b'{"event_id": "e-1"}')

"""Event and label validation: reasons for rejects, data-quality problems for the rest."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.exceptions import RejectedInput
from stream.ingest import validation
from stream.ingest.validation import (
    MAX_ABS_VALUE,
    FeatureChecks,
    Limits,
    validate_event,
    validate_label,
)
from stream.service.config import FeatureSpec, WorkerSettings

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
        (event(ts=-5), "ts: -5 is outside [946684800000, "),
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


NOW = 1_763_900_000_000  # the worker's clock in these tests
DAY = 86_400_000


def rejected(raw: bytes, limits: Limits | None = None) -> RejectedInput:
    with pytest.raises(RejectedInput) as info:
        validate_event(raw, SPECS, limits or Limits(), now_ms=NOW)
    return info.value


@pytest.mark.parametrize(
    "ts",
    [
        946_684_799_999,  # a millisecond before 2000-01-01
        1_763_800_000,  # seconds, not milliseconds
        NOW + DAY + 1,  # more than a day ahead of the clock
        "1999-12-31T23:59:59Z",
        "2999-01-01T00:00:00Z",
    ],
)
def test_implausible_event_time_is_rejected_naming_value_and_range(ts: object) -> None:
    exc = rejected(event(ts=ts))
    assert (exc.stage, exc.code) == ("validate", "ts_out_of_range")
    assert (
        exc.reason.startswith("ts: ") and "is outside [946684800000, 1763986400000]" in exc.reason
    )
    assert "2000-01-01T00:00:00.000Z to 2025-11-24T12:13:20.000Z" in exc.reason


def test_event_time_range_edges_are_accepted() -> None:
    for ts in (946_684_800_000, NOW + DAY):
        assert validate_event(event(ts=ts), SPECS, now_ms=NOW).ts_ms == ts


@pytest.mark.parametrize(
    "ts",
    [1e300, 1.8e19, -1.0, "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z"],
)
def test_timestamps_no_datetime_can_hold_are_rejected_cleanly(ts: object) -> None:
    exc = rejected(event(ts=ts))
    assert exc.code == "ts_out_of_range" and "is outside [946684800000, " in exc.reason
    assert len(exc.reason) < 200


def test_absurd_iso_year_is_an_invalid_field() -> None:
    exc = rejected(event(ts="99999-01-01T00:00:00Z"))
    assert exc.code == "invalid_field" and "is not an ISO-8601 timestamp" in exc.reason


def test_limits_follow_the_worker_settings() -> None:
    worker = WorkerSettings(
        max_payload_bytes=1000, max_fields=5, min_event_time="1700000000000",
        max_event_time_ahead="1h",
    )  # fmt: skip
    assert Limits.from_settings(worker) == Limits(1000, 5, 1_700_000_000_000, 3_600_000)
    assert Limits.from_settings(WorkerSettings()) == Limits()
    limits = Limits(min_ts_ms=1_700_000_000_000, max_ahead_ms=0)
    assert rejected(event(ts=1_699_999_999_999), limits).code == "ts_out_of_range"
    assert rejected(event(ts=NOW + 1), limits).code == "ts_out_of_range"


def test_label_time_is_checked_like_an_event_time() -> None:
    assert validate_label(b'{"event_id": "e", "label": 1, "ts": 1763800000000}', now_ms=NOW)
    for ts in (b"5", b"1e300", b'"2999-01-01"'):
        with pytest.raises(RejectedInput) as info:
            validate_label(b'{"event_id": "e", "label": 1, "ts": %s}' % ts, now_ms=NOW)
        assert info.value.code == "ts_out_of_range", info.value.reason


@pytest.mark.parametrize("value", [1e16, -1e16, 1.7e308, 18446744073709551616])
def test_feature_beyond_the_magnitude_bound_is_rejected(value: float) -> None:
    raw = event(features={"amount": 1}).replace(b'"amount":1', b'"amount":%r' % value)
    exc = rejected(raw)
    assert exc.code == "out_of_bounds"
    assert exc.reason.startswith("features.amount: ") and "magnitude bound 1e+15" in exc.reason


def test_feature_at_the_magnitude_bound_is_accepted() -> None:
    ev = validate_event(event(features={"amount": -MAX_ABS_VALUE}), SPECS, now_ms=NOW)
    assert ev.values["amount"] == -1e15


def test_integer_too_large_for_a_float_is_rejected_cleanly() -> None:
    # orjson refuses a number that overflows a double: a clean not_json rejection
    raw = event().replace(b'"amount":12.5', b'"amount":1' + b"0" * 400)
    assert rejected(raw).code == "not_json"


@pytest.mark.parametrize("label", [1e16, -2e300, 2**63])
def test_numeric_label_beyond_the_bound_is_rejected(label: float) -> None:
    assert rejected(event(label=label)).code == "out_of_bounds"
    with pytest.raises(RejectedInput) as info:
        validate_label(orjson.dumps({"event_id": "e", "label": label}))
    assert info.value.code == "out_of_bounds" and info.value.reason.startswith("label: ")
    assert validate_label(orjson.dumps({"event_id": "e", "label": 1e15})).label == 1e15


def _reference_checks(
    raw: dict[str, object], specs: list[FeatureSpec]
) -> tuple[dict[str, float | str], list[tuple[str, str]], set[str]]:
    """The feature checks written out plainly, one rule at a time (FeatureChecks compiles
    them, with a short path for plain values)."""
    values: dict[str, float | str] = {}
    quality: list[tuple[str, str]] = []
    missing: set[str] = set()
    for spec in specs:
        value = raw.get(spec.name)
        if value is None:
            quality.append((spec.name, "missing"))
            missing.add(spec.name)
            if spec.impute is not None:
                values[spec.name] = spec.impute
        elif spec.kind == "numeric":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RejectedInput("", code="wrong_type")
            if not math.isfinite(value):
                raise RejectedInput("", code="non_finite")
            if abs(value) > MAX_ABS_VALUE:
                raise RejectedInput("", code="out_of_bounds")
            below = spec.min is not None and value < spec.min
            if below or (spec.max is not None and value > spec.max):
                quality.append((spec.name, "out_of_range"))
            values[spec.name] = float(value)
        else:
            if not isinstance(value, str):
                raise RejectedInput("", code="wrong_type")
            if spec.categories and value not in spec.categories:
                quality.append((spec.name, "unseen_category"))
            values[spec.name] = value
    return values, quality, missing


class _Int(int):
    pass


FEATURE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1000, 1001, -1, 10**15, -(10**15), 10**15 + 1, _Int(5), _Int(-3)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1000.0, 1000.0000001, 1e15, -1e15, 1.0000001e15, 5e-324]),
    st.sampled_from(["a", "b", "c", ""]),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=1),
)


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional={s.name: FEATURE_VALUES for s in SPECS}))
def test_compiled_feature_checks_follow_the_rules(raw: dict[str, object]) -> None:
    try:
        expected = _reference_checks(raw, SPECS)
    except RejectedInput as exc:
        with pytest.raises(RejectedInput) as info:
            FeatureChecks(SPECS).run(raw)
        assert info.value.code == exc.code
        return
    values, quality, missing = FeatureChecks(SPECS).run(raw)
    assert (values, [(q.feature, q.kind) for q in quality], missing) == (
        expected[0],
        expected[1],
        expected[2],
    )
    assert all(type(v) is float for k, v in values.items() if k != "cat")


def _mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` three times in four (``st.one_of`` does not weigh repeated branches): most
    examples then break one field at most."""
    return st.integers(0, 3).flatmap(lambda i: valid if i else other)


_VALID_TS = st.integers(min_value=946_684_800_000, max_value=NOW + 86_400_000)
_EVENT_FIELDS = {
    "event_id": _mostly(
        st.text(min_size=1, max_size=3),
        st.one_of(
            st.sampled_from(["", "x" * 256, "x" * 257, "é" * 256, "é" * 257]),
            st.integers(),
            st.none(),
            st.booleans(),
        ),
    ),
    "entity_id": _mostly(
        st.sampled_from(["card-1", "c"]), st.sampled_from(["", 5, None, "y" * 257])
    ),
    "ts": _mostly(
        _VALID_TS,
        st.one_of(
            st.integers(min_value=-(2**70), max_value=2**70),
            st.sampled_from([946_684_799_999, NOW + 86_400_001, -1, 253_402_300_800_000]),
            st.floats(),
            _VALID_TS.map(float),
            _VALID_TS.map(lambda t: t + 0.5),
            st.sampled_from(["2025-11-22T08:26:40Z", "yesterday", True, None]),
        ),
    ),
    "features": _mostly(
        st.fixed_dictionaries(
            {},
            optional={
                "amount": st.one_of(st.none(), st.floats(0, 2000), st.integers(-5, 2000)),
                "cat": st.one_of(st.none(), st.sampled_from(["a", "b", "z"])),
            },
        ),
        st.one_of(
            st.fixed_dictionaries({}, optional={"amount": FEATURE_VALUES, "cat": FEATURE_VALUES}),
            st.lists(st.integers(), max_size=1),
            st.none(),
        ),
    ),
    "label": st.one_of(
        st.none(),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.floats(),
        st.text(max_size=2),
        st.booleans(),
        st.lists(st.integers(), max_size=1),
        st.dictionaries(st.text(max_size=1), st.integers(), max_size=1),
    ),
}


@settings(max_examples=1000, deadline=None)
@given(
    _mostly(
        st.fixed_dictionaries(
            {k: v for k, v in _EVENT_FIELDS.items() if k != "label"},
            optional={"label": _EVENT_FIELDS["label"]},
        ),
        st.fixed_dictionaries({}, optional=_EVENT_FIELDS),
    )
)
def test_plain_events_read_directly_are_validated_as_pydantic_would(
    obj: dict[str, object],
) -> None:
    raw = json.dumps(obj).encode()  # any int; NaN and Infinity, which orjson refuses

    def outcome() -> object:
        try:  # repr: an int and an equal float compare equal
            return repr(validate_event(raw, SPECS, now_ms=NOW))
        except RejectedInput as exc:
            return (exc.stage, exc.code, exc.reason)

    direct = outcome()
    plain_event = validation._plain_event
    validation._plain_event = lambda *_: None  # every event through pydantic
    try:
        assert outcome() == direct
    finally:
        validation._plain_event = plain_event

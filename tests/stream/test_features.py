"""Feature windows: the incremental path equals a brute-force recomputation, is idempotent
under replay, independent of batching, numerically stable and bounded."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.features.offline import recompute_offline
from stream.features.plan import bucket_width_ms, window_names
from stream.features.state import State, decode_state, encode_state, new_state
from stream.features.windows import (
    FIRST_EVENT,
    BatchUpdate,
    EventResult,
    FeatureInput,
    update_batch,
    update_stored,
)
from stream.service.config import FeatureSpec, WindowSettings

T0 = 1_763_800_000_000
SCALE = 1e6  # largest |value| drawn
SPECS = (
    FeatureSpec(name="x", windows=("1s", "10s", "1m")),
    # two labels of the same length share one bucket list; a subset of the aggregates
    FeatureSpec(name="y", windows=("5s", "5000ms"), aggregates=("count", "std", "min")),
    FeatureSpec(name="z"),  # numeric without windows: no output
    FeatureSpec(name="c", kind="categorical"),
)
AMOUNT = (FeatureSpec(name="amount", windows=("1m", "1h")),)

values = st.one_of(
    st.none(),
    st.floats(-SCALE, SCALE, allow_nan=False),
    st.integers(-1000, 1000).map(float),
    st.sampled_from([0.0, 1.0, -1.0]),  # ties, to stress min/max and zero variance
)
step = st.tuples(
    st.sampled_from("abc"),  # entity
    st.integers(0, 8_000),  # how far the stream's clock advances, ms
    st.one_of(st.just(0), st.just(0), st.integers(0, 40_000)),  # lag behind the clock, ms
    values,
    values,
    st.integers(0, 9),  # 0: a redelivery of an earlier event, 1: its id on another entity
)
window_settings = st.builds(
    WindowSettings,
    buckets=st.integers(1, 6),
    grace=st.sampled_from(["500ms", "3s", "20s"]),
)


@st.composite
def event_lists(draw: st.DrawFn, max_size: int = 60) -> list[FeatureInput]:
    """Random entities, out-of-order timestamps, late events, missing values, redeliveries,
    and event ids that another entity's event had (a duplicate only if that one applied)."""
    events: list[FeatureInput] = []
    clock = T0 + draw(st.integers(0, 100_000))
    for i, (entity, advance, lag, x, y, redeliver) in enumerate(
        draw(st.lists(step, max_size=max_size))
    ):
        earlier = events[draw(st.integers(0, len(events) - 1))] if events else None
        if redeliver == 0 and earlier is not None:
            events.append(earlier)
            continue
        clock += advance
        event_id = f"e{i}"
        if redeliver == 1 and earlier is not None and earlier.entity_id != entity:
            event_id = earlier.event_id
        events.append(FeatureInput(event_id, entity, clock - lag, {"x": x, "y": y, "z": 1.0}))
    return events


def run_in_batches(
    events: Sequence[FeatureInput], sizes: Sequence[int], ws: WindowSettings
) -> tuple[list[EventResult], dict[str, State]]:
    """Process ``events`` in consecutive batches of ``sizes``, carrying states and seen ids."""
    states: dict[str, State] = {}
    seen: dict[str, float | None] = {}  # as the dedupe markers in Redis remember them
    results: list[EventResult] = []
    start = 0
    for size in [*sizes, len(events)]:
        batch = events[start : start + size]
        start += len(batch)
        update = update_batch(states, seen, batch, SPECS, ws)
        states.update(update.states)
        seen.update(update.applied_since)
        results.extend(update.results)
    return results, states


def assert_close(actual: Sequence[EventResult], expected: Sequence[EventResult]) -> None:
    def flags(rs: Sequence[EventResult]) -> list[tuple[str, str, int, bool, bool]]:
        return [(r.event_id, r.entity_id, r.ts_ms, r.duplicate, r.late) for r in rs]

    assert flags(actual) == flags(expected)
    for a, e in zip(actual, expected, strict=True):
        assert list(a.enriched) == list(e.enriched)
        for name, value in e.enriched.items():
            got = a.enriched[name]
            assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-9 * SCALE), (
                f"{a.event_id} {name}: incremental {got!r} != offline {value!r}"
            )


def encoded(states: dict[str, State]) -> dict[str, bytes]:
    return {entity: encode_state(state) for entity, state in states.items()}


def windows_of(states: dict[str, State]) -> dict[str, bytes]:
    """The encoded states without their generation, which counts the batches that wrote them."""
    return encoded({entity: {**state, "g": 0} for entity, state in states.items()})


@settings(max_examples=300, deadline=None)
@given(events=event_lists(), ws=window_settings)
def test_incremental_equals_offline_recomputation(
    events: list[FeatureInput], ws: WindowSettings
) -> None:
    update = update_batch({}, set(), events, SPECS, ws)
    offline = recompute_offline(events, SPECS, ws)
    assert_close(update.results, offline)
    assert update.applied_ids == tuple(r.event_id for r in offline if r.applied)  # batch order


@settings(max_examples=200, deadline=None)
@given(events=event_lists(), ws=window_settings, sizes=st.lists(st.integers(0, 7)))
def test_batch_splitting_does_not_change_results(
    events: list[FeatureInput], ws: WindowSettings, sizes: list[int]
) -> None:
    whole, whole_states = run_in_batches(events, [], ws)
    split, split_states = run_in_batches(events, sizes, ws)
    one_by_one, single_states = run_in_batches(events, [1] * len(events), ws)
    assert split == whole == one_by_one  # exactly: the same arithmetic in the same order
    assert windows_of(split_states) == windows_of(whole_states) == windows_of(single_states)


@settings(max_examples=200, deadline=None)
@given(events=event_lists(), ws=window_settings, data=st.data())
def test_replay_is_idempotent(
    events: list[FeatureInput], ws: WindowSettings, data: st.DataObject
) -> None:
    first = update_batch({}, set(), events, SPECS, ws)
    start = data.draw(st.integers(0, len(events)))
    replay = events[start : data.draw(st.integers(start, len(events)))]
    # through Redis the states come back decoded: replay against exactly that
    stored = {entity: decode_state(raw) for entity, raw in encoded(first.states).items()}
    again = update_batch(stored, first.applied_since, replay, SPECS, ws)

    assert again.states == {} and again.applied_ids == ()
    assert encoded(stored) == encoded(first.states)
    assert all(r.duplicate or r.late for r in again.results)
    # the replayed events' features are those of the same events appended to the input
    expected = recompute_offline([*events, *replay], SPECS, ws)[len(events) :]
    assert_close(again.results, expected)


@settings(max_examples=100, deadline=None)
@given(events=event_lists(), ws=window_settings)
def test_input_states_are_not_modified(events: list[FeatureInput], ws: WindowSettings) -> None:
    half = len(events) // 2
    states = update_batch({}, set(), events[:half], SPECS, ws).states
    before = encoded(states)
    update_batch(states, set(), events[half:], SPECS, ws)
    assert encoded(states) == before


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_lists(max_size=120), ws=window_settings)
def test_state_stays_bounded(events: list[FeatureInput], ws: WindowSettings) -> None:
    _, states = run_in_batches(events, [7] * len(events), ws)
    widths = {f"{s.name}@{bucket_width_ms(w, ws.buckets)}" for s in SPECS for w in s.window_seconds}
    for state in states.values():
        assert set(state["w"]) <= widths
        for key, buckets in state["w"].items():
            width = int(key.split("@")[1])
            top = state["t"] // width
            indices = [b[0] for b in buckets]
            assert indices == sorted(set(indices))  # sorted, one bucket per index
            assert 1 <= len(buckets) <= ws.buckets
            assert top - ws.buckets < indices[0] and indices[-1] <= top


@settings(max_examples=200, deadline=None)
@given(
    offset=st.sampled_from([0.0, 1e3, 1e9, -1e9]),
    noise=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=80),
    gaps=st.lists(st.integers(0, 4_000), min_size=80, max_size=80),
)
def test_aggregates_match_numpy_on_window_contents(
    offset: float, noise: list[float], gaps: list[int]
) -> None:
    # one entity, in order, all inside a 1 h window of 12 buckets: every value is in it,
    # spread over several buckets, so the merged statistics must equal numpy's on all values
    ts = T0 - T0 % 300_000 + np.cumsum(gaps[: len(noise)])
    assert ts[-1] - ts[0] < 300_000 * 11
    events = [
        FeatureInput(f"e{i}", "a", int(t), {"amount": offset + v})
        for i, (t, v) in enumerate(zip(ts, noise, strict=True))
    ]
    last = update_batch({}, set(), events, AMOUNT, WindowSettings()).results[-1].enriched
    a = np.array([offset + v for v in noise])
    assert last["amount_count_1h"] == len(a)
    assert last["amount_min_1h"] == a.min() and last["amount_max_1h"] == a.max()
    assert math.isclose(last["amount_sum_1h"], a.sum(), rel_tol=1e-12, abs_tol=1e-9)
    assert math.isclose(last["amount_mean_1h"], a.mean(), rel_tol=1e-12, abs_tol=1e-9)
    # a sum-of-squares variance loses every digit at an offset of 1e9 (E[x^2] ~ 1e18);
    # Welford + Chan keep the std accurate to ~1e-6 absolute there
    expected_std = a.std() if len(a) > 1 else 0.0
    assert math.isclose(last["amount_std_1h"], expected_std, rel_tol=1e-6, abs_tol=1e-6)


def test_output_names_and_first_event() -> None:
    ws = WindowSettings()
    result = update_batch({}, set(), [FeatureInput("e1", "a", T0, {"x": 2.0})], SPECS, ws)
    enriched = result.results[0].enriched
    assert tuple(enriched) == window_names(SPECS)
    assert enriched["x_count_1m"] == 1.0 and enriched["x_std_1m"] == 0.0
    assert enriched["seconds_since_last"] == FIRST_EVENT
    assert enriched["y_count_5s"] == enriched["y_count_5000ms"] == 0.0  # y missing


def run(events: Sequence[FeatureInput], ws: WindowSettings | None = None) -> BatchUpdate:
    return update_batch({}, set(), events, AMOUNT, ws or WindowSettings(grace="5m"))


def test_too_late_event_changes_nothing() -> None:
    on_time = FeatureInput("e1", "a", T0, {"amount": 10.0})
    late = FeatureInput("e2", "a", T0 - 301_000, {"amount": 99.0})  # grace is 5 min
    first = run([on_time])
    update = update_batch(first.states, {"e1"}, [late], AMOUNT, WindowSettings(grace="5m"))
    assert update.results[0].late and not update.results[0].duplicate
    assert update.states == {} and update.applied_ids == () and update.late_count == 1
    assert update.results[0].enriched["amount_count_1h"] == 0.0  # its own time: e1 is later


def test_late_event_within_grace_lands_in_its_bucket() -> None:
    events = [
        FeatureInput("e1", "a", T0, {"amount": 1.0}),
        FeatureInput("e2", "a", T0 + 200_000, {"amount": 2.0}),
        FeatureInput("e3", "a", T0 + 10_000, {"amount": 4.0}),  # 190 s late: within grace
    ]
    late = run(events).results[-1]
    assert not late.late
    assert late.enriched["amount_sum_1h"] == 5.0  # e1 and e3, not e2 (later than e3)
    # its 1m bucket is older than the 1m window of the entity's latest event: dropped
    assert late.enriched["amount_count_1m"] == 0.0
    assert late.enriched["seconds_since_last"] == 0.0  # behind the entity's clock
    assert (
        run([*events, FeatureInput("e4", "a", T0 + 200_000, {})])
        .results[-1]
        .enriched["amount_sum_1h"]
        == 7.0
    )


def test_window_edges_are_whole_buckets() -> None:
    # 1m of 12 buckets of 5 s: at t the window starts at the 11th bucket before idx(t)
    base = T0 - T0 % 5_000
    events = [
        FeatureInput("e1", "a", base, {"amount": 1.0}),
        FeatureInput("e2", "a", base + 59_999, {"amount": 2.0}),  # idx + 11: still in
        FeatureInput("e3", "a", base + 60_000, {"amount": 4.0}),  # idx + 12: e1 out
    ]
    results = run(events).results
    assert [r.enriched["amount_sum_1m"] for r in results] == [1.0, 3.0, 6.0]


def test_missing_value_advances_the_clock_only() -> None:
    events = [
        FeatureInput("e1", "a", T0, {"amount": 3.0}),
        FeatureInput("e2", "a", T0 + 1_500, {"amount": None}),
        FeatureInput("e3", "a", T0 + 4_000, {}),
    ]
    results = run(events).results
    assert [r.enriched["amount_count_1m"] for r in results] == [1.0, 1.0, 1.0]
    assert [r.enriched["seconds_since_last"] for r in results] == [-1.0, 1.5, 2.5]


def test_duplicate_in_batch_counts_once() -> None:
    e = FeatureInput("e1", "a", T0, {"amount": 3.0})
    update = run([e, e, e])
    assert [r.duplicate for r in update.results] == [False, True, True]
    assert {r.enriched["amount_count_1m"] for r in update.results} == {1.0}
    assert update.applied_ids == ("e1",) and update.duplicate_count == 2


def test_duplicate_keeps_the_gap_it_had_when_applied() -> None:
    e1 = FeatureInput("e1", "a", T0, {"amount": 3.0})
    e2 = FeatureInput("e2", "a", T0 + 2_000, {"amount": 4.0})
    first = run([e1, e2, e2])  # a copy in the same batch
    assert [r.enriched["seconds_since_last"] for r in first.results] == [-1.0, 2.0, 2.0]
    assert first.applied_since == {"e1": -1.0, "e2": 2.0}
    state = first.states["a"]
    # redelivered in a later batch: the gap comes from what the dedupe marker remembers
    again = update_batch({"a": state}, first.applied_since, [e2, e1], AMOUNT, WindowSettings())
    assert [r.duplicate for r in again.results] == [True, True]
    assert [r.enriched["seconds_since_last"] for r in again.results] == [2.0, -1.0]
    # without it (an id set, or a marker with no gap) the gap is measured against the clock
    unknown = update_batch({"a": state}, {"e2": None}, [e2], AMOUNT, WindowSettings())
    assert unknown.results[0].enriched["seconds_since_last"] == 0.0
    assert again.applied_since == {} and unknown.applied_ids == ()


def test_an_id_on_two_entities_is_a_duplicate_where_it_comes_second_in_the_batch() -> None:
    """Entities are updated one after the other (update_stored), but an event id on two of
    them is first applied where it comes first in the batch, and only if it applies."""
    a1 = FeatureInput("a-1", "a", T0, {"amount": 1.0})
    b_shared = FeatureInput("shared", "b", T0, {"amount": 2.0})
    a_shared = FeatureInput("shared", "a", T0 + 1_000, {"amount": 3.0})
    update = run([a1, b_shared, a_shared])
    assert [(r.entity_id, r.duplicate) for r in update.results] == [
        ("a", False), ("b", False), ("a", True)
    ]  # fmt: skip
    assert update.states["a"]["w"]["amount@5000"][0][1] == 1  # only a-1 in a's windows
    # a too-late copy is not applied, so the next one is not a duplicate
    stale = FeatureInput("late", "a", T0 - 600_000, {"amount": 4.0})
    fresh = FeatureInput("late", "b", T0 + 2_000, {"amount": 5.0})
    again = run([a1, stale, b_shared, fresh])
    assert [(r.late, r.duplicate) for r in again.results[1::2]] == [(True, False), (False, False)]
    assert again.applied_ids == ("a-1", "shared", "late")


def test_duplicate_of_unknown_entity_gets_empty_windows() -> None:
    e = FeatureInput("e1", "a", T0, {"amount": 3.0})
    update = update_batch({"a": None}, {"e1"}, [e], AMOUNT, WindowSettings())
    assert update.results[0].duplicate and update.states == {}
    assert update.results[0].enriched["amount_count_1m"] == 0.0
    assert update.results[0].enriched["seconds_since_last"] == FIRST_EVENT


def test_changed_window_config_starts_those_windows_afresh() -> None:
    e1 = FeatureInput("e1", "a", T0, {"amount": 3.0})
    e2 = FeatureInput("e2", "a", T0 + 1, {"amount": 5.0})
    state = run([e1]).states["a"]
    update = update_batch({"a": state}, set(), [e2], AMOUNT, WindowSettings(buckets=6))
    assert update.results[0].enriched["amount_count_1m"] == 1.0  # old buckets not misread
    assert update.results[0].enriched["seconds_since_last"] == 0.001
    assert len(update.states["a"]["w"]) == 2  # the 12-bucket lists were dropped


@pytest.mark.parametrize("raw", [None, b'{"v":999,"t":1,"w":{}}', b"[]"])
def test_decode_missing_or_foreign_state_gives_new_state(raw: bytes | None) -> None:
    assert decode_state(raw) == new_state()


def test_state_size_is_bounded_on_a_long_stream() -> None:
    rng = random.Random(3)
    events = [
        FeatureInput(f"e{i}", "a", T0 + i * 997, {"amount": rng.uniform(0, 100)})
        for i in range(20_000)
    ]
    sizes = []
    states: dict[str, State] = {}
    for i in range(0, len(events), 500):
        update = update_batch(states, set(), events[i : i + 500], AMOUNT, WindowSettings())
        states.update(update.states)
        sizes.append(len(encode_state(states["a"])))
    assert max(sizes) < 2 * 24 * 80  # 2 windows x 12 buckets, ~80 bytes each


@settings(max_examples=150, deadline=None)
@given(events=event_lists(), ws=window_settings, sizes=st.lists(st.integers(1, 7)))
def test_states_through_the_codec_give_the_same_results(
    events: list[FeatureInput], ws: WindowSettings, sizes: list[int]
) -> None:
    """Batches whose states go through Redis's bytes answer exactly as states kept in
    memory, and as offline."""
    direct, direct_states = run_in_batches(events, sizes, ws)
    states: dict[str, State] = {}
    seen: dict[str, float | None] = {}
    results: list[EventResult] = []
    start = 0
    for size in [*sizes, len(events)]:
        batch = events[start : start + size]
        start += len(batch)
        stored = {e: decode_state(encode_state(s)) for e, s in states.items()}
        update = update_batch(stored, seen, batch, SPECS, ws)
        states.update(update.states)
        seen.update(update.applied_since)
        results.extend(update.results)
    assert results == direct
    assert windows_of(states) == windows_of(direct_states)
    assert_close(direct, recompute_offline(events, SPECS, ws))


@settings(max_examples=150, deadline=None)
@given(
    events=event_lists(),
    ws=window_settings,
    sizes=st.lists(st.integers(1, 7)),
    spoiled=st.sets(st.sampled_from("abc")),
)
def test_update_stored_is_update_batch_on_the_decoded_states(
    events: list[FeatureInput], ws: WindowSettings, sizes: list[int], spoiled: set[str]
) -> None:
    """The feature store's path (states decoded and encoded entity by entity) gives what
    decoding every state, ``update_batch`` and encoding every new state give; bytes that
    are not a state (``spoiled`` in the second batch) start afresh and count as resets."""
    stored: dict[str, bytes | None] = {}
    seen: dict[str, float | None] = {}
    start = 0
    for n, size in enumerate([*sizes, len(events)]):
        batch = events[start : start + size]
        start += len(batch)
        entities = {e.entity_id for e in batch}
        raw = {e: b'{"v":1,"g":7,' if n == 1 and e in spoiled else stored.get(e) for e in entities}
        expected = update_batch(
            {e: decode_state(r) for e, r in raw.items()}, seen, batch, SPECS, ws
        )
        update = update_stored(raw, seen, batch, SPECS, ws)
        assert update.results == expected.results
        assert update.states == expected.states
        assert list(update.applied_since.items()) == list(expected.applied_since.items())
        assert update.encoded == encoded(expected.states)
        assert set(update.resets) == set(expected.resets) | (
            spoiled & entities if n == 1 else set()
        )
        stored.update(update.encoded)
        seen.update(update.applied_since)

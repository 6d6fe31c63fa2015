"""Per-entity feature windows: event-time-bucketed aggregates, pure logic without I/O.

Every numeric :class:`~stream.service.config.FeatureSpec` with ``windows`` gets, per entity and
per window, the configured aggregates (``count``, ``sum``, ``mean``, ``min``, ``max``, ``std``)
named ``{feature}_{aggregate}_{window}`` (``amount_mean_1h``; the window label as written in
the config), plus ``seconds_since_last`` for every entity. The state of one entity is a plain
JSON dict that :mod:`stream.features.store` keeps in Redis; this module only transforms
``(states, events) -> (states', enriched events)``.

Semantics
---------
Buckets
    A window of ``W`` ms is kept as ``B = windows.buckets`` buckets of width
    ``w = ceil(W / B)`` ms aligned to epoch multiples of ``w``; an event at ``ts`` lies in
    bucket ``idx(ts) = ts // w``. Per bucket: count, sum, M2 (Welford), min and max.
Window at time ``t``
    The buckets with index in ``(idx(t) - B, idx(t)]``: the window edges are whole buckets,
    so it spans between ``(B - 1) * w`` and ``B * w`` ms of event time up to ``t``.
Entity clock ``M``
    The largest event time among the entity's applied events. Buckets with index
    ``<= idx(M) - B`` can never be in a window again and are evicted, so a window holds at
    most ``B`` buckets.
Late events
    An event with ``ts < M - grace`` is *too late* (``late=True``): it changes nothing, not
    even ``M``. An earlier event within the grace period is applied: it lands in its bucket
    in every window that still retains that bucket (``idx(ts) > idx(M) - B``) and is dropped
    from the shorter windows that do not.
Duplicates
    An event whose ``event_id`` is in ``seen`` (already applied, as recorded in Redis) or
    was applied earlier in the batch is a duplicate (``duplicate=True``): it changes nothing.
    Its ``seconds_since_last`` is the one it had when it was applied, when ``seen`` remembers
    it (the dedupe marker in Redis does) or the first copy is in the same batch.
    A too-late event is not recorded as applied, so a replay of it is too late again.
Aggregates of an event
    Computed after the event is applied (so they include it), at its own time, over the
    retained buckets with index in ``(idx(M) - B, idx(t)]``. For an in-order event this is
    exactly the window at ``t``; for an out-of-order one, the part of its window older than
    the entity's retention is gone. Duplicates and too-late events get the same query
    against the current state. An empty window gives count 0 and 0.0 for every other
    aggregate; ``std`` is the population standard deviation, 0.0 below two values.
``seconds_since_last``
    ``max(0, t - M) / 1000`` with ``M`` the entity clock before the event, or ``-1.0``
    (:data:`FIRST_EVENT`) when the entity has no state: its first event, or its first after
    the state expired in Redis.

The bucket statistics and their exact merge are in :mod:`stream.features.buckets`; the
state format is in :mod:`stream.features.state`, and :mod:`stream.features.offline`
recomputes the same features by brute force.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from stream.features.buckets import EMPTY, add_to_bucket, aggregate_buckets
from stream.features.plan import SINCE_LAST, WindowPlan, window_plan
from stream.features.state import (
    STATE_VERSION,
    State,
    encode_state,
    new_state,
    stored_generation,
    try_decode_state,
)
from stream.service.config import FeatureSpec, WindowSettings

FIRST_EVENT = -1.0
"""``seconds_since_last`` of an entity's first event (no state)."""


@dataclass(slots=True)  # not frozen: one per event (see stream.records)
class FeatureInput:
    """One event as the windows see it: numeric raw values after imputation.

    A value of ``None`` (or a missing name) is not added to that feature's windows.
    """

    event_id: str
    entity_id: str
    ts_ms: int
    values: Mapping[str, float | None]


@dataclass(slots=True)  # not frozen: one per event (see stream.records)
class EventResult:
    """The enriched features of one event and how the windows treated it."""

    event_id: str
    entity_id: str
    ts_ms: int
    enriched: dict[str, float]
    duplicate: bool
    late: bool

    @property
    def applied(self) -> bool:
        """Whether the event changed its entity's state."""
        return not (self.duplicate or self.late)


@dataclass(frozen=True)
class BatchUpdate:
    """What :func:`update_batch` decided for a batch.

    Attributes
    ----------
    results
        One per input event, in input order.
    states
        The new state of every entity that at least one event changed; its generation
        ``g`` is one more than the state it was made from.
    applied_since
        The event ids applied for the first time, in order, each with its
        ``seconds_since_last``: to be remembered (with it) for dedupe.
    resets
        Entities whose state was malformed and started afresh.
    encoded
        The new states encoded (:func:`update_stored`; empty from :func:`update_batch`).
    """

    results: tuple[EventResult, ...]
    states: dict[str, State]
    applied_since: dict[str, float]
    resets: tuple[str, ...] = ()
    """Entities whose stored state could not be applied to and was started afresh."""
    encoded: dict[str, bytes] = field(default_factory=dict)
    """:attr:`states` encoded for Redis, when the update made them (:func:`update_stored`)."""

    @property
    def applied_ids(self) -> tuple[str, ...]:
        """The event ids applied for the first time, in order."""
        return tuple(self.applied_since)

    @property
    def late_count(self) -> int:
        """How many events were too late to change the windows."""
        return sum(r.late for r in self.results)

    @property
    def duplicate_count(self) -> int:
        """How many events had been applied before."""
        return sum(r.duplicate for r in self.results)


def update_batch(
    states: Mapping[str, State | None],
    seen: Collection[str] | Mapping[str, float | None],
    events: Sequence[FeatureInput],
    specs: Sequence[FeatureSpec],
    window_settings: WindowSettings,
) -> BatchUpdate:
    """Apply a batch of events to their entities' windows and enrich every event.

    Events of one entity are applied in batch order. The input states are not modified.

    Parameters
    ----------
    states
        The current state of (at least) every entity in the batch; missing or ``None``
        means no state.
    seen
        Event ids applied by earlier batches: those events are duplicates. A mapping may
        give each id the ``seconds_since_last`` it had then (or ``None`` if unknown).
    events
        The batch, in arrival order.
    specs
        The configured features; only numeric ones with windows are windowed.
    window_settings
        Number of buckets per window and the grace period for late events.

    Examples
    --------
    >>> spec = FeatureSpec(name="amount", windows=("1m",), aggregates=("count", "mean"))
    >>> t0 = 1_763_800_000_000
    >>> events = [FeatureInput("e1", "card", t0, {"amount": 10.0}),
    ...           FeatureInput("e2", "card", t0 + 2_000, {"amount": 20.0}),
    ...           FeatureInput("e1", "card", t0, {"amount": 10.0})]
    >>> update = update_batch({}, set(), events, [spec], WindowSettings())
    >>> [(r.enriched, r.duplicate) for r in update.results]  # doctest: +NORMALIZE_WHITESPACE
    [({'amount_count_1m': 1.0, 'amount_mean_1m': 10.0, 'seconds_since_last': -1.0}, False),
     ({'amount_count_1m': 2.0, 'amount_mean_1m': 15.0, 'seconds_since_last': 2.0}, False),
     ({'amount_count_1m': 2.0, 'amount_mean_1m': 15.0, 'seconds_since_last': -1.0}, True)]
    >>> update.applied_ids, list(update.states)
    (('e1', 'e2'), ['card'])
    """
    plan = window_plan(tuple(specs), window_settings)
    return _Batch(plan, seen, events).run(states.get, encode=False)


def update_stored(
    stored: Mapping[str, bytes | None],
    seen: Collection[str] | Mapping[str, float | None],
    events: Sequence[FeatureInput],
    specs: Sequence[FeatureSpec],
    window_settings: WindowSettings,
) -> BatchUpdate:
    """:func:`update_batch` on encoded states, with the new states encoded
    (:attr:`BatchUpdate.encoded`): what the feature store reads from and writes to Redis.

    Each entity's state is decoded just before its events are applied and the new state
    encoded right after, while its objects are in the CPU's cache: decoding every state of
    a batch, then applying every event, then encoding every state walked through a few MB
    three times, which cost 109 instead of 62 µs per event (with the write's arguments) on
    the 10-feature benchmark config, 500 entities per batch. Bytes that are not a state
    (:func:`~stream.features.state.try_decode_state`) start the entity afresh with the
    stored generation, and the entity is listed in :attr:`BatchUpdate.resets`.

    >>> spec = FeatureSpec(name="amount", windows=("1m",), aggregates=("count",))
    >>> events = [FeatureInput("e1", "card", 60_000, {"amount": 2.0})]
    >>> update = update_stored({"card": b"garbage"}, set(), events, [spec], WindowSettings())
    >>> update.results[0].enriched, update.resets, update.encoded["card"][:23]
    ({'amount_count_1m': 1.0, 'seconds_since_last': -1.0}, ('card',), b'{"v":1,"g":1,"t":60000,')
    """
    plan = window_plan(tuple(specs), window_settings)
    undecodable: list[str] = []

    def state_of(entity: str) -> State:
        raw = stored.get(entity)
        state = try_decode_state(raw)
        if state is None:
            undecodable.append(entity)
            state = new_state(stored_generation(raw))
        return state

    return _Batch(plan, seen, events).run(state_of, encode=True, undecodable=undecodable)


class _Batch:
    """One batch through the windows, entity by entity (see :func:`update_stored`).

    An entity's events are applied in batch order, and entities are independent of each
    other but for one thing: an event id seen under two entities in one batch is a
    duplicate in the later one only if the earlier one was applied. A batch with such an id
    is run in batch order instead, all its states loaded first.
    """

    def __init__(
        self,
        plan: WindowPlan,
        seen: Collection[str] | Mapping[str, float | None],
        events: Sequence[FeatureInput],
    ) -> None:
        self.plan = plan
        self.events = events
        self.current: dict[str, State | None] = {}
        self.owned: dict[str, State] = {}  # copies this batch may modify
        self.applied_here: dict[str, float] = {}  # event id -> its seconds_since_last
        self.resets: list[str] = []
        remembered: Mapping[str, float | None] = seen if isinstance(seen, Mapping) else {}
        self.step = _Step(plan, self.current, self.owned, seen, remembered, self.applied_here)

    def run(
        self,
        state_of: Callable[[str], State | None],
        *,
        encode: bool,
        undecodable: Sequence[str] = (),
    ) -> BatchUpdate:
        """Apply the batch, each entity's state got from ``state_of`` when its run starts;
        with ``encode``, each new state is also encoded when its run ends. ``undecodable``
        (filled by ``state_of`` as it goes) leads the resets."""
        events = self.events
        results: list[EventResult | None] = [None] * len(events)
        encoded: dict[str, bytes] = {}
        for entities, positions in _runs(events):
            for entity in entities:
                self.current[entity] = state_of(entity)
            for i in positions:
                results[i] = self._apply(events[i])
            for entity in entities:
                state = self.owned.get(entity)
                if state is not None:
                    _compact(self.plan, state)
                    if encode:
                        encoded[entity] = encode_state(state)
        done = cast(tuple[EventResult, ...], tuple(results))
        applied = self.applied_here  # in batch order, as each id's applied event comes:
        in_order = {r.event_id: applied[r.event_id] for r in done if r.applied}
        resets = tuple(dict.fromkeys([*undecodable, *self.resets]))
        return BatchUpdate(done, self.owned, in_order, resets, encoded)

    def _apply(self, event: FeatureInput) -> EventResult:
        try:
            return self.step.run(event)
        except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, AttributeError):
            # a stored state that decodes but cannot be worked with (written by a bug, or
            # by hand): start the entity afresh instead of failing on each of its events
            # until it expires; an error on the fresh state is the event's own
            generation = _generation(self.current.get(event.entity_id))
            self.current[event.entity_id] = new_state(generation)
            self.owned.pop(event.entity_id, None)
            self.resets.append(event.entity_id)
            return self.step.run(event)


def _runs(events: Sequence[FeatureInput]) -> list[tuple[list[str], list[int]]]:
    """The batch as runs of (entities, event positions): one run per entity, in order of
    first appearance, or a single run of the whole batch when an event id appears under
    two entities (see :class:`_Batch`)."""
    positions: dict[str, list[int]] = {}
    owner: dict[str, str] = {}
    shared = False
    for i, event in enumerate(events):
        positions.setdefault(event.entity_id, []).append(i)
        shared = shared or owner.setdefault(event.event_id, event.entity_id) != event.entity_id
    if shared:
        return [(list(positions), list(range(len(events))))]
    return [([entity], found) for entity, found in positions.items()]


@dataclass(slots=True)
class _Step:
    """One event through :func:`update_batch` (the batch's mutable maps are shared)."""

    plan: WindowPlan
    current: dict[str, State | None]
    owned: dict[str, State]
    seen: Collection[str] | Mapping[str, float | None]
    remembered: Mapping[str, float | None]
    applied_here: dict[str, float]

    def run(self, event: FeatureInput) -> EventResult:
        plan, entity = self.plan, event.entity_id
        state = self.current.get(entity)
        clock = state["t"] if state else None
        since = FIRST_EVENT if clock is None else max(0, event.ts_ms - clock) / 1000
        duplicate = event.event_id in self.seen or event.event_id in self.applied_here
        if duplicate:
            first = self.applied_here.get(event.event_id, self.remembered.get(event.event_id))
            since = since if first is None else first
        late = not duplicate and clock is not None and event.ts_ms < clock - plan.grace_ms
        if not (duplicate or late):
            state = self.owned.get(entity)
            if state is None:
                state = _copy(self.current.get(entity))
                self.owned[entity] = self.current[entity] = state
            _apply(plan, state, event)
            self.applied_here[event.event_id] = since
        features = _aggregates(plan, state, event.ts_ms)
        features[SINCE_LAST] = since
        return EventResult(event.event_id, entity, event.ts_ms, features, duplicate, late)


def _generation(state: State | None) -> int:
    generation = state.get("g", 0) if isinstance(state, dict) else 0
    return generation if isinstance(generation, int) else 0


def _copy(state: State | None) -> State:
    # buckets are never modified in place (see add_to_bucket), so copying the lists is
    # enough; the copy is the next generation of the state
    if not state:
        return new_state(1)
    windows = {key: list(buckets) for key, buckets in state["w"].items()}
    return {"v": STATE_VERSION, "g": _generation(state) + 1, "t": state["t"], "w": windows}


def _apply(plan: WindowPlan, state: State, event: FeatureInput) -> None:
    ts = event.ts_ms
    clock = state["t"]
    if clock is None or ts > clock:
        state["t"] = clock = ts
    windows = state["w"]
    for feature in plan.features:
        value = event.values.get(feature.name)
        if value is None:
            continue
        v = float(value)
        for window in feature.windows:
            floor = clock // window.width - plan.buckets  # retained: index > floor
            idx = ts // window.width
            if idx <= floor:
                continue  # too old for this window, see "Late events"
            buckets = windows.get(window.key)
            if not buckets:
                windows[window.key] = [(idx, 1, v, 0.0, v, v)]
                continue
            add_to_bucket(buckets, idx, v)
            while buckets[0][0] <= floor:
                del buckets[0]


def window_aggregates(
    state: State | None,
    ts_ms: int,
    specs: Sequence[FeatureSpec],
    window_settings: WindowSettings,
) -> dict[str, float]:
    """The window features of ``state`` queried at event time ``ts_ms``.

    What an event at ``ts_ms`` that changes nothing would get, without
    ``seconds_since_last``: for checking a stored state against
    :func:`~stream.features.offline.recompute_offline`.

    >>> spec = FeatureSpec(name="amount", windows=("1m",), aggregates=("count", "sum"))
    >>> events = [FeatureInput(f"e{i}", "card", 1_000 * i, {"amount": 2.0}) for i in range(3)]
    >>> update = update_batch({}, set(), events, [spec], WindowSettings())
    >>> window_aggregates(update.states["card"], 2_000, [spec], WindowSettings())
    {'amount_count_1m': 3.0, 'amount_sum_1m': 6.0}
    """
    return _aggregates(window_plan(tuple(specs), window_settings), state, ts_ms)


def _aggregates(plan: WindowPlan, state: State | None, ts: int) -> dict[str, float]:
    out: dict[str, float] = {}
    clock = state["t"] if state else None
    windows = state["w"] if state else {}
    for feature in plan.features:
        for window in feature.windows:
            if clock is None:
                values = EMPTY
            else:
                lo = clock // window.width - plan.buckets
                values = aggregate_buckets(windows.get(window.key), lo, ts // window.width)
            for name, i in window.outputs:
                out[name] = values[i]
    return out


def _compact(plan: WindowPlan, state: State) -> None:
    # drop the evicted buckets of windows this batch did not touch and the windows no longer
    # configured; keep the plan's key order, so equal states encode to equal bytes
    clock = state["t"]
    windows = state["w"]
    kept = {}
    for key, width in plan.widths.items():
        buckets = windows.get(key)
        if not buckets:
            continue
        floor = clock // width - plan.buckets
        kept[key] = buckets if buckets[0][0] > floor else [b for b in buckets if b[0] > floor]
        if not kept[key]:
            del kept[key]
    state["w"] = kept

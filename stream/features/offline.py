"""The brute-force oracle of the feature windows: every event's features from the whole input.

It states the semantics of :mod:`stream.features.windows` as directly as possible, for the
tests to check :func:`~stream.features.windows.update_batch` (and the Redis store) against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream.features.buckets import EMPTY
from stream.features.plan import SINCE_LAST, WindowPlan, window_plan
from stream.features.windows import FIRST_EVENT, EventResult, FeatureInput
from stream.service.config import FeatureSpec, WindowSettings


def recompute_offline(
    events: Sequence[FeatureInput],
    specs: Sequence[FeatureSpec],
    window_settings: WindowSettings,
) -> list[EventResult]:
    """Recompute every event's features by brute force from the whole input, from no state.

    The reference for :func:`~stream.features.windows.update_batch` (same semantics, see
    :mod:`stream.features.windows`): it keeps every applied event and, for each event, takes
    the values in the query range directly, with numpy for the statistics. Quadratic: for
    tests only.

    Examples
    --------
    >>> spec = FeatureSpec(name="amount", windows=("1m",), aggregates=("sum", "std"))
    >>> events = [FeatureInput(f"e{i}", "card", 1_000 * i, {"amount": float(i)})
    ...           for i in range(4)]
    >>> recompute_offline(events, [spec], WindowSettings())[-1].enriched
    {'amount_sum_1m': 6.0, 'amount_std_1m': 1.118033988749895, 'seconds_since_last': 1.0}
    """
    plan = window_plan(tuple(specs), window_settings)
    clocks: dict[str, int] = {}
    kept: dict[str, list[FeatureInput]] = {}
    applied: dict[str, float] = {}  # event id -> its seconds_since_last when applied
    results = []
    for event in events:
        clock = clocks.get(event.entity_id)
        since = FIRST_EVENT if clock is None else max(0, event.ts_ms - clock) / 1000
        duplicate = event.event_id in applied
        since = applied.get(event.event_id, since)
        late = not duplicate and clock is not None and event.ts_ms < clock - plan.grace_ms
        if not (duplicate or late):
            applied[event.event_id] = since
            kept.setdefault(event.entity_id, []).append(event)
            clocks[event.entity_id] = event.ts_ms if clock is None else max(clock, event.ts_ms)
        history = kept.get(event.entity_id, [])
        features = _brute_force(plan, history, clocks.get(event.entity_id), event.ts_ms)
        features[SINCE_LAST] = since
        results.append(
            EventResult(event.event_id, event.entity_id, event.ts_ms, features, duplicate, late)
        )
    return results


def _brute_force(
    plan: WindowPlan, history: list[FeatureInput], clock: int | None, ts: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    for feature in plan.features:
        for window in feature.windows:
            w = window.width
            values = [
                float(v)
                for e in history
                if (v := e.values.get(feature.name)) is not None
                and clock is not None
                and clock // w - plan.buckets < e.ts_ms // w <= ts // w
            ]
            stats = EMPTY
            if values:
                a = np.array(values)
                std = float(a.std()) if len(a) > 1 else 0.0
                stats = (float(len(a)), float(a.sum()), float(a.mean()), a.min(), a.max(), std)
            for name, i in window.outputs:
                out[name] = float(stats[i])
    return out

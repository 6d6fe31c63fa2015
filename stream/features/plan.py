"""Which window aggregates the configured features ask for, and what they are called.

A :class:`WindowPlan` groups each numeric feature's windows by bucket width (two spellings of
one length, ``"60s"`` and ``"1m"``, share one bucket list) and names every output
``{feature}_{aggregate}_{window}`` (:func:`enriched_name`, the one place that rule lives).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from stream.service.config import FeatureSpec, WindowSettings

SINCE_LAST = "seconds_since_last"
"""The enriched feature every entity gets: seconds since its previous event."""

_AGG_INDEX = {"count": 0, "sum": 1, "mean": 2, "min": 3, "max": 4, "std": 5}


@dataclass(frozen=True, slots=True)
class _Window:
    key: str  # state key "{feature}@{width_ms}"
    width: int
    outputs: tuple[tuple[str, int], ...]  # (output name, index into the aggregate tuple)


@dataclass(frozen=True, slots=True)
class _Feature:
    name: str
    windows: tuple[_Window, ...]


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """What the configured features ask of the windows (see :func:`window_plan`)."""

    features: tuple[_Feature, ...]
    buckets: int
    grace_ms: int
    widths: Mapping[str, int]  # state key -> bucket width, for compaction


def bucket_width_ms(window_s: float, buckets: int) -> int:
    """Width in ms of one bucket of a ``window_s``-second window kept as ``buckets`` buckets.

    >>> bucket_width_ms(3600.0, 12), bucket_width_ms(0.25, 12)
    (300000, 21)
    """
    return max(1, -(-round(window_s * 1000) // buckets))


def window_names(specs: Sequence[FeatureSpec]) -> tuple[str, ...]:
    """The names of the enriched features, in output order.

    >>> spec = FeatureSpec(name="amount", windows=("1m", "1h"), aggregates=("count", "mean"))
    >>> window_names([spec])
    ('amount_count_1m', 'amount_mean_1m', 'amount_count_1h', 'amount_mean_1h', 'seconds_since_last')
    """
    names = [
        enriched_name(spec.name, agg, label)
        for spec in _windowed(specs)
        for label in spec.windows
        for agg in spec.aggregates
    ]
    return (*names, SINCE_LAST)


def enriched_name(feature: str, aggregate: str, window: str) -> str:
    """The name of one window aggregate: ``{feature}_{aggregate}_{window}``.

    The window as written in the configuration, so two spellings of one length are two
    names (sharing one bucket list).

    >>> enriched_name("amount", "mean", "1h")
    'amount_mean_1h'
    """
    return f"{feature}_{aggregate}_{window}"


def _windowed(specs: Sequence[FeatureSpec]) -> list[FeatureSpec]:
    return [s for s in specs if s.kind == "numeric" and s.windows]


@lru_cache(maxsize=16)
def window_plan(specs: tuple[FeatureSpec, ...], settings: WindowSettings) -> WindowPlan:
    """The windows of ``specs``, each with its bucket width and the outputs it feeds.

    >>> spec = FeatureSpec(name="amount", windows=("60s", "1m"), aggregates=("count",))
    >>> plan = window_plan((spec,), WindowSettings())
    >>> [(w.key, w.outputs) for f in plan.features for w in f.windows]
    [('amount@5000', (('amount_count_60s', 0), ('amount_count_1m', 0)))]
    """
    features = tuple(_feature_plan(spec, settings.buckets) for spec in _windowed(specs))
    widths = {w.key: w.width for f in features for w in f.windows}
    grace_ms = round(settings.grace_s * 1000)
    return WindowPlan(features, settings.buckets, grace_ms, widths)


def _feature_plan(spec: FeatureSpec, buckets: int) -> _Feature:
    # windows written differently but equally long ("60s", "1m") share one bucket list
    outputs: dict[int, list[tuple[str, int]]] = {}
    for label, seconds in zip(spec.windows, spec.window_seconds, strict=True):
        named = [(enriched_name(spec.name, agg, label), _AGG_INDEX[agg]) for agg in spec.aggregates]
        outputs.setdefault(bucket_width_ms(seconds, buckets), []).extend(named)
    windows = tuple(
        _Window(f"{spec.name}@{width}", width, tuple(named)) for width, named in outputs.items()
    )
    return _Feature(spec.name, windows)

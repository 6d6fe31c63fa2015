"""A synthetic card-transaction stream with a learnable fraud rule and injectable drift.

Pure and seeded: the same arguments give the same events and labels. Used by
``driftwatch demo``, the benchmarks and the tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

CATEGORIES = ("grocery", "fuel", "travel", "online", "restaurant")
SHARES = (0.35, 0.2, 0.1, 0.2, 0.15)
DRIFTED_SHARES = (0.1, 0.1, 0.3, 0.45, 0.05)
HOUR_WEIGHTS = tuple(1.0 if h < 7 else 3.0 for h in range(24))
DriftKind = Literal["mean_shift", "variance", "category_mix", "concept"]
DRIFT_KINDS: tuple[DriftKind, ...] = ("mean_shift", "variance", "category_mix", "concept")


@dataclass(frozen=True)
class Drift:
    """A change that starts at event number ``start`` (and ends at ``end``, if given)."""

    kind: DriftKind
    start: int
    end: int | None = None

    def active(self, i: int) -> bool:
        return i >= self.start and (self.end is None or i < self.end)

    @classmethod
    def parse(cls, text: str) -> Drift:
        """Parse ``kind@start`` or ``kind@start-end``.

        >>> Drift.parse("mean_shift@5000"), Drift.parse("concept@100-200").end
        (Drift(kind='mean_shift', start=5000, end=None), 200)
        """
        kind, _, where = text.partition("@")
        if kind not in DRIFT_KINDS:
            raise ValueError(f"drift kind {kind!r} is not one of {', '.join(DRIFT_KINDS)}")
        start, _, end = where.partition("-")
        try:
            first, last = int(start), (int(end) if end else None)
        except ValueError:
            raise ValueError(f"drift {text!r}: expected kind@start or kind@start-end") from None
        if first < 0 or (last is not None and last <= first):
            raise ValueError(f"drift {text!r}: need 0 <= start < end")
        return cls(kind, first, last)


@dataclass
class CardStream:
    """Card transactions from ``n_cards`` cards, one event every ``step_ms`` of event time."""

    seed: int = 7
    n_cards: int = 500
    start_ms: int = 1_763_800_000_000
    step_ms: int = 50
    drifts: tuple[Drift, ...] = ()
    run_id: str = "e"
    _rng: random.Random = field(init=False, repr=False)
    _base: list[float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # noqa: S311 - synthetic data, not security
        self._base = [self._rng.uniform(2.5, 4.0) for _ in range(self.n_cards)]

    def events(self, n: int) -> Iterator[tuple[dict[str, Any], int]]:
        """Yield ``(event, label)`` pairs; the event carries no label."""
        for i in range(n):
            yield self.event(i)

    def event(self, i: int) -> tuple[dict[str, Any], int]:
        rng = self._rng
        active = {d.kind for d in self.drifts if d.active(i)}
        card = rng.randrange(self.n_cards)
        log_amount = rng.gauss(self._base[card], 0.6)
        if "variance" in active:
            log_amount = self._base[card] + (log_amount - self._base[card]) * 1.5
        amount = math.exp(log_amount)
        if "mean_shift" in active:
            # +0.5 sigma of log-amount over all cards (sd of the card bases ~0.43 and of the
            # noise 0.6: ~0.74 together)
            amount *= math.exp(0.5 * 0.74)
        shares = DRIFTED_SHARES if "category_mix" in active else SHARES
        category = rng.choices(CATEGORIES, shares)[0]
        ts = self.start_ms + i * self.step_ms
        # hour of day from a fixed distribution (not the clock): a stationary feature
        hour = rng.choices(range(24), HOUR_WEIGHTS)[0]
        label = self._fraud(log_amount - self._base[card], category, hour, "concept" in active)
        event = {
            "event_id": f"{self.run_id}-{i:07d}",
            "entity_id": f"card-{card}",
            "ts": ts,
            "features": {"amount": round(amount, 2), "merchant_category": category, "hour": hour},
        }
        return event, label

    def _fraud(self, excess: float, category: str, hour: int, flipped: bool) -> int:
        z = -1.6 + 2.2 * excess + (1.8 if category in ("online", "travel") else -0.6)
        z += 0.8 if hour < 6 else 0.0
        if flipped:  # the rule turns around: what was safe is now fraud and vice versa
            z = -z - 1.0
        return int(self._rng.random() < 1.0 / (1.0 + math.exp(-z)))


def bad_event(i: int) -> bytes:
    """A malformed event of one of several kinds, for the dead-letter path."""
    kinds = [
        b"{not json",
        b'{"event_id": "", "entity_id": "card-1", "ts": 1, "features": {}}',
        b'{"event_id": "bad-%d", "entity_id": "card-1", "ts": 1, "features": {"amount": "lots"}}',
        b'{"event_id": "bad-%d", "ts": 1, "features": {}}',
        b"[1, 2, 3]",
    ]
    raw = kinds[i % len(kinds)]
    return raw.replace(b"%d", str(i).encode()) if b"%d" in raw else raw

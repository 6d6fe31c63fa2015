"""What a scorer scores with: the lineup's champion, served, and every other model, in shadow.

:class:`ModelSet` keeps one :class:`~stream.model.holder.ModelHolder` per model of the lineup
(:mod:`stream.model.lineup`) and follows the lineup at every refresh: a started challenger
is scored from the scorer's next refresh on, a retired one no more, and a promotion makes
another holder's model the one served. It offers the holder's interface for the champion,
so the worker's refresh task and steps treat it as one holder.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from stream.model.freshness import Lag
from stream.model.holder import ModelHolder, ReferenceHolder
from stream.model.lineup import Entry, Lineup, champion_of, configured
from stream.model.online import OnlineModel, create_model
from stream.model.snapshots import SnapshotStore
from stream.service.config import ModelSettings, Settings

log = logging.getLogger(__name__)


def arm_point(entity_id: str) -> float:
    """The entity's stable place in [0, 1) for the A/B split (BLAKE2b of its id): the same on
    every worker, in every process and across restarts (unlike Python's ``hash``).

    >>> arm_point("card-1") == arm_point("card-1"), 0 <= arm_point("card-2") < 1
    (True, True)
    """
    digest = hashlib.blake2b(entity_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def arm_of(entity_id: str, arms: Sequence[tuple[float, float, int]]) -> int:
    """The index whose interval ``[lo, hi)`` holds the entity's point; 0 (the champion) when
    none does.

    >>> arm_of("card-1", [(0.0, 1.0, 3)]), arm_of("card-1", [(0.0, 0.0, 3)])
    (3, 0)
    """
    point = arm_point(entity_id)
    for lo, hi, index in arms:
        if lo <= point < hi:
            return index
    return 0


def arm_intervals(entries: Mapping[str, Entry]) -> list[tuple[float, float, str]]:
    """The A/B arms of a lineup: each challenger with a ``serve_share``, by name, takes the
    next interval of that width from 0; the champion serves the rest.

    >>> from stream.service.config import ModelSettings as M
    >>> e = {n: Entry(M(name=n, role="challenger", serve_share=s), "challenger")
    ...      for n, s in (("b", 0.1), ("a", 0.2), ("c", 0.0))}
    >>> [(round(lo, 2), round(hi, 2), n) for lo, hi, n in arm_intervals(e)]
    [(0.0, 0.2, 'a'), (0.2, 0.3, 'b')]
    """
    out, lo = [], 0.0
    for name in sorted(entries):
        e = entries[name]
        if e.role == "challenger" and e.spec.serve_share > 0:
            out.append((lo, lo + e.spec.serve_share, name))
            lo += e.spec.serve_share
    return out


class ModelSet:
    """The holders of the lineup's models; ``model`` is the champion's, ``shadows`` the others'.

    Before the lineup is read (Redis away at start-up) it serves the configured champion.
    The prediction monitors' reference model (:attr:`reference`) is the configured
    champion's, whoever is served: it is a fixed version that judges the inputs.

    >>> models = ModelSet(settings, redis)  # doctest: +SKIP
    >>> await models.refresh()  # doctest: +SKIP
    True
    >>> models.model.name, [m.name for m in models.shadows]  # doctest: +SKIP
    ('fraud', ['fraud.r1'])
    """

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.lineup = Lineup(redis, settings.redis.prefix)
        self._seeded = False
        primary = self._holder(settings.model)
        self.primary = primary
        self._holders: dict[str, ModelHolder] = {settings.model.name: primary}
        self._champion = settings.model.name
        self._live = {settings.model.name}  # the holders of models in the lineup
        self._arms: list[tuple[float, float, str]] = []
        self._first_refresh = False

    def _holder(self, spec: ModelSettings) -> ModelHolder:
        store = SnapshotStore.from_settings(self.redis, self.settings.for_model(spec))
        return ModelHolder(store, create_model(spec, self.settings.features))

    @property
    def champion(self) -> ModelHolder:
        return self._holders[self._champion]

    @property
    def model(self) -> OnlineModel:
        """The model whose predictions are served now."""
        return self.champion.model

    @property
    def shadows(self) -> list[OnlineModel]:
        """The other models of the lineup: scored on every event, never served."""
        return [
            h.model
            for name, h in self._holders.items()
            if name != self._champion and name in self._live
        ]

    @property
    def models(self) -> list[OnlineModel]:
        """The champion's model, then the others'."""
        return [self.model, *self.shadows]

    @property
    def arms(self) -> list[tuple[float, float, str]]:
        """The A/B arms: ``(lo, hi, model)``; entities outside them go to the champion."""
        return self._arms

    @property
    def names(self) -> list[str]:
        return list(self._holders)

    @property
    def reference(self) -> ReferenceHolder:
        return self.primary.reference

    async def ready(self) -> None:
        """Refresh once before the first batch is scored."""
        if not self._first_refresh:
            await self.refresh()
            self._first_refresh = True

    async def refresh(self) -> bool:
        """Follow the lineup and refresh every model; True if what is scored changed."""
        entries = await self._entries()
        changed = self._follow(entries)
        results = await asyncio.gather(*(h.refresh() for h in self._holders.values()))
        return changed or any(results)

    async def _entries(self) -> dict[str, Entry]:
        if not self._seeded:
            entries = await self.lineup.seed(configured(self.settings))
            self._seeded = True
            return entries
        return await self.lineup.entries()

    def _follow(self, entries: dict[str, Entry]) -> bool:
        changed = False
        for name, entry in entries.items():
            if name not in self._holders:
                self._holders[name] = self._holder(entry.spec)
                log.info("scoring model %s (%s) from now on", name, entry.role)
                changed = True
        for name in [n for n in self._holders if n not in entries]:
            if name != self.primary.initial.name:
                del self._holders[name]
                log.info("model %s left the lineup: no longer scored", name)
                changed = True
        self._live = set(entries) or {self.primary.initial.name}
        self._arms = arm_intervals(entries)
        champion = champion_of(entries)
        if champion is not None and champion.name != self._champion:
            log.info("serving model %s (was %s)", champion.name, self._champion)
            self._champion = champion.name
            changed = True
        return changed

    async def wait_for_change(self, timeout_s: float) -> bool:
        """The champion's :meth:`ModelHolder.wait_for_change` (a promotion announces itself
        on the champions' streams; the challengers' versions are loaded at each refresh)."""
        return await self.champion.wait_for_change(timeout_s)

    async def lag(self, now_ms: int) -> Lag:
        return await self.champion.lag(now_ms)

    def take_alerts(self) -> list[dict[str, Any]]:
        return [a for h in self._holders.values() for a in h.take_alerts()]

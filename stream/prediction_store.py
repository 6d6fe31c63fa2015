"""Predictions waiting for their labels, in Redis, under their event_id with a TTL.

``{prefix}:pred:{event_id}`` holds the features as scored (expires after the label
horizon); the sorted set ``{prefix}:pending`` (score = time scored) lets one sweep count the
predictions that expired unlabelled, exactly once whichever worker sweeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import redis.asyncio as aioredis

from stream.labels import PendingPrediction
from stream.redis_batch import Writes


class PredictionStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, horizon_s: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.horizon_s = horizon_s

    def key(self, event_id: str) -> str:
        return f"{self.prefix}:pred:{event_id}"

    @property
    def pending_key(self) -> str:
        return f"{self.prefix}:pending"

    def stage(self, pipe: Writes, preds: Sequence[PendingPrediction]) -> None:
        """Add the writes for ``preds`` to a pipeline the caller executes."""
        if not preds:
            return
        ttl = max(1, math.ceil(self.horizon_s))
        for pred in preds:
            pipe.set(self.key(pred.event_id), pred.encode(), ex=ttl)
        pipe.zadd(self.pending_key, {p.event_id: p.processed_at_ms for p in preds})

    async def take(self, event_ids: Sequence[str]) -> dict[str, PendingPrediction]:
        """Fetch and delete the stored predictions of ``event_ids`` in one round trip."""
        if not event_ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.getdel(self.key(event_id))
        pipe.zrem(self.pending_key, *event_ids)
        results = await pipe.execute()
        return {
            eid: PendingPrediction.decode(raw)
            for eid, raw in zip(event_ids, results[:-1], strict=True)
            if raw is not None
        }

    async def sweep_expired(self, now_ms: int) -> int:
        """Forget predictions older than the horizon; returns how many expired unlabelled."""
        cutoff = now_ms - int(self.horizon_s * 1000)
        removed: int = await self.redis.zremrangebyscore(self.pending_key, "-inf", cutoff)
        return removed

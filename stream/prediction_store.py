"""Predictions waiting for their labels, and labels waiting for their predictions, in Redis.

``{prefix}:pred:{event_id}`` holds the features as scored, ``{prefix}:label:{event_id}`` a
label that arrived before its event was scored (a label is not lost because it overtook its
event); both expire after the label horizon. The sorted set ``{prefix}:pending`` (score =
time scored) lets one sweep count the predictions that expired unlabelled, exactly once
whichever worker sweeps.

Each side is one Lua script, run atomically by Redis: the scorer stores a prediction *or*
claims the label already parked for it; the label side takes the prediction *or* parks the
label. Whatever the interleaving of the two agents, a label meets its prediction once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from stream.labels import PendingPrediction
from stream.messages import Label

# KEYS = [pending, (pred_key, label_key) * n]; ARGV = [ttl, (value, score, member) * n]
# returns, per prediction, the parked label it claimed or false
_STORE_OR_CLAIM = """
local out = {}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local label = redis.call('GETDEL', KEYS[2 * i + 1])
  if label then
    out[i] = label
  else
    redis.call('SET', KEYS[2 * i], ARGV[3 * i - 1], 'EX', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[3 * i], ARGV[3 * i + 1])
    out[i] = false
  end
end
return out
"""

# KEYS = [pending, (pred_key, label_key) * n]; ARGV = [ttl, (label, member) * n]
# returns, per label, the stored prediction it took or false (then the label is parked)
_TAKE_OR_PARK = """
local out = {}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local pred = redis.call('GETDEL', KEYS[2 * i])
  if pred then
    redis.call('ZREM', KEYS[1], ARGV[2 * i + 1])
    out[i] = pred
  else
    redis.call('SET', KEYS[2 * i + 1], ARGV[2 * i], 'EX', ARGV[1])
    out[i] = false
  end
end
return out
"""


class PredictionStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, horizon_s: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.horizon_s = horizon_s
        self._store = redis.register_script(_STORE_OR_CLAIM)
        self._take = redis.register_script(_TAKE_OR_PARK)

    def key(self, event_id: str) -> str:
        return f"{self.prefix}:pred:{event_id}"

    def label_key(self, event_id: str) -> str:
        return f"{self.prefix}:label:{event_id}"

    @property
    def pending_key(self) -> str:
        return f"{self.prefix}:pending"

    @property
    def ttl(self) -> int:
        return max(1, math.ceil(self.horizon_s))

    async def stage(self, pipe: Pipeline, preds: Sequence[PendingPrediction]) -> bool:
        """Queue the store-or-claim of ``preds`` on ``pipe``; False if there is nothing."""
        if not preds:
            return False
        keys = [self.pending_key]
        args: list[bytes | str | int | float] = [self.ttl]
        for p in preds:
            keys += (self.key(p.event_id), self.label_key(p.event_id))
            args += (p.encode(), p.processed_at_ms, p.event_id)
        await self._store(keys=keys, args=args, client=pipe)  # queued, not yet sent
        return True

    @staticmethod
    def claimed(
        reply: Sequence[bytes | None], preds: Sequence[PendingPrediction]
    ) -> list[tuple[PendingPrediction, Label]]:
        """The predictions whose label was already waiting, with that label."""
        return [
            (p, Label.model_validate_json(raw))
            for p, raw in zip(preds, reply, strict=True)
            if raw  # Lua false arrives as None
        ]

    async def take(self, labels: Sequence[Label]) -> dict[str, PendingPrediction]:
        """Take the stored predictions of ``labels``; park the labels that have none yet."""
        if not labels:
            return {}
        keys = [self.pending_key]
        args: list[bytes | str | int | float] = [self.ttl]
        for label in labels:
            keys += (self.key(label.event_id), self.label_key(label.event_id))
            args += (label.model_dump_json().encode(), label.event_id)
        reply = await self._take(keys=keys, args=args)
        return {
            label.event_id: PendingPrediction.decode(raw)
            for label, raw in zip(labels, reply, strict=True)
            if raw
        }

    async def sweep_expired(self, now_ms: int) -> int:
        """Forget predictions older than the horizon; returns how many expired unlabelled."""
        cutoff = now_ms - int(self.horizon_s * 1000)
        removed: int = await self.redis.zremrangebyscore(self.pending_key, "-inf", cutoff)
        return removed

"""Labels meet their predictions whichever arrives first, exactly once (real Redis)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from stream.labels.join import PendingPrediction
from stream.labels.store import PredictionStore
from stream.messages import Label

pytestmark = pytest.mark.integration

SCORED_AT = 1_763_800_000_123


def pred(event_id: str) -> PendingPrediction:
    # scored at a 13-digit epoch ms: the sorted-set score must keep every digit
    return PendingPrediction(event_id, "c1", 1000, {"amount": 1.0}, 2, 0, 0.25, SCORED_AT)


async def store(ps: PredictionStore, preds: list[PendingPrediction]) -> list:
    claimed, _ = await ps.store_or_claim(preds, lambda: None)
    return claimed


def test_label_after_prediction_and_label_before_prediction(redis_url: str, uid: str) -> None:
    async def go() -> None:
        client = aioredis.Redis.from_url(redis_url)
        ps = PredictionStore(client, f"test-{uid}", horizon_s=60)
        assert await store(ps, [pred("e1")]) == []
        # e1's prediction waits; e2's label overtakes its event and is parked
        taken = await ps.take([Label(event_id="e1", label=1), Label(event_id="e2", label=0)])
        assert list(taken) == ["e1"] and taken["e1"].score == 0.25
        assert await client.zcard(ps.pending_key) == 0
        claimed = await store(ps, [pred("e2"), pred("e3")])
        assert [(p.event_id, lb.label) for p, lb in claimed] == [("e2", 0)]
        assert await client.exists(ps.key("e2"), ps.label_key("e2")) == 0
        assert await client.exists(ps.key("e3")) == 1 and await client.zcard(ps.pending_key) == 1
        assert await client.ttl(ps.key("e3")) > 0
        # stored byte for byte as encoded, and pending since the time it was scored
        assert await client.get(ps.key("e3")) == pred("e3").encode()
        assert await client.zscore(ps.pending_key, "e3") == SCORED_AT
        # a second label for e1 finds nothing any more: parked, never joined twice
        assert await ps.take([Label(event_id="e1", label=1)]) == {}
        await client.aclose()

    asyncio.run(go())


def test_concurrent_sides_join_each_pair_once(redis_url: str, uid: str) -> None:
    async def go() -> int:
        client = aioredis.Redis.from_url(redis_url)
        ps = PredictionStore(client, f"test-{uid}", horizon_s=60)
        ids = [f"e{i}" for i in range(2000)]

        async def scorer() -> int:
            n = 0
            for i in range(0, len(ids), 50):
                n += len(await store(ps, [pred(e) for e in ids[i : i + 50]]))
            return n

        async def labeller() -> int:
            n = 0
            for i in range(0, len(ids), 70):
                n += len(await ps.take([Label(event_id=e, label=1) for e in ids[i : i + 70]]))
            return n

        joined = sum(await asyncio.gather(scorer(), labeller()))
        await client.aclose()
        return joined

    assert asyncio.run(go()) == 2000

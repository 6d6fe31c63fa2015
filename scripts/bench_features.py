#!/usr/bin/env python3
"""Micro-benchmark of the feature windows' hot path: µs per event of ``update_batch`` and
of the state codec (decode the batch's states as read from Redis, encode the changed ones);
then the worker's CPU on its Redis write paths, before and after in the same run.

One numeric feature with three windows (1m, 1h, 24h) and all six aggregates, 12 buckets,
events 5 ms apart in event time, 5 % of them up to 60 s out of order, processed in batches
of 500 like the worker does (no Redis: the pure logic only). Few entities means full
windows; many entities means mostly first events (new states every batch).

The Redis paths are timed up to the bytes redis-py would send (its ``pack_command``, which
is pure Python for asyncio connections), without a server: the feature store's conditional
write (``FeatureStore.write_args``) and the staging of the pending predictions for the label
join (``PendingPrediction`` built, ``PredictionStore.stage`` on a pipeline). The baselines
are the previous layouts, kept below: 4 + 2 arguments per entity and marker, 3 per
prediction, frozen ``PendingPrediction``.

    .venv/bin/python scripts/bench_features.py [--events 100000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.features.state import decode_state, encode_state, new_state  # noqa: E402
from stream.features.store import FeatureStore, Loaded, marker  # noqa: E402
from stream.features.windows import BatchUpdate, FeatureInput, update_batch  # noqa: E402
from stream.labels.join import PendingPrediction  # noqa: E402
from stream.labels.store import PredictionStore  # noqa: E402
from stream.service.config import FeatureSpec, Settings, WindowSettings  # noqa: E402

SPEC = FeatureSpec(name="amount", windows=("1m", "1h", "24h"))


def make_events(n: int, entities: int, seed: int = 7) -> list[FeatureInput]:
    """Card-like events: a global clock advancing ~5 ms per event, 5 % up to 60 s late."""
    rng = random.Random(seed)
    t0 = 1_763_800_000_000
    events = []
    for i in range(n):
        ts = t0 + i * 5 - (rng.randrange(60_000) if rng.random() < 0.05 else 0)
        amount = round(rng.lognormvariate(3, 1), 2)
        events.append(
            FeatureInput(f"e-{i}", f"card-{rng.randrange(entities)}", ts, {"amount": amount})
        )
    return events


def run(events: list[FeatureInput], batch: int) -> tuple[float, float]:
    """Process ``events`` in batches, the states kept encoded as in Redis, carrying seen
    ids; return µs per event of ``update_batch`` and of the codec."""
    spec = SPEC
    settings = WindowSettings(buckets=12, grace="5m")
    stored: dict[str, bytes] = {}
    seen: dict[str, float | None] = {}
    update_s = codec_s = 0.0
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        start = time.perf_counter()
        entities = dict.fromkeys(e.entity_id for e in chunk)  # one MGET per batch
        states = {entity: decode_state(stored.get(entity)) for entity in entities}
        middle = time.perf_counter()
        update = update_batch(states, seen, chunk, [spec], settings)
        end = time.perf_counter()
        stored.update((entity, encode_state(s)) for entity, s in update.states.items())
        codec_s += middle - start + time.perf_counter() - end
        update_s += end - middle
        seen.update(update.applied_since)
    return update_s / len(events) * 1e6, codec_s / len(events) * 1e6


# --- the Redis write paths -----------------------------------------------------------------

# The previous conditional write: per entity KEYS = state key, marker keys; ARGV = expected
# generation, state, state TTL, n, then (marker, TTL) per marker.
_LEGACY_WRITE = """
local k, a, e = 1, 1, 0
local conflicts = {}
while k <= #KEYS do
  e = e + 1
  local n = tonumber(ARGV[a + 3])
  local stored = redis.call('GET', KEYS[k])
  local g = 0
  if stored then g = tonumber(string.match(stored, '^{"v":%d+,"g":(%d+)') or '0') end
  if g == tonumber(ARGV[a]) then
    redis.call('SET', KEYS[k], ARGV[a + 1], 'EX', ARGV[a + 2])
    for j = 1, n do
      redis.call('SET', KEYS[k + j], ARGV[a + 2 + 2 * j], 'EX', ARGV[a + 3 + 2 * j])
    end
  else
    conflicts[#conflicts + 1] = e
  end
  k = k + 1 + n
  a = a + 4 + 2 * n
end
return conflicts
"""


def legacy_write_args(store: FeatureStore, update: BatchUpdate) -> tuple[list[str], list[Any]]:
    """The previous ``FeatureStore.write_args``."""
    markers: dict[str, list[tuple[str, float]]] = {}
    for result in update.results:
        since = update.applied_since.get(result.event_id)
        if since is not None and result.applied:
            markers.setdefault(result.entity_id, []).append((result.event_id, since))
    keys: list[str] = []
    args: list[Any] = []
    for entity, state in update.states.items():
        marks = markers.get(entity, [])
        keys.append(store.state_key(entity))
        keys.extend(store.seen_key(event_id) for event_id, _ in marks)
        args += (state["g"] - 1, encode_state(state), store.state_ttl_s, len(marks))
        for _, since in marks:
            args += (marker(since), store._dedupe_ttl_s)
    return keys, args


@dataclass(frozen=True)
class LegacyPendingPrediction:
    """The previous PendingPrediction: frozen, encoded from its ``__dict__``."""

    event_id: str
    entity_id: str
    ts_ms: int
    x: dict[str, float | str]
    model_version: int
    prediction: int | float | str | None
    score: float
    processed_at_ms: int

    def encode(self) -> bytes:
        return orjson.dumps(self.__dict__)


# The previous store-or-claim: ARGV = [ttl, (value, score, member) * n], run as a registered
# script on the pipeline (EVALSHA, after a SCRIPT EXISTS round trip).
_LEGACY_STORE = """
local out = {}
local n = (#KEYS - 2) / 2
for i = 1, n do
  local label = redis.call('GETDEL', KEYS[2 * i + 2])
  if label then
    redis.call('ZREM', KEYS[2], ARGV[3 * i + 1])
    out[i] = label
  else
    redis.call('SET', KEYS[2 * i + 1], ARGV[3 * i - 1], 'EX', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[3 * i], ARGV[3 * i + 1])
    out[i] = false
  end
end
return out
"""


async def legacy_stage(
    store: PredictionStore, script: Any, pipe: Any, preds: Sequence[LegacyPendingPrediction]
) -> None:
    """The previous ``PredictionStore.stage``."""
    keys = [store.pending_key, store.parked_key]
    args: list[Any] = [store.ttl]
    for p in preds:
        keys += (store.key(p.event_id), store.label_key(p.event_id))
        args += (p.encode(), p.processed_at_ms, p.event_id)
    await script(keys=keys, args=args, client=pipe)


def write_updates(store: FeatureStore, events: list[FeatureInput], batch: int) -> list[Any]:
    """The batch updates of ``events`` as the worker would write them (states carried)."""
    states: dict[str, Any] = {}
    seen: dict[str, float | None] = {}
    updates = []
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        known = {e.entity_id: states.get(e.entity_id) or new_state() for e in chunk}
        update = store.update(Loaded(known, seen), chunk)
        states.update(update.states)
        seen.update(update.applied_since)
        updates.append(update)
    return updates


def best_us(run: Callable[[], Any], n: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - start)
    return min(times) / n / 1000


def bench_redis_paths(events: list[FeatureInput], batch: int, repeat: int) -> None:
    """µs per event of the client's CPU on the two Redis writes, previous vs current."""
    client = aioredis.Redis()  # never connected: scripts are registered, commands packed
    conn = aioredis.Connection()
    store = FeatureStore(client, Settings(features=(SPEC,)))
    updates = write_updates(store, events, batch)
    legacy_sha = client.register_script(_LEGACY_WRITE).sha
    feature_sha = store._write.sha

    def legacy(update: BatchUpdate) -> tuple[list[str], list[Any]]:
        return legacy_write_args(store, update)

    def write(build: Callable[[BatchUpdate], tuple[list[str], list[Any]]], sha: str) -> None:
        for update in updates:
            keys, args = build(update)
            conn.pack_command("EVALSHA", sha, len(keys), *keys, *args)

    def arguments(build: Callable[[BatchUpdate], tuple[list[str], list[Any]]]) -> float:
        return sum(len(k) + len(a) for k, a in map(build, updates)) / len(events)

    n = len(events)
    print(f"\nRedis write paths, client CPU up to the packed bytes, {n} events, batch {batch},")
    print(f"1 feature x 3 windows, µs per event (best of {repeat}), before -> after:")
    before = best_us(lambda: write(legacy, legacy_sha), n, repeat)
    after = best_us(lambda: write(store.write_args, feature_sha), n, repeat)
    print(f"  feature-store write   {before:6.2f} -> {after:6.2f}   (arguments per event "
          f"{arguments(legacy):.1f} -> {arguments(store.write_args):.1f})")  # fmt: skip

    predictions = PredictionStore(client, "dw", horizon_s=3600)
    legacy_script = client.register_script(_LEGACY_STORE)
    scored = [
        (r.event_id, r.entity_id, r.ts_ms, {"amount": 1.0, **r.enriched}, 3, 0, 0.25, r.ts_ms + 5)
        for u in updates
        for r in u.results
    ]
    chunks = [scored[i : i + batch] for i in range(0, len(scored), batch)]

    def stage(cls: Any, run: Callable[[Any, list[Any]], Any]) -> None:
        async def go() -> None:
            for chunk in chunks:
                preds = [cls(*fields) for fields in chunk]  # as EventProcessor._score builds them
                pipe = client.pipeline(transaction=False)
                await run(pipe, preds)
                conn.pack_commands([args for args, _ in pipe.command_stack])

        asyncio.run(go())

    def legacy_staged(pipe: Any, preds: list[Any]) -> Any:
        return legacy_stage(predictions, legacy_script, pipe, preds)

    before = best_us(lambda: stage(LegacyPendingPrediction, legacy_staged), n, repeat)
    after = best_us(lambda: stage(PendingPrediction, predictions.stage), n, repeat)
    print(f"  pending predictions   {before:6.2f} -> {after:6.2f}   "
          f"(arguments per event 5 -> 2; round trips per batch 2 -> 1)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--entities", type=int, nargs="+", default=[10, 1_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis-entities", type=int, default=1_000,
                        help="entities of the Redis write paths' events")  # fmt: skip
    args = parser.parse_args()
    print(f"1 feature x 3 windows x 6 aggregates, batch {args.batch}, µs per event")
    print(f"(best of {args.repeat} runs of {args.events} events):")
    for entities in args.entities:
        events = make_events(args.events, entities)
        runs = [run(events, args.batch) for _ in range(args.repeat)]
        update, codec = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"  {entities:>7} entities: update_batch {update:5.1f}, state codec {codec:5.1f}")
    events = make_events(min(args.events, 20_000), args.redis_entities)
    bench_redis_paths(events, args.batch, max(args.repeat, 5))


if __name__ == "__main__":
    main()

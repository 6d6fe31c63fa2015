#!/usr/bin/env python3
"""Micro-benchmark of the feature windows' hot path: µs per event of ``update_batch`` and
of the state codec (decode the batch's states as read from Redis, encode the changed ones),
against the worker's ``update_stored`` doing both entity by entity; then the worker's CPU
on its Redis write paths, before and after in the same run.

One numeric feature with three windows (1m, 1h, 24h) and all six aggregates, 12 buckets,
events 5 ms apart in event time, 5 % of them up to 60 s out of order, processed in batches
of 500 like the worker does (no Redis: the pure logic only). Few entities means full
windows; many entities means mostly first events (new states every batch).

The Redis paths compare the previous layout of the feature store's conditional write
(``FeatureStore.write_args``) and of the pending predictions' store-or-claim
(``PredictionStore.store_args``), every stored value inside one JSON array argument decoded
by the script, with the current one, one argument per value: the client's CPU up to the
bytes the worker sends (hiredis packing, ``stream.service.redis_client``), and with
``--redis URL`` the server's CPU per event running each script (a scratch Redis: its
command statistics are reset; the keys written are deleted).

    .venv/bin/python scripts/bench_features.py [--events 100000] [--batch 500] [--redis URL]
"""

from __future__ import annotations

import argparse
import functools
import gc
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.features.state import decode_state, encode_state  # noqa: E402
from stream.features.store import _WRITE_IF_UNCHANGED, FeatureStore, Loaded, marker  # noqa: E402
from stream.features.windows import (  # noqa: E402
    BatchUpdate,
    FeatureInput,
    update_batch,
    update_stored,
)
from stream.labels.join import PendingPrediction  # noqa: E402
from stream.labels.store import _STORE_OR_CLAIM, PredictionStore  # noqa: E402
from stream.service.config import FeatureSpec, Settings, WindowSettings  # noqa: E402
from stream.service.redis_client import hiredis_packing  # noqa: E402

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
    ids, in phases (decode every state of a batch, ``update_batch``, encode every changed
    state); return µs per event of ``update_batch`` and of the codec."""
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


def run_stored(events: list[FeatureInput], batch: int) -> float:
    """What :func:`run` does the worker's way, ``update_stored`` (each entity decoded,
    updated and encoded in turn); µs per event."""
    settings = WindowSettings(buckets=12, grace="5m")
    stored: dict[str, bytes] = {}
    seen: dict[str, float | None] = {}
    total_s = 0.0
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        start = time.perf_counter()
        known = {e.entity_id: stored.get(e.entity_id) for e in chunk}  # one MGET per batch
        update = update_stored(known, seen, chunk, [SPEC], settings)
        total_s += time.perf_counter() - start
        stored.update(update.encoded)
        seen.update(update.applied_since)
    return total_s / len(events) * 1e6


# --- the Redis write paths -----------------------------------------------------------------

# The previous layouts: every stored value inside one JSON array argument, decoded by the
# script with cjson (the KEYS are the same).
_JSON_WRITE = """
local state_ttl, marker_ttl = ARGV[1], ARGV[2]
local k = 1
local conflicts = {}
for e, entity in ipairs(cjson.decode(ARGV[3])) do
  local markers = entity[3]
  local stored = redis.call('GET', KEYS[k])
  local g = 0
  if stored then g = tonumber(string.match(stored, '^{"v":%d+,"g":(%d+)') or '0') end
  if g == entity[1] then
    redis.call('SET', KEYS[k], entity[2], 'EX', state_ttl)
    for j = 1, #markers do
      redis.call('SET', KEYS[k + j], markers[j], 'EX', marker_ttl)
    end
  else
    conflicts[#conflicts + 1] = e
  end
  k = k + 1 + #markers
end
return conflicts
"""

_JSON_STORE = """
local out = {}
for i, p in ipairs(cjson.decode(ARGV[2])) do
  local label = redis.call('GETDEL', KEYS[2 * i + 2])
  if label then
    redis.call('ZREM', KEYS[2], p[3])
    out[i] = label
  else
    redis.call('SET', KEYS[2 * i + 1], p[1], 'EX', ARGV[1])
    redis.call('ZADD', KEYS[1], p[2], p[3])
    out[i] = false
  end
end
return out
"""


def json_write_args(store: FeatureStore, update: BatchUpdate) -> tuple[list[str], list[Any]]:
    """The previous ``FeatureStore.write_args``: one JSON argument for the stored values."""
    markers: dict[str, list[tuple[str, float]]] = {}
    for result in update.results:
        since = update.applied_since.get(result.event_id)
        if since is not None and result.applied:
            markers.setdefault(result.entity_id, []).append((result.event_id, since))
    keys: list[str] = []
    entities: list[tuple[int, str, list[str]]] = []
    for entity, state in update.states.items():
        marks = markers.get(entity, [])
        keys.append(store.state_key(entity))
        keys.extend(store.seen_key(event_id) for event_id, _ in marks)
        encoded = [marker(since).decode() for _, since in marks]
        entities.append((state["g"] - 1, encode_state(state).decode(), encoded))
    return keys, [store.state_ttl_s, store._dedupe_ttl_s, orjson.dumps(entities)]


def json_store_args(
    store: PredictionStore, preds: Sequence[PendingPrediction]
) -> tuple[list[str], list[Any]]:
    """The previous ``PredictionStore.store_args``: one JSON argument for the predictions."""
    keys = [store.pending_key, store.parked_key]
    entries = [(p.encode().decode(), p.processed_at_ms, p.event_id) for p in preds]
    for p in preds:
        keys += (store.key(p.event_id), store.label_key(p.event_id))
    return keys, [store.ttl, orjson.dumps(entries)]


def write_updates(store: FeatureStore, events: list[FeatureInput], batch: int) -> list[Any]:
    """The batch updates of ``events`` as the worker would write them (states carried)."""
    stored: dict[str, bytes] = {}
    seen: dict[str, float | None] = {}
    updates = []
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        known = {e.entity_id: stored.get(e.entity_id) for e in chunk}
        update = store.update(Loaded(known, seen), chunk)
        stored.update(update.encoded)
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


def bench_redis_paths(
    events: list[FeatureInput], batch: int, repeat: int, redis_url: str | None
) -> None:
    """µs per event of the two Redis writes, previous (one JSON argument) vs current (one
    argument per value): the client's CPU up to the packed bytes, with the worker's hiredis
    packing; with ``redis_url``, also the server's (its ``INFO commandstats``)."""
    client = aioredis.Redis()  # never connected: scripts are registered, commands packed
    conn = hiredis_packing(aioredis.Connection)()
    store = FeatureStore(client, Settings(features=(SPEC,)))
    predictions = PredictionStore(client, "dw", horizon_s=3600)
    updates = write_updates(store, events, batch)
    scored = [
        PendingPrediction(r.event_id, r.entity_id, r.ts_ms, {"amount": 1.0, **r.enriched}, 3, 0,
                          0.25, r.ts_ms + 5)
        for u in updates
        for r in u.results
    ]  # fmt: skip
    chunks = [scored[i : i + batch] for i in range(0, len(scored), batch)]
    Build = Callable[[Any], tuple[list[str], list[Any]]]
    paths: list[tuple[str, str, str, Build, Build, list[Any]]] = [
        ("feature-store write", _JSON_WRITE, _WRITE_IF_UNCHANGED,
         lambda u: json_write_args(store, u), store.write_args, updates),
        ("pending predictions", _JSON_STORE, _STORE_OR_CLAIM,
         lambda c: json_store_args(predictions, c), predictions.store_args, chunks),
    ]  # fmt: skip
    n = len(events)
    print(f"\nRedis write paths, {n} events, batch {batch}, 1 feature x 3 windows, µs per event")
    print(f"(client: best of {repeat}, up to the packed bytes), previous -> current:")
    for name, old_script, new_script, old, new, items in paths:

        def pack(build: Build, script: str, items: list[Any] = items) -> None:
            for item in items:
                keys, args = build(item)
                conn.pack_command("EVAL", script, len(keys), *keys, *args)

        before = best_us(functools.partial(pack, old, old_script), n, repeat)
        after = best_us(functools.partial(pack, new, new_script), n, repeat)
        line = f"  {name:20}  client {before:5.2f} -> {after:5.2f}"
        if redis_url is not None:
            server = [server_us(redis_url, build, script, items, n)
                      for build, script in ((old, old_script), (new, new_script))]  # fmt: skip
            line += f"   server {server[0]:5.2f} -> {server[1]:5.2f}"
        print(line)


def server_us(redis_url: str, build: Any, script: str, items: list[Any], n: int) -> float:
    """The server's µs per event running ``script`` on ``items`` (``EVAL`` in commandstats,
    the calls the script makes included), on keys deleted afterwards."""
    import redis as sync_redis

    r = sync_redis.Redis.from_url(redis_url)
    sha = r.script_load(script)
    prefix = f"bench-features-{uuid.uuid4().hex[:8]}"
    r.config_resetstat()
    for item in items:
        keys, args = build(item)
        r.evalsha(sha, len(keys), *(f"{prefix}:{k}" for k in keys), *args)
    usec = int(r.info("commandstats")["cmdstat_evalsha"]["usec"])
    for key in r.scan_iter(f"{prefix}:*", count=10_000):
        r.delete(key)
    return usec / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--entities", type=int, nargs="+", default=[10, 1_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--redis-entities", type=int, default=1_000,
                        help="entities of the Redis write paths' events")  # fmt: skip
    parser.add_argument("--redis", metavar="URL",
                        help="also the server's CPU on the write paths (a scratch Redis: its "
                             "command statistics are reset)")  # fmt: skip
    args = parser.parse_args()
    print(f"1 feature x 3 windows x 6 aggregates, batch {args.batch}, µs per event")
    print(f"(best of {args.repeat} runs of {args.events} events):")
    for entities in args.entities:
        events = make_events(args.events, entities)
        runs = [run(events, args.batch) for _ in range(args.repeat)]
        update, codec = min(r[0] for r in runs), min(r[1] for r in runs)
        fused = min(run_stored(events, args.batch) for _ in range(args.repeat))
        print(
            f"  {entities:>7} entities: update_batch {update:5.1f} + state codec {codec:5.1f}"
            f" = {update + codec:5.1f} in phases; update_stored {fused:5.1f}"
            f" ({fused / (update + codec):.2f})"
        )
    events = make_events(min(args.events, 20_000), args.redis_entities)
    bench_redis_paths(events, args.batch, max(args.repeat, 5), args.redis)


if __name__ == "__main__":
    main()

"""All of a batch's Redis writes as one atomic command.

A pipeline of per-key ``SET ... EX`` commands is one network round trip, but redis-py still
packs and parses one command per key, which profiled at a third of the worker's time with
three keys per event. :class:`BatchWriter` collects the writes (``set``, the subset of the
pipeline API the feature store uses) and queues them as a single ``EVALSHA`` of a small Lua
script, which Redis runs atomically: a feature state and the dedupe markers of the events in
it are written together or not at all.

All keys of one call must live on one node (true for a single Redis, or one Cluster slot).
"""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

# KEYS = [key_1, ..., key_n], ARGV = [value_1, ttl_1, ..., value_n, ttl_n]
_WRITE = """
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EX', ARGV[2 * i])
end
return #KEYS
"""


def write_script(redis: aioredis.Redis) -> AsyncScript:
    """The registered write script; register once per client and reuse it."""
    return redis.register_script(_WRITE)


class Writes(Protocol):
    """What the stores stage their writes into: a pipeline or a :class:`BatchWriter`."""

    def set(self, name: str, value: bytes, ex: int) -> object: ...


class BatchWriter:
    """Collects ``SET key value EX ttl`` writes and queues them as one call.

    Examples
    --------
    >>> w = BatchWriter(aioredis.Redis())
    >>> w.set("a", b"1", ex=60); w.set("b", b"2", ex=5)
    >>> len(w), w.keys(), w.args()
    (2, ['a', 'b'], [b'1', 60, b'2', 5])
    """

    def __init__(self, redis: aioredis.Redis, script: AsyncScript | None = None) -> None:
        self.redis = redis
        self.script = script or write_script(redis)
        self._sets: list[tuple[str, bytes, int]] = []

    def set(self, name: str, value: bytes, ex: int) -> None:
        self._sets.append((name, value, int(ex)))

    def __len__(self) -> int:
        return len(self._sets)

    def keys(self) -> list[str]:
        return [k for k, _, _ in self._sets]

    def args(self) -> list[bytes | int]:
        out: list[bytes | int] = []
        for _, value, ttl in self._sets:
            out += (value, ttl)
        return out

    async def queue(self, pipe: Pipeline) -> bool:
        """Queue the single call on ``pipe`` (to share its round trip); False if empty."""
        if not self._sets:
            return False
        await self.script(keys=self.keys(), args=self.args(), client=pipe)  # queued only
        return True

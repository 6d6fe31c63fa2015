"""All of a batch's Redis writes as one atomic command.

A pipeline of per-key ``SET ... EX`` commands is one network round trip, but redis-py still
packs and parses one command per key, which profiled at a third of the worker's time with
three keys per event. :class:`BatchWriter` collects the writes (``set`` and ``zadd``, the
subset of the pipeline API the stores use) and sends them as a single ``EVALSHA`` of a
small Lua script, which Redis runs atomically: a feature state and the dedupe markers of
the events in it are written together or not at all.

All keys of one call must live on one node (true for a single Redis, or one Cluster slot).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

# ARGV = [n_sets, value_1, ttl_1, ..., value_n, ttl_n, then per zadd key: n, score, member...]
# KEYS = [set keys..., zadd keys...]
_WRITE = """
local n = tonumber(ARGV[1])
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[2 * i], 'EX', ARGV[2 * i + 1])
end
local a = 2 * n + 2
for k = n + 1, #KEYS do
  local m = tonumber(ARGV[a])
  for j = 1, m, 500 do
    local args = {}
    for i = j, math.min(j + 499, m) do
      args[#args + 1] = ARGV[a + 2 * i - 1]
      args[#args + 1] = ARGV[a + 2 * i]
    end
    redis.call('ZADD', KEYS[k], unpack(args))
  end
  a = a + 2 * m + 1
end
return n
"""


def write_script(redis: aioredis.Redis) -> AsyncScript:
    """The registered write script; register once per client and reuse it."""
    return redis.register_script(_WRITE)


class Writes(Protocol):
    """What the stores stage their writes into: a pipeline or a :class:`BatchWriter`."""

    def set(self, name: str, value: bytes, ex: int) -> object: ...

    def zadd(self, name: str, mapping: Mapping[str, float]) -> object: ...


class BatchWriter:
    """Collects ``SET key value EX ttl`` and ``ZADD`` writes and runs them in one call.

    Examples
    --------
    >>> w = BatchWriter(aioredis.Redis())
    >>> w.set("a", b"1", ex=60); w.set("b", b"2", ex=5); w.zadd("z", {"m": 1.5})
    >>> len(w), w.keys(), w.args()
    (3, ['a', 'b', 'z'], [2, b'1', 60, b'2', 5, 1, 1.5, 'm'])
    """

    def __init__(self, redis: aioredis.Redis, script: AsyncScript | None = None) -> None:
        self.redis = redis
        self.script = script or write_script(redis)
        self._sets: list[tuple[str, bytes, int]] = []
        self._zadds: dict[str, dict[str, float]] = {}

    def set(self, name: str, value: bytes, ex: int) -> None:
        self._sets.append((name, value, int(ex)))

    def zadd(self, name: str, mapping: Mapping[str, float]) -> None:
        self._zadds.setdefault(name, {}).update(mapping)

    def __len__(self) -> int:
        return len(self._sets) + len(self._zadds)

    def keys(self) -> list[str]:
        return [k for k, _, _ in self._sets] + list(self._zadds)

    def args(self) -> list[bytes | str | int | float]:
        out: list[bytes | str | int | float] = [len(self._sets)]
        for _, value, ttl in self._sets:
            out += (value, ttl)
        for members in self._zadds.values():
            out.append(len(members))
            for member, score in members.items():
                out += (score, member)
        return out

    async def queue(self, pipe: Pipeline) -> bool:
        """Queue the single call on ``pipe`` (to share its round trip); False if empty."""
        if not len(self):
            return False
        await self.script(keys=self.keys(), args=self.args(), client=pipe)  # queued only
        return True

    async def execute(self) -> None:
        """Run every collected write atomically; nothing to do for an empty batch."""
        if not len(self):
            return
        await self.script(keys=self.keys(), args=self.args())

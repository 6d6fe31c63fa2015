"""Predictions waiting for their labels, and labels waiting for their predictions, in Redis.

``{prefix}:pred:{event_id}`` holds the features as scored, ``{prefix}:label:{event_id}`` a
label that arrived before its event was scored (a label is not lost because it overtook its
event); both expire after the label horizon. Two sorted sets let one sweep count, exactly
once whichever worker sweeps, what never joined: ``{prefix}:pending`` (score = time scored)
the predictions that expired unlabelled, ``{prefix}:parked`` (score = time parked) the
labels whose prediction never came. A parked label is not unmatched yet: it usually joins a
moment later, when its event is scored.

Each side is one Lua script, run atomically by Redis: the scorer stores a prediction *or*
claims the label already parked for it (and takes it off ``parked``); the label side takes
the prediction *or* parks the label. Whatever the interleaving of the two agents, a label
meets its prediction once. The sweep forgets a parked label with a script too: whichever of
the claim and the sweep takes the label off ``parked`` first wins, so a label is either
joined or counted unmatched, never both. Times come from the workers (``now_ms``), never
from the Redis clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis

from stream.labels.join import PendingPrediction
from stream.messages import Label
from stream.timestamps import now_ms as wall_clock_ms

# KEYS = [pending, parked, (pred_key, label_key) * n]; ARGV = [ttl, claim_ttl, (value, score,
# member, claimant) * n]. Every value is its own argument, stored as sent: one JSON array of
# them cost the server a cjson decode of every prediction (a third of Redis's CPU per event),
# and hiredis packs the arguments in C on the client (stream.service.redis_client). Returns,
# per prediction, the parked label it claimed or false.
#
# A claimed label is not deleted but replaced by a claim mark, NUL claimant LF label, for
# claim_ttl: the claimant (the event's partition:offset) may claim it again. A batch that
# fails after its claim (a reply lost with the connection, a crash before its outputs were
# acknowledged) is processed again from the same records, and its label joins again instead
# of being gone. Another copy of the event (another record) finds the mark and waits for a
# label like any event. An empty claimant deletes the label at once.
_STORE_OR_CLAIM = """
local out = {}
for i = 1, (#KEYS - 2) / 2 do
  local label_key, member, claimant = KEYS[2 * i + 2], ARGV[4 * i + 1], ARGV[4 * i + 2]
  local label = redis.call('GET', label_key)
  local found = false
  if label and string.byte(label, 1) == 0 then
    local mark = '\\0' .. claimant .. '\\n'
    if claimant ~= '' and string.sub(label, 1, #mark) == mark then
      found = string.sub(label, #mark + 1)
    end
  elseif label then
    redis.call('ZREM', KEYS[2], member)
    if claimant ~= '' then
      redis.call('SET', label_key, '\\0' .. claimant .. '\\n' .. label, 'EX', ARGV[2])
    else
      redis.call('DEL', label_key)
    end
    found = label
  end
  if not found then
    redis.call('SET', KEYS[2 * i + 1], ARGV[4 * i - 1], 'EX', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[4 * i], member)
  end
  out[i] = found
end
return out
"""

# KEYS = [pending, parked, (pred_key, label_key) * n]; ARGV = [ttl, now_ms, (label, member)
# * n] (one argument per value, as above). Returns, per label, the stored prediction it took
# or false (then the label is parked).
_TAKE_OR_PARK = """
local out = {}
for i = 1, (#KEYS - 2) / 2 do
  local pred = redis.call('GETDEL', KEYS[2 * i + 1])
  if pred then
    redis.call('ZREM', KEYS[1], ARGV[2 * i + 2])
    out[i] = pred
  else
    redis.call('SET', KEYS[2 * i + 2], ARGV[2 * i + 1], 'EX', ARGV[1])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2 * i + 2])
    out[i] = false
  end
end
return out
"""

# KEYS = [parked, label_key * n]; ARGV = [member * n]
# returns how many of the labels it forgot were still parked (a claim may have won)
_FORGET_PARKED = """
local forgotten = 0
for i = 1, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('DEL', KEYS[i + 1])
    forgotten = forgotten + 1
  end
end
return forgotten
"""

T = TypeVar("T")

#: Parked labels forgotten per script call, so that one call never blocks Redis for long.
SWEEP_CHUNK = 1_000


class StoreInFlight:
    """A store-or-claim sent to Redis whose reply is still to be read
    (:meth:`PredictionStore.send`)."""

    def __init__(
        self,
        store: PredictionStore,
        preds: Sequence[PendingPrediction],
        command: tuple[Any, ...],
        conn: Any,
    ) -> None:
        self.store = store
        self.preds = preds
        self.command = command
        self._conn: Any = conn  # the connection it was sent on, until its reply is read

    async def result(self) -> list[tuple[PendingPrediction, Label]]:
        """The predictions whose label was already waiting, with that label.

        Reads the reply from the connection the command went on. If that fails (the
        connection broke, an error reply, a cancellation) redis-py drops the connection
        (``read_response`` disconnects on any exception) and the error is raised;
        a later call runs the script again, which is safe: a store is repeatable, and a
        label claimed before is claimed again by the same claimant (``_STORE_OR_CLAIM``).
        """
        conn, self._conn = self._conn, None
        if conn is None:
            reply = await self.store.redis.execute_command(*self.command)
            return self.store.claimed(reply, self.preds)
        pool = self.store.redis.connection_pool
        try:
            reply = await conn.read_response()
        finally:
            await pool.release(conn)
        return self.store.claimed(reply, self.preds)

    async def abandon(self) -> None:
        """Drop the reply unread (the batch goes no further; Redis still runs the store,
        which is repeatable)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.disconnect(nowait=True)
            finally:
                await self.store.redis.connection_pool.release(conn)


class PredictionStore:
    """The Redis side of the label join (see the module docstring).

    ``claim_ttl_s``: how long a claimed label stays claimable again by the record that
    claimed it (the scorer passes ``windows.dedupe_ttl``, the redelivery delay the feature
    windows' dedupe assumes too).
    """

    def __init__(
        self, redis: aioredis.Redis, prefix: str, horizon_s: float, claim_ttl_s: float = 0.0
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.horizon_s = horizon_s
        self.claim_ttl = max(1, math.ceil(claim_ttl_s))
        self._take = redis.register_script(_TAKE_OR_PARK)
        self._forget = redis.register_script(_FORGET_PARKED)

    def key(self, event_id: str) -> str:
        return f"{self.prefix}:pred:{event_id}"

    def label_key(self, event_id: str) -> str:
        return f"{self.prefix}:label:{event_id}"

    @property
    def pending_key(self) -> str:
        return f"{self.prefix}:pending"

    @property
    def parked_key(self) -> str:
        return f"{self.prefix}:parked"

    @property
    def ttl(self) -> int:
        return max(1, math.ceil(self.horizon_s))

    async def store_or_claim(
        self,
        preds: Sequence[PendingPrediction],
        meanwhile: Callable[[], T],
        claimants: Sequence[str] | None = None,
    ) -> tuple[list[tuple[PendingPrediction, Label]], T]:
        """Store ``preds`` for the label join, or claim the labels already parked for them
        (one round trip); ``meanwhile()`` runs while the server works, and its result is
        returned with the predictions whose label was waiting, and that label.

        ``claimants``: per prediction, the id of the record it was scored from
        (``"{partition}:{offset}"``; empty: none). The same claimant gets a label it claimed
        before again, for ``claim_ttl`` seconds: a batch processed again after a failure
        past its claim joins its labels again (see ``_STORE_OR_CLAIM``).

        Sent as ``EVAL`` with the script's text, not ``EVALSHA``: it needs no ``SCRIPT
        EXISTS`` or ``NOSCRIPT`` round trip and survives a server that lost its scripts. The
        server caches the compiled script by its hash either way.
        """
        if not preds:
            return [], meanwhile()
        sent = await self.send(preds, claimants)
        try:
            done = meanwhile()
        finally:
            claimed = await sent.result()
        return claimed, done

    async def send(
        self, preds: Sequence[PendingPrediction], claimants: Sequence[str] | None = None
    ) -> StoreInFlight:
        """Send the store-or-claim of ``preds`` (see :meth:`store_or_claim`) and return at
        once: its reply is read by :meth:`StoreInFlight.result`, later.

        The scorer publishes a batch's predictions and goes on with the next batch while
        Redis stores this one's; the batch is committed only once the result is read.
        """
        keys, args = self.store_args(preds, claimants)
        command = ("EVAL", _STORE_OR_CLAIM, len(keys), *keys, *args)
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_command(*command)
        except BaseException:
            await pool.release(conn)
            raise
        return StoreInFlight(self, preds, command, conn)

    def store_args(
        self, preds: Sequence[PendingPrediction], claimants: Sequence[str] | None = None
    ) -> tuple[list[str], list[bytes | int | str]]:
        """KEYS and ARGV of the store-or-claim script for ``preds``.

        >>> store = PredictionStore(aioredis.Redis(), "dw", horizon_s=3600, claim_ttl_s=600)
        >>> p = PendingPrediction("e1", "c1", 1000, {"a": 1.5}, 3, 0, 0.25, 1001)
        >>> keys, args = store.store_args([p], ["2:41"])
        >>> keys
        ['dw:pending', 'dw:parked', 'dw:pred:e1', 'dw:label:e1']
        >>> args[:2], args[2] == p.encode(), args[3:]  # TTLs, then value, score, member, claimant
        ([3600, 600], True, [1001, 'e1', '2:41'])
        """
        keys = [self.pending_key, self.parked_key]
        args: list[bytes | int | str] = [self.ttl, self.claim_ttl]
        for p, claimant in zip(preds, claimants or [""] * len(preds), strict=True):
            keys += (self.key(p.event_id), self.label_key(p.event_id))
            args += (p.encode(), p.processed_at_ms, p.event_id, claimant)
        return keys, args

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

    async def take(
        self, labels: Sequence[Label], now_ms: int | None = None
    ) -> dict[str, PendingPrediction]:
        """Take the stored predictions of ``labels``; park the labels that have none yet.

        A parked label is marked with ``now_ms`` (None: the wall clock now) in
        ``{prefix}:parked``; ``sweep_expired`` counts it unmatched if it is still parked
        after the horizon.
        """
        if not labels:
            return {}
        keys = [self.pending_key, self.parked_key]
        parked_at = wall_clock_ms() if now_ms is None else now_ms
        args: list[bytes | int | str] = [self.ttl, parked_at]
        for label in labels:
            keys += (self.key(label.event_id), self.label_key(label.event_id))
            args += (label.model_dump_json(), label.event_id)
        reply = await self._take(keys=keys, args=args)
        return {
            label.event_id: PendingPrediction.decode(raw)
            for label, raw in zip(labels, reply, strict=True)
            if raw
        }

    async def sweep_expired(self, now_ms: int) -> tuple[int, int]:
        """Forget what waited longer than the horizon.

        Returns
        -------
        tuple of int
            ``(expired_predictions, unmatched_labels)``: predictions whose label never
            came, and parked labels whose prediction never came. Each is counted by
            exactly one sweep, whichever worker runs it.
        """
        cutoff = now_ms - int(self.horizon_s * 1000)
        expired: int = await self.redis.zremrangebyscore(self.pending_key, "-inf", cutoff)
        return expired, await self._sweep_parked(cutoff)

    async def _sweep_parked(self, cutoff: int) -> int:
        unmatched = 0
        while True:
            members = await self.redis.zrangebyscore(
                self.parked_key, "-inf", cutoff, start=0, num=SWEEP_CHUNK
            )
            if not members:
                return unmatched
            event_ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
            keys = [self.parked_key, *(self.label_key(e) for e in event_ids)]
            unmatched += int(await self._forget(keys=keys, args=event_ids))
            if len(members) < SWEEP_CHUNK:
                return unmatched

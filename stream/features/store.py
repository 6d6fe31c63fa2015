"""Redis I/O for the per-entity feature windows of :mod:`stream.features.windows`.

Keys (``prefix`` is ``settings.redis.prefix``):

``{prefix}:fw:{entity_id}``
    The entity's window state (orjson), with a TTL of the longest window + grace +
    :data:`STATE_TTL_MARGIN_S`, so an idle entity expires (and its next event starts from no
    state, ``seconds_since_last = -1.0``).
``{prefix}:seen:{event_id}``
    Set once the event was applied (:func:`marker`: it remembers the event's
    ``seconds_since_last``), with a TTL of ``windows.dedupe_ttl``: a redelivery within that
    time is a duplicate. It should exceed the longest redelivery delay.

:meth:`FeatureStore.apply` costs two round trips per batch whatever its size: one ``MGET``
of the states and markers (:meth:`FeatureStore.load`), and one atomic Lua call
(:meth:`FeatureStore.write`) that writes each changed state together with the dedupe
markers of the events in it, *only if the stored state is still the generation that was
read*. Two workers may briefly process the same entity (the old owner finishing a batch
after a rebalance, or a worker paused past its session timeout); a blind write would then
overwrite the other's update while its events stay marked as seen, and the windows would be
wrong for good. A conflicting entity is instead re-read and its events re-applied on the
state that won (one more round trip each time; counted as conflicts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from stream.exceptions import StateConflictError
from stream.features.state import State, encode_state
from stream.features.windows import BatchUpdate, EventResult, FeatureInput, update_stored
from stream.service.config import Settings
from stream.service.redis_client import overlapped

# KEYS = per entity its state key, then the marker keys of its events. ARGV = the state TTL,
# the marker TTL, then per entity its expected generation, its number of markers, its state
# and its markers (see FeatureStore.write_args). Every value is its own argument: the server
# stores the bytes it was sent, where one JSON array of them cost it a cjson decode of every
# state (about half of Redis's CPU per event), and hiredis packs the arguments in C on the
# client (stream.service.redis_client). The generation is read from the stored state's first
# 64 bytes (GETRANGE: a missing key gives "", generation 0; a whole GET copied every state
# into Lua, a third of the script's time) with the pattern of
# stream.features.state.stored_generation. Returns the conflicting entities' positions
# (1-based); their state and markers are not written.
_WRITE_IF_UNCHANGED = """
local state_ttl, marker_ttl = ARGV[1], ARGV[2]
local k, a, e = 1, 3, 0
local conflicts = {}
while a <= #ARGV do
  e = e + 1
  local n = tonumber(ARGV[a + 1])
  local head = redis.call('GETRANGE', KEYS[k], 0, 63)
  local g = tonumber(string.match(head, '^{"v":%d+,"g":(%d+)') or '0')
  if g == tonumber(ARGV[a]) then
    redis.call('SET', KEYS[k], ARGV[a + 2], 'EX', state_ttl)
    for j = 1, n do
      redis.call('SET', KEYS[k + j], ARGV[a + 2 + j], 'EX', marker_ttl)
    end
  else
    conflicts[#conflicts + 1] = e
  end
  k = k + 1 + n
  a = a + 3 + n
end
return conflicts
"""

MAX_CONFLICT_ROUNDS = 20
"""Re-reads of conflicting entities in one batch before the batch is retried later."""

STATE_TTL_MARGIN_S = 300.0
"""Seconds an entity state outlives its longest window plus the grace period."""


@dataclass(frozen=True)
class Loaded:
    """What Redis holds for a batch: the entities' encoded states and the already-applied
    event ids (the states are decoded entity by entity as they are updated, see
    :func:`~stream.features.windows.update_stored`)."""

    #: entity -> its stored state (``None``: no state)
    stored: dict[str, bytes | None]
    #: applied event id -> the ``seconds_since_last`` it got then (``None``: not recorded)
    seen: Mapping[str, float | None]


@dataclass(frozen=True)
class Applied:
    """A batch applied and written: the update, and how it got there."""

    update: BatchUpdate
    #: entities re-read because another writer changed them between read and write
    conflicts: int = 0
    #: entities whose stored state was unusable and started afresh
    resets: tuple[str, ...] = field(default=())

    @property
    def results(self) -> tuple[EventResult, ...]:
        return self.update.results


def marker(since: float) -> bytes:
    """The dedupe marker of an applied event: it remembers the event's ``seconds_since_last``.

    >>> marker(2.5), marker_since(marker(2.5)), marker_since(b"1")  # b"1": an older marker
    (b'{"since":2.5}', 2.5, None)
    """
    return orjson.dumps({"since": since})


def marker_since(raw: bytes | str) -> float | None:
    """The ``seconds_since_last`` a dedupe marker remembers, ``None`` if it has none."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    since = value.get("since") if isinstance(value, dict) else None
    return float(since) if isinstance(since, int | float) else None


class FeatureStore:
    """Loads the window states of a batch from Redis and writes them back, conditionally.

    Examples
    --------
    >>> from stream.service.config import FeatureSpec
    >>> amount = FeatureSpec(name="amount", windows=("1m", "24h"))
    >>> settings = Settings(redis={"prefix": "dw"}, features=[amount], windows={"grace": "5m"})
    >>> store = FeatureStore(aioredis.Redis(), settings)
    >>> store.state_key("card-42"), store.seen_key("e-1"), store.state_ttl_s  # 24h + 5m + 5m
    ('dw:fw:card-42', 'dw:seen:e-1', 87000)
    """

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._prefix = settings.redis.prefix
        self._specs = settings.features
        longest = max((s for f in settings.features for s in f.window_seconds), default=0.0)
        self._state_ttl_s = math.ceil(longest + settings.windows.grace_s + STATE_TTL_MARGIN_S)
        self._dedupe_ttl_s = math.ceil(settings.windows.dedupe_ttl_s)
        self._write = redis.register_script(_WRITE_IF_UNCHANGED)

    @property
    def state_ttl_s(self) -> int:
        """TTL in seconds of an entity state."""
        return self._state_ttl_s

    def state_key(self, entity_id: str) -> str:
        """Redis key of an entity's window state."""
        return f"{self._prefix}:fw:{entity_id}"

    def seen_key(self, event_id: str) -> str:
        """Redis key of an event's dedupe marker."""
        return f"{self._prefix}:seen:{event_id}"

    async def load(self, events: Sequence[FeatureInput]) -> Loaded:
        """Read the states of the batch's entities and its dedupe markers in one ``MGET``."""
        if not events:
            return Loaded({}, {})
        entities = list(dict.fromkeys(e.entity_id for e in events))
        event_ids = list(dict.fromkeys(e.event_id for e in events))
        keys = [self.state_key(e) for e in entities] + [self.seen_key(e) for e in event_ids]
        raw = cast(list[bytes | None], await self.redis.mget(keys))
        stored = dict(zip(entities, raw, strict=False))
        marks = raw[len(entities) :]
        seen = {e: marker_since(m) for e, m in zip(event_ids, marks, strict=True) if m is not None}
        return Loaded(stored, seen)

    def update(self, loaded: Loaded, events: Sequence[FeatureInput]) -> BatchUpdate:
        """Apply the batch to the loaded states with the configured features and windows.

        The pure step between :meth:`load` and :meth:`write`; see :func:`update_stored`.
        """
        return update_stored(loaded.stored, loaded.seen, events, self._specs, self.settings.windows)

    def write_args(self, update: BatchUpdate) -> tuple[list[str], list[bytes | int]]:
        """KEYS and ARGV of the conditional write of ``update`` (see the module docstring).

        Only changed states and newly applied event ids are written: a replayed batch
        writes nothing. ARGV is the state TTL, the marker TTL, then per entity its expected
        generation, its number of markers, its encoded state and its markers (the script
        stores them byte for byte).

        Examples
        --------
        >>> from stream.service.config import FeatureSpec
        >>> from stream.features.windows import FeatureInput
        >>> settings = Settings(features=[FeatureSpec(name="amount", windows=("1h",))])
        >>> store = FeatureStore(aioredis.Redis(), settings)
        >>> events = [FeatureInput("e-1", "card-42", 1_763_800_000_000, {"amount": 12.5})]
        >>> keys, args = store.write_args(store.update(Loaded({}, {}), events))
        >>> keys, args[:2]  # the state TTL, the marker TTL
        (['dw:fw:card-42', 'dw:seen:e-1'], [4200, 86400])
        >>> generation, n_markers, state, *marks = args[2:]
        >>> generation, n_markers, state[:16], marks
        (0, 1, b'{"v":1,"g":1,"t"', [b'{"since":-1.0}'])
        """
        markers: dict[str, list[tuple[str, float]]] = {}
        for result in update.results:
            since = update.applied_since.get(result.event_id)
            if since is not None and result.applied:
                markers.setdefault(result.entity_id, []).append((result.event_id, since))
        keys: list[str] = []
        args: list[bytes | int] = [self._state_ttl_s, self._dedupe_ttl_s]
        for entity, state in update.states.items():
            marks = markers.get(entity, [])
            keys.append(self.state_key(entity))
            keys.extend(self.seen_key(event_id) for event_id, _ in marks)
            encoded = update.encoded.get(entity)
            if encoded is None:
                encoded = encode_state(state)
            args += (state["g"] - 1, len(marks), encoded)
            args.extend(marker(since) for _, since in marks)
        return keys, args

    async def write(
        self,
        update: BatchUpdate,
        meanwhile: Callable[[Sequence[EventResult]], object] | None = None,
    ) -> list[str]:
        """Write ``update`` where nobody changed the state since it was read (one round trip).

        Returns the entities that conflicted: nothing of theirs was written. ``meanwhile``
        (see :meth:`enrich`) runs on the update's results while the server writes.
        """
        if not update.states:
            if meanwhile is not None:
                meanwhile(update.results)
            return []
        keys, args = self.write_args(update)
        if meanwhile is None:
            reply = await self._write(keys=keys, args=args)
        else:
            results = update.results
            command = ("EVALSHA", self._write.sha, len(keys), *keys, *args)
            try:
                reply, _ = await overlapped(self.redis, command, lambda: meanwhile(results))
            except NoScriptError:  # the server lost its scripts (restarted, flushed)
                reply = await self._write(keys=keys, args=args)  # sends the script again
        entities = list(update.states)
        return [entities[int(i) - 1] for i in reply]

    async def enrich(
        self,
        events: Sequence[FeatureInput],
        meanwhile: Callable[[Sequence[EventResult]], object] | None = None,
    ) -> Applied:
        """Load, update and write a batch; re-apply the entities another writer changed.

        ``meanwhile`` is called with the batch's results as first computed, while their
        write is in flight: the caller's work on them overlaps Redis's. The results returned
        differ from those only if an entity conflicted (``Applied.conflicts`` > 0). If it
        raises, the write is waited for and the exception raised.

        Raises
        ------
        StateConflictError
            The same entities still conflicted after :data:`MAX_CONFLICT_ROUNDS` re-reads;
            the caller retries the batch later (nothing of theirs was written).
        """
        loaded = await self.load(events)
        update = self.update(loaded, events)
        results = list(update.results)
        resets = list(update.resets)
        states: dict[str, State] = {}
        applied: dict[str, float] = {}
        pending, conflicts = events, 0
        for _ in range(MAX_CONFLICT_ROUNDS):
            conflicted = set(await self.write(update, meanwhile))
            meanwhile = None
            _keep_written(update, conflicted, states, applied)
            if not conflicted:
                merged = BatchUpdate(tuple(results), states, applied, tuple(resets))
                return Applied(merged, conflicts, tuple(dict.fromkeys(resets)))
            conflicts += len(conflicted)
            positions = [i for i, e in enumerate(events) if e.entity_id in conflicted]
            pending = [events[i] for i in positions]
            loaded = await self.load(pending)
            update = self.update(loaded, pending)
            resets += update.resets
            for i, result in zip(positions, update.results, strict=True):
                results[i] = result
        raise StateConflictError(
            f"{len(pending)} events of {len(set(e.entity_id for e in pending))} entities kept "
            f"conflicting with another writer after {MAX_CONFLICT_ROUNDS} re-reads"
        )


def _keep_written(
    update: BatchUpdate, conflicted: set[str], states: dict[str, State], applied: dict[str, float]
) -> None:
    """Add what ``update`` wrote (all but the conflicting entities) to ``states``/``applied``."""
    states.update((e, st) for e, st in update.states.items() if e not in conflicted)
    for result in update.results:
        since = update.applied_since.get(result.event_id)
        if since is not None and result.applied and result.entity_id not in conflicted:
            applied[result.event_id] = since

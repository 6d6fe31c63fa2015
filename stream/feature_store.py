"""Redis I/O for the per-entity feature windows of :mod:`stream.features`.

Keys (``prefix`` is ``settings.redis.prefix``):

``{prefix}:fw:{entity_id}``
    The entity's window state (orjson), with a TTL of the longest window + grace +
    :data:`STATE_TTL_MARGIN_S`, so an idle entity expires (and its next event starts from no
    state, ``seconds_since_last = -1.0``).
``{prefix}:seen:{event_id}``
    Set once the event was applied (:func:`marker`: it remembers the event's
    ``seconds_since_last``), with a TTL of ``windows.dedupe_ttl``: a redelivery within that
    time is a duplicate. It should exceed the longest redelivery delay.

A batch costs two round trips whatever its size: one ``MGET`` in :meth:`FeatureStore.load`,
and the writes that :meth:`FeatureStore.stage` adds to the caller's writes. Those must be
atomic, so that a state and the dedupe markers of the events in it are written together (a
state without its markers would count a redelivered event twice): the worker stages them
into one :class:`stream.redis_batch.BatchWriter` call; :meth:`FeatureStore.enrich` uses a
``MULTI``/``EXEC`` pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson
import redis.asyncio as aioredis

from stream.config import Settings
from stream.features import (
    BatchUpdate,
    FeatureInput,
    State,
    decode_state,
    encode_state,
    update_batch,
)
from stream.redis_batch import Writes

STATE_TTL_MARGIN_S = 300.0
"""Seconds an entity state outlives its longest window plus the grace period."""


@dataclass(frozen=True)
class Loaded:
    """What Redis holds for a batch: the entities' states and the already-applied event ids."""

    states: dict[str, State]
    #: applied event id -> the ``seconds_since_last`` it got then (``None``: not recorded)
    seen: Mapping[str, float | None]


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
    """Loads and stages the window states of a batch in Redis.

    Examples
    --------
    >>> from stream.config import FeatureSpec
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
        raw = await self.redis.mget(keys)
        states = {e: decode_state(r) for e, r in zip(entities, raw, strict=False)}
        marks = raw[len(entities) :]
        seen = {e: marker_since(m) for e, m in zip(event_ids, marks, strict=True) if m is not None}
        return Loaded(states, seen)

    def update(self, loaded: Loaded, events: Sequence[FeatureInput]) -> BatchUpdate:
        """Apply the batch to the loaded states with the configured features and windows.

        The pure step between :meth:`load` and :meth:`stage`; see :func:`update_batch`.
        """
        return update_batch(loaded.states, loaded.seen, events, self._specs, self.settings.windows)

    def stage(self, pipe: Writes, update: BatchUpdate) -> None:
        """Add the batch's writes to ``pipe``, which the caller executes with its own writes.

        Only changed states and newly applied event ids are written: a replayed batch
        writes nothing.

        Examples
        --------
        >>> from stream.config import FeatureSpec
        >>> from stream.features import FeatureInput
        >>> settings = Settings(features=[FeatureSpec(name="amount", windows=("1h",))])
        >>> store = FeatureStore(aioredis.Redis(), settings)
        >>> events = [FeatureInput("e-1", "card-42", 1_763_800_000_000, {"amount": 12.5})]
        >>> update = store.update(Loaded({}, {}), events)
        >>> pipe = store.redis.pipeline()  # no I/O until the caller executes it
        >>> store.stage(pipe, update)
        >>> [(args[:2], args[3:]) for args, _ in pipe.command_stack]  # args[2]: the value
        [(('SET', 'dw:fw:card-42'), ('EX', 4200)), (('SET', 'dw:seen:e-1'), ('EX', 86400))]
        """
        for entity, state in update.states.items():
            pipe.set(self.state_key(entity), encode_state(state), ex=self._state_ttl_s)
        for event_id, since in update.applied_since.items():
            pipe.set(self.seen_key(event_id), marker(since), ex=self._dedupe_ttl_s)

    async def enrich(self, events: Sequence[FeatureInput]) -> BatchUpdate:
        """Load, update and write back a batch: for callers with nothing else to write."""
        update = self.update(await self.load(events), events)
        if update.states or update.applied_ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                self.stage(pipe, update)
                await pipe.execute()
        return update

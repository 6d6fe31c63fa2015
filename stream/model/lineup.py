"""The lineup: which models run and which one is served, shared by every worker in Redis.

Keys, for ``{p}`` = the Redis prefix::

    {p}:lineup          hash: model name -> JSON entry (role, origin, since_ts, started_at,
                        the model's settings)
    {p}:lineup:seq      INCR counter: the number of the last retrained challenger
    {p}:lifecycle       stream: one entry per lifecycle event (field ``alert``: the
                        ``model_lifecycle`` alert, JSON), ``driftwatch model history``
    {p}:lineup:triggers stream: data_drift alerts of ``lifecycle.retrain_subjects``, handed
                        by the monitors to the learner (field ``alert``)
    {p}:lineup:triggers:seen  the last of them the learner has acted on

The configuration seeds the lineup (:meth:`Lineup.seed`): a configured model not in it yet
joins with its configured role, except that a second champion joins as a challenger; a
model already in it keeps its role (a promotion outlives restarts) and takes the configured
settings. Promotion, start and retirement change the hash and append their event to
``{p}:lifecycle`` in one transaction (``WATCH``/``MULTI``), whichever worker or operator
makes them, and a promotion announces itself on both models' changes streams, so that every
scorer switches at once rather than at its next poll.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, TypeVar, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from stream.model.snapshots import CHANGES_KEPT
from stream.monitoring.alerts import EMPTY_SPAN, make_alert
from stream.service.config import ModelRole, ModelSettings, Settings
from stream.timestamps import now_ms

log = logging.getLogger(__name__)

Origin = Literal["config", "retrain"]
Action = Literal["started", "promoted", "retired"]
HISTORY_KEPT = 10_000
"""Lifecycle events kept in ``{p}:lifecycle`` (older ones are trimmed)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One model of the lineup.

    Attributes
    ----------
    spec
        Its settings (name, task, pipeline, learning rate, publication rule).
    role
        ``champion`` (served), ``challenger`` or ``shadow``; ``spec.role`` is the configured one.
    origin
        ``config``, or ``retrain`` for a challenger started on an alert.
    since_ts
        Event time from which it learns (a retrained challenger: the alert's); 0: all.
    started_at
        Wall clock (epoch ms) at which it joined the lineup.
    held
        It was in the lineup when an operator promoted another model: the automatic policy
        does not promote it (an operator's promotion does).
    """

    spec: ModelSettings
    role: ModelRole
    origin: Origin = "config"
    since_ts: int = 0
    started_at: int = 0
    held: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def encode(self) -> bytes:
        data = asdict(self)
        data["spec"] = self.spec.model_dump(mode="json")
        return orjson.dumps(data)

    @classmethod
    def decode(cls, raw: bytes | str) -> Entry:
        data = orjson.loads(raw)
        return cls(**{**data, "spec": ModelSettings(**data["spec"])})


def configured(settings: Settings) -> list[Entry]:
    """The lineup the configuration asks for: ``settings.model`` as the champion, then the
    other models of ``settings.models``."""
    champion = settings.model.model_copy(update={"role": "champion"})
    others = [m for m in settings.models if m.role != "champion" and m.name != settings.model.name]
    return [Entry(champion, "champion"), *(Entry(m, m.role) for m in others)]


def champion_of(entries: Mapping[str, Entry]) -> Entry | None:
    return next((e for e in entries.values() if e.role == "champion"), None)


class Lineup:
    """The lineup in Redis (see the module docstring).

    >>> lineup = Lineup(redis, "dw")  # doctest: +SKIP
    >>> await lineup.seed(configured(settings))  # doctest: +SKIP
    >>> champion_of(await lineup.entries()).name  # doctest: +SKIP
    'fraud'
    """

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.key = f"{prefix}:lineup"
        self.seq_key = f"{prefix}:lineup:seq"
        self.history_key = f"{prefix}:lifecycle"
        self.triggers_key = f"{prefix}:lineup:triggers"
        self.seen_key = f"{prefix}:lineup:triggers:seen"

    def changes_key(self, model: str) -> str:
        """The model's changes stream (:class:`~stream.model.snapshots.SnapshotStore`)."""
        return f"{self.prefix}:model:{model}:changes"

    async def entries(self) -> dict[str, Entry]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.key))
        return {k.decode(): Entry.decode(v) for k, v in raw.items()}

    async def seed(self, wanted: Sequence[Entry]) -> dict[str, Entry]:
        """Add the configured models missing from the lineup; returns the lineup after."""

        async def change(entries: dict[str, Entry]) -> tuple[dict[str, Entry], list[Any]]:
            has_champion = champion_of(entries) is not None
            writes: dict[str, Entry] = {}
            for e in wanted:
                old = entries.get(e.name)
                if old is not None:
                    new = replace(old, spec=e.spec)
                elif e.role == "champion" and has_champion:
                    new = replace(e, role="challenger", started_at=now_ms())
                else:
                    new = replace(e, started_at=now_ms())
                has_champion = has_champion or new.role == "champion"
                if old != new:
                    writes[e.name] = new
            return {**entries, **writes}, [("hset", e.name, e) for e in writes.values()]

        return await self._transaction(change)

    async def start(self, entry: Entry, alert: dict[str, Any]) -> bool:
        """Add ``entry`` and record ``alert``; False if a model of that name is there."""

        async def change(entries: dict[str, Entry]) -> tuple[bool, list[Any]]:
            if entry.name in entries:
                return False, []
            return True, [("hset", entry.name, entry), ("history", alert)]

        return await self._transaction(change)

    async def next_number(self) -> int:
        """A new number for a retrained challenger's name."""
        return int(await self.redis.incr(self.seq_key))

    async def promote(
        self, name: str, alert: Callable[[Entry], dict[str, Any]], hold: bool = False
    ) -> Entry | None:
        """Make ``name`` the champion; the champion before becomes a challenger. With
        ``hold`` (an operator's decision) every other model of the lineup is ``held``: the
        policy promotes only challengers started afterwards.

        ``alert`` builds the lifecycle alert from the champion before. Returns that champion,
        or None if ``name`` already is the champion. Raises ``KeyError`` if ``name`` is not
        in the lineup.
        """

        async def change(entries: dict[str, Entry]) -> tuple[Entry | None, list[Any]]:
            if name not in entries:
                raise KeyError(name)
            new = entries[name]
            old = champion_of(entries)
            if old is not None and old.name == name:
                return None, []
            ops: list[Any] = [("hset", name, replace(new, role="champion", held=False))]
            for e in entries.values():  # the operator decided (hold): no model now undoes it
                role = "challenger" if e is old else e.role
                if e is not new and (role, e.held or hold) != (e.role, e.held):
                    ops.append(("hset", e.name, replace(e, role=role, held=e.held or hold)))
            if old is not None:
                ops.append(("notify", old.name))
            ops += [("notify", name), ("history", alert(old or new))]
            return old, ops

        return await self._transaction(change)

    async def retire(self, name: str, alert: dict[str, Any]) -> bool:
        """Take ``name`` out of the lineup (never the champion); False if it is not there."""

        async def change(entries: dict[str, Entry]) -> tuple[bool, list[Any]]:
            e = entries.get(name)
            if e is None or e.role == "champion":
                return False, []
            return True, [("hdel", name), ("history", alert)]

        return await self._transaction(change)

    async def hand_over(self, alerts: Sequence[dict[str, Any]]) -> None:
        """The monitors' side: pass data_drift alerts on to the learner's policy."""
        if not alerts:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for alert in alerts:
                pipe.xadd(self.triggers_key, {"alert": orjson.dumps(alert)}, maxlen=HISTORY_KEPT)
            await pipe.execute()

    async def handed_over(self) -> tuple[list[dict[str, Any]], bytes | None]:
        """The learner's side: the alerts handed over since the last :meth:`acted_on`, and
        the id to pass it."""
        seen = cast(bytes | None, await self.redis.get(self.seen_key))
        start = b"(" + seen if seen else b"-"
        raw = cast(list[Any], await self.redis.xrange(self.triggers_key, min=start, count=100))
        if not raw:
            return [], None
        return [orjson.loads(fields[b"alert"]) for _, fields in raw], raw[-1][0]

    async def acted_on(self, last: bytes) -> None:
        await self.redis.set(self.seen_key, last)

    async def history(self, count: int | None = None) -> list[dict[str, Any]]:
        """The lifecycle events, oldest first (the newest ``count`` if given)."""
        if count is None:
            raw = cast(list[Any], await self.redis.xrange(self.history_key))
        else:
            newest = cast(list[Any], await self.redis.xrevrange(self.history_key, count=count))
            raw = newest[::-1]
        return [orjson.loads(fields[b"alert"]) for _, fields in raw]

    async def _transaction(
        self, change: Callable[[dict[str, Entry]], Awaitable[tuple[T, list[Any]]]]
    ) -> T:
        """Read the lineup, decide, write: retried if another writer got in between."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.key)
                    raw = cast(dict[bytes, bytes], await pipe.hgetall(self.key))
                    entries = {k.decode(): Entry.decode(v) for k, v in raw.items()}
                    result, ops = await change(entries)
                    if not ops:
                        return result
                    pipe.multi()
                    for op, *args in ops:
                        if op == "hset":
                            pipe.hset(self.key, args[0], args[1].encode())
                        elif op == "hdel":
                            pipe.hdel(self.key, args[0])
                        elif op == "notify":
                            pipe.xadd(self.changes_key(args[0]), {"lineup": args[0]},
                                      maxlen=CHANGES_KEPT)  # fmt: skip
                        else:  # history
                            pipe.xadd(self.history_key, {"alert": orjson.dumps(args[0])},
                                      maxlen=HISTORY_KEPT)  # fmt: skip
                    await pipe.execute()
                    return result
                except WatchError:
                    continue


def lifecycle_alert(
    action: Action,
    model: str,
    *,
    version: int | None,
    message: str,
    evidence: dict[str, Any],
    statistic: float | None = None,
    p_value: float | None = None,
    threshold: float | None = None,
    ts: int | None = None,
) -> dict[str, Any]:
    """A ``model_lifecycle`` alert: a model started, promoted or retired, and the evidence.

    One notice per event (``status`` is always ``firing``; nothing resolves it). ``subject``
    is the model, ``detector`` the action; ``statistic`` the challenger's margin over the
    champion and ``p_value`` the comparison's, when a comparison decided it.

    >>> a = lifecycle_alert("promoted", "fraud.r1", version=4, message="m", evidence={}, ts=9)
    >>> a["alert_id"], a["kind"], a["status"]
    ('model_lifecycle:fraud.r1:promoted:9', 'model_lifecycle', 'firing')
    """
    return make_alert(
        "model_lifecycle",
        "firing",
        model,
        action,
        statistic=statistic,
        p_value=p_value,
        threshold=threshold,
        reference=EMPTY_SPAN,
        window=EMPTY_SPAN,
        model=model,
        model_version=version,
        ts=now_ms() if ts is None else ts,
        message=message,
        evidence=evidence,
    )

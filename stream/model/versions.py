"""The operator's commands on the stored model versions, as the lines the CLI prints.

``driftwatch model versions|promote|rollback`` (:mod:`stream.service.cli`) calls these on a
:class:`~stream.model.snapshots.SnapshotStore`; ``driftwatch model lineup|history`` and
``model promote --challenger`` on the :class:`~stream.model.lineup.Lineup`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from stream.exceptions import DriftwatchError
from stream.model.lineup import Entry, Lineup, lifecycle_alert
from stream.model.snapshot_format import SnapshotInfo
from stream.model.snapshots import SnapshotStore


async def list_versions(store: SnapshotStore) -> list[str]:
    """Printable rows, header first, one per stored version; ``*`` marks the current one.

    >>> print("\\n".join(await list_versions(store)))  # doctest: +SKIP
      VERSION  CREATED (UTC)        LEARNED  PIPELINE                    CHECK  META
    *       7  2025-11-22 08:13:20     3500  binary/logistic_regression  ok     {"offset":812}
    """
    infos = await store.versions()
    current, pinned = await store.current_version(), await store.pinned_version()
    rows = [
        f"  {'VERSION':>7}  {'CREATED (UTC)':<19}  {'LEARNED':>7}  {'PIPELINE':<26}  CHECK  META"
    ]
    rows += [_row(info, info.version == current) for info in infos]
    if pinned is not None:
        rows.append(f"(version {pinned} is pinned: `promote` without a version follows the latest)")
    return rows


def _row(info: SnapshotInfo, current: bool) -> str:
    created = datetime.fromtimestamp(info.created_at / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    meta = orjson.dumps(dict(info.meta), option=orjson.OPT_SORT_KEYS).decode()
    check = "ok" if info.valid else "BAD"
    pipeline = f"{info.task}/{info.pipeline}"
    mark = "*" if current else " "
    learned = f"{info.n_learned:>7}"
    return f"{mark} {info.version:>7}  {created}  {learned}  {pipeline:<26}  {check:<5}  {meta}"


async def promote(store: SnapshotStore, version: int | None = None) -> str:
    """Promote a version (pinned), or follow the latest again; a line saying what happened.

    >>> await promote(store, 5)  # doctest: +SKIP
    "model 'fraud': version 5 is current and pinned (was 7)"
    """
    before = await store.current_version()
    now = await store.promote(version)
    how = "current and pinned" if version is not None else "current; following new versions"
    return f"model {store.model_name!r}: version {now} is {how} (was {before})"


async def rollback(store: SnapshotStore) -> str:
    """Roll back to the previous version (pinned); a line saying what happened.

    >>> await rollback(store)  # doctest: +SKIP
    "model 'fraud': rolled back from version 7 to 6 (pinned)"
    """
    before = await store.current_version()
    now = await store.rollback()
    return f"model {store.model_name!r}: rolled back from version {before} to {now} (pinned)"


async def list_lineup(lineup: Lineup, redis: Redis) -> list[str]:
    """Printable rows, header first, one per model of the lineup, the champion first, with
    its comparison against the champion as the learner last exported it.

    >>> print("\\n".join(await list_lineup(lineup, redis)))  # doctest: +SKIP
      MODEL     ROLE        ORIGIN   VERSION  SINCE (UTC)          LABELS  CHAMPION  IT     P
    * fraud     champion    config        41  -                         -         -  -      -
      fraud.r1  challenger  retrain       12  2026-12-02 10:00:00    1200     0.612  0.704  3e-09
    """
    entries = await lineup.entries()
    raw = cast(dict[bytes, bytes], await redis.hgetall(f"{lineup.prefix}:lineup:compare"))
    verdicts = {k.decode(): orjson.loads(v) for k, v in raw.items()}
    rows = [f"  {'MODEL':<16}  {'ROLE':<10}  {'ORIGIN':<7}  {'VERSION':>7}  "
            f"{'SINCE (UTC)':<19}  {'LABELS':>6}  {'CHAMPION':>8}  {'IT':>6}  P"]  # fmt: skip
    for e in sorted(entries.values(), key=lambda e: (e.role != "champion", e.name)):
        store = SnapshotStore(redis, lineup.prefix, e.name, b"")
        version = await store.current_version()
        v = verdicts.get(e.name, {}) if e.role != "champion" else {}
        since = _utc(e.since_ts) if e.since_ts else "-"
        rows.append(
            f"{'*' if e.role == 'champion' else ' '} {e.name:<16}  {e.role:<10}  {e.origin:<7}  "
            f"{'-' if version is None else version:>7}  {since:<19}  "
            f"{v.get('labels', '-'):>6}  {_num(v.get('champion_metric')):>8}  "
            f"{_num(v.get('challenger_metric')):>6}  {_num(v.get('p_value'), '.2g')}"
        )
    return rows


async def list_history(lineup: Lineup, count: int | None) -> list[str]:
    """One line per lifecycle event, oldest first: time, action, model, message."""
    return [
        f"{_utc(a['ts'])}  {a['detector']:<8}  {a['subject']:<16}  {a['message']}"
        for a in await lineup.history(count)
    ]


async def promote_challenger(lineup: Lineup, redis: Redis, name: str) -> dict[str, Any]:
    """Make ``name`` the champion now (the operator's decision), recorded with the last
    exported comparison as evidence; the ``model_lifecycle`` alert. Raises
    :class:`~stream.exceptions.DriftwatchError` if ``name`` is not in the lineup or is
    already the champion."""
    raw = await redis.hget(f"{lineup.prefix}:lineup:compare", name)
    comparison = orjson.loads(raw) if raw else {}
    version = await SnapshotStore(redis, lineup.prefix, name, b"").current_version()

    def alert(old: Entry) -> dict[str, Any]:
        return lifecycle_alert(
            "promoted", name, version=version, p_value=comparison.get("p_value"),
            statistic=comparison.get("margin"),
            evidence={"previous_champion": old.name, "by": "operator", **comparison},
            message=f"model {name!r} promoted to champion over {old.name!r} by an operator; "
            f"{old.name!r} is a challenger now (promote it back to roll back); the policy "
            "promotes only challengers started from now on",
        )  # fmt: skip

    try:
        before = await lineup.promote(name, alert, hold=True)
    except KeyError:
        names = sorted(await lineup.entries())
        raise DriftwatchError(f"no model {name!r} in the lineup; it has {names}") from None
    if before is None:
        raise DriftwatchError(f"model {name!r} is the champion already")
    return (await lineup.history(1))[-1]


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)

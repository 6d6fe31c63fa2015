"""The operator's commands on the stored model versions, as the lines the CLI prints.

``driftwatch model versions|promote|rollback`` (:mod:`stream.service.cli`) calls these on a
:class:`~stream.model.snapshots.SnapshotStore`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

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

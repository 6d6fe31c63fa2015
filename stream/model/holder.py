"""The model a scorer serves: the current published version of a snapshot store.

The holder follows ``current``: :meth:`ModelHolder.wait_for_change` returns as soon as the
store announces a publication or a promotion (its changes stream), and the worker polls as
a fallback. A current version that does not verify or does not fit the configuration is
refused; the holder then serves the newest stored version that does and raises a
``model_health`` alert.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from stream.exceptions import ConfigError, DriftwatchError, SnapshotIntegrityError
from stream.model.freshness import Lag, served_lag
from stream.model.online import OnlineModel
from stream.model.snapshots import SnapshotStore
from stream.monitoring.alerts import model_health_alert
from stream.timestamps import now_ms

log = logging.getLogger(__name__)


class ModelHolder:
    """The model a scorer serves: the current published version, refreshed when told.

    Parameters
    ----------
    store
        Where the versions are.
    initial
        What to serve before anything is published: a fresh model from the configuration,
        identical on every worker. Loaded versions must have its task and pipeline.

    Examples
    --------
    >>> fresh = create_model(settings.model, settings.features)  # doctest: +SKIP
    >>> holder = ModelHolder(store, fresh)  # doctest: +SKIP
    >>> await holder.refresh()  # doctest: +SKIP
    True
    >>> holder.model.version  # doctest: +SKIP
    7
    """

    def __init__(self, store: SnapshotStore, initial: OnlineModel) -> None:
        self.store = store
        self.initial = initial
        #: the reference model of the prediction monitors, followed with every refresh
        self.reference = ReferenceHolder(store, initial)
        self._reset()

    def _reset(self) -> None:
        self._model = self.initial
        self._published_at: int | None = None  # epoch ms of the served version
        self._change_id: bytes | None = None  # the last entry of the changes stream seen
        self._refused: int | None = None
        self._refused_since: int | None = None  # wall clock of the open model_health episode
        self._alerts: list[dict[str, Any]] = []
        self._first_refresh = False

    @property
    def model(self) -> OnlineModel:
        """The model to score with now."""
        return self._model

    def take_alerts(self) -> list[dict[str, Any]]:
        """The ``model_health`` alerts raised since the last call (refusals, recoveries)."""
        alerts, self._alerts = self._alerts, []
        return alerts

    async def ready(self) -> None:
        """Refresh once before the first batch is scored: serve the published version from
        the start, not the untrained initial model until the first poll."""
        if not self._first_refresh:
            await self.refresh()
            self._first_refresh = True

    async def refresh(self) -> bool:
        """Load the current version if it is not the one held; True if the model changed.

        The reference model (:attr:`reference`) is followed as well.

        A current version that is refused (integrity or configuration mismatch) is not
        loaded again until ``current`` moves on; the holder serves the newest stored version
        that verifies instead (never the untrained initial model while a trained one is
        valid) and raises a ``model_health`` alert, resolved when a current version loads.

        >>> changed = await holder.refresh()  # doctest: +SKIP
        """
        changed = await self._refresh_served()
        await self.reference.refresh()
        return changed

    async def _refresh_served(self) -> bool:
        if self._change_id is None:  # before reading current: no later move is missed
            self._change_id = await self.store.last_change()
        version = await self.store.current_version()
        if version is None or version in (self._model.version, self._refused):
            return False
        try:
            model, info = await self.store.load_version(version)
            self._check_fits(model)
        except (SnapshotIntegrityError, ConfigError) as exc:
            return await self._refuse(version, exc)
        self._serve(model, info.created_at)
        self._recovered()
        return True

    async def wait_for_change(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the store to announce a publication or promotion.

        True if it did (call :meth:`refresh`); False after the timeout. A change announced
        while nobody was waiting (between two calls, or while Redis was unreachable) is
        returned at once: the changes stream keeps it.

        >>> if await holder.wait_for_change(1.0):  # doctest: +SKIP
        ...     await holder.refresh()
        """
        if self._change_id is None:
            await self.refresh()
            return False
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:  # one wait is at most MAX_BLOCK_S
            newest = await self.store.wait_for_change(self._change_id, left)
            if newest is not None:
                self._change_id = newest
                return True
        return False

    async def lag(self, now_ms: int) -> Lag:
        """How far the served version is behind the trainer's checkpoint (one Redis read).

        >>> (await holder.lag(now_ms())).examples  # doctest: +SKIP
        0
        """
        learned = await self.store.trainer_learned()
        return served_lag(learned, self._model.n_learned, self._published_at, now_ms)

    def _serve(self, model: OnlineModel, published_at: int) -> None:
        # the numpy snapshot that scores a linear pipeline's batches, taken once per version
        # here rather than by the first batch (stream.model.linear_snapshot)
        model.linear_snapshot()
        self._model = model
        self._published_at = published_at

    async def _refuse(self, version: int, exc: DriftwatchError) -> bool:
        self._refused = version
        fallback = await self._newest_fitting(exclude={version})
        changed = fallback is not None and fallback[0].version != self._model.version
        if changed and fallback is not None:
            self._serve(*fallback)
        serving = f"serving version {self._model.version} instead"
        log.error("model %s: refused current version %d: %s; %s",
                  self.initial.name, version, exc, serving)  # fmt: skip
        now = now_ms()
        self._refused_since = self._refused_since or now
        self._alerts.append(
            model_health_alert(
                "firing", self.initial.name, "signature", version=version, ts=now,
                message=f"model {self.initial.name!r}: current version {version} refused "
                f"({exc}); {serving}",
            )
        )  # fmt: skip
        return changed

    async def _newest_fitting(self, exclude: set[int]) -> tuple[OnlineModel, int] | None:
        while True:
            found = await self.store.load_newest_valid(exclude)
            if found is None:
                return None
            try:
                self._check_fits(found[0])
            except ConfigError:
                exclude.add(found[0].version)
                continue
            return found[0], found[1].created_at

    def _recovered(self) -> None:
        if self._refused_since is None:
            return
        self._alerts.append(
            model_health_alert(
                "resolved", self.initial.name, "signature", version=self._model.version,
                ts=now_ms(), episode_start_ts=self._refused_since,
                message=f"model {self.initial.name!r}: serving current version "
                f"{self._model.version} again",
            )
        )  # fmt: skip
        self._refused_since = None

    def _check_fits(self, model: OnlineModel) -> None:
        _check_fits(self.initial, model)


class ReferenceHolder:
    """The reference model a scorer scores the prediction subjects with (or None).

    The prediction monitors judge the *reference model's* outputs on the live events, not
    the served model's, once they have pinned one (:mod:`stream.monitoring.settling`): the
    served model keeps learning and its outputs wander whatever the inputs do.  The holder
    follows :meth:`SnapshotStore.reference_version` on every model refresh; a reference
    that does not verify or does not fit the configuration is refused once per version
    (logged), and the scorer sends the served scores meanwhile, which the monitors skip.

    >>> reference = ReferenceHolder(store, fresh)  # doctest: +SKIP
    >>> await reference.refresh()  # doctest: +SKIP
    True
    >>> reference.model.version  # doctest: +SKIP
    12
    """

    def __init__(self, store: SnapshotStore, initial: OnlineModel) -> None:
        self.store = store
        self.initial = initial
        self.model: OnlineModel | None = None
        self._refused: int | None = None

    async def refresh(self) -> bool:
        """Load the reference model if it moved; True if the one held changed."""
        version = await self.store.reference_version()
        held = None if self.model is None else self.model.version
        if version == held or (version is not None and version == self._refused):
            return False
        if version is None:
            self.model = None
            return held is not None
        try:
            model = await self.store.load_reference()
            if model is not None:
                _check_fits(self.initial, model)
        except (SnapshotIntegrityError, ConfigError) as exc:
            log.error("model %s: refused reference version %d: %s; the prediction "
                      "monitors get no values until it is replaced",
                      self.initial.name, version, exc)  # fmt: skip
            self._refused, self.model = version, None
            return held is not None
        if model is not None:
            model.linear_snapshot()
            log.info("model %s: prediction monitors judge by reference version %d",
                     model.name, model.version)  # fmt: skip
        self.model = model
        return True


def _check_fits(initial: OnlineModel, model: OnlineModel) -> None:
    want = (initial.name, initial.task, initial.pipeline)
    got = (model.name, model.task, model.pipeline)
    if got != want:
        raise ConfigError(
            f"snapshot version {model.version} is name/task/pipeline {got} but the "
            f"configuration says {want}: refusing to serve it"
        )

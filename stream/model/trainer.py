"""The one learner of a model: learns in label-arrival order, checkpoints, publishes versions.

Training examples of a model travel on a single-partition topic, so exactly one worker (the
partition's owner) learns, sequentially. After every batch the trainer writes a signed
checkpoint with the offset of the last example it learned; a restarted or newly assigned
trainer resumes from it and skips examples it has already learned, so a redelivered example
is not learned twice. It then publishes a new model version when
:class:`~stream.model.freshness.PublicationRule` says so (by default after every batch that
changed the model; ``publish_every`` examples or ``publish_interval`` after the last
publication otherwise), which every scorer is told about and serves. Only checkpointed
state is published; the cost of each publication (seconds, snapshot bytes) is a metric.

Model guard
-----------
Learning never makes the model non-finite. An example whose features are not finite or
exceed :data:`MAX_LEARN_ABS`, or whose label does not fit the task, is not learned: it is
returned as :class:`Skipped` (the worker dead-letters it). After each batch the model is
probed on the last :data:`PROBE_SIZE` learned inputs (:meth:`OnlineModel.is_finite`); if it
went non-finite anyway, the batch is undone (the model is restored from its state before
the batch) and re-learned one example at a time, probing after each, so that only the
example that breaks the model is skipped. A non-finite model is never checkpointed nor
published.

Damaged checkpoint
------------------
A checkpoint that fails its signature check is not loaded: the trainer resumes from the
newest published version that verifies (its recorded offset), raises a ``model_health``
alert, and overwrites the checkpoint at its next save (no crash loop).
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stream.exceptions import RejectedInput, SnapshotIntegrityError
from stream.messages import TrainingExample
from stream.model.freshness import PublicationRule
from stream.model.online import OnlineModel, create_model
from stream.model.snapshots import SnapshotStore
from stream.monitoring.alerts import model_health_alert
from stream.service.config import Settings
from stream.service.metrics import Metrics
from stream.timestamps import now_ms

log = logging.getLogger(__name__)

MAX_LEARN_ABS = 1e20
"""Largest feature magnitude learned. Raw inputs are bounded at 1e15 by validation, window
sums of many such values stay far below this; squares (the scaler's variance) stay ~1e40."""
PROBE_SIZE = 32
"""Recent learned inputs the model is probed on after each batch."""


@dataclass(frozen=True)
class Skipped:
    """A training example that was not learned, and why (for its dead letter)."""

    offset: int
    example: TrainingExample
    code: str
    reason: str


@dataclass(frozen=True)
class Learned:
    """What one batch did to the model."""

    learned: int
    skipped: list[Skipped]


def unlearnable(x: dict[str, Any]) -> str | None:
    """Why features ``x`` must not be learned, or ``None`` if they can be.

    >>> unlearnable({"a": 1.0, "c": "fuel"}), unlearnable({"a": float("inf")})
    (None, "feature 'a' is not finite (inf)")
    >>> unlearnable({"a": 1e300})
    "feature 'a' = 1e+300 exceeds the learning bound 1e+20"
    """
    for name, value in x.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            return f"feature {name!r} is not finite ({value})"
        if abs(value) > MAX_LEARN_ABS:
            return f"feature {name!r} = {value:g} exceeds the learning bound {MAX_LEARN_ABS:g}"
    return None


class Trainer:
    def __init__(self, settings: Settings, store: SnapshotStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.model: OnlineModel | None = None
        self.last_offset = -1
        self.rule = PublicationRule(settings.model.publish_every, settings.model.publish_interval_s)
        self._probe: deque[dict[str, Any]] = deque(maxlen=PROBE_SIZE)
        self._alerts: list[dict[str, Any]] = []
        self._damaged_since: int | None = None  # an open model_health episode (checkpoint)
        self._unsaved = 0
        self._publishing = asyncio.Lock()  # a batch's save and the timed publication
        self._forget_publications()

    def _forget_publications(self) -> None:
        # n_learned of the model at the last publication (None: unknown) and when (monotonic)
        self._published_n: int | None = None
        self._published_at: float | None = None

    def take_alerts(self) -> list[dict[str, Any]]:
        """The ``model_health`` alerts raised since the last call."""
        alerts, self._alerts = self._alerts, []
        return alerts

    async def restore(self) -> OnlineModel:
        """Resume from the checkpoint, else the newest valid version, else a fresh model."""
        try:
            checkpoint = await self.store.load_checkpoint()
        except SnapshotIntegrityError as exc:
            checkpoint = None
            self._checkpoint_refused(exc)
        self._forget_publications()
        if checkpoint is not None:
            model, info = checkpoint
            self.last_offset = int(info.meta.get("offset", -1))
            published = info.meta.get("published")
            self._published_n = published if isinstance(published, int) else None
            log.info("trainer resumes from checkpoint at offset %d", self.last_offset)
        elif (newest := await self.store.load_newest_valid()) is not None:
            model, info = newest
            self.last_offset = int(info.meta.get("offset", -1))
            self._published_n = model.n_learned
            log.info("trainer starts from published version %d (offset %d)",
                     model.version, self.last_offset)  # fmt: skip
        else:
            model = self.fresh_model()
            self._published_n = 0
            log.info("trainer starts a fresh %s model", self.settings.model.pipeline)
        self.model = model
        return model

    def _checkpoint_refused(self, exc: Exception) -> None:
        name = self.settings.model.name
        log.error("model %s: checkpoint refused (%s); resuming from the newest valid version",
                  name, exc)  # fmt: skip
        self._damaged_since = now_ms()
        self._alerts.append(
            model_health_alert(
                "firing", name, "checkpoint", version=None, ts=self._damaged_since,
                message=f"model {name!r}: trainer checkpoint refused ({exc}); learning resumes "
                "from the newest valid published version",
            )
        )  # fmt: skip

    async def unlearned(
        self, batch: Sequence[tuple[int, TrainingExample]]
    ) -> list[tuple[int, TrainingExample]]:
        """The items of ``batch`` (offset, example) not learned yet: after the checkpoint."""
        if self.model is None:
            await self.restore()
        return self._after_checkpoint(batch)

    def _after_checkpoint(
        self, batch: Sequence[tuple[int, TrainingExample]]
    ) -> list[tuple[int, TrainingExample]]:
        # learned before a restart or rebalance (at or before the checkpoint): not twice
        return [(offset, x) for offset, x in batch if offset > self.last_offset]

    def forget(self) -> None:
        """Drop the model in memory: the next batch resumes from the saved checkpoint."""
        self.model = None
        self.last_offset = -1
        self._unsaved = 0
        self._forget_publications()

    def fresh_model(self) -> OnlineModel:
        return create_model(self.settings.model, self.settings.features)

    def learn_batch(self, batch: Sequence[tuple[int, TrainingExample]]) -> Learned:
        """Learn the new examples of ``batch`` (offset, example) in memory, guarded.

        Call :meth:`unlearned` first (it restores the model); :meth:`save` then checkpoints.
        """
        model = self.model
        if model is None:
            raise RuntimeError("learn_batch before restore: call unlearned() first")
        fresh = self._after_checkpoint(batch)
        if not fresh:
            return Learned(0, [])
        before = pickle.dumps(model.estimator, protocol=pickle.HIGHEST_PROTOCOL)
        n_before, probe_before = model.n_learned, list(self._probe)
        outcome = self._learn_all(model, fresh, probe_each=False)
        if outcome.learned and not model.is_finite(self._probe):
            # undo the batch and find the example(s) that break the model, one at a time
            log.error("model %s went non-finite in a batch of %d: re-learning one by one",
                      model.name, len(fresh))  # fmt: skip
            model.estimator = pickle.loads(before)  # noqa: S301 - our own bytes, just made
            model.n_learned = n_before
            self._probe = deque(probe_before, maxlen=PROBE_SIZE)
            outcome = self._learn_all(model, fresh, probe_each=True)
        self.last_offset = fresh[-1][0]
        self._unsaved += outcome.learned
        if outcome.learned:
            self.metrics.learned.labels(model.name).inc(outcome.learned)
        for skipped in outcome.skipped:
            self.metrics.examples_skipped.labels(model.name, skipped.code).inc()
        return outcome

    def _learn_all(
        self, model: OnlineModel, batch: Sequence[tuple[int, TrainingExample]], probe_each: bool
    ) -> Learned:
        learned, skipped = 0, []
        for offset, example in batch:
            problem = self._learn_one(model, example, probe_each)
            if problem is None:
                learned += 1
            else:
                skipped.append(Skipped(offset, example, *problem))
        return Learned(learned, skipped)

    def _learn_one(
        self, model: OnlineModel, example: TrainingExample, probe: bool
    ) -> tuple[str, str] | None:
        reason = unlearnable(example.x)
        if reason is not None:
            return "unlearnable_features", reason
        before = pickle.dumps(model.estimator, protocol=pickle.HIGHEST_PROTOCOL) if probe else b""
        try:
            model.learn(example.x, example.y)
        except RejectedInput as exc:
            return "invalid_label", exc.reason
        if probe and not model.is_finite([*self._probe, example.x]):
            model.estimator = pickle.loads(before)  # noqa: S301 - our own bytes, just made
            model.n_learned -= 1
            self._model_went_non_finite(model, example)
            return "non_finite_model", "learning this example made the model non-finite"
        self._probe.append(example.x)
        return None

    def _model_went_non_finite(self, model: OnlineModel, example: TrainingExample) -> None:
        now = now_ms()
        self._alerts.append(
            model_health_alert(
                "firing", model.name, "probe", version=model.version, ts=now,
                message=f"model {model.name!r}: learning example {example.event_id!r} made "
                "its outputs non-finite; the example was not learned",
            )
        )  # fmt: skip

    async def save(self) -> int | None:
        """Checkpoint what :meth:`learn_batch` learned; publish a version when one is due."""
        model = self.model
        if model is None:
            return None
        if self._unsaved:
            meta = {"offset": self.last_offset, "published": self._published_n}
            await self.store.save_checkpoint(model, meta)
            self._unsaved = 0
            self._checkpoint_repaired(model)
        return await self.publish_due()  # a retried save publishes what is due

    @property
    def unpublished(self) -> int:
        """Checkpointed examples not in a published version (all of them if unknown)."""
        if self.model is None:
            return 0
        return self.model.n_learned - (self._published_n or 0)

    async def publish_due(self) -> int | None:
        """Publish the checkpointed model if the rule says it is due; the version, or None.

        Called after each batch's checkpoint, and by the worker's model task between
        batches, so that ``publish_interval`` bounds the lag when no batch comes.
        """
        async with self._publishing:
            if self.model is None or self._unsaved:  # only checkpointed state is published
                return None
            since = None if self._published_at is None else time.monotonic() - self._published_at
            if not self.rule.due(self.unpublished, since):
                return None
            return await self.publish()

    def _checkpoint_repaired(self, model: OnlineModel) -> None:
        if self._damaged_since is None:
            return
        self._alerts.append(
            model_health_alert(
                "resolved", model.name, "checkpoint", version=model.version, ts=now_ms(),
                episode_start_ts=self._damaged_since,
                message=f"model {model.name!r}: trainer checkpoint written again",
            )
        )  # fmt: skip
        self._damaged_since = None

    async def learn(self, batch: Sequence[tuple[int, TrainingExample]]) -> int | None:
        """Learn and save ``batch`` (offset, example); returns a published version or None."""
        await self.unlearned(batch)
        self.learn_batch(batch)
        return await self.save()

    async def publish(self) -> int:
        """Publish the model as a new version now; its cost is recorded in the metrics."""
        model = self.model
        if model is None:
            raise RuntimeError("publish before restore")
        n_learned, t0 = model.n_learned, time.perf_counter()
        version, size = await self.store.publish_sized(model, {"offset": self.last_offset})
        seconds = time.perf_counter() - t0
        # a batch learned while the store was busy may be in the record too: then more was
        # published than recorded here, and the next publication comes a little early
        if self.model is model:  # not forgotten meanwhile (a rebalance)
            self._published_n, self._published_at = n_learned, time.monotonic()
        m = self.metrics
        m.published_version.labels(model.name).set(version)
        m.publish_seconds.labels(model.name).observe(seconds)
        m.snapshot_bytes.labels(model.name).set(size)
        log.debug("published %s version %d (%d examples, %d bytes, %.1f ms)",
                  model.name, version, n_learned, size, seconds * 1000)  # fmt: skip
        return version

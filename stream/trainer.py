"""The one learner of a model: learns in label-arrival order, checkpoints, publishes versions.

Training examples of a model travel on a single-partition topic, so exactly one worker (the
partition's owner) learns, sequentially. After every batch the trainer writes a signed
checkpoint with the offset of the last example it learned; a restarted or newly assigned
trainer resumes from it and skips examples it has already learned, so a redelivered example
is not learned twice. Every ``publish_every`` examples (or ``publish_interval``, whichever
comes first) it publishes a new model version that all scorers pick up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from stream.config import Settings
from stream.exceptions import RejectedInput
from stream.labels import TrainingExample
from stream.metrics import Metrics
from stream.model import OnlineModel, create_model
from stream.snapshots import SnapshotStore

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, settings: Settings, store: SnapshotStore, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.model: OnlineModel | None = None
        self.last_offset = -1
        self._since_publish = 0
        self._published_at = time.monotonic()
        self._interval_s = settings.model.publish_interval_s

    async def restore(self) -> OnlineModel:
        """Resume from the checkpoint, else the current version, else a fresh model."""
        checkpoint = await self.store.load_checkpoint()
        if checkpoint is not None:
            model, info = checkpoint
            self.last_offset = int(info.meta.get("offset", -1))
            log.info("trainer resumes from checkpoint at offset %d", self.last_offset)
        elif await self.store.current_version() is not None:
            model = await self.store.load()
            log.info("trainer starts from published version %d", model.version)
        else:
            model = self.fresh_model()
            log.info("trainer starts a fresh %s model", self.settings.model.pipeline)
        self.model = model
        return model

    async def unlearned(
        self, batch: Sequence[tuple[int, TrainingExample]]
    ) -> list[tuple[int, TrainingExample]]:
        """The items of ``batch`` (offset, example) not learned yet: after the checkpoint."""
        if self.model is None:
            await self.restore()
        return [(offset, x) for offset, x in batch if offset > self.last_offset]

    def forget(self) -> None:
        """Drop the model in memory: the next batch resumes from the saved checkpoint."""
        self.model = None
        self.last_offset = -1

    def fresh_model(self) -> OnlineModel:
        return create_model(self.settings.model, self.settings.features)

    async def learn(self, batch: Sequence[tuple[int, TrainingExample]]) -> int | None:
        """Learn the new examples of ``batch`` (offset, example); returns a published version."""
        model = self.model or await self.restore()
        learned = 0
        for offset, example in batch:
            if offset <= self.last_offset:
                continue  # learned before a restart or rebalance: not twice
            try:
                model.learn(example.x, example.y)
            except RejectedInput as exc:
                log.warning("example %s not learned: %s", example.event_id, exc)
            else:
                learned += 1
            self.last_offset = offset
        if learned == 0:
            return None
        self.metrics.learned.labels(model.name).inc(learned)
        await self.store.save_checkpoint(model, {"offset": self.last_offset})
        self._since_publish += learned
        if self._due():
            return await self.publish()
        return None

    def _due(self) -> bool:
        return self._since_publish >= self.settings.model.publish_every or (
            time.monotonic() - self._published_at >= self._interval_s
        )

    async def publish(self) -> int:
        assert self.model is not None  # noqa: S101 - learn() restored it
        version = await self.store.publish(self.model, {"offset": self.last_offset})
        self._since_publish = 0
        self._published_at = time.monotonic()
        self.metrics.published_version.labels(self.model.name).set(version)
        log.info("published %s version %d", self.model.name, version)
        return version

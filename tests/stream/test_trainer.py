"""The trainer's model guard and its recovery from a damaged checkpoint (no Redis)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from river import compose, linear_model

from stream.exceptions import SnapshotIntegrityError
from stream.messages import TrainingExample
from stream.model.online import OnlineModel, create_model
from stream.model.snapshot_format import SnapshotInfo
from stream.model.trainer import Trainer
from stream.service.config import ModelSettings, Settings
from stream.service.metrics import Metrics


class PoisonableRegression(linear_model.LogisticRegression):
    """Goes non-finite when it learns an example with a ``poison`` feature (as an overflow
    deep inside an estimator would); importable, so the trainer can pickle it."""

    def learn_one(self, x: dict[str, Any], y: Any, w: float = 1.0) -> None:
        super().learn_one(x, y, w)
        if "poison" in x:
            self._weights["poison"] = math.nan


class StubStore:
    def __init__(self) -> None:
        self.checkpoints: list[dict[str, Any]] = []
        self.published: list[OnlineModel] = []
        self.checkpoint: Any = None
        self.newest: tuple[OnlineModel, SnapshotInfo] | None = None

    async def load_checkpoint(self) -> Any:
        if isinstance(self.checkpoint, Exception):
            raise self.checkpoint
        return self.checkpoint

    async def load_newest_valid(self, exclude: Any = ()) -> Any:
        return self.newest

    async def save_checkpoint(self, model: OnlineModel, meta: dict[str, Any]) -> None:
        self.checkpoints.append(dict(meta))

    async def publish(self, model: OnlineModel, meta: dict[str, Any]) -> int:
        self.published.append(model)
        return len(self.published)

    async def publish_sized(self, model: OnlineModel, meta: dict[str, Any]) -> tuple[int, int]:
        return await self.publish(model, meta), 100


SETTINGS = Settings(model=ModelSettings(name="fraud", publish_every=1_000_000))


def example(i: int, **x: float) -> TrainingExample:
    features = {"amount": float(i % 7), **x}
    return TrainingExample(f"e{i}", features, i % 2, i, i, 0, 0, 0.5)


def trainer_with(store: StubStore) -> Trainer:
    return Trainer(SETTINGS, store, Metrics())  # type: ignore[arg-type]


async def test_unlearnable_features_are_skipped_and_the_rest_learned() -> None:
    store = StubStore()
    trainer = trainer_with(store)
    batch = [(i, example(i)) for i in range(10)]
    batch[3] = (3, example(3, amount=math.inf))
    batch[6] = (6, example(6, amount=1e300))
    await trainer.unlearned(batch)
    outcome = trainer.learn_batch(batch)
    assert outcome.learned == 8
    assert [(s.offset, s.code) for s in outcome.skipped] == [
        (3, "unlearnable_features"),
        (6, "unlearnable_features"),
    ]
    assert trainer.model is not None and trainer.model.is_finite([example(1).x])
    await trainer.save()
    assert store.checkpoints == [{"offset": 9, "published": 0}]


async def test_an_example_that_makes_the_model_non_finite_is_found_and_not_learned() -> None:
    store = StubStore()
    trainer = trainer_with(store)
    await trainer.unlearned([])
    assert trainer.model is not None
    trainer.model = OnlineModel(
        "fraud", "binary", "logistic_regression", compose.Pipeline(PoisonableRegression())
    )
    good = [(i, example(i)) for i in range(20)]
    await trainer.learn(good)
    batch = [(i, example(i)) for i in range(20, 40)]
    batch[7] = (27, example(27, poison=1.0))
    outcome = trainer.learn_batch(batch)
    assert outcome.learned == 19
    assert [(s.offset, s.code) for s in outcome.skipped] == [(27, "non_finite_model")]
    assert trainer.model.is_finite([example(1).x, example(27, poison=1.0).x])
    assert trainer.model.n_learned == 39
    [alert] = trainer.take_alerts()
    assert (alert["kind"], alert["detector"], alert["status"]) == (
        "model_health",
        "probe",
        "firing",
    )
    assert "e27" in alert["message"]


async def test_without_the_guard_the_same_batch_poisons_the_model() -> None:
    # the control for the test above: learning it blindly leaves NaN weights
    model = OnlineModel(
        "fraud", "binary", "logistic_regression", compose.Pipeline(PoisonableRegression())
    )
    for i in range(20, 40):
        x = example(i, poison=1.0).x if i == 27 else example(i).x
        model.learn(x, i % 2)
    assert not model.is_finite([example(1).x])


async def test_a_refused_checkpoint_resumes_from_the_newest_valid_version() -> None:
    store = StubStore()
    store.checkpoint = SnapshotIntegrityError("checkpoint failed its HMAC check")
    version = create_model(SETTINGS.model, [])
    version.version, version.n_learned = 4, 120
    info = SnapshotInfo("fraud", 4, "binary", "logistic_regression", 120, 0, {"offset": 119})
    store.newest = (version, info)
    trainer = trainer_with(store)

    assert await trainer.unlearned([(118, example(118)), (120, example(120))]) == [
        (120, example(120))
    ]
    assert trainer.model is version and trainer.last_offset == 119
    [firing] = trainer.take_alerts()
    assert (firing["kind"], firing["detector"], firing["status"]) == (
        "model_health", "checkpoint", "firing"
    )  # fmt: skip
    trainer.learn_batch([(120, example(120))])
    await trainer.save()  # the next checkpoint replaces the damaged one: no crash loop
    assert store.checkpoints == [{"offset": 120, "published": 120}]
    [resolved] = trainer.take_alerts()
    assert resolved["status"] == "resolved" and resolved["alert_id"] == firing["alert_id"]


async def test_a_publication_that_failed_is_made_by_the_next_save() -> None:
    store = StubStore()
    trainer = Trainer(  # type: ignore[arg-type]
        Settings(model=ModelSettings(name="fraud", publish_every=5)), store, Metrics()
    )
    batch = [(i, example(i)) for i in range(5)]
    await trainer.unlearned(batch)
    trainer.learn_batch(batch)

    async def down(model: OnlineModel, meta: dict[str, Any]) -> int:
        raise ConnectionError("redis down")

    publish, store.publish = store.publish, down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await trainer.save()
    store.publish = publish  # type: ignore[method-assign]
    assert await trainer.save() == 1  # the retried save publishes what was due

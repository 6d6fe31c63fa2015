"""When the trainer publishes, and the served version's lag (no Redis: a stub store)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.messages import TrainingExample
from stream.model.freshness import PublicationRule, served_lag
from stream.model.online import OnlineModel, create_model
from stream.model.snapshot_format import SnapshotInfo
from stream.model.trainer import Trainer
from stream.service.config import ModelSettings, Settings
from stream.service.metrics import Metrics
from tests.stream.test_trainer import StubStore, example


class RecordingStore(StubStore):
    """Remembers how many examples each published version had learned."""

    def __init__(self) -> None:
        super().__init__()
        self.learned: list[int] = []

    async def publish_sized(self, model: OnlineModel, meta: dict[str, object]) -> tuple[int, int]:
        self.learned.append(model.n_learned)
        return await super().publish_sized(model, meta)


def trainer(store: StubStore, **model: object) -> Trainer:
    settings = Settings(model=ModelSettings.model_validate({"name": "fraud", **model}))
    return Trainer(settings, store, Metrics())  # type: ignore[arg-type]


def batch(start: int, n: int) -> list[tuple[int, TrainingExample]]:
    return [(i, example(i)) for i in range(start, start + n)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("stream.model.trainer.time.monotonic", clock)
    return clock


# -- the rule ---------------------------------------------------------------------------


@given(st.integers(1, 10_000), st.floats(0, 3600), st.floats(0, 1e6))
def test_nothing_unpublished_is_never_due(max_examples: int, max_s: float, since: float) -> None:
    rule = PublicationRule(max_examples, max_s)
    assert not rule.due(0, since) and not rule.due(0, None)


@given(st.integers(1, 10_000), st.floats(0, 3600), st.integers(1, 20_000), st.floats(0, 7200))
def test_due_exactly_when_a_bound_is_reached(
    max_examples: int, max_s: float, unpublished: int, since: float
) -> None:
    rule = PublicationRule(max_examples, max_s)
    assert rule.due(unpublished, since) == (unpublished >= max_examples or since >= max_s)
    assert rule.due(unpublished, None)  # never published (or unknown): publish the change


def test_a_rule_without_a_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="max_examples must be at least 1, got 0"):
        PublicationRule(0, 5.0)


def test_the_default_settings_publish_after_every_batch() -> None:
    model = ModelSettings()
    assert (model.publish_every, model.publish_interval_s) == (1, 5.0)


# -- the trainer ------------------------------------------------------------------------


async def test_by_default_every_batch_that_changed_the_model_is_published(clock: Clock) -> None:
    store = RecordingStore()
    t = trainer(store)
    assert await t.learn(batch(0, 50)) == 1  # version 1 right after the first batch
    assert await t.learn(batch(50, 30)) == 2
    assert await t.learn(batch(50, 30)) is None  # redelivered: nothing new, no version
    assert store.learned == [50, 80]
    assert store.checkpoints[-1] == {"offset": 79, "published": 50}


async def test_a_batch_whose_examples_were_all_skipped_publishes_nothing(clock: Clock) -> None:
    store = RecordingStore()
    t = trainer(store)
    assert await t.learn(batch(0, 10)) == 1
    bad = [(i, example(i, amount=float("nan"))) for i in range(10, 20)]
    assert await t.learn(bad) is None
    assert len(store.published) == 1


async def test_a_larger_bound_publishes_the_first_change_then_every_n(clock: Clock) -> None:
    store = RecordingStore()
    t = trainer(store, publish_every=100, publish_interval="5s")
    assert await t.learn(batch(0, 40)) == 1  # nothing published yet: at once
    clock.now += 1
    assert await t.learn(batch(40, 40)) is None  # 40 unpublished, 1 s
    clock.now += 1
    assert await t.learn(batch(80, 59)) is None  # 99 unpublished
    assert await t.learn(batch(139, 1)) == 2  # 100
    assert store.learned == [40, 140]


async def test_the_interval_counts_from_the_last_publication(clock: Clock) -> None:
    store = RecordingStore()
    t = trainer(store, publish_every=1000, publish_interval="5s")
    clock.now += 3600  # a trainer idle since its start: its first change is published at once
    assert await t.learn(batch(0, 10)) == 1
    clock.now += 4.9
    assert await t.learn(batch(10, 10)) is None
    clock.now += 0.1
    assert await t.learn(batch(20, 10)) == 2
    assert store.learned == [10, 30]


async def test_the_timed_publication_needs_no_new_batch(clock: Clock) -> None:
    store = RecordingStore()
    t = trainer(store, publish_every=1000, publish_interval="5s")
    await t.learn(batch(0, 10))
    await t.learn(batch(10, 10))
    assert await t.publish_due() is None  # 10 unpublished, 0 s
    clock.now += 5
    assert await t.publish_due() == 2
    assert await t.publish_due() is None  # nothing new since
    assert store.learned == [10, 20]


async def test_learned_but_not_checkpointed_is_never_published(clock: Clock) -> None:
    store = RecordingStore()
    t = trainer(store, publish_every=1000, publish_interval="5s")
    await t.learn(batch(0, 10))
    t.learn_batch(batch(10, 10))  # the batch's save has not run yet
    clock.now += 60
    assert await t.publish_due() is None
    assert await t.save() == 2  # checkpointed first, then published
    assert store.checkpoints[-1]["offset"] == 19


async def test_a_resumed_trainer_knows_what_its_checkpoint_had_published(clock: Clock) -> None:
    store = RecordingStore()
    model = create_model(ModelSettings(name="fraud"), [])
    for _, x in batch(0, 30):
        model.learn(x.x, x.y)
    info = SnapshotInfo("fraud", 0, "binary", "logistic_regression", 30, 0, {"offset": 29})
    store.checkpoint = (model, info)
    assert await trainer(store).learn(batch(0, 30)) == 1  # unknown: published once
    assert store.learned == [30]

    store = RecordingStore()
    info = SnapshotInfo(
        "fraud", 0, "binary", "logistic_regression", 30, 0, {"offset": 29, "published": 30}
    )
    store.checkpoint = (model, info)
    assert await trainer(store).learn(batch(0, 30)) is None  # all redelivered, all published
    assert store.published == []


async def test_publication_cost_is_measured(clock: Clock) -> None:
    store = RecordingStore()
    t = trainer(store)
    await t.learn(batch(0, 10))
    await t.learn(batch(10, 10))
    registry = t.metrics.registry
    labels = {"model": "fraud"}
    assert registry.get_sample_value("driftwatch_model_publish_seconds_count", labels) == 2
    assert registry.get_sample_value("driftwatch_model_snapshot_bytes", labels) == 100
    assert registry.get_sample_value("driftwatch_model_published_version", labels) == 2


# -- the lag ----------------------------------------------------------------------------


@given(st.integers(0, 10**6), st.integers(0, 10**6))
def test_the_lag_in_examples_is_what_the_trainer_has_and_the_version_lacks(
    trainer_learned: int, served: int
) -> None:
    lag = served_lag(trainer_learned, served, 0, 0)
    assert lag.examples == max(0, trainer_learned - served)


def test_the_age_of_the_served_version() -> None:
    assert served_lag(10, 10, published_at_ms=1_000, now_ms=4_500).age_s == 3.5
    assert served_lag(10, 0, published_at_ms=None, now_ms=4_500).age_s is None

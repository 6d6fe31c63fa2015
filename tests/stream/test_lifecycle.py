"""Champion and challengers, pure parts: the configuration, the lineup's entries, the paired
comparison and its exact McNemar test, an example seen as another model served it."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import exceptions as redis_errors
from scipy.stats import binomtest

from stream.exceptions import ConfigError
from stream.messages import TrainingExample
from stream.model.compare import Comparison
from stream.model.lifecycle import as_served_by
from stream.model.lineup import Entry, configured
from stream.model.served import arm_of, arm_point
from stream.service.config import ModelSettings, Settings, load_settings
from stream.service.metrics import Metrics
from stream.service.resilience import Health
from stream.service.steps import LearnStep


def test_a_single_model_section_is_the_one_champion() -> None:
    s = Settings(model={"name": "fraud"})
    assert [(m.name, m.role) for m in s.models] == [("fraud", "champion")]
    assert not s.challenged
    assert [(e.name, e.role) for e in configured(s)] == [("fraud", "champion")]


def test_models_name_one_champion_and_keep_the_others() -> None:
    s = Settings(
        models=[
            {"name": "tree", "role": "challenger", "pipeline": "hoeffding_tree"},
            {"name": "lr", "role": "champion"},
            {"name": "lr2", "role": "shadow", "learning_rate": 0.1},
        ]
    )
    assert s.model.name == "lr" and s.challenged
    assert [(e.name, e.role) for e in configured(s)] == [
        ("lr", "champion"), ("tree", "challenger"), ("lr2", "shadow"),
    ]  # fmt: skip
    # the dumped settings (how tests and the environment pass them) read back the same
    assert Settings(**s.model_dump(mode="json")) == s


def test_a_model_section_overrides_the_champion_of_the_models() -> None:
    s = Settings(
        model={"publish_every": 50},
        models=[{"name": "lr", "role": "champion"}, {"name": "b", "role": "shadow"}],
    )
    assert (s.model.name, s.model.publish_every) == ("lr", 50)
    assert s.models[0].publish_every == 50


@pytest.mark.parametrize(
    ("models", "field"),
    [
        ([{"name": "a", "role": "challenger"}], "champion"),
        ([{"name": "a", "role": "champion"}, {"name": "b", "role": "champion"}], "champion"),
        ([{"name": "a", "role": "champion"}, {"name": "a", "role": "shadow"}], "distinct"),
        (
            [
                {"name": "a", "role": "champion"},
                {
                    "name": "b",
                    "role": "shadow",
                    "task": "regression",
                    "pipeline": "linear_regression",
                },
            ],
            "task",
        ),  # fmt: skip
        ([{"name": "a", "role": "boss"}], "models.0.role"),
    ],
)
def test_a_bad_lineup_stops_start_up_naming_the_problem(tmp_path, models, field) -> None:
    lines = []
    for m in models:
        lines.append("[[models]]")
        lines += [f'{k} = "{v}"' for k, v in m.items()]
    path = tmp_path / "dw.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=field):
        load_settings(path)


def test_lifecycle_settings_refuse_a_minimum_beyond_the_window() -> None:
    with pytest.raises(ValueError, match="min_labels"):
        Settings(lifecycle={"min_labels": 600, "compare_window": 500})


def test_the_shadow_topic_is_created_and_authorised_only_with_challengers() -> None:
    from stream.service.kafka_access import required_acls
    from stream.service.topics import topic_partitions

    alone = Settings()
    retraining = Settings(lifecycle={"retrain_on": ["concept_drift"]})
    assert alone.topics.shadow not in topic_partitions(alone)
    assert retraining.topics.shadow in topic_partitions(retraining)
    written = {a.name for a in required_acls(retraining) if a.operation == "Write"}
    assert retraining.topics.shadow in written
    assert alone.topics.shadow not in {a.name for a in required_acls(alone)}


def test_an_entry_reads_back_what_it_wrote() -> None:
    e = Entry(ModelSettings(name="fraud.r3", role="challenger"), "challenger", "retrain", 5, 9)
    assert Entry.decode(e.encode()) == e


def test_an_example_is_seen_as_the_model_that_scored_it() -> None:
    x = TrainingExample("e", {}, 1, 10, 20, 7, 0, 0.3, "a", {"b": (2, 1, 0.8)})
    assert as_served_by(x, "a", "a") is x
    b = as_served_by(x, "b", "a")
    assert (b.model_version, b.prediction, b.score, b.y) == (2, 1, 0.8, 1)
    old = TrainingExample("e", {}, 1, 10, 20, 7, 0, 0.3)  # stored before the lineup
    assert old.outputs("fraud", "fraud") == (7, 0, 0.3)
    assert old.outputs("other", "fraud") is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)), max_size=300),
    st.integers(5, 120),
)
def test_the_comparison_equals_a_recount_of_its_window(pairs, window) -> None:
    c = Comparison("binary", window)
    for y, a, b in pairs:
        assert c.add(y, a, b)
    v = c.verdict()
    kept = pairs[-window:]
    assert v.n == len(kept) and c.total == len(pairs)
    if not kept:
        assert v.p_value == 1.0 and math.isnan(v.margin)
        return
    champion = sum(a == y for y, a, _ in kept) / len(kept)
    challenger = sum(b == y for y, _, b in kept) / len(kept)
    wins = sum(b == y != a for y, a, b in kept)
    losses = sum(a == y != b for y, a, b in kept)
    assert (v.wins, v.losses) == (wins, losses)
    assert v.champion == pytest.approx(champion) and v.challenger == pytest.approx(challenger)
    assert v.margin == pytest.approx(challenger - champion)
    expected = (
        binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0
    )
    assert v.p_value == pytest.approx(expected)


def test_a_challenger_no_better_is_promoted_rarely() -> None:
    """Under the null (two equally good models), the policy's test fires at most at its
    level: 400 windows of 500 labels, each model right 70 % of the time, independently."""
    rng = random.Random(5)
    fired = 0
    for _ in range(400):
        c = Comparison("binary", 500)
        for _ in range(500):
            y = rng.random() < 0.5
            a = y if rng.random() < 0.7 else not y
            b = y if rng.random() < 0.7 else not y
            c.add(int(y), int(a), int(b))
        fired += c.verdict().beats(min_labels=500, margin=0.0, alpha=0.01)
    assert fired <= 10  # expected 4 at alpha 0.01 (binomial 99.9th percentile: 11)


def test_a_clearly_better_challenger_beats_the_champion() -> None:
    rng = random.Random(3)
    c = Comparison("binary", 1000)
    for _ in range(600):
        y = int(rng.random() < 0.5)
        c.add(y, y if rng.random() < 0.6 else 1 - y, y if rng.random() < 0.8 else 1 - y)
    v = c.verdict()
    assert v.beats(500, 0.02, 0.01), v
    assert not v.beats(700, 0.02, 0.01)  # not enough labels yet


def test_a_regression_is_compared_on_absolute_errors() -> None:
    c = Comparison("regression", 100)
    for i in range(100):
        c.add(float(i), float(i) + 2.0, float(i) + (0.5 if i % 4 else 3.0))
    v = c.verdict()
    assert v.champion == pytest.approx(2.0)
    assert v.challenger == pytest.approx(0.75 * 0.5 + 0.25 * 3.0)
    assert v.margin == pytest.approx((2.0 - v.challenger) / 2.0)
    assert (v.wins, v.losses) == (75, 25)


def test_a_label_that_does_not_fit_the_task_is_not_compared() -> None:
    c = Comparison("binary", 10)
    assert not c.add("maybe", 1, 0)
    assert c.add(1, None, 1)  # a classifier without a prediction yet is wrong
    assert c.verdict().wins == 1


class _Policy:
    """Stands in for :class:`Learners` in the learn step: its decide() fails as told."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def decide(self, alerts: list, ts: int) -> list[dict]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return [{"kind": "model_lifecycle", "ts": ts}]


def _learn_step(policy: _Policy, metrics: Metrics) -> LearnStep:
    health = Health(metrics, backoff_start_s=0.001)
    return LearnStep(Settings(), metrics, health, policy, None, None)  # type: ignore[arg-type]


def test_an_outage_during_the_policy_waits_and_the_trigger_is_not_lost() -> None:
    policy = _Policy(redis_errors.ConnectionError("down"), redis_errors.TimeoutError("slow"))
    out = asyncio.run(_learn_step(policy, Metrics())._decide([{"kind": "concept_drift"}], 7))
    assert out == [{"kind": "model_lifecycle", "ts": 7}] and policy.calls == 3


def test_a_bug_in_the_policy_skips_one_batch_and_learning_goes_on() -> None:
    metrics = Metrics()
    out = asyncio.run(_learn_step(_Policy(ValueError("bug")), metrics)._decide([], 7))
    assert out == []
    assert metrics.task_errors.labels("lifecycle")._value.get() == 1


def test_only_challengers_serve_a_share_and_they_leave_the_champion_some() -> None:
    champion = {"name": "a", "role": "champion"}
    with pytest.raises(ValueError, match="only a challenger"):
        Settings(models=[champion, {"name": "b", "role": "shadow", "serve_share": 0.1}])
    with pytest.raises(ValueError, match="leave the champion"):
        Settings(
            models=[
                champion,
                *({"name": n, "role": "challenger", "serve_share": 0.5} for n in "bc"),
            ]
        )
    s = Settings(models=[champion, {"name": "b", "role": "challenger", "serve_share": 0.25}])
    assert s.models[1].serve_share == 0.25


def test_an_entity_keeps_its_arm_and_the_arms_get_their_shares() -> None:
    points = [arm_point(f"card-{i}") for i in range(20_000)]
    assert points[:50] == [arm_point(f"card-{i}") for i in range(50)]  # stable
    arms = [(0.0, 0.2, 1), (0.2, 0.3, 2)]
    served = Counter(arm_of(f"card-{i}", arms) for i in range(20_000))
    assert served[1] / 20_000 == pytest.approx(0.2, abs=0.015)
    assert served[2] / 20_000 == pytest.approx(0.1, abs=0.01)
    assert served[0] / 20_000 == pytest.approx(0.7, abs=0.015)


def _models() -> list:
    from stream.model.online import create_model

    champion = create_model(ModelSettings(name="a"), [])
    challenger = create_model(ModelSettings(name="b", role="challenger"), [])
    champion.version, challenger.version = 7, 2
    return [champion, challenger]


def test_each_event_is_served_by_its_entitys_arm_and_scored_in_shadow_by_the_other() -> None:
    from types import SimpleNamespace

    import redis.asyncio as aioredis

    from stream.ingest.scoring import EventProcessor
    from stream.records import Incoming, ValidEvent

    s = Settings(models=[{"name": "a"}, {"name": "b", "role": "challenger", "serve_share": 0.3}])
    models = _models()
    arms = [(0.0, 0.3, "b")]
    processor = EventProcessor(s, aioredis.Redis(), lambda: models[0], Metrics(),
                               shadows=lambda: models[1:], arms=lambda: arms)  # fmt: skip
    valid = [
        (
            Incoming("events", 0, i, None, b""),
            ValidEvent(f"e{i}", f"card-{i}", i, {}, None, (), frozenset()),
        )
        for i in range(400)
    ]
    results = [SimpleNamespace(enriched={}) for _ in valid]
    scored, pending, unscorable, shadow = processor._score(models, valid, results)  # type: ignore[arg-type]
    assert not unscorable and len(scored) == len(pending) == 400 == len(shadow)
    for (_, ev), s_, p in zip(valid, scored, pending, strict=True):
        arm = "b" if arm_point(ev.entity_id) < 0.3 else "a"
        other = "a" if arm == "b" else "b"
        assert (s_.model, p.model, p.model_version) == (arm, arm, {"a": 7, "b": 2}[arm])
        assert set(p.shadow) == {other} and p.shadow[other][0] == {"a": 7, "b": 2}[other]
    served_by_b = sum(s_.model == "b" for s_ in scored)
    assert 80 < served_by_b < 160  # 30 % of 400
    names = Counter(orjson.loads(m.value)["model"] for m in shadow)
    assert names == {"a": served_by_b, "b": 400 - served_by_b}
    messages = processor._predictions(scored, pending)
    assert Counter(orjson.loads(m.value)["model"] for m in messages) == {
        "b": served_by_b,
        "a": 400 - served_by_b,
    }


def test_data_drift_retraining_needs_its_subjects_and_only_it_does() -> None:
    with pytest.raises(ValueError, match="retrain_subjects"):
        Settings(lifecycle={"retrain_on": ["data_drift"]})
    with pytest.raises(ValueError, match="retrain_subjects"):
        Settings(lifecycle={"retrain_on": ["performance"], "retrain_subjects": ["amount"]})
    s = Settings(lifecycle={"retrain_on": ["data_drift"], "retrain_subjects": ["amount"]})
    assert s.lifecycle.retrain_subjects == ("amount",)

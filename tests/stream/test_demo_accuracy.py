"""The demo summary's accuracy judgement: per-slice best constant, reference learner, the
adaptation line (pure, no broker)."""

from __future__ import annotations

import random
import re
from typing import Any

from stream.model.online import OnlineModel, create_model
from stream.service.config import FeatureSpec, ModelSettings
from stream.tools.demo import Collected, DemoOptions, summary
from stream.tools.demo_accuracy import (
    ScoredEvent,
    accuracy_slices,
    accuracy_table,
    adaptation_line,
    concept_change,
    reference_predictions,
    scored_events,
)
from stream.tools.synthetic import CardStream, Drift

CATEGORICAL = [FeatureSpec(name="merchant_category", kind="categorical")]


def test_an_always_one_model_only_matches_the_best_constant_of_its_slice() -> None:
    # slice 1: 80 % zeros (majority so far: 0); slice 2: 70 % ones, served always 1
    first = [ScoredEvent(i, int(i % 10 >= 8), 0, 1) for i in range(100)]
    second = [ScoredEvent(i, int(i % 10 < 7), 1, 1) for i in range(100, 200)]
    rows = accuracy_slices([*first, *second], {}, n=200, chunks=2)
    assert [(r.first, r.last) for r in rows] == [(0, 99), (100, 199)]
    assert rows[1].served == rows[1].best_constant == 0.7  # not 0.4 above "majority so far"
    assert rows[0].served == rows[0].best_constant == 0.8
    table = accuracy_table(rows)
    assert "best constant" in table[0] and "majority" not in table[0]
    assert table[2].split()[1:3] == ["0.700", "0.700"]


def test_best_constant_takes_the_slice_majority_whichever_class_it_is() -> None:
    events = [ScoredEvent(i, int(i % 4 > 0), 0, 1) for i in range(40)]  # 75 % ones
    (row,) = accuracy_slices(events, {}, n=40, chunks=1)
    assert (row.served, row.best_constant) == (0.25, 0.75)


def test_slices_split_at_the_concept_change_and_the_reference_column_starts_there() -> None:
    events = [ScoredEvent(i, 1, 1, i // 1000) for i in range(20_000)]
    reference = {i: 0 for i in range(13_000, 20_000)}
    rows = accuracy_slices(events, reference, n=20_000, change=13_000)
    assert [r.first for r in rows] == [0, 2500, 5000, 7500, 10000, 12500, 13000, 15000, 17500]
    assert rows[5].last == 12_999 and rows[5].reference is None
    assert all(r.reference == 0.0 for r in rows[6:])
    assert rows[6].versions == (13, 14)
    table = accuracy_table(rows)
    # accuracy, best constant, then a reference only from the change on; the serving model
    assert table[6].split()[1:] == ["1.000", "1.000", "model", "12"]
    assert table[7].split()[3] == "0.000" and table[6].split()[3] == "model"


def test_reference_learns_each_example_only_after_its_label_arrived() -> None:
    class Spy(OnlineModel):
        calls: list[tuple[str, int]]

        def predict(self, x: dict[str, Any]) -> Any:
            self.calls.append(("predict", x["i"]))
            return super().predict(x)

        def learn(self, x: dict[str, Any], y: object) -> None:
            self.calls.append(("learn", x["i"]))
            super().learn(x, y)

    base = create_model(ModelSettings(), [])
    spy = Spy(base.name, base.task, base.pipeline, base.estimator)
    spy.calls = []
    # events 100..139 with a gap (event 110 was never scored)
    events = [ScoredEvent(i, i % 2, 0, 1, {"i": i}) for i in range(100, 140) if i != 110]
    predictions = reference_predictions(spy, events, delay=5)
    assert sorted(predictions) == [e.i for e in events]
    predicted_at = {i: n for n, (what, i) in enumerate(spy.calls) if what == "predict"}
    learned = [(n, i) for n, (what, i) in enumerate(spy.calls) if what == "learn"]
    assert [i for _, i in learned] == [e.i for e in events if e.i <= 139 - 5]  # in event order
    for n, i in learned:
        arrived = min(j for j in predicted_at if j >= i + 5)  # the label comes after event i+5
        assert predicted_at[arrived] < n  # learned only once its label has arrived
        assert all(predicted_at[j] > n for j in predicted_at if j > arrived)  # and no later


def test_reference_catches_a_flipped_rule_that_the_served_model_missed() -> None:
    # the served model learned the rule before the change and stopped moving (13 -> 13)
    cards = CardStream(seed=3, drifts=(Drift("concept", 4000),))
    rows = list(cards.events(8000))
    served = create_model(ModelSettings(), CATEGORICAL)
    for event, y in rows[:4000]:
        served.learn(_features(event), y)
    events = [
        ScoredEvent(i, y, int(served.predict(_features(e)).prediction or 0), 13, _features(e))
        for i, (e, y) in enumerate(rows)
    ]
    change = concept_change([Drift("concept", 4000)])
    after = [e for e in events if e.i >= 4000]
    reference = reference_predictions(create_model(ModelSettings(), CATEGORICAL), after, 200)
    line = adaptation_line(events, reference, change, after=1000)
    assert line is not None
    match = re.fullmatch(r"adaptation: served (\d\.\d{3}) vs reference (\d\.\d{3}) over events "
                         r"5000-7999", line)  # fmt: skip
    assert match, line
    served_acc, reference_acc = map(float, match.groups())
    stretch = accuracy_slices(events[5000:], reference, n=8000, chunks=1)[0]
    assert served_acc < stretch.best_constant < reference_acc - 0.1, (line, stretch)


def test_adaptation_line_judges_from_3000_events_after_the_change_to_the_last_event() -> None:
    rng = random.Random(1)
    events = [ScoredEvent(i, rng.randrange(2), 1, 1) for i in range(20_000)]
    reference = {e.i: e.label for e in events if e.i >= 13_000}  # a perfect reference
    served = sum(e.label for e in events[16_000:]) / 4000
    assert adaptation_line(events, reference, 13_000) == (
        f"adaptation: served {served:.3f} vs reference 1.000 over events 16000-19999"
    )
    assert adaptation_line(events, {}, None) is None
    assert adaptation_line(events[:15_000], reference, 13_000) is None  # nothing to judge yet


def test_concept_change_is_the_first_concept_drift() -> None:
    drifts = [Drift("concept", 15_000), Drift("mean_shift", 6000, 10_000), Drift("concept", 13_000)]
    assert concept_change(drifts) == 13_000
    assert concept_change([Drift("mean_shift", 6000)]) is None


def test_scored_events_are_numbered_by_event_time_and_keep_the_scored_features() -> None:
    predictions = {
        f"r-{i}": _prediction(i, features={"amount": float(i)}, start_ms=1000) for i in (3, 1, 2)
    }
    events = scored_events(predictions, {"r-1": 1, "r-3": 0}, start_ms=1000, step_ms=50)
    assert [(e.i, e.label, e.features) for e in events] == [
        (1, 1, {"amount": 1.0}),
        (3, 0, {"amount": 3.0}),
    ]


def test_summary_ends_with_the_adaptation_line_only_with_a_concept_change() -> None:
    cards = CardStream(seed=5, drifts=(Drift("concept", 500),), start_ms=0)
    got, labels = Collected(), {}
    for i, (event, y) in enumerate(cards.events(4000)):
        got.predictions[event["event_id"]] = _prediction(i, 1, _features(event))
        labels[event["event_id"]] = y
    opts = DemoOptions(events=4000, label_delay=50, drifts=(Drift("concept", 500),))
    model = create_model(ModelSettings(), CATEGORICAL)
    lines = summary(opts, got, labels, 0, 4.0, None, 0, 50, model).splitlines()
    assert re.fullmatch(r"adaptation: served 0\.\d{3} vs reference 0\.\d{3} over events 3500-3999",
                        lines[-1])  # fmt: skip
    assert model.n_learned == 3500 - 50  # from the change on, the last 50 labels not yet due
    plain = DemoOptions(events=4000, drifts=(Drift("mean_shift", 500),))
    text = summary(plain, got, labels, 0, 4.0, None, 0, 50, create_model(ModelSettings(), []))
    assert "adaptation" not in text and "best constant" in text


def _features(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["features"])


def _prediction(
    i: int, prediction: int = 0, features: dict[str, Any] | None = None, start_ms: int = 0
) -> dict[str, Any]:
    return {
        "ts": start_ms + 50 * i,
        "prediction": prediction,
        "model_version": 1,
        "features": features or {},
    }

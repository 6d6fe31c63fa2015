"""The numpy snapshot of a linear pipeline scores as River does, and follows the served model."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest
from river import compose

from stream.model import online
from stream.model.holder import ModelHolder
from stream.model.linear_snapshot import take_snapshot
from stream.model.online import OnlineModel, Scored, create_model
from stream.model.snapshot_format import SnapshotInfo
from stream.service.config import FeatureSpec, ModelSettings

FEATURES = (
    FeatureSpec(name="amount", min=0, max=1000),
    FeatureSpec(name="hour", min=0, max=23),
    FeatureSpec(name="shop", kind="categorical", categories=("grocery", "fuel", "travel")),
    FeatureSpec(name="device", kind="categorical"),  # open: categories learned as they come
)
LINEAR = [
    ("binary", "logistic_regression"),
    ("multiclass", "softmax_regression"),
    ("regression", "linear_regression"),
]
SHOPS = ["grocery", "fuel", "travel", "online"]  # "online" is not a declared category
DEVICES = ["ios", "android", "web", "tv"]


def event(rng: random.Random, *, devices: list[str] = DEVICES) -> dict[str, Any]:
    """Raw and enriched features with what scoring meets: missing and None values, ints,
    bools, text the model ignores, unseen categories and names it never learned."""
    amount = rng.uniform(0, 1000)
    x: dict[str, Any] = {
        "amount": amount,
        "hour": rng.randrange(24),  # an int
        "shop": rng.choice(SHOPS),
        "device": rng.choice(devices),
        "amount_mean_1h": amount * rng.uniform(0.5, 1.5),
        "amount_std_1h": rng.choice([None, rng.lognormvariate(0, 1)]),
        "amount_count_1h": float(rng.randrange(5)),
        "seconds_since_last": rng.choice([-1.0, rng.expovariate(0.1)]),
        "note": "free text",
        "flag": rng.random() < 0.5,
    }
    for name in ("amount_mean_1h", "hour", "flag", "seconds_since_last"):
        if rng.random() < 0.15:
            del x[name]  # a missing feature without imputation
    if rng.random() < 0.05:
        x["amount_std_1h"] = "n/a"  # a string where a number was learned: River skips it
    if rng.random() < 0.05:
        x["never_learned"] = rng.gauss(0, 5)
    return x


def label(task: str, x: dict[str, Any], rng: random.Random) -> Any:
    if task == "binary":
        return int(x["amount"] > 500) ^ (rng.random() < 0.1)
    if task == "multiclass":
        return ("low", "mid", "high")[min(int(x["amount"] // 334), 2)]
    return 2.0 * x["amount"] + 10.0 + rng.gauss(0, 5)


def trained(task: str, pipeline: str, n: int, seed: int, **kw: Any) -> OnlineModel:
    settings = ModelSettings.model_validate({"name": "m", "task": task, "pipeline": pipeline, **kw})
    model = create_model(settings, FEATURES)
    rng = random.Random(seed)
    for _ in range(n):
        x = event(rng, devices=DEVICES[:3])  # "tv" is never learned
        model.learn(x, label(task, x, rng))
    return model


def river(model: OnlineModel, x: dict[str, Any]) -> Scored:
    """The answer straight from River's predict_proba_one / predict_one."""
    if model.task == "binary":
        p = float(model.estimator.predict_proba_one(x)[True])
        return Scored(int(p > 0.5), {"0": 1.0 - p, "1": p}, p)
    if model.task == "multiclass":
        proba = {str(c): float(p) for c, p in model.estimator.predict_proba_one(x).items()}
        if not proba:
            return Scored(None, {}, 0.0)
        best = max(proba, key=proba.__getitem__)
        return Scored(best, proba, proba[best])
    value = float(model.estimator.predict_one(x))
    return Scored(value, None, value)


def close(a: float, b: float) -> bool:
    if not (math.isfinite(a) and math.isfinite(b)):
        return a == b or (math.isnan(a) and math.isnan(b))
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def assert_same(got: list[Scored], want: list[Scored]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.prediction == w.prediction or close(g.prediction, w.prediction), (i, g, w)  # type: ignore[arg-type]
        assert close(g.score, w.score), (i, g, w)
        assert (g.proba is None) == (w.proba is None), (i, g, w)
        if g.proba is not None and w.proba is not None:
            assert list(g.proba) == list(w.proba), (i, g, w)
            assert all(close(g.proba[k], w.proba[k]) for k in w.proba), (i, g, w)


@pytest.mark.parametrize(("task", "pipeline"), LINEAR)
@pytest.mark.parametrize("n_learned", [0, 1, 40, 1500])
@pytest.mark.parametrize("seed", [1, 2])
def test_snapshot_scores_equal_river_on_random_inputs(
    task: str, pipeline: str, n_learned: int, seed: int
) -> None:
    model = trained(task, pipeline, n_learned, seed, learning_rate=0.05)
    rng = random.Random(seed + 100)
    probes = [event(rng) for _ in range(400)]
    assert model.linear_snapshot() is not None
    got = model.predict_many(probes)
    assert_same(got, [river(model, x) for x in probes])
    assert_same(got, [model.predict(x) for x in probes])


@pytest.mark.parametrize(("task", "pipeline"), LINEAR)
def test_the_snapshot_scores_most_rows_itself(task: str, pipeline: str) -> None:
    model = trained(task, pipeline, 300, seed=3)
    snapshot = model.linear_snapshot()
    assert snapshot is not None
    probes = [event(random.Random(i)) for i in range(200)]
    assert snapshot.score(probes).river_rows == []  # the arrays answered every one


@pytest.mark.parametrize(("task", "pipeline"), LINEAR)
def test_rows_the_arrays_cannot_answer_exactly_go_to_river(task: str, pipeline: str) -> None:
    model = trained(task, pipeline, 300, seed=4)
    base = event(random.Random(5))
    odd = [
        {**base, "amount": math.inf},  # non-finite: River's arithmetic decides
        {**base, "amount": math.nan},
        {**base, "shop": 3},  # a categorical value that is not a string
        {**base, "device": ["ios", "web"]},  # River one-hot encodes each element
        {**base, "shop": "fuel", "shop_fuel": 2.0},  # the numeric value wins the union
        {**base, "amount": 10**400},  # an int too large for a float: River raises too
    ]
    snapshot = model.linear_snapshot()
    assert snapshot is not None
    fine = odd[:5]
    assert snapshot.score([base, *fine]).river_rows == [1, 2, 3, 4, 5]
    assert_same(model.predict_many([base, *fine]), [river(model, x) for x in [base, *fine]])
    with pytest.raises(OverflowError):
        river(model, odd[5])
    with pytest.raises(OverflowError):
        model.predict_many(odd[5:])


@pytest.mark.parametrize(("task", "pipeline"), LINEAR)
def test_a_missing_categorical_scores_as_an_unseen_one_as_in_river(
    task: str, pipeline: str
) -> None:
    model = trained(task, pipeline, 50, seed=6)
    rng = random.Random(7)
    xs = [event(rng) for _ in range(20)]
    for x in xs[::2]:
        del x["device"]  # no impute configured: the event lacks it
    assert_same(model.predict_many(xs), [river(model, x) for x in xs])
    unseen = {**xs[0], "device": "never-seen"}
    assert_same(model.predict_many([xs[0]]), model.predict_many([unseen]))
    model.learn(xs[0], label(task, xs[0], rng))  # and it learns from it


@pytest.mark.parametrize(("task", "pipeline"), LINEAR)
def test_a_pipeline_pickled_with_rivers_select_still_raises_as_river(
    task: str, pipeline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(online, "SelectPresent", compose.Select)  # as built before it
    model = trained(task, pipeline, 50, seed=6)
    x = event(random.Random(7))
    del x["device"]
    with pytest.raises(KeyError, match="device"):
        river(model, x)
    with pytest.raises(KeyError, match="device"):
        model.predict_many([x])


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_trees_keep_rivers_per_event_path(task: str) -> None:
    model = trained(task, "hoeffding_tree", 200, seed=8)
    assert model.linear_snapshot() is None
    probes = [event(random.Random(i)) for i in range(20)]
    assert model.predict_many(probes) == [model.predict(x) for x in probes]


def test_a_non_finite_parameter_leaves_scoring_to_river() -> None:
    model = trained("binary", "logistic_regression", 100, seed=9)
    model.estimator["LogisticRegression"]._weights["amount"] = math.inf
    model._linear = None  # the estimator was changed behind learn()'s back
    assert model.linear_snapshot() is None
    x = event(random.Random(10))
    assert model.predict_many([x]) == [model.predict(x)]


def test_the_sigmoid_clamps_as_rivers_does() -> None:
    model = trained("binary", "logistic_regression", 300, seed=11, learning_rate=0.5)
    probes = [{**event(random.Random(i)), "amount": a} for i, a in enumerate((0.0, 1e6, -1e6))]
    got = model.predict_many(probes)
    assert [g.score for g in got[1:]] == [1.0, 0.0]
    assert_same(got, [river(model, x) for x in probes])


def test_learning_takes_a_new_snapshot() -> None:
    model = trained("binary", "logistic_regression", 100, seed=12)
    first = model.linear_snapshot()
    assert model.linear_snapshot() is first  # once per state
    rng = random.Random(13)
    x = event(rng)
    model.learn(x, 1)
    assert model.linear_snapshot() is not first
    probes = [event(rng) for _ in range(50)]
    assert_same(model.predict_many(probes), [river(model, p) for p in probes])


class _Store:
    """The part of SnapshotStore a holder uses: versions kept in memory."""

    def __init__(self) -> None:
        self.versions: dict[int, OnlineModel] = {}
        self.current: int | None = None

    async def current_version(self) -> int | None:
        return self.current

    async def last_change(self) -> bytes:
        return b"0-0"

    async def load_version(self, version: int) -> tuple[OnlineModel, SnapshotInfo]:
        m = self.versions[version]
        return m, SnapshotInfo(m.name, m.version, m.task, m.pipeline, m.n_learned, 0)

    async def load_newest_valid(self, exclude: set[int]) -> tuple[OnlineModel, Any] | None:
        return None

    async def reference_version(self) -> int | None:
        return None  # no reference model pinned


def test_the_snapshot_follows_the_served_version() -> None:
    store = _Store()
    holder = ModelHolder(store, trained("binary", "logistic_regression", 0, seed=0))  # type: ignore[arg-type]
    for version, seed in ((1, 14), (2, 15)):
        model = trained("binary", "logistic_regression", 200 * version, seed=seed)
        model.version = version
        store.versions[version] = model
    probes = [event(random.Random(i)) for i in range(100)]
    taken = []
    for version in (1, 2):
        store.current = version
        assert asyncio.run(holder.refresh())
        served = holder.model
        assert served.version == version
        assert served._linear is not None  # taken when the version was loaded
        assert_same(served.predict_many(probes), [river(served, x) for x in probes])
        taken.append(served.linear_snapshot())
    assert taken[0] is not taken[1]
    assert taken[0] is not None and taken[1] is not None
    assert not (taken[0].weights == taken[1].weights).all()


def test_a_pipeline_of_another_shape_gets_no_snapshot() -> None:
    from river import linear_model, preprocessing

    assert take_snapshot(preprocessing.StandardScaler() | linear_model.LogisticRegression()) is None

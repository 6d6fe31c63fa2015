"""The online model: a River pipeline per configured model, its scores and its labels.

Pure logic, no I/O. The pipeline sees the raw features of an event and the enriched window
features, whose names are not known in advance: every numeric value (``int``/``float``, so
``bool`` too) that is not a declared categorical feature is scaled by a running
``StandardScaler``; the features declared ``kind="categorical"`` are one-hot encoded. Any
other value (``None``, a string that is not a declared categorical) is ignored, which River
linear models treat as a zero contribution.

Scoring never changes the model: River only updates unsupervised steps in ``learn_one``
(unless ``compose.learn_during_predict`` is switched on, which driftwatch never does), so
every scorer holding the same version returns the same scores.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from river import base, compose, linear_model, optim, preprocessing, tree

from stream.exceptions import RejectedInput
from stream.model.linear_snapshot import LinearSnapshot, take_snapshot
from stream.service.config import FeatureSpec, ModelSettings

Task = Literal["binary", "multiclass", "regression"]
Label = int | str | float
Features = dict[str, Any]


@dataclass(slots=True)  # not frozen: one per event, and frozen costs ~5x to build
class Scored:
    """The model's answer for one event.

    Attributes
    ----------
    prediction
        ``0``/``1`` (binary), the class label (multiclass; ``None`` before any class has been
        learned) or the predicted value (regression).
    proba
        Class probabilities keyed by the label as a string; binary always has ``"0"`` and
        ``"1"``. ``None`` for regression.
    score
        One number to monitor: P(class 1) for binary, the top probability for multiclass,
        the prediction for regression.
    """

    prediction: Label | None
    proba: dict[str, float] | None
    score: float


def build_pipeline(model: ModelSettings, features: Sequence[FeatureSpec]) -> compose.Pipeline:
    """A fresh River pipeline for the configured task and pipeline.

    Parameters
    ----------
    model
        The model section of the configuration.
    features
        The raw features; only their names and kinds (and categories) matter here.

    Examples
    --------
    >>> from stream.service.config import FeatureSpec, ModelSettings
    >>> pipe = build_pipeline(ModelSettings(), [FeatureSpec(name="shop", kind="categorical")])
    >>> type(pipe["LogisticRegression"]).__name__
    'LogisticRegression'
    >>> pipe.predict_proba_one({"amount": 3.0, "shop": "fuel"})
    {False: 0.5, True: 0.5}
    """
    return _preprocessing(features) | _estimator(model)


class SelectPresent(compose.Select):
    """River's ``Select``, leaving out a selected feature the event lacks.

    ``Select`` raises ``KeyError`` for a missing key: an event without a categorical feature
    (no ``impute`` configured) could not be scored, although the contract accepts it. Here
    the feature is left out, so its one-hot encoding is all zeros, as for an unseen value.

    >>> SelectPresent("shop", "city").transform_one({"shop": "fuel", "amount": 3.0})
    {'shop': 'fuel'}
    """

    #: read by :mod:`stream.model.linear_snapshot` (a missing value scores as unseen)
    present_only = True

    def transform_one(self, x: dict[Hashable, Any]) -> dict[Hashable, Any]:
        return {i: x[i] for i in self.keys if i in x}


def _preprocessing(features: Sequence[FeatureSpec]) -> compose.TransformerUnion:
    categorical = [f for f in features if f.kind == "categorical"]
    names = [f.name for f in categorical]
    # Discard first: a categorical feature sent as a number must not be scaled as well.
    numeric = compose.Discard(*names) | compose.SelectType(int, float)
    union = compose.TransformerUnion(numeric | preprocessing.StandardScaler())
    fixed: dict[Hashable, set[Hashable]] = {
        f.name: set(f.categories) for f in categorical if f.categories
    }
    if fixed:
        # Declared categories bound the model's size; an unseen value encodes as all zeros.
        union += SelectPresent(*fixed) | preprocessing.OneHotEncoder(categories=fixed)
    open_names = [f.name for f in categorical if not f.categories]
    if open_names:
        union += SelectPresent(*open_names) | preprocessing.OneHotEncoder()
    return union


def _estimator(model: ModelSettings) -> base.Estimator:
    sgd = optim.SGD(model.learning_rate)
    if model.pipeline == "logistic_regression":
        return linear_model.LogisticRegression(optimizer=sgd)
    if model.pipeline == "softmax_regression":
        return linear_model.SoftmaxRegression(optimizer=sgd)
    if model.pipeline == "linear_regression":
        return linear_model.LinearRegression(optimizer=sgd)
    if model.task == "regression":
        # the adaptive leaves fit a linear model by SGD: same learning rate as the linear pipeline
        leaf = linear_model.LinearRegression(optimizer=sgd)
        return tree.HoeffdingTreeRegressor(leaf_model=leaf)
    return tree.HoeffdingTreeClassifier()


def coerce_label(y: object, task: Task) -> Label:
    """The label as the model learns it: ``0``/``1``, a class string, or a float.

    Raises
    ------
    RejectedInput
        ``stage="label"``, naming the value and the task, when ``y`` does not fit the task.

    Examples
    --------
    >>> coerce_label(True, "binary"), coerce_label("1", "binary"), coerce_label(7, "multiclass")
    (1, 1, '7')
    >>> coerce_label("2.5", "regression")
    2.5
    >>> coerce_label("yes", "binary")
    Traceback (most recent call last):
    ...
    stream.exceptions.RejectedInput: label 'yes' is not valid for task 'binary': \
expected 0, 1, true, false, "0" or "1"
    """
    if task == "binary":
        return _binary_label(y)
    if task == "multiclass":
        return _class_label(y)
    return _regression_label(y)


def _reject(y: object, task: str, expected: str) -> RejectedInput:
    return RejectedInput(
        f"label {y!r} is not valid for task {task!r}: expected {expected}", stage="label"
    )


def _binary_label(y: object) -> int:
    if isinstance(y, bool | int | float) and y in (0, 1):
        return int(y)
    if isinstance(y, str) and y.strip() in ("0", "1"):
        return int(y)
    raise _reject(y, "binary", '0, 1, true, false, "0" or "1"')


def _class_label(y: object) -> str:
    # bool and float are refused: True -> "True" or 1.0 -> "1.0" would silently be new classes
    if isinstance(y, int) and not isinstance(y, bool):
        return str(y)
    if isinstance(y, str) and y.strip():
        return y
    raise _reject(y, "multiclass", "a non-empty string or an integer class label")


def _regression_label(y: object) -> float:
    value = math.nan
    if isinstance(y, int | float) and not isinstance(y, bool):
        value = float(y)
    elif isinstance(y, str):
        with contextlib.suppress(ValueError):
            value = float(y)
    if not math.isfinite(value):
        raise _reject(y, "regression", "a finite number")
    return value


@dataclass(slots=True)
class OnlineModel:
    """A River estimator with its identity, its published version and its learning count.

    Attributes
    ----------
    name
        The configured model name.
    task
        ``binary``, ``multiclass`` or ``regression``.
    pipeline
        The configured pipeline name, e.g. ``logistic_regression``.
    estimator
        The River pipeline from :func:`build_pipeline`.
    version
        The published snapshot version this model is (0: never published).
    n_learned
        Examples learned since the model was created.
    """

    name: str
    task: Task
    pipeline: str
    estimator: compose.Pipeline
    version: int = 0
    n_learned: int = 0
    # (n_learned, snapshot) of the state the snapshot was taken from: see linear_snapshot()
    _linear: tuple[int, LinearSnapshot | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def predict(self, x: Features) -> Scored:
        """Score one event's features (raw and enriched); the model is not changed.

        Examples
        --------
        >>> from stream.service.config import ModelSettings
        >>> m = create_model(ModelSettings(name="fraud"), [])
        >>> m.predict({"amount": 10.0})
        Scored(prediction=0, proba={'0': 0.5, '1': 0.5}, score=0.5)
        """
        if self.task == "binary":
            return _binary_scored(self.estimator.predict_proba_one(x))
        if self.task == "multiclass":
            return _class_scored(self.estimator.predict_proba_one(x))
        value = float(self.estimator.predict_one(x))
        return Scored(prediction=value, proba=None, score=value)

    def predict_many(self, xs: Sequence[Features]) -> list[Scored]:
        """Score a batch of events, in order: what :meth:`predict` gives each, to rounding.

        A linear pipeline scores the batch as arrays with its :meth:`linear_snapshot`
        (equal to River within 1e-12); other pipelines, and the events the snapshot hands
        back, are scored by River one by one.

        Examples
        --------
        >>> from stream.service.config import ModelSettings
        >>> m = create_model(ModelSettings(task="regression", pipeline="linear_regression"), [])
        >>> [s.prediction for s in m.predict_many([{"a": 1.0}, {"a": 2.0}])]
        [0.0, 0.0]
        """
        snapshot = self.linear_snapshot() if xs else None
        if snapshot is None:
            predict = self.predict  # bound once: this is the scoring hot path
            return [predict(x) for x in xs]
        scores = snapshot.score(xs)
        out = _scored_many(snapshot, scores.values)
        for i in scores.river_rows:
            out[i] = self.predict(xs[i])
        return out

    def linear_snapshot(self) -> LinearSnapshot | None:
        """The numpy snapshot of the current state of a linear pipeline (``None`` for others).

        Taken once per state: again only after :meth:`learn` (a served version never
        learns, so once per version). See :mod:`stream.model.linear_snapshot`.

        >>> from stream.service.config import ModelSettings
        >>> m = create_model(ModelSettings(), [])
        >>> m.linear_snapshot() is m.linear_snapshot(), m.linear_snapshot().kind
        (True, 'logistic')
        """
        cached = self._linear
        if cached is None or cached[0] != self.n_learned:
            cached = self._linear = (self.n_learned, take_snapshot(self.estimator))
        return cached[1]

    def is_finite(self, probe: Sequence[Features]) -> bool:
        """Whether the model's parameters and its outputs on ``probe`` are all finite.

        The parameters checked are those River's linear models and scalers keep as numbers
        or dicts of numbers (weights, intercept, running means and variances); a tree is
        judged by its outputs alone.

        Examples
        --------
        >>> from stream.service.config import ModelSettings
        >>> m = create_model(ModelSettings(), [])
        >>> m.learn({"amount": 3.0}, 1)
        >>> m.is_finite([{"amount": 3.0}])
        True
        >>> m.estimator["LogisticRegression"]._weights["amount"] = float("nan")
        >>> m.is_finite([])
        False
        """
        for step in self.estimator.steps.values():
            if not _parameters_finite(step):
                return False
        for x in probe:
            out = self.predict(x)
            values = [out.score, *(out.proba or {}).values()]
            if not all(math.isfinite(v) for v in values):
                return False
        return True

    def learn(self, x: Features, y: object) -> None:
        """Learn one example; ``y`` is coerced with :func:`coerce_label` first.

        Examples
        --------
        >>> from stream.service.config import ModelSettings
        >>> m = create_model(ModelSettings(), [])
        >>> for amount in (1.0, 9.0, 2.0, 8.0) * 50:
        ...     m.learn({"amount": amount}, amount > 5)
        >>> m.n_learned, [m.predict({"amount": a}).prediction for a in (9.0, 1.0)]
        (200, [1, 0])
        """
        label = coerce_label(y, self.task)
        self._linear = None
        self.estimator.learn_one(x, label)
        self.n_learned += 1


def create_model(model: ModelSettings, features: Sequence[FeatureSpec]) -> OnlineModel:
    """A fresh, unpublished model (version 0) for the configuration.

    Examples
    --------
    >>> from stream.service.config import ModelSettings
    >>> m = create_model(ModelSettings(name="fraud"), [])
    >>> m.name, m.task, m.pipeline, m.version, m.n_learned
    ('fraud', 'binary', 'logistic_regression', 0, 0)
    """
    return OnlineModel(
        name=model.name,
        task=model.task,
        pipeline=model.pipeline,
        estimator=build_pipeline(model, features),
    )


def _binary_scored(proba: Mapping[Any, float]) -> Scored:
    # True == 1 as a dict key, so this reads both LogisticRegression's {False, True} and a
    # tree's {0, 1}; before any learning a tree returns {} and we answer "no idea": 0.5.
    p1 = float(proba.get(1, 0.0)) if proba else 0.5
    return Scored(prediction=int(p1 > 0.5), proba={"0": 1.0 - p1, "1": p1}, score=p1)


def _scored_many(snapshot: LinearSnapshot, values: Any) -> list[Scored]:
    """:func:`_binary_scored`, :func:`_class_scored` or a regression's Scored per row."""
    if snapshot.kind == "logistic":
        return [Scored(int(p > 0.5), {"0": 1.0 - p, "1": p}, p) for p in values.tolist()]
    if snapshot.kind == "linear":
        return [Scored(v, None, v) for v in values.tolist()]
    labels = snapshot.labels
    if not labels:
        return [Scored(None, {}, 0.0) for _ in range(len(values))]
    best = values.argmax(axis=1).tolist()  # the first of equal maxima, as max() takes
    return [
        Scored(labels[b], dict(zip(labels, row, strict=True)), row[b])
        for b, row in zip(best, values.tolist(), strict=True)
    ]


def _class_scored(proba: Mapping[Any, float]) -> Scored:
    if not proba:
        return Scored(prediction=None, proba={}, score=0.0)
    labelled = {str(label): float(p) for label, p in proba.items()}
    best = max(labelled, key=labelled.__getitem__)
    return Scored(prediction=best, proba=labelled, score=labelled[best])


_PARAMETERS = ("_weights", "intercept", "means", "vars", "_means", "_vars")


def _parameters_finite(step: Any) -> bool:
    inner = getattr(step, "transformers", None)
    if isinstance(inner, Mapping):  # a TransformerUnion
        return all(_parameters_finite(t) for t in inner.values())
    steps = getattr(step, "steps", None)
    if isinstance(steps, Mapping):  # a nested pipeline
        return all(_parameters_finite(t) for t in steps.values())
    for name in _PARAMETERS:
        value = getattr(step, name, None)
        if isinstance(value, int | float):
            value = {name: value}
        values = getattr(value, "values", None)  # dicts and River's VectorDict
        if callable(values) and not all(
            math.isfinite(v) for v in values() if isinstance(v, int | float)
        ):
            return False
    return True

"""A numpy snapshot of a linear River pipeline: a whole batch scored as arrays.

River scores one dict at a time. The learned state of the linear pipelines that
:func:`stream.model.online.build_pipeline` makes (``StandardScaler`` and one-hot encoders
into ``LogisticRegression``, ``SoftmaxRegression`` or ``LinearRegression``) is a few dicts
of numbers, so a batch is ``Z @ W + b`` with ``Z = (X - means) / std``. The snapshot is
read once from River's state and learns nothing; it gives River's answer to rounding
(``tests/stream/test_linear_snapshot.py``: within 1e-12 on random inputs), because it
follows River's transform step by step:

- numeric: every ``int``/``float`` value (``bool`` too) of a name that is not a declared
  categorical is scaled by the running mean and variance; zero variance scales to 0
  (River's ``StandardScaler``), and so does a missing value or one of another type
  (``SelectType`` drops it);
- categorical: the one-hot key ``{name}_{value}`` weighs its weight, a value outside the
  declared categories weighs nothing, and so does a missing categorical
  (:class:`stream.model.online.SelectPresent`); in a pipeline pickled before it, River's
  ``Select``, a missing categorical raises ``KeyError`` as ``Select`` does.

The rows it cannot answer exactly are handed back for River to score one by one
(:attr:`Scores.river_rows`): a non-finite result (River's own arithmetic then decides), a
categorical value that is not a string, and a one-hot key that is also a key of the event
(the numeric value wins in River's ``TransformerUnion``). A pipeline of any other shape,
or with a non-finite parameter, gets no snapshot (:func:`take_snapshot` returns ``None``).
Inputs are JSON values as the validator and the windows produce them: a numpy integer
scalar, which River's ``SelectType(int, float)`` would drop, is not expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal, cast

import numpy as np
from river import compose, linear_model, optim, preprocessing

Kind = Literal["logistic", "linear", "softmax"]

_SIGMOID_CLAMP = 30.0  # river.utils.math.sigmoid answers 0 and 1 beyond +-30
_ABSENT = object()  # a categorical feature the event lacks


@dataclass(frozen=True, slots=True)
class _OneHot:
    """One categorical feature: its values' rows in ``table`` (the last row is zeros)."""

    name: str
    index: Mapping[str, int]
    keys: tuple[str, ...]  # the one-hot key of each row but the last
    table: np.ndarray  # (len(keys) + 1, k)
    present_only: bool = True  # a missing value weighs nothing (else: KeyError, as Select)


@dataclass(frozen=True, slots=True)
class Scores:
    """The snapshot's answer for a batch.

    Attributes
    ----------
    values
        ``(n,)`` P(class 1) (logistic) or the prediction (linear); ``(n, k)`` class
        probabilities (softmax) in the order of :attr:`LinearSnapshot.labels`.
    river_rows
        Rows to score with River instead; their ``values`` are meaningless.
    """

    values: np.ndarray
    river_rows: list[int]


@dataclass(frozen=True, slots=True)
class LinearSnapshot:
    """The learned state of a linear pipeline as arrays (see the module docstring)."""

    kind: Kind
    columns: tuple[str, ...]  # numeric inputs of non-zero variance
    means: np.ndarray  # (m,)
    stds: np.ndarray  # (m,)
    weights: np.ndarray  # (m, k); k = 1 but for softmax
    intercept: np.ndarray  # (k,)
    categorical: tuple[_OneHot, ...]
    labels: tuple[str, ...]  # softmax classes as strings, in River's order

    def score(self, xs: Sequence[Mapping[str, Any]]) -> Scores:
        """Score a batch of feature dicts (raw and enriched), in order.

        Raises
        ------
        KeyError
            An event lacks a categorical feature and the pipeline selects it with River's
            ``Select`` (which raises the same).
        """
        logits = np.broadcast_to(self.intercept, (len(xs), len(self.intercept))).copy()
        if self.columns:
            # a non-finite input is River's to score (river_rows): no warnings for it here
            with np.errstate(invalid="ignore", over="ignore"):
                logits += ((self._numeric(xs) - self.means) / self.stds) @ self.weights
        river_rows: set[int] = set()
        for one_hot in self.categorical:
            logits += self._one_hot(one_hot, xs, river_rows)
        river_rows.update(np.flatnonzero(~np.isfinite(logits).all(axis=1)).tolist())
        return Scores(self._mean_func(logits), sorted(river_rows))

    def _numeric(self, xs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        get = _getter(self.columns)
        rows: list[Any] = []
        append = rows.append
        defaults = self.means.tolist()  # a missing value scales to exactly 0
        for x in xs:
            try:
                append(get(x))
            except KeyError:
                append([x.get(k, m) for k, m in zip(self.columns, defaults, strict=True)])
        matrix = np.array(rows)
        if matrix.dtype.kind not in "biuf":  # a None, a string, ...: what SelectType drops
            matrix = np.array([_numbers(r, defaults) for r in rows], dtype=float)
        return matrix.astype(float, copy=False)

    def _one_hot(
        self, one_hot: _OneHot, xs: Sequence[Mapping[str, Any]], river_rows: set[int]
    ) -> np.ndarray:
        name, index, keys = one_hot.name, one_hot.index, one_hot.keys
        values = [x.get(name, _ABSENT) if one_hot.present_only else x[name] for x in xs]
        none = len(keys)
        if set(map(type, values)) == {str}:
            rows = [index.get(v, none) for v in values]
        else:  # absent: the zeros row; another type: River scores the row
            river_rows.update(
                i for i, v in enumerate(values) if type(v) is not str and v is not _ABSENT
            )
            rows = [index.get(v, none) if type(v) is str else none for v in values]
        river_rows.update(
            i for i, (x, r) in enumerate(zip(xs, rows, strict=True)) if r != none and keys[r] in x
        )
        return one_hot.table[rows]

    def _mean_func(self, logits: np.ndarray) -> np.ndarray:
        if self.kind == "linear":
            return logits[:, 0]
        if self.kind == "logistic":
            z = logits[:, 0]
            with np.errstate(over="ignore", invalid="ignore"):
                p = 1.0 / (1.0 + np.exp(-z))
            p[z < -_SIGMOID_CLAMP] = 0.0
            p[z > _SIGMOID_CLAMP] = 1.0
            return p
        if not self.labels:
            return logits
        with np.errstate(invalid="ignore"):
            e = np.exp(logits - logits.max(axis=1, keepdims=True))  # river.utils.math.softmax
            return e / e.sum(axis=1, keepdims=True)


def _getter(columns: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The values of ``columns`` as a tuple, fast (KeyError if one is missing)."""
    if len(columns) == 1:
        key = columns[0]
        return lambda x: (x[key],)
    getter: Any = itemgetter  # mypy 2.4 crashes inferring itemgetter(*columns)
    return cast(Callable[[Mapping[str, Any]], tuple[Any, ...]], getter(*columns))


def _numbers(row: Sequence[Any], defaults: Sequence[float]) -> list[float]:
    return [
        float(v) if isinstance(v, int | float) else m for v, m in zip(row, defaults, strict=True)
    ]


def take_snapshot(pipeline: compose.Pipeline) -> LinearSnapshot | None:
    """The snapshot of ``pipeline``, or ``None`` if it is not a linear pipeline of
    :func:`~stream.model.online.build_pipeline`'s shape or a parameter is not finite.

    Examples
    --------
    >>> from stream.model.online import create_model
    >>> from stream.service.config import ModelSettings
    >>> m = create_model(ModelSettings(), [])
    >>> for a in (1.0, 9.0, 2.0, 8.0) * 20:
    ...     m.learn({"amount": a}, a > 5)
    >>> snap = take_snapshot(m.estimator)
    >>> snap.kind, snap.columns
    ('logistic', ('amount',))
    >>> p = float(snap.score([{"amount": 9.0}]).values[0])
    >>> abs(p - m.estimator.predict_proba_one({"amount": 9.0})[True]) < 1e-12
    True
    """
    steps = list(pipeline.steps.values())
    if len(steps) != 2 or not isinstance(steps[0], compose.TransformerUnion):
        return None
    parts = [_steps(t) for t in steps[0].transformers.values()]
    estimator = _estimator(steps[1])
    if estimator is None or not parts or not _is_numeric(parts[0]):
        return None
    kind, labels, weights, intercept = estimator
    scaler = parts[0][2]
    columns = tuple(k for k, v in scaler.vars.items() if v != 0)
    means = np.array([scaler.means.get(k, 0.0) for k in columns], dtype=float)
    variances = np.array([scaler.vars[k] for k in columns], dtype=float)
    k = len(intercept)
    numeric_weights = np.array([_vector(weights, c, k) for c in columns], dtype=float)
    categorical = _categorical(parts[1:], weights, k)
    if categorical is None:
        return None
    arrays = (means, variances, numeric_weights, intercept, *(c.table for c in categorical))
    if not all(np.isfinite(a).all() for a in arrays):
        return None
    if (variances < 0).any() or len(set(labels)) != len(labels):
        return None
    stds = np.array([v**0.5 for v in variances.tolist()])  # River divides by v ** 0.5
    return LinearSnapshot(
        kind, columns, means, stds, numeric_weights.reshape(len(columns), k), intercept,
        categorical, labels,
    )  # fmt: skip


def _steps(transformer: Any) -> list[Any]:
    return list(transformer.steps.values()) if isinstance(transformer, compose.Pipeline) else []


def _is_numeric(steps: list[Any]) -> bool:
    if len(steps) != 3:
        return False
    discard, select, scaler = steps
    return (
        isinstance(discard, compose.Discard)
        and isinstance(select, compose.SelectType)
        and set(select.types) == {int, float}
        and type(scaler) is preprocessing.StandardScaler
        and scaler.with_std
        and scaler.window_size is None
    )


Weights = dict[str, list[float]]  # input key -> one weight per output


def _estimator(step: Any) -> tuple[Kind, tuple[str, ...], Weights, np.ndarray] | None:
    if type(step) is linear_model.LogisticRegression and type(step.loss) is optim.losses.Log:
        return "logistic", (), _single(step), np.array([step.intercept], dtype=float)
    if type(step) is linear_model.LinearRegression and type(step.loss) is optim.losses.Squared:
        return "linear", (), _single(step), np.array([step.intercept], dtype=float)
    if (
        type(step) is linear_model.SoftmaxRegression
        and type(step.loss) is optim.losses.CrossEntropy
    ):
        classes = list(step.weights)
        keys = dict.fromkeys(key for c in classes for key in step.weights[c])
        weights = {key: [float(step.weights[c].get(key, 0.0)) for c in classes] for key in keys}
        labels = tuple(str(c) for c in classes)
        return "softmax", labels, weights, np.zeros(len(classes))
    return None


def _single(step: linear_model.LogisticRegression | linear_model.LinearRegression) -> Weights:
    return {key: [float(w)] for key, w in step._weights.items()}


def _vector(weights: Weights, key: str, k: int) -> list[float]:
    return weights.get(key, [0.0] * k)


def _categorical(parts: list[list[Any]], weights: Weights, k: int) -> tuple[_OneHot, ...] | None:
    """One :class:`_OneHot` per categorical feature; ``None`` if a part is not a one-hot
    encoder or a weighted key could belong to two features (River would count it once)."""
    out: list[_OneHot] = []
    for steps in parts:
        if len(steps) != 2 or not isinstance(steps[0], compose.Select):
            return None
        encoder = steps[1]
        if type(encoder) is not preprocessing.OneHotEncoder:
            return None
        if encoder.drop_zeros or encoder.drop_first:
            return None
        names = [name for name in steps[0].keys if isinstance(name, str)]
        if len(names) != len(steps[0].keys):
            return None
        present_only = bool(getattr(steps[0], "present_only", False))
        for name in sorted(names):
            out.append(_one_hot_of(name, encoder.categories, weights, k, present_only))
    claimed = [key for one_hot in out for key in one_hot.keys]
    if len(set(claimed)) != len(claimed):
        return None
    return tuple(out)


def _one_hot_of(
    name: str,
    categories: Mapping[Any, set[Any]] | None,
    weights: Weights,
    k: int,
    present_only: bool,
) -> _OneHot:
    prefix = f"{name}_"
    if categories is None:  # open: any value seen in learning may carry a weight
        values = [key[len(prefix) :] for key in weights if key.startswith(prefix)]
    else:
        values = [v for v in categories[name] if isinstance(v, str) and prefix + v in weights]
    keys = tuple(prefix + v for v in values)
    table = np.array([*(weights[key] for key in keys), [0.0] * k], dtype=float)
    index = {v: i for i, v in enumerate(values)}
    return _OneHot(name, index, keys, table.reshape(len(keys) + 1, k), present_only)

"""The metrics :class:`~stream.monitoring.performance.PerformanceMonitor` watches, per task,
and how much worse a value of one is than its reference.

The metrics and their standard errors are computed by :mod:`stream.monitoring.performance_math`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from stream.exceptions import ConfigError
from stream.monitoring.performance_math import (
    TINY,
    binary_metrics,
    binary_standard_errors,
    multiclass_metrics,
    multiclass_standard_errors,
    regression_metrics,
    regression_standard_errors,
)

Task = Literal["binary", "multiclass", "regression"]
TASK_METRICS: dict[Task, tuple[str, ...]] = {
    "binary": ("accuracy", "precision", "recall", "f1", "roc_auc"),
    "multiclass": ("accuracy", "macro_f1"),
    "regression": ("mae", "rmse", "r2"),
}
# monitored when ``performance_metrics`` is empty: the metrics whose sampling noise over a
# window is smallest (precision, recall and F1 divide by a fraction of the window only)
DEFAULT_METRICS: dict[Task, tuple[str, ...]] = {
    "binary": ("accuracy", "roc_auc"),
    "multiclass": ("accuracy", "macro_f1"),
    "regression": ("mae", "rmse"),
}
ERROR_METRICS = frozenset({"mae", "rmse"})


def monitored_metrics(task: Task, requested: Sequence[str]) -> tuple[str, ...]:
    """The metrics to monitor for ``task``: ``requested``, or if empty the task's
    :data:`DEFAULT_METRICS`, in the order of :data:`TASK_METRICS`.

    Raises
    ------
    ConfigError
        The task is unknown, or a requested metric does not apply to it.

    Examples
    --------
    >>> monitored_metrics("binary", ()), monitored_metrics("binary", ("roc_auc", "recall"))
    (('accuracy', 'roc_auc'), ('recall', 'roc_auc'))
    """
    allowed = TASK_METRICS.get(task)
    if allowed is None:
        raise ConfigError(f"task: expected one of {sorted(TASK_METRICS)}, got {task!r}")
    wrong = [m for m in requested if m not in allowed]
    if wrong:
        raise ConfigError(
            f"monitoring.performance_metrics: {wrong} do not apply to task {task!r}; "
            f"expected some of {list(allowed)}"
        )
    chosen = requested or DEFAULT_METRICS[task]
    return tuple(m for m in allowed if m in chosen)


def compute_metrics(
    task: Task, names: Sequence[str], ys: list[Any], preds: list[Any], scores: list[float]
) -> tuple[dict[str, float], dict[str, float]]:
    """The metrics ``names`` and their standard errors (relative for MAE and RMSE).

    >>> compute_metrics("regression", ["mae"], [1.0, 2.0, 4.0], [1.0, 3.0, 3.0], [0.0] * 3)[0]
    {'mae': 0.6666666666666666}
    """
    if task == "binary":
        y, pred, score = np.asarray(ys), np.asarray(preds), np.asarray(scores)
        values = binary_metrics(y, pred, score)
        ses = binary_standard_errors(y, pred, values["roc_auc"])
    elif task == "multiclass":
        labels, predicted = [str(y) for y in ys], [str(p) for p in preds]
        values = multiclass_metrics(labels, predicted)
        ses = multiclass_standard_errors(labels, predicted)
    else:
        y, pred = np.asarray(ys, float), np.asarray(preds, float)
        values, ses = regression_metrics(y, pred), regression_standard_errors(y, pred)
    return {m: values[m] for m in names}, {m: ses[m] for m in names}


def example_error(task: Task, y: Any, pred: Any) -> float:
    """0/1 error of a class, absolute error of a regression.

    >>> example_error("binary", 1, 0), example_error("regression", 2.5, 4.0)
    (1.0, 1.5)
    """
    return abs(float(y) - float(pred)) if task == "regression" else float(y != pred)


def shortfall(name: str, reference: float, current: float) -> float:
    """How much worse ``current`` is than ``reference``: absolute for scores in [0, 1] and R²,
    relative for error metrics.

    >>> round(shortfall("accuracy", 0.9, 0.8), 3), shortfall("mae", 2.0, 3.0)
    (0.1, 0.5)
    """
    if name in ERROR_METRICS:
        return (current - reference) / max(reference, TINY)
    return reference - current

"""Rolling model metrics and their standard errors: exact, with numpy/scipy, no I/O.

The metrics of one window of labelled predictions — binary accuracy, precision, recall, F1
and ROC AUC (the Mann-Whitney U statistic, ties averaged, equal to
``sklearn.metrics.roc_auc_score``); multiclass accuracy and macro F1; regression MAE, RMSE
and R² — each with the standard error
:class:`stream.monitoring.performance.PerformanceMonitor` uses to tell a drop from sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata

#: Floor of a denominator (a reference error or metric of 0)
TINY = 1e-12


def binary_metrics(
    y: NDArray[Any], pred: NDArray[Any], score: NDArray[np.float64]
) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (of class 1) and ROC AUC of ``score``; exact.

    Precision, recall and F1 are 0 when undefined (sklearn's ``zero_division=0``); ROC AUC is
    NaN when ``y`` holds one class.

    >>> m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]),
    ...                    np.array([0.1, 0.6, 0.4, 0.9]))
    >>> {k: round(v, 3) for k, v in m.items()}
    {'accuracy': 0.75, 'precision': 0.667, 'recall': 1.0, 'f1': 0.8, 'roc_auc': 0.75}
    """
    y, pred = y.astype(bool), pred.astype(bool)
    tp = float(np.sum(y & pred))
    fp = float(np.sum(~y & pred))
    fn = float(np.sum(y & ~pred))
    return {
        "accuracy": float(np.mean(y == pred)) if y.size else math.nan,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "roc_auc": roc_auc(y, score),
    }


def binary_standard_errors(y: NDArray[Any], pred: NDArray[Any], auc: float) -> dict[str, float]:
    """Standard errors of :func:`binary_metrics` over one window (``auc``: its ROC AUC).

    Accuracy, precision and recall are proportions over all labels, the predicted positives
    and the actual positives (:func:`proportion_se`).  F1 is ``2 q / (1 + q)`` with ``q`` the
    proportion of true positives among the examples that are positive in ``y`` or ``pred``,
    so the delta method gives ``SE(F1) = 2 SE(q) / (1 + q)²``.  ROC AUC: Hanley & McNeil
    (1982), *Radiology* 143:29-36 (:func:`roc_auc_se`).

    >>> se = binary_standard_errors(np.array([0, 0, 1, 1] * 100), np.array([0, 1, 1, 1] * 100),
    ...                             auc=0.75)
    >>> {k: round(v, 3) for k, v in se.items()}
    {'accuracy': 0.022, 'precision': 0.027, 'recall': 0.005, 'f1': 0.02, 'roc_auc': 0.024}
    """
    y, pred = y.astype(bool), pred.astype(bool)
    tp = int(np.sum(y & pred))
    relevant = int(np.sum(y | pred))
    return {
        "accuracy": proportion_se(int(np.sum(y == pred)), y.size),
        "precision": proportion_se(tp, int(pred.sum())),
        "recall": proportion_se(tp, int(y.sum())),
        "f1": _f1_se(tp, relevant),
        "roc_auc": roc_auc_se(auc, int(y.sum()), int(y.size - y.sum())),
    }


def proportion_se(k: int, n: int) -> float:
    """Binomial standard error of ``k / n``, from the smoothed ``p = (k + 1) / (n + 2)``.

    The smoothing (Laplace's rule) keeps the error above 0 at ``k = 0`` or ``k = n``, where
    ``sqrt(p (1 - p) / n)`` would claim certainty, and gives 0.5 when ``n = 0``.

    >>> round(proportion_se(50, 100), 4), round(proportion_se(100, 100), 4)
    (0.05, 0.0099)
    """
    p = (k + 1) / (n + 2)
    return math.sqrt(p * (1 - p) / max(n, 1))


def _f1_se(tp: int, relevant: int) -> float:
    """Delta-method SE of ``F1 = 2 q / (1 + q)``, ``q = tp / relevant`` (tp + fp + fn)."""
    q = tp / relevant if relevant else 0.0
    return 2 / (1 + q) ** 2 * proportion_se(tp, relevant)


def roc_auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of a ROC AUC from its value and class counts.

    >>> round(roc_auc_se(0.9, 150, 350), 4)
    0.0176
    """
    if math.isnan(auc) or not n_pos or not n_neg:
        return math.nan
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)
    # at AUC = 1 the formula gives 0: floor it at 0.5 / sqrt(n_pos n_neg), not certainty
    return math.sqrt(max(var, 0.25) / (n_pos * n_neg))


def roc_auc(y: NDArray[np.bool_], score: NDArray[np.float64]) -> float:
    """Exact ROC AUC: the Mann-Whitney U of the positives' score ranks (ties averaged).

    >>> roc_auc(np.array([False, False, True, True]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if not n_pos or not n_neg:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def multiclass_metrics(y: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro F1 over the classes seen in ``y`` or ``pred`` (as sklearn).

    >>> multiclass_metrics(["a", "b", "c", "a"], ["a", "b", "b", "c"])
    {'accuracy': 0.5, 'macro_f1': 0.4444444444444444}
    """
    ya, pa = np.asarray(y), np.asarray(pred)
    f1s = []
    for c in sorted(set(y) | set(pred)):
        tp = float(np.sum((ya == c) & (pa == c)))
        wrong = float(np.sum((ya == c) != (pa == c)))
        f1s.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    return {
        "accuracy": float(np.mean(ya == pa)) if ya.size else math.nan,
        "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
    }


def multiclass_standard_errors(y: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """Standard errors of :func:`multiclass_metrics`.

    Accuracy is a proportion (:func:`proportion_se`).  Macro F1: each class's F1 has the
    delta-method error of :func:`binary_standard_errors`; the class F1s are correlated (an
    error lowers the F1 of two classes), so instead of assuming independence the error of
    their mean is bounded by the mean of their errors (Cauchy-Schwarz; exact when the class
    F1s move together) — conservative, as a false alarm costs more than a late one.

    >>> {k: round(v, 3) for k, v in multiclass_standard_errors(list("abca") * 100,
    ...                                                        list("abbc") * 100).items()}
    {'accuracy': 0.025, 'macro_f1': 0.024}
    """
    ya, pa = np.asarray(y), np.asarray(pred)
    ses = []
    for c in sorted(set(y) | set(pred)):
        is_y, is_p = ya == c, pa == c
        ses.append(_f1_se(int(np.sum(is_y & is_p)), int(np.sum(is_y | is_p))))
    return {
        "accuracy": proportion_se(int(np.sum(ya == pa)), ya.size),
        "macro_f1": float(np.mean(ses)) if ses else math.nan,
    }


def regression_metrics(y: NDArray[np.float64], pred: NDArray[np.float64]) -> dict[str, float]:
    """MAE, RMSE and R² (NaN when ``y`` is constant).

    >>> regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    {'mae': 0.3333333333333333, 'rmse': 0.5773502691896257, 'r2': 0.5}
    """
    err = y - pred
    sst = float(np.sum((y - y.mean()) ** 2)) if y.size else 0.0
    return {
        "mae": float(np.mean(np.abs(err))) if y.size else math.nan,
        "rmse": float(np.sqrt(np.mean(err**2))) if y.size else math.nan,
        "r2": 1.0 - float(np.sum(err**2)) / sst if sst > 0 else math.nan,
    }


def regression_standard_errors(
    y: NDArray[np.float64], pred: NDArray[np.float64]
) -> dict[str, float]:
    """Standard errors of :func:`regression_metrics`: MAE and RMSE *relative* (as the margin),
    R² absolute; the delta method throughout, NaN below two values.

    MAE is the mean of ``|err|``: ``SE / MAE = sd(|err|) / (sqrt(n) MAE)``.  RMSE is the
    square root of ``M``, the mean of ``err²``: ``SE / RMSE = sd(err²) / (2 sqrt(n) M)``.
    R² is ``1 - M / V`` with ``V`` the mean of ``d = (y - mean(y))²``:
    ``Var(R²) = (M / V)² (var(err²) / M² + var(d) / V² - 2 cov(err², d) / (M V)) / n``
    (the sample mean of ``y`` taken as known).

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=1000)
    >>> se = regression_standard_errors(2 * x + rng.normal(size=1000), 2 * x)
    >>> {k: round(v, 3) for k, v in se.items()}
    {'mae': 0.023, 'rmse': 0.021, 'r2': 0.012}
    """
    n = y.size
    if n < 2:
        return {"mae": math.nan, "rmse": math.nan, "r2": math.nan}
    err = y - pred
    a, s, d = np.abs(err), err**2, (y - y.mean()) ** 2
    mae, m, v = float(a.mean()), float(s.mean()), float(d.mean())
    cov = np.cov(s, d)  # ddof = 1
    r2_var = math.nan
    if v > 0 and m > 0:
        r2_var = (m / v) ** 2 * (cov[0, 0] / m**2 + cov[1, 1] / v**2 - 2 * cov[0, 1] / (m * v))
    return {
        "mae": float(a.std(ddof=1)) / math.sqrt(n) / max(mae, TINY),
        "rmse": math.sqrt(cov[0, 0] / n) / (2 * max(m, TINY)),
        "r2": math.sqrt(max(r2_var / n, 0.0)) if v > 0 and m > 0 else math.nan,
    }

"""Input validation shared by the statistics and the detectors.

Every public entry point converts its inputs here, so that NaN, inf, empty arrays and
wrong shapes are rejected with one kind of error (:class:`InvalidInputError`) and a
message that names the argument, the offending value and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from detectors.exceptions import InvalidInputError


def finite_1d(name: str, values: Any) -> NDArray[np.float64]:
    """Return ``values`` as a non-empty 1-D float64 array of finite numbers.

    Raises
    ------
    InvalidInputError
        If ``values`` is not numeric, not 1-D, empty, or holds NaN or inf.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{name}: expected a 1-D array-like of finite numbers, got {_short(values)} ({exc})"
        ) from exc
    if array.ndim != 1:
        raise InvalidInputError(f"{name}: expected a 1-D array-like, got shape {array.shape}")
    if array.size == 0:
        raise InvalidInputError(f"{name}: expected at least one value, got an empty array")
    if not np.isfinite(array).all():
        bad = float(array[~np.isfinite(array)][0])
        raise InvalidInputError(f"{name}: expected finite numbers, got {bad!r}")
    return array


def counts_1d(name: str, values: Any) -> NDArray[np.float64]:
    """Return ``values`` as a non-empty 1-D array of finite, non-negative counts."""
    array = finite_1d(name, values)
    if (array < 0).any():
        raise InvalidInputError(
            f"{name}: expected non-negative counts, got {float(array[array < 0][0])!r}"
        )
    return array


def labels_1d(name: str, values: Any) -> list[Any]:
    """Return ``values`` (categorical labels) as a non-empty list of hashable labels."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        raise InvalidInputError(
            f"{name}: expected a 1-D sequence of category labels, got {_short(values)}"
        )
    labels = list(values)
    if not labels:
        raise InvalidInputError(f"{name}: expected at least one label, got an empty sequence")
    for label in labels:
        if label is None or (isinstance(label, float) and not np.isfinite(label)):
            raise InvalidInputError(f"{name}: expected category labels, got {label!r}")
    return labels


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _short(values: Any) -> str:
    text = repr(values)
    return text if len(text) <= 60 else text[:57] + "..."

"""A challenger against the champion on the same labelled events: paired, with a test.

Pure logic, no I/O. Each labelled event that both models scored is one pair of losses: 0/1
errors for a classifier, absolute errors for a regression. Over the last ``window`` pairs,

- the metric of each model: accuracy (a classifier) or MAE (a regression);
- the *margin*: the challenger's accuracy minus the champion's, or the champion's MAE minus
  the challenger's relative to the champion's;
- the exact McNemar test: of the pairs where exactly one model is better (``wins`` for the
  challenger, ``losses`` for it), is the challenger better more often than chance would
  make it? The one-sided binomial test of ``wins`` out of ``wins + losses`` at 1/2. For a
  regression this is the sign test on which prediction was closer. Paired, so the events'
  own difficulty cancels out.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from scipy.stats import binomtest

from stream.exceptions import RejectedInput
from stream.model.online import Task, coerce_label


@dataclass(frozen=True)
class Verdict:
    """The comparison over its window. ``p_value`` is 1.0 when no pair differs."""

    n: int
    champion: float
    challenger: float
    margin: float
    wins: int
    losses: int
    p_value: float

    def beats(self, min_labels: int, margin: float, alpha: float) -> bool:
        """Enough pairs, a margin at least ``margin``, and significant at ``alpha``.

        >>> Verdict(600, 0.5, 0.6, 0.1, 90, 30, 1e-8).beats(500, 0.02, 0.01)
        True
        >>> Verdict(400, 0.5, 0.6, 0.1, 90, 30, 1e-8).beats(500, 0.02, 0.01)
        False
        """
        return self.n >= min_labels and self.margin >= margin and self.p_value < alpha

    def evidence(self) -> dict[str, Any]:
        return {
            "labels": self.n,
            "champion_metric": _finite(self.champion),
            "challenger_metric": _finite(self.challenger),
            "margin": _finite(self.margin),
            "challenger_better": self.wins,
            "champion_better": self.losses,
            "p_value": self.p_value,
        }


class Comparison:
    """Paired losses of a challenger and the champion over the last ``window`` labels.

    >>> c = Comparison("binary", window=100)
    >>> for i in range(100):
    ...     _ = c.add(y=1, champion=int(i % 2 == 0), challenger=1)
    >>> v = c.verdict()
    >>> (v.n, v.champion, v.challenger, v.margin, v.wins, v.losses, v.p_value < 1e-10)
    (100, 0.5, 1.0, 0.5, 50, 0, True)
    """

    def __init__(self, task: Task, window: int) -> None:
        self.task = task
        self.regression = task == "regression"
        self._pairs: deque[tuple[float, float]] = deque(maxlen=window)
        self._sums = [0.0, 0.0]
        self._wins = 0
        self._losses = 0
        self.total = 0  # pairs ever added

    def __len__(self) -> int:
        return len(self._pairs)

    def add(self, y: Any, champion: Any, challenger: Any) -> bool:
        """Add one labelled event's predictions; False if they cannot be judged (skipped)."""
        try:
            truth = coerce_label(y, self.task)
            a = self._loss(truth, champion)
            b = self._loss(truth, challenger)
        except (RejectedInput, TypeError, ValueError):
            return False
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        if len(self._pairs) == self._pairs.maxlen:
            self._drop(*self._pairs[0])
        self._pairs.append((a, b))
        self._sums[0] += a
        self._sums[1] += b
        self._wins += b < a
        self._losses += a < b
        self.total += 1
        return True

    def _drop(self, a: float, b: float) -> None:
        self._sums[0] -= a
        self._sums[1] -= b
        self._wins -= b < a
        self._losses -= a < b

    def _loss(self, truth: Any, prediction: Any) -> float:
        if prediction is None:
            return math.inf if self.regression else 1.0
        if self.regression:
            return abs(float(prediction) - float(truth))
        return float(coerce_label(prediction, self.task) != truth)

    def verdict(self) -> Verdict:
        n = len(self._pairs)
        if n == 0:
            return Verdict(0, math.nan, math.nan, math.nan, 0, 0, 1.0)
        champion, challenger = self._sums[0] / n, self._sums[1] / n
        if self.regression:
            margin = (champion - challenger) / champion if champion > 0 else 0.0
        else:
            champion, challenger = 1.0 - champion, 1.0 - challenger
            margin = challenger - champion
        discordant = self._wins + self._losses
        p = (
            float(binomtest(self._wins, discordant, 0.5, alternative="greater").pvalue)
            if discordant
            else 1.0
        )
        return Verdict(n, champion, challenger, margin, self._wins, self._losses, p)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class Arms:
    """What each A/B arm served, judged on its labels: accuracy (MAE for a regression) of the
    served predictions over each arm's last ``window`` labelled events.

    >>> arms = Arms("binary", window=4)
    >>> for y, p in [(1, 1), (1, 0), (0, 0)]:
    ...     _ = arms.add("a", y, p)
    >>> _ = arms.add("b", 1, 1)
    >>> {arm: (round(value, 3), n) for arm, (value, n) in arms.metrics().items()}
    {'a': (0.667, 3), 'b': (1.0, 1)}
    """

    def __init__(self, task: Task, window: int) -> None:
        self.task = task
        self.window = window
        self._losses: dict[str, deque[float]] = {}
        self._judge = Comparison(task, 1)  # its loss function

    def add(self, arm: str, y: Any, prediction: Any) -> bool:
        try:
            loss = self._judge._loss(coerce_label(y, self.task), prediction)
        except (RejectedInput, TypeError, ValueError):
            return False
        if not math.isfinite(loss):
            return False
        self._losses.setdefault(arm, deque(maxlen=self.window)).append(loss)
        return True

    def metrics(self) -> dict[str, tuple[float, int]]:
        """Per arm: (accuracy or MAE, labels)."""
        out = {}
        for arm, losses in self._losses.items():
            mean = sum(losses) / len(losses)
            out[arm] = (mean if self._judge.regression else 1.0 - mean, len(losses))
        return out

"""When the prediction reference is taken: once the online model has settled.

Pure logic, no I/O.  An online learner's scores move while it converges, whatever the
inputs do: a reference made of its first scores is judged against the scores of a better
model later, and ``prediction_drift`` fires on a stationary stream.  Once converged, a model
that keeps learning (SGD at a constant learning rate) still *wanders* around its optimum:
its scores move with its weights, on a time scale of a few hundred examples, for as long as
it learns.  The prediction subjects (``prediction.score``, ``prediction.class``) therefore
take their reference in three steps:

1. values scored by version 0 (the untrained model, which scores every event alike) never
   enter a reference; while settling, nor do values scored by a version older than the
   newest one seen when the current block began (:func:`stale`): a scorer serving an old
   version, or a backlog scored long before the trainer caught up, would otherwise make two
   blocks of the same early model agree;
2. the values come in blocks of ``reference_size``; the model has *settled* when a block
   *agrees* with the block before it (:func:`blocks_agree`): models at least as new as every
   model of the previous block give the same outputs.  Until then each block replaces the
   previous one;
3. the next :data:`NULL_BLOCKS` blocks after the settling pair are the *null stretch*: the
   settled model's own output, in time order, wandering as it will.  The thresholds are
   calibrated on moving blocks of it (``Detector.fit(reference, null)``), and the reference
   is ``reference_size`` values spread evenly over it (:func:`spread`), so that it stands for
   the model's output over its wander rather than for one moment of it.  The detectors start
   after the stretch.

Why not the settling pair itself as the null (the rule before): the pair is *selected* for
agreeing, i.e. for a stretch where the model happened to move little, and 4,000 values hold a
dozen independent states of the wander.  Thresholds calibrated on it were too low: scoring a
stationary card stream with a River logistic regression that learns every batch of 100, 10
of 12 seeds raised ``prediction_drift`` in 40,000 events.  With the null stretch after the
pair (unselected) and the reference spread over it, 5 of 24 seeds raised an alarm: PSI's
300-value window in 4, chi-square in 1, KS and Wasserstein in none; on the real pipeline
(``tests/integration/test_prediction_reference.py``) 1 run of 4 (KS and PSI, once), against
3 of 3 before.  The residue is the block bootstrap's: resampling a finite stretch cannot
simulate an excursion of the wander larger than the stretch holds (README).

Agreement is a two-sample test at ``monitoring.settle_level`` (default 0.01): the KS
statistic below its asymptotic critical value (numeric), Pearson's chi-square p-value above
the level (categorical).  A model still converging differs block to block by far more than
that.  The wait (settling and the null stretch) is reported by the
``driftwatch_monitor_phase`` gauge (2 = settling) and log lines.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> blocks_agree("numeric", rng.beta(2, 5, 2000).tolist(), rng.beta(2, 5, 2000).tolist(), 0.01)
True
>>> blocks_agree("numeric", rng.beta(2, 5, 2000).tolist(), rng.beta(2, 4, 2000).tolist(), 0.01)
False
>>> blocks_agree("categorical", ["0"] * 1900 + ["1"] * 100, ["0"] * 1500 + ["1"] * 500, 0.01)
False
>>> stale(0, 0), stale(7, 9), stale(9, 9)
(True, True, False)
>>> spread(list(range(10)), 4)
[0, 3, 6, 9]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from detectors import chi2
from detectors.ks import ks_critical_value, ks_sorted_statistic
from stream.messages import SubjectKind

#: Blocks of ``reference_size`` values after the settling pair that make the null stretch
#: (16,000 values at the defaults): long enough to hold some fifty independent states of a
#: wandering model (its scores decorrelate over ~300 learned examples) and not selected by
#: any test.  Fewer blocks gave more false alarms (8,000 values: 7 of 24 seeds).
NULL_BLOCKS = 8


def blocks_agree(
    kind: SubjectKind, previous: Sequence[Any], block: Sequence[Any], level: float
) -> bool:
    """Whether two consecutive blocks of a subject's values look alike at ``level``."""
    if kind == "numeric":
        ref = np.sort(np.asarray(previous, dtype=np.float64))
        cur = np.sort(np.asarray(block, dtype=np.float64))
        statistic = float(ks_sorted_statistic(ref, cur[np.newaxis])[0])
        return statistic <= ks_critical_value(ref.size, cur.size, level)
    before, now = Counter(previous), Counter(block)
    categories = sorted(set(before) | set(now))
    if len(categories) < 2:
        return True  # one class in both: nothing moved
    _, p_value = chi2([before[c] for c in categories], [now[c] for c in categories])
    return p_value >= level


def stale(version: int, floor: int) -> bool:
    """Whether a value scored by ``version`` stays out of a block that began when the
    newest version seen was ``floor`` (version 0, the untrained model, always does)."""
    return version == 0 or version < floor


def spread(values: Sequence[Any], size: int) -> list[Any]:
    """``size`` values spread evenly over ``values`` (first and last included), in order."""
    if size >= len(values):
        return list(values)
    picks = np.linspace(0, len(values) - 1, size).round().astype(np.int64)
    return [values[i] for i in picks.tolist()]


__all__ = ["NULL_BLOCKS", "blocks_agree", "spread", "stale"]

"""When the prediction reference is taken, and by which model: the *reference model*.

Pure logic, no I/O.  An online learner's scores move while it converges, whatever the
inputs do: a reference made of its first scores is judged against the scores of a better
model later, and ``prediction_drift`` fires on a stationary stream.  Once converged, a model
that keeps learning (SGD at a constant learning rate) still *wanders* around its optimum:
its scores move with its weights, on a time scale of a few hundred examples, for as long as
it learns, so no reference of the served model's scores stays comparable with its later
scores.  The prediction subjects (``prediction.score``, ``prediction.class``) therefore
watch the outputs of one fixed version, the reference model, on the live events:

1. *settling*: values scored by version 0 (the untrained model, which scores every event
   alike) never count; nor do values scored by a version older than the newest one seen
   when the current block began (:func:`stale`): a scorer serving an old version, or a
   backlog scored long before the trainer caught up, would otherwise make two blocks of the
   same early model agree.  The values come in blocks of ``reference_size``; the model has
   *settled* when a block *agrees* with the block before it (:func:`blocks_agree`).
2. *pinning*: the newest version seen then is pinned as the reference model
   (``SnapshotStore.pin_reference``: a copy of its record that pruning leaves alone, and an
   entry on the changes stream).  The first prediction monitor to ask wins; the other one
   adopts it.  Every scorer loads it with its next model refresh and sends, for the
   prediction subjects, the reference model's outputs on each event (tagged with its
   version) instead of the served ones.
3. from then on the prediction monitors take only values of the reference version and
   collect and judge them exactly as a feature's: the first ``reference_size`` values are
   the reference, the detectors are calibrated on it, and a stationary input stream gives
   independent draws of one fixed function of the inputs, so the stated false-alarm rate
   holds.  What ``prediction_drift`` means is then: *the inputs moved in a way the model's
   outputs feel*.  A change in what the served model learns (a concept change) is the
   business of the ``concept_drift`` and ``performance`` alerts.

The rule before this one took the reference from the served model's own scores after
settling and calibrated the thresholds on a stretch of its wander (moving-block bootstrap):
on a stationary card stream with a River logistic regression that learns every batch of 100,
5 of 24 seeds still raised ``prediction_drift`` in 40,000 events (the bootstrap cannot
simulate an excursion larger than its stretch holds), and the real-pipeline test fired in 1
run of 4.  With the reference model none did (README).

``driftwatch reference unpin`` drops the reference model as well (the monitors settle and
pin anew); ``reference pin`` drops it too, since pinned values are the served model's
outputs, and a prediction monitor fitted on pinned values takes every value it gets.

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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from detectors import chi2
from detectors.ks import ks_critical_value, ks_sorted_statistic
from stream.messages import SubjectKind


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


__all__ = ["blocks_agree", "stale"]

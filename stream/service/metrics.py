"""Prometheus metrics of a worker. Labels have bounded cardinality: never an entity or event id.

Names follow Prometheus conventions: base units in the name, ``_total`` for counters,
``_seconds`` for durations. The README lists them with their meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, get_args

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.metrics_core import Metric

from stream.exceptions import ConfigError
from stream.monitoring.alerts import AlertKind, AlertStatus

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LAG_BUCKETS = (0.1, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)
SCORE_BUCKETS = tuple(i / 20 for i in range(1, 20))
MAX_CLASS_LABELS = 100
"""Distinct predicted classes exported as label values; the rest count as ``(other)``."""


def observe_many(histogram: Any, values: Sequence[float] | np.ndarray) -> None:
    """``histogram.observe(v)`` for every value, as one count per bucket (a histogram child:
    no labels, or after ``.labels(...)``).

    A batch's values are counted with numpy and each bucket is incremented once, instead of
    one ``observe`` per value (about 1.3 us each, per event and histogram). It reads the
    histogram's bucket bounds and counters (``_upper_bounds``, ``_buckets``, ``_sum``: how
    prometheus-client 0.17-0.26 keeps them); a version without them gets one ``observe``
    per value. ``tests/stream/test_metrics.py`` checks both give the same exposition.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values:
            histogram.observe(float(v))
        return
    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return
    # observe() counts a value in the first bucket whose bound is >= the value
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))
    for bucket, k in zip(buckets, counts.tolist(), strict=False):
        if k:
            bucket.inc(k)
    total.inc(float(array.sum()))


class Metrics:
    """Every metric a worker exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._classes: set[str] = set()
        p = "driftwatch_"
        self.events_received = Counter(f"{p}events_received", "Event messages consumed", registry=r)
        self.events_accepted = Counter(
            f"{p}events_accepted", "Events that passed validation", registry=r
        )
        self.events_rejected = Counter(
            f"{p}events_rejected",
            "Input messages sent to the dead-letter topic",
            ["topic", "stage", "code"],
            registry=r,
        )
        self.events_duplicate = Counter(
            f"{p}events_duplicate",
            "Redelivered events (feature windows left unchanged)",
            registry=r,
        )
        self.events_late = Counter(
            f"{p}events_late",
            "Events older than the grace period (not added to windows)",
            registry=r,
        )
        self.data_quality = Counter(
            f"{p}data_quality_issues",
            "Data-quality problems in accepted events",
            ["feature", "kind"],
            registry=r,
        )
        self.batch_size = Histogram(
            f"{p}batch_size_events", "Events per processed batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.event_latency = Histogram(
            f"{p}event_to_prediction_seconds",
            "Event time to prediction published",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            f"{p}batch_processing_seconds",
            "Wall time to process one batch, by stage",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_seconds = Histogram(
            f"{p}redis_roundtrip_seconds",
            "Redis round-trip latency",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            f"{p}predictions", "Predictions published", ["model", "prediction"], registry=r
        )
        self.score = Histogram(
            f"{p}prediction_score",
            "Model score (P(class 1) for binary)",
            ["model"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.labels_received = Counter(f"{p}labels_received", "Label messages consumed", registry=r)
        self.labels_joined = Counter(
            f"{p}labels_joined", "Labels joined to their prediction", registry=r
        )
        self.labels_unmatched = Counter(
            f"{p}labels_unmatched",
            "Labels that came before their prediction (parked until it is scored)",
            registry=r,
        )
        self.predictions_expired = Counter(
            f"{p}predictions_expired_unlabelled", "Predictions whose label never came", registry=r
        )
        self.label_lag = Histogram(
            f"{p}label_lag_seconds", "Label time minus event time", buckets=LAG_BUCKETS, registry=r
        )
        self.learned = Counter(
            f"{p}model_learned_examples", "Examples learned", ["model"], registry=r
        )
        self.model_version = Gauge(
            f"{p}model_version", "Model version this worker serves", ["model"], registry=r
        )
        self.model_info = Info(f"{p}model", "Model served by this worker", registry=r)
        self.published_version = Gauge(
            f"{p}model_published_version",
            "Latest version published by the trainer",
            ["model"],
            registry=r,
        )
        # freshness (stream/model/freshness.py): what a publication costs, how far behind the
        # served version is
        self.publish_seconds = Histogram(
            f"{p}model_publish_seconds",
            "Time to encode, sign and store one published version",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.snapshot_bytes = Gauge(
            f"{p}model_snapshot_bytes",
            "Size of the last published version's record",
            ["model"],
            registry=r,
        )
        self.lag_examples = Gauge(
            f"{p}model_lag_examples",
            "Examples the trainer has learned that the version this worker serves has not",
            ["model"],
            registry=r,
        )
        self.served_age = Gauge(
            f"{p}model_served_age_seconds",
            "Seconds since the version this worker serves was published",
            ["model"],
            registry=r,
        )

        # monitoring (labels: subject = feature or prediction.score/.class, never an entity)
        self.drift_statistic = Gauge(
            f"{p}drift_statistic",
            "Latest drift statistic per subject and detector",
            ["subject", "detector"],
            registry=r,
        )
        self.drift_threshold = Gauge(
            f"{p}drift_threshold",
            "Calibrated threshold of the drift statistic",
            ["subject", "detector"],
            registry=r,
        )
        self.drift_active = Gauge(
            f"{p}drift_active",
            "1 while a drift episode is open",
            ["subject", "detector"],
            registry=r,
        )
        self.alerts = Counter(f"{p}alerts", "Alerts published", ["kind", "status"], registry=r)
        # every series exists at 0 from the start: the first alert of a kind is then a change
        # that rate(), increase() and changes() see (a series born at 1 looks unchanged)
        for kind in get_args(AlertKind):
            for status in get_args(AlertStatus):
                self.alerts.labels(kind, status)
        self.model_metric = Gauge(
            f"{p}model_metric",
            "Rolling model performance over the label window",
            ["model", "metric"],
            registry=r,
        )
        # champion and challengers (stream.model.lifecycle)
        self.model_role = Gauge(
            f"{p}model_role",
            "1 for each model of the lineup, labelled with its role",
            ["model", "role"],
            registry=r,
        )
        self.challenger_metric = Gauge(
            f"{p}challenger_comparison",
            "A challenger against the champion on the same labelled events: accuracy or MAE "
            "of each (champion, challenger), margin, labels compared, exact McNemar p-value",
            ["model", "champion", "stat"],
            registry=r,
        )
        self.arm_metric = Gauge(
            f"{p}arm_metric",
            "A/B arms: accuracy (MAE for a regression) of the predictions each model served, "
            "over its last lifecycle.compare_window labels (stat metric), and those labels",
            ["model", "stat"],
            registry=r,
        )
        self.shadow_predictions = Counter(
            f"{p}shadow_predictions",
            "Predictions of challengers and shadows, published to the shadow topic",
            ["model"],
            registry=r,
        )
        self.quality_rate = Gauge(
            f"{p}data_quality_rate",
            "Rolling rate of data-quality problems",
            ["feature", "kind"],
            registry=r,
        )
        self.monitor_values = Counter(
            f"{p}monitor_values", "Values consumed by the drift monitors", registry=r
        )
        # event-time order and reference state of each subject's monitor (saved with the
        # monitor, so these are gauges: a new owner carries on from the saved counts)
        self.monitor_phase = Gauge(
            f"{p}monitor_phase",
            "0 warming up, 1 collecting the reference, 2 model settling, 3 fitted",
            ["subject"],
            registry=r,
        )
        self.monitor_late_values = Gauge(
            f"{p}monitor_late_values",
            "Values that came behind the event-time watermark, left out of the detectors",
            ["subject"],
            registry=r,
        )
        self.monitor_buffered_values = Gauge(
            f"{p}monitor_buffered_values",
            "Values held until the event-time watermark passes them",
            ["subject"],
            registry=r,
        )
        self.monitor_watermark_delay = Gauge(
            f"{p}monitor_watermark_delay_seconds",
            "Event time between the newest source partition and the watermark",
            ["subject"],
            registry=r,
        )

        # resilience (stream/service/resilience.py): outages, retries, poison, lost-update guards
        self.dependency_degraded = Gauge(
            f"{p}dependency_degraded",
            "1 while an outage of the dependency is going on (batches retried, not acked)",
            ["dependency"],
            registry=r,
        )
        self.retries = Counter(
            f"{p}retries",
            "Tries of a step that failed transiently and were retried",
            ["dependency", "step"],
            registry=r,
        )
        for dependency in ("redis", "kafka"):
            self.dependency_degraded.labels(dependency).set(0)
        self.task_errors = Counter(
            f"{p}task_errors",
            "Failures of a timer or background task (logged; the next tick tries again)",
            ["task"],
            registry=r,
        )
        self.state_conflicts = Counter(
            f"{p}state_write_conflicts",
            "Feature states another worker changed between read and write (re-read, re-applied)",
            registry=r,
        )
        self.state_resets = Counter(
            f"{p}state_resets",
            "Stored feature states that could not be decoded or applied and were reset",
            registry=r,
        )
        self.examples_skipped = Counter(
            f"{p}model_examples_skipped",
            "Training examples not learned (dead-lettered), by reason",
            ["model", "reason"],
            registry=r,
        )

        # Kafka consumer (stream/service/lag.py): topic and partition are bounded by the deployment
        self.consumer_lag = Gauge(
            f"{p}consumer_lag_messages",
            "Messages behind the partition's end offset (highwater minus committed offset)",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            f"{p}assigned_partitions",
            "Partitions currently assigned to this worker",
            ["topic"],
            registry=r,
        )
        self.rebalances = Counter(
            f"{p}rebalances", "Consumer-group rebalances this worker took part in", registry=r
        )

    def prediction_label(self, task: str, prediction: object) -> str:
        """The ``prediction`` label of ``driftwatch_predictions_total``: always bounded.

        Binary: ``"0"``/``"1"``. Multiclass: the class, for the first
        :data:`MAX_CLASS_LABELS` classes seen, then ``"(other)"``. Regression: ``"(value)"``
        (a predicted number is not a label value; its distribution is the score histogram).

        >>> m = Metrics()
        >>> m.prediction_label("binary", 1), m.prediction_label("regression", 3.25)
        ('1', '(value)')
        """
        if task == "regression":
            return "(value)"
        label = str(prediction)
        if label in self._classes:
            return label
        if len(self._classes) >= MAX_CLASS_LABELS:
            return "(other)"
        self._classes.add(label)
        return label

    def serve(self, address: str, others: Callable[[], Iterable[Metric]] | None = None) -> None:
        """Serve ``/metrics`` on ``host:port`` (port 0 disables), with the metric families
        ``others`` returns (the monitors' child process) merged in."""
        host, _, port = address.rpartition(":")
        if int(port) == 0:
            return
        registry: Any = self.registry if others is None else _Merged(self.registry, others)
        try:
            start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
        except OSError as exc:
            raise ConfigError(
                f"worker.metrics_address {address!r}: cannot listen there ({exc.strerror}); "
                "another worker on this machine needs another port"
            ) from None


def merge_families(mine: Iterable[Metric], others: Iterable[Metric]) -> list[Metric]:
    """Metric families of two processes of one worker as one exposition.

    A family both export (the same metrics class registers every family in each process)
    gets the samples of both: a sample with the same name and labels in both is summed
    (counters, histogram buckets, sums and counts), or its maximum taken (gauges: e.g.
    ``dependency_degraded`` is 1 when either process waits for Redis); ``*_created`` keeps
    the earlier time.

    >>> from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    >>> a = [CounterMetricFamily("n", "h", value=2), GaugeMetricFamily("g", "h", value=0)]
    >>> b = [CounterMetricFamily("n", "h", value=3), GaugeMetricFamily("g", "h", value=1)]
    >>> [(s.name, s.value) for f in merge_families(a, b) for s in f.samples]
    [('n_total', 5), ('g', 1)]
    """
    families = {family.name: family for family in mine}
    for family in others:
        own = families.get(family.name)
        if own is None:
            families[family.name] = family
            continue
        merged = Metric(own.name, own.documentation, own.type, own.unit)
        index = {(s.name, tuple(sorted(s.labels.items()))): s for s in own.samples}
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            found = index.get(key)
            if found is None:
                index[key] = sample
            elif sample.name.endswith("_created"):
                index[key] = found._replace(value=min(found.value, sample.value))
            elif own.type == "gauge":
                index[key] = found._replace(value=max(found.value, sample.value))
            else:
                index[key] = found._replace(value=found.value + sample.value)
        merged.samples = list(index.values())
        families[family.name] = merged
    return list(families.values())


class _Merged:
    """What ``start_http_server`` collects: this process's registry and another's families."""

    def __init__(self, registry: CollectorRegistry, others: Callable[[], Iterable[Metric]]):
        self.registry = registry
        self.others = others

    def collect(self) -> Iterable[Metric]:
        return merge_families(self.registry.collect(), self.others())

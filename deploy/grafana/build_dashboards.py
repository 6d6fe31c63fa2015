#!/usr/bin/env python3
"""Build driftwatch's Grafana dashboards as JSON (overview, model, drift).

    python3 deploy/grafana/build_dashboards.py          # write deploy/grafana/dashboards/*.json
    python3 deploy/grafana/build_dashboards.py --check  # exit 1 if the committed JSON is stale

Plain dictionaries and the standard library only: the dashboards are small, and the output is
byte-for-byte reproducible (sorted keys, fixed ids and positions), so a diff of the JSON shows
exactly what a change to this file did. Every query names a metric from
``stream/service/metrics.py``;
``tests/integration/test_observability.py`` runs each of them against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"

Panel = dict[str, Any]


def target(expr: str, legend: str = "", ref: str = "A", fmt: str = "time_series") -> dict[str, Any]:
    """One PromQL query of a panel."""
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "format": fmt,
        "legendFormat": legend or "__auto",
        "range": True,
        "refId": ref,
    }


def panel(
    title: str,
    queries: list[tuple[str, str]],
    unit: str = "short",
    kind: str = "timeseries",
    description: str = "",
    width: int = 12,
    height: int = 8,
    fmt: str = "time_series",
    **extra: Any,
) -> Panel:
    """A panel of ``kind`` with one target per ``(expr, legend)``; placed later by ``layout``."""
    refs = "ABCDEFGHIJ"
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [target(e, legend, refs[i], fmt) for i, (e, legend) in enumerate(queries)],
        "title": title,
        "type": kind,
        **extra,
    }


def row(title: str) -> Panel:
    return {
        "collapsed": False,
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0},
        "panels": [],
        "title": title,
        "type": "row",
    }


def layout(panels: list[Panel]) -> list[Panel]:
    """Number the panels and flow them left to right, 24 grid units to a line."""
    x = y = line_height = 0
    for i, p in enumerate(panels, start=1):
        pos = p["gridPos"]
        if p["type"] == "row" or x + pos["w"] > 24:
            x, y, line_height = 0, y + line_height, 0
        pos["x"], pos["y"] = x, y
        p["id"] = i
        x += pos["w"]
        line_height = max(line_height, pos["h"])
        if p["type"] == "row":
            x, y, line_height = 0, y + 1, 0
    return panels


def quantiles(metric: str, by: str = "", matcher: str = "") -> list[tuple[str, str]]:
    """p50 and p99 of a histogram, aggregated over workers (and over ``by``, if given)."""
    keys = ", ".join(k for k in ("le", by) if k)
    prefix = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({keys}) (rate({metric}_bucket{matcher}[{RATE}])))",
            f"{prefix}p{round(q * 100)}",
        )
        for q in (0.5, 0.99)
    ]


def variable(name: str, query: str, label: str) -> dict[str, Any]:
    """A multi-value template variable filled from a label's values in Prometheus."""
    definition = f"label_values({query}, {name})"
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": definition,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": definition, "refId": "PrometheusVariableQueryEditor"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "type": "query",
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Panel],
    variables: list[dict[str, Any]] | None = None,
    annotations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "annotations": {"list": [builtin, *(annotations or [])]},
        "description": description,
        "editable": True,
        "graphTooltip": 1,
        "links": [
            {
                "asDropdown": False,
                "includeVars": False,
                "keepTime": True,
                "tags": ["driftwatch"],
                "title": "driftwatch",
                "type": "dashboards",
            }
        ],
        "panels": layout(panels),
        "refresh": "10s",
        "schemaVersion": 39,
        "tags": ["driftwatch"],
        "templating": {"list": variables or []},
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }


def overview() -> dict[str, Any]:
    lag = "driftwatch_consumer_lag_messages"
    panels = [
        row("Throughput and errors"),
        panel(
            "Events per second",
            [
                (f"sum(rate(driftwatch_events_received_total[{RATE}]))", "received"),
                (f"sum(rate(driftwatch_events_accepted_total[{RATE}]))", "accepted"),
                (f"sum(rate(driftwatch_events_rejected_total[{RATE}]))", "rejected (DLQ)"),
                (f"sum(rate(driftwatch_predictions_total[{RATE}]))", "predictions"),
            ],
            unit="ops",
        ),
        panel(
            "Dead letters by reason",
            [
                (
                    f"sum by (topic, stage, code) (rate(driftwatch_events_rejected_total[{RATE}]))",
                    "{{topic}} {{stage}}: {{code}}",
                )
            ],
            unit="ops",
            description="Every rejected input lands on the dead-letter topic with this reason.",
        ),
        panel(
            "Redelivered and late events",
            [
                (f"sum(rate(driftwatch_events_duplicate_total[{RATE}]))", "duplicate"),
                (f"sum(rate(driftwatch_events_late_total[{RATE}]))", "late (past grace)"),
            ],
            unit="ops",
            width=8,
        ),
        panel(
            "Workers up",
            [('sum(up{job="driftwatch"})', "workers")],
            kind="stat",
            width=4,
        ),
        panel(
            "Batch size",
            [
                *quantiles("driftwatch_batch_size_events"),
                (
                    f"sum(rate(driftwatch_batch_size_events_sum[{RATE}])) / "
                    f"sum(rate(driftwatch_batch_size_events_count[{RATE}]))",
                    "mean",
                ),
            ],
            description="Events per processed batch: one Redis round trip per batch.",
        ),
        row("Latency"),
        panel(
            "Event time to prediction published",
            quantiles("driftwatch_event_to_prediction_seconds"),
            unit="s",
        ),
        panel(
            "Batch wall time by stage",
            quantiles("driftwatch_batch_processing_seconds", by="stage"),
            unit="s",
        ),
        panel(
            "Redis round trip by operation",
            quantiles("driftwatch_redis_roundtrip_seconds", by="op"),
            unit="s",
            width=24,
        ),
        row("Kafka consumer"),
        panel(
            "Consumer lag by topic",
            [(f"sum by (topic) ({lag})", "{{topic}}")],
            description="End offset minus committed offset, summed over partitions.",
        ),
        panel(
            "Consumer lag by partition",
            [(f"max by (topic, partition) ({lag})", "{{topic}}[{{partition}}]")],
        ),
        panel(
            "Rebalances",
            [(f"sum(increase(driftwatch_rebalances_total[{RATE}]))", "rebalances")],
            width=8,
        ),
        panel(
            "Assigned partitions",
            [("sum by (topic) (driftwatch_assigned_partitions)", "{{topic}}")],
            width=8,
        ),
        panel(
            "Rebalances since start",
            [("sum(driftwatch_rebalances_total)", "rebalances")],
            kind="stat",
            width=8,
        ),
    ]
    return dashboard(
        "driftwatch-overview",
        "driftwatch / overview",
        "Throughput, errors, latency and Kafka consumer lag of the driftwatch workers.",
        panels,
    )


def model() -> dict[str, Any]:
    m = '{model=~"$model"}'
    panels = [
        row("Performance"),
        panel(
            "Rolling model metrics",
            [(f"max by (model, metric) (driftwatch_model_metric{m})", "{{model}} {{metric}}")],
            description="Over the last labels (monitoring.performance_window).",
            width=24,
        ),
        row("Champion and challengers"),
        panel(
            "Lineup",
            [("max by (model, role) (driftwatch_model_role)", "{{model}} {{role}}")],
            kind="stat",
            description="Each model of the lineup and its role: the champion's predictions "
            "are served, the others' go to the shadow topic.",
            width=8,
        ),
        panel(
            "Challenger vs champion, same labelled events",
            [
                (
                    "max by (model, champion) "
                    '(driftwatch_challenger_comparison{stat="challenger_metric"})',
                    "{{model}}",
                ),
                (
                    'max by (champion) (driftwatch_challenger_comparison{stat="champion_metric"})',
                    "champion {{champion}}",
                ),
            ],
            description="Accuracy (MAE for a regression) of each challenger and of the "
            "champion over the last lifecycle.compare_window labelled events both scored.",
            width=8,
        ),
        panel(
            "Comparison evidence",
            [
                (
                    'max by (model) (driftwatch_challenger_comparison{stat="p_value"})',
                    "{{model}} McNemar p",
                ),
                (
                    'max by (model) (driftwatch_challenger_comparison{stat="labels"})',
                    "{{model}} labels",
                ),
            ],
            description="The exact McNemar test's one-sided p-value (left) and the labels "
            "compared (right); the policy promotes below lifecycle.alpha with at least "
            "lifecycle.min_labels labels and the margin.",
            width=8,
            fieldConfig={
                "defaults": {},
                "overrides": [
                    {
                        "matcher": {"id": "byRegexp", "options": ".*labels"},
                        "properties": [{"id": "custom.axisPlacement", "value": "right"}],
                    }
                ],
            },
        ),
        panel(
            "A/B arms: what each model served",
            [('max by (model) (driftwatch_arm_metric{stat="metric"})', "{{model}}")],
            description="Accuracy (MAE for a regression) of the predictions each model served "
            "to its share of the entities (serve_share), over its last labels. Without A/B "
            "the champion is the one arm.",
            width=24,
        ),
        row("Labels"),
        panel("Label lag", quantiles("driftwatch_label_lag_seconds"), unit="s"),
        panel(
            "Labels",
            [
                (f"sum(rate(driftwatch_labels_received_total[{RATE}]))", "received"),
                (f"sum(rate(driftwatch_labels_joined_total[{RATE}]))", "joined"),
                (f"sum(rate(driftwatch_labels_unmatched_total[{RATE}]))", "unmatched"),
                (
                    f"sum(rate(driftwatch_predictions_expired_unlabelled_total[{RATE}]))",
                    "predictions expired unlabelled",
                ),
            ],
            unit="ops",
        ),
        row("Learning and versions"),
        panel(
            "Examples learned per second",
            [
                (
                    f"sum by (model) (rate(driftwatch_model_learned_examples_total{m}[{RATE}]))",
                    "{{model}}",
                )
            ],
            unit="ops",
            width=8,
        ),
        panel(
            "Served vs published version",
            [
                (f"driftwatch_model_version{m}", "served {{model}} ({{instance}})"),
                (f"max by (model) (driftwatch_model_published_version{m})", "published {{model}}"),
            ],
            description="Workers are told of a new version at once (poll as a fallback).",
            width=8,
        ),
        panel(
            "Examples learned",
            [(f"sum by (model) (driftwatch_model_learned_examples_total{m})", "{{model}}")],
            kind="stat",
            width=8,
        ),
        row("Freshness of the served model"),
        panel(
            "Served model lag (examples)",
            [(f"driftwatch_model_lag_examples{m}", "{{model}} ({{instance}})")],
            description="Examples the trainer has learned that the version each worker serves "
            "has not. With the default model.publish_every = 1 a linear model stays within one "
            "training batch.",
            width=8,
        ),
        panel(
            "Served version age",
            [(f"driftwatch_model_served_age_seconds{m}", "{{model}} ({{instance}})")],
            unit="s",
            description="Seconds since the served version was published: its lag in time "
            "while the lag in examples is above 0.",
            width=8,
        ),
        panel(
            "Publication cost",
            [
                *quantiles("driftwatch_model_publish_seconds", matcher=m),
                (f"max by (model) (driftwatch_model_snapshot_bytes{m})", "{{model}} bytes"),
            ],
            unit="s",
            description="Time to encode, sign and store a version (p50, p99) and the size of "
            "the last one (bytes, right axis). Costly snapshots: raise model.publish_every.",
            width=8,
            fieldConfig={
                "defaults": {"unit": "s"},
                "overrides": [
                    {
                        "matcher": {"id": "byRegexp", "options": ".*bytes"},
                        "properties": [
                            {"id": "unit", "value": "bytes"},
                            {"id": "custom.axisPlacement", "value": "right"},
                        ],
                    }
                ],
            },
        ),
        row("Predictions"),
        panel(
            "Score distribution",
            [
                (
                    f"sum by (le) (increase(driftwatch_prediction_score_bucket{m}[$__interval]))",
                    "{{le}}",
                )
            ],
            kind="heatmap",
            fmt="heatmap",
            options={"calculate": False, "yAxis": {"unit": "short"}},
        ),
        panel(
            "Predictions by class",
            [
                (
                    f"sum by (model, prediction) (rate(driftwatch_predictions_total{m}[{RATE}]))",
                    "{{model}} class {{prediction}}",
                )
            ],
            unit="ops",
        ),
    ]
    return dashboard(
        "driftwatch-model",
        "driftwatch / model",
        "Live model performance, delayed labels, learning and the versions served.",
        panels,
        variables=[variable("model", "driftwatch_model_version", "Model")],
    )


def drift() -> dict[str, Any]:
    s = '{subject=~"$subject"}'
    statistic = panel(
        "Drift statistic vs threshold: $subject",
        [
            (
                f"max by (subject, detector) (driftwatch_drift_statistic{s})",
                "{{detector}} statistic",
            ),
            (
                f"max by (subject, detector) (driftwatch_drift_threshold{s})",
                "{{detector}} threshold",
            ),
        ],
        repeat="subject",
        repeatDirection="h",
        maxPerRow=2,
        description="The detector flags drift when the statistic crosses its threshold "
        "(for p-value detectors the threshold is on the p-value's scale).",
    )
    panels = [
        row("Drift per subject"),
        statistic,
        panel(
            "Open drift episodes",
            [
                (
                    f"max by (subject, detector) (driftwatch_drift_active{s})",
                    "{{subject}} {{detector}}",
                )
            ],
            kind="state-timeline",
            width=24,
        ),
        row("Alerts and data quality"),
        panel(
            "Alerts by kind and status",
            [
                (
                    f"sum by (kind, status) (increase(driftwatch_alerts_total[{RATE}]))",
                    "{{kind}} {{status}}",
                )
            ],
        ),
        panel(
            "Data-quality problem rates (rolling)",
            [("max by (feature, kind) (driftwatch_data_quality_rate)", "{{feature}} {{kind}}")],
            unit="percentunit",
        ),
        panel(
            "Data-quality problems per second",
            [
                (
                    f"sum by (feature, kind) (rate(driftwatch_data_quality_issues_total[{RATE}]))",
                    "{{feature}} {{kind}}",
                )
            ],
            unit="ops",
        ),
        panel(
            "Values checked by the drift monitors",
            [(f"sum(rate(driftwatch_monitor_values_total[{RATE}]))", "values")],
            unit="ops",
        ),
    ]
    alerts = {
        "datasource": DATASOURCE,
        "enable": True,
        "expr": f"sum by (kind, status) (changes(driftwatch_alerts_total[{RATE}])) > 0",
        "iconColor": "red",
        "name": "driftwatch alerts",
        "step": "30s",
        "tagKeys": "kind,status",
        "titleFormat": "{{kind}} {{status}}",
        "useValueForTime": False,
    }
    return dashboard(
        "driftwatch-drift",
        "driftwatch / drift",
        "Per-subject drift statistics against their calibrated thresholds, alerts as "
        "annotations, and data quality.",
        panels,
        variables=[variable("subject", "driftwatch_drift_statistic", "Subject")],
        annotations=[alerts],
    )


DASHBOARDS = {"overview": overview, "model": model, "drift": drift}


def render() -> dict[str, str]:
    """File name to JSON text of every dashboard."""
    return {
        f"{name}.json": json.dumps(build(), indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The learner's side of champion and challengers: one trainer per model, the comparison,
the automatic policy.

The training topic has one partition, so one worker learns, and that worker alone decides:

- every model of the lineup learns every labelled example (a retrained challenger only
  those of events at or after its ``since_ts``), with its own trainer, checkpoint and
  published versions;
- each model's outputs on the labelled events feed its own rolling performance metrics;
  the champion's performance and concept-drift alerts are published, the others' are not;
- each challenger and shadow is compared with the champion on the same labelled events
  (:mod:`stream.model.compare`), and the verdicts are exported and kept in Redis
  (``{p}:lineup:compare``) for ``driftwatch model lineup`` and the operator's promotions;
- the policy (``[lifecycle]``): a champion's alert of a kind in ``retrain_on`` (a
  ``data_drift`` alert of one of ``retrain_subjects``, handed over by the monitors through
  Redis, :meth:`Lineup.hand_over`) starts a fresh challenger of the champion's settings
  that learns from the alert's event time on (at most ``max_challengers`` at a time, none
  while the youngest has fewer than ``min_labels`` compared labels); with ``auto_promote`` a
  challenger (never a shadow) whose verdict beats the champion is promoted, the champion
  becoming a challenger; a retrained challenger that has not won after ``retire_after``
  compared labels is retired.

Every such step is a ``model_lifecycle`` alert, published and kept in the lineup's history.
The comparisons start empty after the learner moves to another worker (a restart or
rebalance): promotion then waits for ``min_labels`` new pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson
from redis.asyncio import Redis

from stream.messages import TrainingExample
from stream.model.compare import Arms, Comparison, Verdict
from stream.model.lineup import Entry, Lineup, champion_of, configured, lifecycle_alert
from stream.model.snapshots import SnapshotStore
from stream.model.trainer import Learned, Trainer
from stream.monitoring.performance import PerformanceMonitor
from stream.service.config import Settings
from stream.service.metrics import Metrics
from stream.timestamps import now_ms

log = logging.getLogger(__name__)

Batch = list[tuple[int, TrainingExample]]


def as_served_by(example: TrainingExample, model: str, served_default: str) -> TrainingExample:
    """``example`` as if ``model`` had served it (its version, prediction and score), or
    unchanged when it did. Call only for a model that scored the event."""
    outputs = example.outputs(model, served_default)
    if outputs is None or example.model == model:
        return example
    version, prediction, score = outputs
    return replace(example, model_version=version, prediction=prediction, score=score)


class Learners:
    """Every model's trainer and performance monitor, the comparisons and the policy.

    >>> learners = Learners(settings, redis, metrics)  # doctest: +SKIP
    >>> await learners.sync()  # doctest: +SKIP
    >>> learners.champion, sorted(learners.trainers)  # doctest: +SKIP
    ('fraud', ['fraud', 'fraud.r1'])
    """

    def __init__(self, settings: Settings, redis: Redis, metrics: Metrics) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics
        self.policy = settings.lifecycle
        self.lineup = Lineup(redis, settings.redis.prefix)
        self.compare_key = f"{settings.redis.prefix}:lineup:compare"
        self.entries: dict[str, Entry] = {e.name: e for e in configured(settings)}
        self.trainers: dict[str, Trainer] = {}
        self.performance: dict[str, PerformanceMonitor] = {}
        self.comparisons: dict[str, Comparison] = {}
        self.arms = Arms(settings.model.task, self.policy.compare_window)
        self.champion = settings.model.name
        self._seeded = False
        self._follow()

    def new_trainer(self, entry: Entry) -> Trainer:
        s = self.settings.for_model(entry.spec)
        return Trainer(s, SnapshotStore.from_settings(self.redis, s), self.metrics)

    async def sync(self) -> None:
        """Follow the lineup (seeding it from the configuration the first time)."""
        if self._seeded:
            self.entries = await self.lineup.entries()
        else:
            self.entries = await self.lineup.seed(configured(self.settings))
            self._seeded = True
        self._follow()

    def _follow(self) -> None:
        for name, entry in self.entries.items():
            if name not in self.trainers:
                self.trainers[name] = self.new_trainer(entry)
                self.performance[name] = PerformanceMonitor(
                    entry.spec.task, self.settings.monitoring, name
                )
        for name in [n for n in self.trainers if n not in self.entries]:
            del self.trainers[name], self.performance[name]
            self.comparisons.pop(name, None)
        champion = champion_of(self.entries)
        if champion is not None and champion.name != self.champion:
            self.champion = champion.name
            self.comparisons.clear()  # a new champion: every comparison starts again
        for name, entry in self.entries.items():
            if name != self.champion and name not in self.comparisons:
                self.comparisons[name] = Comparison(entry.spec.task, self.policy.compare_window)
        self.metrics.model_role.clear()
        for name, entry in self.entries.items():
            self.metrics.model_role.labels(name, entry.role).set(1)

    def forget(self) -> None:
        """Drop every model in memory: the next batch resumes from the checkpoints."""
        for trainer in self.trainers.values():
            trainer.forget()

    async def unlearned(self, items: Batch) -> dict[str, Batch]:
        """Per model, the items it has not learned yet (a retrained challenger: of events at
        or after its ``since_ts``)."""
        out = {}
        for name, trainer in self.trainers.items():
            since = self.entries[name].since_ts
            mine = [(o, x) for o, x in items if x.event_ts_ms >= since] if since else items
            out[name] = await trainer.unlearned(mine)
        return out

    def judge(self, unlearned: dict[str, Batch], now: int) -> list[dict[str, Any]]:
        """Performance of every model and the comparisons; the champion's alerts."""
        served = self.settings.model.name
        alerts: list[dict[str, Any]] = []
        for name, monitor in self.performance.items():
            examples = [
                as_served_by(x, name, served)
                for _, x in unlearned.get(name, [])
                if x.model_version > 0 and x.outputs(name, served) is not None
            ]
            if not examples:
                continue
            raised = monitor.update(examples, now)
            if name == self.champion:
                alerts += raised
            for metric, value in monitor.metrics().items():
                self.metrics.model_metric.labels(name, metric).set(value)
        for _, x in unlearned.get(self.champion, []):
            if x.model_version > 0:  # what was served, by the model that served it
                self.arms.add(x.model or served, x.y, x.prediction)
            mine = x.outputs(self.champion, served)
            if mine is None:
                continue
            for name, comparison in self.comparisons.items():
                theirs = x.outputs(name, served)
                if theirs is not None and self.entries[name].since_ts <= x.event_ts_ms:
                    comparison.add(x.y, mine[1], theirs[1])
        return alerts

    def learn(self, unlearned: dict[str, Batch]) -> dict[str, Learned]:
        return {name: self.trainers[name].learn_batch(unlearned[name]) for name in unlearned}

    async def save(self) -> list[int]:
        """Checkpoint every model; the versions published."""
        versions = [await t.save() for t in self.trainers.values()]
        return [v for v in versions if v is not None]

    async def publish_due(self) -> bool:
        published = [await t.publish_due() for t in self.trainers.values()]
        return any(v is not None for v in published)

    def take_alerts(self) -> list[dict[str, Any]]:
        return [a for t in self.trainers.values() for a in t.take_alerts()]

    def verdicts(self) -> dict[str, Verdict]:
        return {name: c.verdict() for name, c in self.comparisons.items()}

    async def decide(self, alerts: Sequence[dict[str, Any]], ts: int) -> list[dict[str, Any]]:
        """Export the verdicts, then apply the policy; the lifecycle alerts it raised.

        ``ts``: the event time of the decision (the newest labelled event of the batch)."""
        verdicts = self.verdicts()
        await self._export(verdicts)
        out: list[dict[str, Any]] = []
        if self.policy.auto_promote:
            out += await self._promote(verdicts, ts)
        out += await self._retire(verdicts, ts)
        handed, last = await self.lineup.handed_over()
        out += await self._retrain([*alerts, *handed])
        if last is not None:  # acted on (a challenger started, or the bounds said no)
            await self.lineup.acted_on(last)
        if out:
            await self.sync()
        return out

    async def _export(self, verdicts: dict[str, Verdict]) -> None:
        m = self.metrics
        for arm, (value, n) in self.arms.metrics().items():
            m.arm_metric.labels(arm, "metric").set(value)
            m.arm_metric.labels(arm, "labels").set(n)
        m.challenger_metric.clear()
        for name, v in verdicts.items():
            stats = {"champion_metric": v.champion, "challenger_metric": v.challenger,
                     "margin": v.margin, "labels": v.n, "p_value": v.p_value}  # fmt: skip
            for stat, value in stats.items():
                m.challenger_metric.labels(name, self.champion, stat).set(value)
        if verdicts:
            mapping = {
                name: orjson.dumps({"champion": self.champion, **v.evidence()})
                for name, v in verdicts.items()
            }
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.compare_key)
                pipe.hset(self.compare_key, mapping=mapping)  # type: ignore[arg-type]
                await pipe.execute()

    async def _promote(self, verdicts: dict[str, Verdict], ts: int) -> list[dict[str, Any]]:
        p = self.policy
        winners = [
            (v.margin, name)
            for name, v in verdicts.items()
            if self.entries[name].role == "challenger"
            and not self.entries[name].held  # there when an operator promoted a model
            and v.beats(p.min_labels, p.margin, p.alpha)
        ]
        if not winners:
            return []
        _, name = max(winners)
        v = verdicts[name]
        held = self.trainers[name].model
        version = None if held is None else held.version
        champion = self.champion
        evidence = {"previous_champion": champion, "by": "policy", **v.evidence(),
                    "min_labels": p.min_labels, "required_margin": p.margin,
                    "alpha": p.alpha}  # fmt: skip
        alert = lifecycle_alert(
            "promoted", name, version=version, statistic=v.margin, p_value=v.p_value,
            threshold=p.margin, evidence=evidence, ts=ts,
            message=f"model {name!r} promoted to champion over {champion!r}: "
            f"{_metric(v.challenger)} vs {_metric(v.champion)} on the same {v.n} labelled "
            f"events (McNemar p = {v.p_value:.2g}); {champion!r} is a challenger now",
        )  # fmt: skip
        if await self.lineup.promote(name, lambda _old: alert) is None:
            return []
        log.warning("%s", alert["message"])
        return [alert]

    async def _retire(self, verdicts: dict[str, Verdict], ts: int) -> list[dict[str, Any]]:
        out = []
        for name, v in verdicts.items():
            entry = self.entries[name]
            compared = self.comparisons[name].total
            if entry.origin != "retrain" or entry.role != "challenger":
                continue
            if compared < self.policy.retire_after:
                continue
            alert = lifecycle_alert(
                "retired", name, version=None, statistic=v.margin, p_value=v.p_value, ts=ts,
                evidence={"champion": self.champion, **v.evidence(), "compared": compared},
                message=f"model {name!r} retired: not better than {self.champion!r} after "
                f"{compared} labelled events ({_metric(v.challenger)} vs {_metric(v.champion)})",
            )  # fmt: skip
            if await self.lineup.retire(name, alert):
                log.warning("%s", alert["message"])
                out.append(alert)
        return out

    async def _retrain(self, alerts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        triggers = [
            a for a in alerts
            if a["kind"] in self.policy.retrain_on and a["status"] == "firing"
            and (a["kind"] != "data_drift" or a["subject"] in self.policy.retrain_subjects)
        ]  # fmt: skip
        if not triggers:
            return []
        live = [e for e in self.entries.values() if e.origin == "retrain" and e.role != "champion"]
        young = [e.name for e in live if self.comparisons[e.name].total < self.policy.min_labels]
        trigger = triggers[0]
        if len(live) >= self.policy.max_challengers or young:
            log.info("%s alert %s starts no challenger: %s", trigger["kind"], trigger["alert_id"],
                     f"{young} still young" if young else f"{len(live)} live already")  # fmt: skip
            return []
        champion = self.entries[self.champion]
        name = f"{self.settings.model.name}.r{await self.lineup.next_number()}"
        entry = Entry(
            champion.spec.model_copy(update={"name": name, "role": "challenger"}),
            "challenger",
            "retrain",
            since_ts=_event_time(trigger), started_at=now_ms(),
        )  # fmt: skip
        alert = lifecycle_alert(
            "started", name, version=0, ts=entry.since_ts,
            evidence={"trigger": trigger["alert_id"], "trigger_kind": trigger["kind"],
                      "champion": self.champion, "learns_from_ts": entry.since_ts,
                      "pipeline": entry.spec.pipeline},
            message=f"challenger {name!r} started on {trigger['kind']} alert "
            f"{trigger['alert_id']}: a fresh {entry.spec.pipeline} learning from event time "
            f"{entry.since_ts} on, compared with {self.champion!r} on the same labels",
        )  # fmt: skip
        if not await self.lineup.start(entry, alert):
            return []
        log.warning("%s", alert["message"])
        return [alert]


def _event_time(alert: dict[str, Any]) -> int:
    """The event time an alert judged up to: its window's last event (a performance alert's
    ``ts`` is the label time of its check, up to a label delay later), else its ``ts``."""
    to_ts = (alert.get("window") or {}).get("to_ts")
    return int(to_ts if to_ts is not None else alert["ts"])


def _metric(value: float) -> str:
    return f"{value:.3f}"

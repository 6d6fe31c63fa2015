"""driftwatch configuration: one TOML file, overridable by ``DRIFTWATCH_*`` variables.

The file is ``driftwatch.toml`` in the working directory by default, or the path given by
``--config`` or ``DRIFTWATCH_CONFIG``. Every value can be overridden from the environment
with ``__`` between nesting levels, e.g. ``DRIFTWATCH_KAFKA__BOOTSTRAP=127.0.0.1:19092`` or
``DRIFTWATCH_WORKER__BATCH_SIZE=200``. Secrets (Redis password, snapshot HMAC key, Kafka
SASL password) are read from the environment only and never logged.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from stream.exceptions import ConfigError
from stream.service.redaction import masked_url
from stream.service.units import Duration, Instant, Wait, parse_duration, parse_instant, parse_wait

DEFAULT_CONFIG_FILE = "driftwatch.toml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def _existing_file(field: str, path: str | None) -> str | None:
    if path is not None and not Path(path).is_file():
        raise ValueError(f"{field} file {path!r} does not exist (or is not a file)")
    return path


class KafkaSettings(_Frozen):
    """How to reach the brokers: address, TLS and SASL (the password is a secret, from the
    environment: ``DRIFTWATCH_KAFKA_SASL_PASSWORD``). Turned into client arguments by
    :mod:`stream.service.kafka_security`."""

    bootstrap: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # validate_default: the checks below also see a field left out (a SASL protocol
    # without its mechanism must stop start-up naming that field)
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validate_default=True
    )
    sasl_username: str | None = Field(default=None, validate_default=True)
    #: PEM file of the CAs that sign the brokers' certificates (default: the system's CAs)
    ssl_cafile: str | None = None
    #: PEM client certificate (and key, unless ssl_keyfile is set) for mutual TLS
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: Check that a broker's certificate names the host connected to (RFC 6125)
    ssl_check_hostname: bool = True

    @field_validator("sasl_mechanism", "sasl_username")
    @classmethod
    def _sasl_fits_protocol(cls, v: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("security_protocol")
        if protocol is None:  # itself invalid, reported on its own
            return v
        if v is None and protocol in SASL_PROTOCOLS:
            raise ValueError(f"security_protocol {protocol} needs kafka.{info.field_name}")
        if v is not None and protocol not in SASL_PROTOCOLS:
            raise ValueError(
                f"applies only with security_protocol SASL_PLAINTEXT or SASL_SSL, not {protocol}"
            )
        return v

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _tls_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        protocol = info.data.get("security_protocol")
        if v is not None and protocol is not None and protocol not in TLS_PROTOCOLS:
            raise ValueError(f"applies only with security_protocol SSL or SASL_SSL, not {protocol}")
        return _existing_file(f"kafka.{info.field_name}", v)

    @model_validator(mode="after")
    def _key_needs_certificate(self) -> KafkaSettings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("kafka.ssl_keyfile is set without kafka.ssl_certfile")
        return self

    @property
    def url(self) -> str:
        """The bootstrap servers as Faust broker URLs."""
        return ";".join(f"kafka://{host.strip()}" for host in self.bootstrap.split(","))


class TopicSettings(_Frozen):
    events: str = "events"
    labels: str = "labels"
    predictions: str = "predictions"
    alerts: str = "alerts"
    dlq: str = "events.dlq"
    monitor: str = "driftwatch.monitor"
    # the challengers' and shadows' predictions (created only when a config has any, or may
    # start them: lifecycle.retrain_on); never served, same message as `predictions`
    shadow: str = "predictions.shadow"
    partitions: int = Field(default=4, ge=1, le=1024)

    @property
    def names(self) -> list[str]:
        """The six topic names, in declaration order."""
        return [self.events, self.labels, self.predictions, self.alerts, self.dlq, self.monitor]


class RedisSettings(_Frozen):
    """How to reach Redis (the password is a secret: ``DRIFTWATCH_REDIS_PASSWORD``)."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = Field(default="dw", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    #: ACL user (Redis 6+); None: the URL's user, else ``default``
    username: str | None = None
    #: TLS (``rediss://`` only): CA file, client certificate and key, hostname checking
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{masked_url(v)!r} is not a Redis URL (redis://host:port/db)")
        return v

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _tls_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        url = info.data.get("url")
        if v is not None and url is not None and not url.startswith("rediss://"):
            raise ValueError("applies only to a rediss:// URL (Redis over TLS)")
        return _existing_file(f"redis.{info.field_name}", v)

    @model_validator(mode="after")
    def _key_needs_certificate(self) -> RedisSettings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("redis.ssl_keyfile is set without redis.ssl_certfile")
        return self

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # repr() ends up in logs and tracebacks: never show the URL's password
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name == "url" else value


class WorkerSettings(_Frozen):
    app_id: str = Field(default="driftwatch", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    # a batch is processed once it holds batch_size records, or batch_max_latency after its
    # first record arrived (0: with whatever has arrived); bigger batches share each batch's
    # Redis and broker round trips among more events (README, "Benchmarks")
    batch_size: int = Field(default=500, ge=1, le=100_000)
    batch_max_latency: Wait = "0s"
    max_payload_bytes: int = Field(default=65_536, ge=256)
    max_fields: int = Field(default=256, ge=1)
    #: Events (and labels) timed before this instant (ISO-8601 or epoch ms) are rejected,
    #: as are those timed more than max_event_time_ahead after the worker's clock: a
    #: timestamp in seconds or a far-future one would wreck the event-time windows.
    min_event_time: Instant = "2000-01-01T00:00:00Z"
    max_event_time_ahead: Duration = "1d"
    metrics_address: str = "127.0.0.1:9464"
    session_timeout: Duration = "10s"
    #: Allocations between young-generation garbage collections (Python's default is 700).
    #: A batch allocates tens of thousands of short-lived containers (feature states,
    #: messages), so the default collects many times per batch; 0 keeps Python's default.
    gc_threshold: int = Field(default=50_000, ge=0)

    @field_validator("metrics_address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        _, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65_535:
            raise ValueError(f"{v!r} is not host:port (port 0..65535; 0 disables /metrics)")
        return v

    @property
    def batch_max_latency_s(self) -> float:
        return parse_wait(self.batch_max_latency)

    @property
    def session_timeout_s(self) -> float:
        """How soon a dead worker's partitions move to the others."""
        return parse_duration(self.session_timeout)

    @property
    def min_event_time_ms(self) -> int:
        return parse_instant(self.min_event_time)

    @property
    def max_event_time_ahead_ms(self) -> int:
        return round(parse_duration(self.max_event_time_ahead) * 1000)


Aggregate = Literal["count", "sum", "mean", "min", "max", "std"]
AGGREGATES: tuple[Aggregate, ...] = ("count", "sum", "mean", "min", "max", "std")


class FeatureSpec(_Frozen):
    """A raw feature of the events, and the per-entity window aggregates built from it."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    kind: Literal["numeric", "categorical"] = "numeric"
    impute: float | str | None = None
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    windows: tuple[Duration, ...] = ()
    aggregates: tuple[Aggregate, ...] = AGGREGATES

    @model_validator(mode="after")
    def _consistent(self) -> FeatureSpec:
        if self.kind == "numeric":
            if self.impute is not None and not isinstance(self.impute, int | float):
                raise ValueError(f"impute of numeric feature {self.name!r} must be a number")
            if self.categories:
                raise ValueError(f"numeric feature {self.name!r} cannot list categories")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
        else:
            if self.impute is not None and not isinstance(self.impute, str):
                raise ValueError(f"impute of categorical feature {self.name!r} must be a string")
            if self.windows:
                raise ValueError(f"categorical feature {self.name!r} cannot have windows")
            if self.min is not None or self.max is not None:
                raise ValueError(f"categorical feature {self.name!r} cannot have min/max")
        if len(set(self.windows)) != len(self.windows):
            raise ValueError(f"feature {self.name!r} lists a window twice: {self.windows}")
        return self

    @property
    def window_seconds(self) -> tuple[float, ...]:
        return tuple(parse_duration(w) for w in self.windows)


class WindowSettings(_Frozen):
    """How the per-entity event-time windows are kept in Redis."""

    buckets: int = Field(default=12, ge=1, le=1000)
    grace: Duration = "5m"
    dedupe_ttl: Duration = "1d"

    @property
    def grace_s(self) -> float:
        return parse_duration(self.grace)

    @property
    def dedupe_ttl_s(self) -> float:
        return parse_duration(self.dedupe_ttl)


#: The River pipelines each task can use.
PIPELINES_BY_TASK: dict[str, tuple[str, ...]] = {
    "binary": ("logistic_regression", "hoeffding_tree"),
    "multiclass": ("softmax_regression", "hoeffding_tree"),
    "regression": ("linear_regression", "hoeffding_tree"),
}


#: What a model does (README, "Champion and challengers"): the champion's predictions are
#: served; a challenger's are published to the shadow topic and compared with the champion's
#: on the same labels, and the automatic policy may promote it; a shadow is scored and
#: compared the same way but only an operator promotes it.
ModelRole = Literal["champion", "challenger", "shadow"]


class ModelSettings(_Frozen):
    name: str = Field(default="model", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    role: ModelRole = "champion"
    # A/B: the share of entities (a stable hash of entity_id) a challenger serves itself;
    # the champion serves the rest (README, "Champion and challengers")
    serve_share: float = Field(default=0.0, ge=0.0, lt=1.0)
    task: Literal["binary", "multiclass", "regression"] = "binary"
    pipeline: Literal[
        "logistic_regression", "softmax_regression", "hoeffding_tree", "linear_regression"
    ] = "logistic_regression"
    learning_rate: float = Field(default=0.05, gt=0, le=10)
    # the bounds on the served model's lag (stream.model.freshness.PublicationRule): a version
    # is published at the end of the batch that makes `publish_every` learned examples
    # unpublished (1: after every batch that changed the model), or `publish_interval` after
    # the last publication; raise them for models whose snapshot is costly (trees)
    publish_every: int = Field(default=1, ge=1)
    publish_interval: Duration = "5s"
    # scorers are told of a new version (a Redis stream); they also poll this often
    poll_interval: Duration = "1s"
    keep_versions: int = Field(default=20, ge=2)

    @property
    def publish_interval_s(self) -> float:
        return parse_duration(self.publish_interval)

    @property
    def poll_interval_s(self) -> float:
        return parse_duration(self.poll_interval)

    @model_validator(mode="after")
    def _pipeline_fits_task(self) -> ModelSettings:
        allowed = PIPELINES_BY_TASK[self.task]
        if self.pipeline not in allowed:
            raise ValueError(
                f"pipeline {self.pipeline!r} does not fit task {self.task!r}; "
                f"expected one of {sorted(allowed)}"
            )
        return self


RetrainTrigger = Literal["concept_drift", "performance", "data_drift"]


class LifecycleSettings(_Frozen):
    """Champion and challengers: the comparison on delayed labels and the automatic policy.

    A challenger is compared with the champion over the last ``compare_window`` labelled
    events both scored (a paired exact McNemar test, :mod:`stream.model.compare`); with
    ``auto_promote`` it is promoted once it has ``min_labels`` such events, is ``margin``
    better (accuracy; MAE relative to the champion's for a regression) and the test's
    one-sided p-value is below ``alpha``.
    """

    auto_promote: bool = False
    compare_window: int = Field(default=2000, ge=20)
    min_labels: int = Field(default=500, ge=10)
    margin: float = Field(default=0.02, ge=0, le=1)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    # alerts of the champion that start a fresh challenger of its pipeline, learning from
    # the alert's event time on (empty: none); data_drift only on `retrain_subjects`
    retrain_on: tuple[RetrainTrigger, ...] = ()
    retrain_subjects: tuple[str, ...] = ()
    max_challengers: int = Field(default=2, ge=1)  # live retrained challengers at most
    retire_after: int = Field(default=5000, ge=10)  # compared labels a retrained one gets

    @model_validator(mode="after")
    def _subjects_for_data_drift(self) -> LifecycleSettings:
        if ("data_drift" in self.retrain_on) != bool(self.retrain_subjects):
            raise ValueError(
                "retrain_on includes data_drift exactly when retrain_subjects names the "
                f"subjects whose data_drift alerts start a challenger; got retrain_on "
                f"{list(self.retrain_on)}, retrain_subjects {list(self.retrain_subjects)}"
            )
        return self

    @model_validator(mode="after")
    def _window_holds_min(self) -> LifecycleSettings:
        if self.min_labels > self.compare_window:
            raise ValueError(
                f"min_labels {self.min_labels} exceeds compare_window {self.compare_window}: "
                "no comparison could ever have that many labels"
            )
        return self


class LabelSettings(_Frozen):
    horizon: Duration = "1h"

    @property
    def horizon_s(self) -> float:
        return parse_duration(self.horizon)


NumericDetector = Literal["ks", "psi", "wasserstein"]
CategoricalDetector = Literal["chi2"]
PerformanceMetric = Literal[
    "accuracy", "precision", "recall", "f1", "roc_auc", "macro_f1", "mae", "rmse", "r2"
]


class MonitoringSettings(_Frozen):
    """Drift, performance and data-quality monitoring.

    Subjects are the raw and enriched features (``{feature}_{agg}_{window}``,
    ``seconds_since_last``) and the predictions (``prediction.score``, ``prediction.class``).
    """

    enabled: bool = True
    # "child": the monitors consume their topic in a child process of the worker (a core of
    # their own); "worker": in the worker's process (stream/service/monitor_process.py)
    process: Literal["child", "worker"] = "child"
    # the child's CPU priority: "low" (niceness +10: it shares the cores, the scorer first)
    # or "idle" (SCHED_IDLE: it runs on CPU time nothing else wants; on cores that are
    # full the monitors wait until the load drops) (stream/service/monitor_process.py)
    priority: Literal["low", "idle"] = "low"
    subjects: tuple[str, ...] = ()  # empty: every raw and enriched feature and the predictions
    exclude: tuple[str, ...] = ()
    reference_size: int = Field(default=2000, ge=50, le=1_000_000)
    window: int = Field(default=1000, ge=20)
    # values between checks (a check sorts the windows: every 100 keeps a (subject, detector)
    # under 1 us per value; it adds ~50 values of detection delay, see docs/detectors.md)
    check_every: int = Field(default=100, ge=1)
    ert: float = Field(default=1e6, ge=100)  # family-wise values between false alarms
    # an episode ends after `patience` checks in a row with every statistic <= release x
    # threshold; 0 means a whole window of values (window / check_every checks)
    release: float = Field(default=0.7, gt=0, le=1)
    patience: int = Field(default=0, ge=0)
    numeric_detectors: tuple[NumericDetector, ...] = ("ks", "psi", "wasserstein")
    categorical_detectors: tuple[CategoricalDetector, ...] = ("chi2",)
    checkpoint_interval: Duration = "10s"
    # a read of the monitor topic waits this long after its first message for more (up to
    # worker.batch_size), and each subject's batches in it are judged as one: fewer, larger
    # batches cost the monitors less CPU per value; alerts come up to this much later
    batch_linger: Wait = "100ms"
    # event-time order across source partitions (stream/monitoring/event_order.py): a silent
    # partition stops holding the watermark after `watermark_idle` (wall clock; longer than a
    # rebalance after a crash), the watermark lags the newest partition by at most
    # `max_delay` of event time, and a subject buffers at most `max_buffered` values
    watermark_idle: Duration = "30s"
    max_delay: Duration = "10m"
    max_buffered: int = Field(default=20_000, ge=100)
    # a prediction reference is taken once two consecutive blocks of reference_size values
    # agree at this level (the online model has settled; stream/monitoring/settling.py)
    settle_level: float = Field(default=0.01, gt=0, lt=1)
    performance_window: int = Field(default=500, ge=20)
    # labels between two performance checks (a check recomputes the window's metrics)
    performance_check_every: int = Field(default=10, ge=1)
    performance_reference: int = Field(default=1000, ge=20)
    performance_margin: float = Field(default=0.05, gt=0, le=1)
    performance_metrics: tuple[PerformanceMetric, ...] = ()  # empty: the task's defaults
    quality_window: int = Field(default=1000, ge=10)
    max_missing_rate: float = Field(default=0.05, ge=0, le=1)
    max_out_of_range_rate: float = Field(default=0.05, ge=0, le=1)
    max_unseen_rate: float = Field(default=0.05, ge=0, le=1)
    max_dlq_rate: float = Field(default=0.02, ge=0, le=1)

    @property
    def batch_linger_s(self) -> float:
        return parse_wait(self.batch_linger)

    @model_validator(mode="after")
    def _sizes(self) -> MonitoringSettings:
        if self.window > self.reference_size * 10:
            raise ValueError(
                f"window {self.window} is more than 10x reference_size {self.reference_size}"
            )
        if self.priority != "low" and self.process != "child":
            raise ValueError(
                f"priority {self.priority!r} is the monitors' child process's: it needs "
                f'process = "child", got {self.process!r}'
            )
        return self

    @property
    def checkpoint_interval_s(self) -> float:
        return parse_duration(self.checkpoint_interval)

    @property
    def watermark_idle_ms(self) -> int:
        return round(parse_duration(self.watermark_idle) * 1000)

    @property
    def max_delay_ms(self) -> int:
        return round(parse_duration(self.max_delay) * 1000)

    @property
    def patience_checks(self) -> int:
        return self.patience or max(1, self.window // self.check_every)


class Settings(BaseSettings):
    """Everything a worker needs, validated at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTWATCH_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    worker: WorkerSettings = WorkerSettings()
    features: tuple[FeatureSpec, ...] = ()
    windows: WindowSettings = WindowSettings()
    model: ModelSettings = ModelSettings()
    # several models ([[models]]); [model] alone is one champion. `model` is then the
    # configured champion: its name names the training topic and the prediction monitors'
    # reference model.
    models: tuple[ModelSettings, ...] = ()
    lifecycle: LifecycleSettings = LifecycleSettings()
    labels: LabelSettings = LabelSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    # secrets: environment only (see _reject_secrets_in_file)
    redis_password: SecretStr | None = None
    kafka_sasl_password: SecretStr | None = Field(default=None, validate_default=True)
    snapshot_key: SecretStr | None = None

    @field_validator("kafka_sasl_password")
    @classmethod
    def _sasl_password_fits(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        kafka = info.data.get("kafka")
        if kafka is None:  # itself invalid, reported on its own
            return v
        protocol = kafka.security_protocol
        if v is None and protocol in SASL_PROTOCOLS:
            raise ValueError(
                f"kafka.security_protocol {protocol} needs the SASL password in the "
                "environment: DRIFTWATCH_KAFKA_SASL_PASSWORD"
            )
        if v is not None and protocol not in SASL_PROTOCOLS:
            raise ValueError(
                "applies only with kafka.security_protocol SASL_PLAINTEXT or SASL_SSL, "
                f"not {protocol}"
            )
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment overrides the file, which arrives as init kwargs
        return env_settings, init_settings

    @model_validator(mode="before")
    @classmethod
    def _one_champion(cls, data: Any) -> Any:
        """``[model]`` alone is the one champion; ``[[models]]`` names it among the others.

        Given with ``[[models]]``, ``[model]``'s fields override the champion's (so that
        ``DRIFTWATCH_MODEL__<KEY>`` overrides the champion of a file's ``[[models]]``).
        """
        if not isinstance(data, dict):
            return data
        model = data.get("model")
        if isinstance(model, ModelSettings):
            model = model.model_dump()
        models = [
            m.model_dump() if isinstance(m, ModelSettings) else m for m in data.get("models") or []
        ]
        if not models:
            model = {**(model or {}), "role": "champion"}
            return {**data, "model": model, "models": [model]}
        roles = [m.get("role", "champion") if isinstance(m, dict) else None for m in models]
        if not set(roles) <= {"champion", "challenger", "shadow"}:
            return data  # reported by the field's own validation, naming the field
        champions = [i for i, role in enumerate(roles) if role == "champion"]
        if len(champions) != 1:
            names = [models[i].get("name") for i in champions]
            raise ValueError(
                f'[[models]] needs exactly one model with role = "champion", got {names}'
            )
        champion = {**models[champions[0]], **(model or {}), "role": "champion"}
        models[champions[0]] = champion
        return {**data, "model": champion, "models": models}

    @model_validator(mode="after")
    def _check(self) -> Settings:
        models = [m.name for m in self.models]
        if len(set(models)) != len(models):
            raise ValueError(f"model names must be distinct, got {models}")
        serving = {m.name: m.serve_share for m in self.models if m.serve_share > 0}
        if any(m.role != "challenger" for m in self.models if m.name in serving):
            raise ValueError(
                f"only a challenger serves a share of the entities (serve_share), got {serving} "
                f"with roles {[m.role for m in self.models if m.name in serving]}"
            )
        if sum(serving.values()) >= 1:
            raise ValueError(f"the challengers' serve_share must leave the champion some "
                             f"entities, got {serving}")  # fmt: skip
        tasks = {m.name: m.task for m in self.models if m.task != self.model.task}
        if tasks:
            raise ValueError(
                f"every model must have the champion's task {self.model.task!r} (they are "
                f"compared on the same labels), got {tasks}"
            )
        names = [*self.topics.names, *([self.topics.shadow] if self.challenged else [])]
        if len(set(names)) != len(names):
            raise ValueError(f"topic names must be distinct, got {names}")
        features = [f.name for f in self.features]
        if len(set(features)) != len(features):
            raise ValueError(f"feature names must be distinct, got {features}")
        return self

    @property
    def challenged(self) -> bool:
        """True if models other than the champion may run: configured, or started on alerts."""
        return len(self.models) > 1 or bool(self.lifecycle.retrain_on)

    def model_named(self, name: str) -> ModelSettings:
        """The configured model ``name`` (``KeyError`` if there is none)."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def for_model(self, model: ModelSettings) -> Settings:
        """These settings with ``model`` as the model: what one model's trainer, store and
        performance monitor are built from."""
        return self.model_copy(update={"model": model})

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with secrets hidden, for the start-up log.

        >>> s = Settings.model_construct(redis=RedisSettings(url="redis://:pw@h:6379/0"))
        >>> s.redacted()["redis"]["url"]
        'redis://:***@h:6379/0'
        """
        data = self.model_dump(mode="json")  # SecretStr dumps as '**********'
        data["redis"]["url"] = masked_url(self.redis.url)
        return data


SECRET_FIELDS = ("redis_password", "kafka_sasl_password", "snapshot_key")


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the TOML file (if any), apply environment overrides and validate.

    Raises
    ------
    ConfigError
        Naming the file, the field, the value and what was expected.
    """
    chosen = path or os.environ.get("DRIFTWATCH_CONFIG")
    file = Path(chosen) if chosen else Path(DEFAULT_CONFIG_FILE)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    elif chosen:
        raise ConfigError(f"config file {file} does not exist")
    for secret in SECRET_FIELDS:
        if secret in data:
            raise ConfigError(
                f"{file}: field {secret!r} is a secret; set it in the environment as "
                f"DRIFTWATCH_{secret.upper()}, not in the file"
            )
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file if file.exists() else None)) from None


def _describe(exc: ValidationError, file: Path | None) -> str:
    where = f"{file}: " if file else ""
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        value = err.get("input")
        if field == "redis.url" and isinstance(value, str):
            value = masked_url(value)  # the error goes to stderr and logs
        # never echo a secret's value
        shown = "" if isinstance(value, dict) or field in SECRET_FIELDS else f" (got {value!r})"
        lines.append(f"{where}invalid config field '{field}'{shown}: {err['msg']}")
    return "\n".join(lines)

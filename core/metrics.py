"""Metrics primitives: events counted where they happen, kept in Redis.

Stage latencies (`observe_stage`), broker errors, rate-limit waits and refund failures
happen in Celery prefork workers, separate processes from the web process that answers the
scrape; `ops.metrics` reads these totals (and the state it reads from the database) at
scrape time and serves /metrics.

Why the events live in Redis rather than in prometheus-client's multiprocess mode: that mode
shares mmap files in one directory, so the web process only sees workers on its own host
and filesystem (docker-compose runs web and workers in separate containers), the directory
must be wiped between deployments by exactly one process, and `PROMETHEUS_MULTIPROC_DIR`
must be set before any import of prometheus_client in every process. Redis is already what
every Bronco process talks to: each event is one atomic MULTI/EXEC of HINCRBY(FLOAT) on a
hash per metric (`<METRICS_KEY_PREFIX>:<name>`), the numbers survive worker recycling, and
any web replica serves the same totals. prometheus-client still does the exposition.

Counting never breaks the caller: when Redis is down the event is dropped and a warning is
logged (at most once a minute per process). Label values must come from small fixed sets
(stage names, operation names, exception class names), never ids.
"""

import json
import logging
import time
from collections.abc import Sequence

import redis
from django.conf import settings
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

logger = logging.getLogger(__name__)

_SEP = "\x1f"  # between the label part and the bucket part of a histogram hash field

_clients: dict[str, redis.Redis] = {}
_last_warning = 0.0


def metrics_redis() -> redis.Redis:
    url = settings.METRICS_REDIS_URL or settings.REDIS_URL
    client = _clients.get(url)
    if client is None:
        # Short timeouts: a metric must never hold up an order for long.
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        _clients[url] = client
    return client


def metrics_key(name: str) -> str:
    return f"{settings.METRICS_KEY_PREFIX}:{name}"


def _warn_dropped(exc: Exception) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= 60:
        _last_warning = now
        logger.warning("metrics: Redis unavailable, events dropped: %s", type(exc).__name__)


class RedisCounter:
    """A labelled counter summed over every process, exposed as `<name>_total`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)

    def _field(self, labels: dict[str, str]) -> str:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return json.dumps([str(labels[n]) for n in self.labelnames])

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        field = self._field(labels)
        try:
            metrics_redis().hincrbyfloat(metrics_key(self.name), field, amount)
        except redis.RedisError as exc:
            _warn_dropped(exc)

    def value(self, **labels: str) -> float:
        """The current total for `labels` (0 when never counted). Raises redis.RedisError."""
        raw = metrics_redis().hget(metrics_key(self.name), self._field(labels))
        return float(raw) if raw is not None else 0.0

    def collect(self, raw: dict[bytes, bytes]) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for field, value in sorted(raw.items()):
            family.add_metric(json.loads(field), float(value))
        return family


class RedisHistogram:
    """A labelled histogram summed over every process. Each observation increments its own
    bucket, the sum and the count in one transaction; the scrape makes buckets cumulative."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets)) + (float("inf"),)

    def observe(self, value: float, count: int = 1, **labels: str) -> None:
        """Record `count` samples of `value`, in one Redis round trip."""
        if count > 0:
            self._add({self._bucket(value): count}, value * count, count, labels)

    def observe_many(self, values: Sequence[float], **labels: str) -> None:
        """Observe every value of `values` (same labels) in one Redis transaction: per
        bucket one increment, the sum and the count once."""
        counts: dict[int, int] = {}
        for value in values:
            index = self._bucket(value)
            counts[index] = counts.get(index, 0) + 1
        if counts:
            self._add(counts, sum(values), len(values), labels)

    def _bucket(self, value: float) -> int:
        return next(i for i, bound in enumerate(self.buckets) if value <= bound)

    def _add(
        self, counts: dict[int, int], total: float, samples: int, labels: dict[str, str]
    ) -> None:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        label_part = json.dumps([str(labels[n]) for n in self.labelnames])
        key = metrics_key(self.name)
        try:
            pipe = metrics_redis().pipeline(transaction=True)
            for index, count in sorted(counts.items()):
                pipe.hincrby(key, f"{label_part}{_SEP}{index}", count)
            pipe.hincrbyfloat(key, f"{label_part}{_SEP}sum", total)
            pipe.hincrby(key, f"{label_part}{_SEP}count", samples)
            pipe.execute()
        except redis.RedisError as exc:
            _warn_dropped(exc)

    def collect(self, raw: dict[bytes, bytes]) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        series: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            label_part, _, part = field.decode().partition(_SEP)
            series.setdefault(label_part, {})[part] = float(value)
        for label_part, parts in sorted(series.items()):
            cumulative, buckets = 0.0, []
            for i, bound in enumerate(self.buckets):
                cumulative += parts.get(str(i), 0.0)
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(json.loads(label_part), buckets, parts.get("sum", 0.0))
        return family


STAGE_LATENCY = RedisHistogram(
    "bronco_stage_latency_seconds",
    "Time an order spent in a pipeline stage (validate, place, fill, settle, ...)",
    labelnames=("stage",),
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
BROKER_ERRORS = RedisCounter(
    "bronco_broker_errors",
    "Broker calls that failed, by operation and error class",
    labelnames=("operation", "error"),
)
RATE_LIMIT_WAITS = RedisCounter(
    "bronco_rate_limit_waits",
    "Broker requests that had to wait for the shared rate limiter",
    labelnames=("bucket",),
)
RATE_LIMIT_WAIT_SECONDS = RedisCounter(
    "bronco_rate_limit_wait_seconds",
    "Seconds spent waiting for the shared rate limiter",
    labelnames=("bucket",),
)
STAGE_RUNS = RedisCounter(
    "bronco_stage_runs",
    "Pipeline stage tasks by stage and outcome: ran (the order's live run) or superseded "
    "(a task of a run that another took over; it did nothing)",
    labelnames=("stage", "outcome"),
)
REFUND_FAILURES = RedisCounter(
    "bronco_refund_failures",
    "Refund attempts that failed, by reason",
    labelnames=("reason",),
)
PROCESS_RESTARTS = RedisCounter(
    "bronco_process_restarts",
    "Processes of the stack started again by their supervisor after they died, by name",
    labelnames=("process",),
)
SECRET_READ_FAILURES = RedisCounter(
    "bronco_secret_read_failures",
    "Vault reads of a secret that failed (after its retries), by secret name and error",
    labelnames=("secret", "error"),
)
EVENT_METRICS: tuple[RedisCounter | RedisHistogram, ...] = (
    STAGE_LATENCY,
    BROKER_ERRORS,
    RATE_LIMIT_WAITS,
    RATE_LIMIT_WAIT_SECONDS,
    STAGE_RUNS,
    REFUND_FAILURES,
    PROCESS_RESTARTS,
    SECRET_READ_FAILURES,
)


# --- What the rest of Bronco calls -----------------------------------------------------
def observe_stage(stage: str, seconds: float, count: int = 1) -> None:
    """Record that `count` orders (one by default) each spent `seconds` in pipeline stage
    `stage`."""
    STAGE_LATENCY.observe(max(0.0, seconds), count, stage=stage)


def observe_stage_many(stage: str, seconds: Sequence[float]) -> None:
    """`observe_stage` for many orders at once (a settlement batch): one Redis round trip."""
    STAGE_LATENCY.observe_many([max(0.0, s) for s in seconds], stage=stage)


def count_stage_run(*, stage: str, superseded: bool) -> None:
    """A pipeline stage task ran for its order's live run, or stopped as superseded."""
    STAGE_RUNS.inc(stage=stage, outcome="superseded" if superseded else "ran")


def count_broker_error(*, operation: str, error: str) -> None:
    """A broker call failed. `error`: the exception class name (BrokerRejected, ...)."""
    BROKER_ERRORS.inc(operation=operation, error=error)


def count_rate_limit_wait(*, bucket: str, seconds: float) -> None:
    """A request waited `seconds` for the rate limiter's `bucket` (place, modify, ...)."""
    RATE_LIMIT_WAITS.inc(bucket=bucket)
    RATE_LIMIT_WAIT_SECONDS.inc(max(0.0, seconds), bucket=bucket)


def count_refund_failure(*, reason: str) -> None:
    """A refund attempt failed (`reason`: a short fixed word or the exception class name)."""
    REFUND_FAILURES.inc(reason=reason)


def count_process_restart(*, process: str) -> None:
    """A supervisor started `process` (a fixed stack name: worker-broker, listener...) again."""
    PROCESS_RESTARTS.inc(process=process)


def count_secret_read_failure(*, secret: str, error: str) -> None:
    """Reading secret `secret` (a fixed name) failed with `error` (a short fixed word)."""
    SECRET_READ_FAILURES.inc(secret=secret, error=error)


def reset_event_metrics() -> None:
    """Delete every counted event under METRICS_KEY_PREFIX (tests, or a deliberate reset)."""
    metrics_redis().delete(*(metrics_key(m.name) for m in EVENT_METRICS))

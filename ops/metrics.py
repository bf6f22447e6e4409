"""The /metrics endpoint: Prometheus exposition of Bronco's state and counted events.

- **State, read at scrape time** by `BroncoCollector`: orders by status, the age of the
  oldest settling order, open alerts, the listener's lag (`chain.selectors.listener_lag`)
  and the reserve (`refunds.selectors.reserve_status`).
- **Events**, counted where they happen into Redis by `core.metrics` (see there why Redis).
"""

import hmac
import logging
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from chain.selectors import listener_lag
from core.metrics import EVENT_METRICS, metrics_key, metrics_redis
from core.models import Alert, AlertSeverity
from core.money import USDT_UNIT
from ops.alert_rules import oldest_settling_age_seconds
from orders.models import Order, OrderStatus, Waiting
from refunds.selectors import reserve_status

logger = logging.getLogger(__name__)


# --- Scrape -----------------------------------------------------------------------------
class BroncoCollector:
    """Reads the current state at scrape time. A source that fails is reported through
    `bronco_metrics_source_up{source}` = 0 and logged; the rest of the scrape still works."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "bronco_metrics_source_up",
            "1 when the source answered this scrape, 0 when it failed",
            labels=("source",),
        )
        for source, read in (
            ("database", self._database),
            ("redis", self._events),
            ("listener", self._listener),
            ("reserve", self._reserve),
        ):
            try:
                families = list(read())
            except Exception:
                logger.exception("metrics: source %s failed", source)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from families
        yield up

    def _database(self) -> Iterator[Metric]:
        counts = dict.fromkeys(OrderStatus.values, 0)
        counts.update(
            Order.objects.order_by()
            .values_list("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
        orders = GaugeMetricFamily(
            "bronco_orders", "Orders currently in each status", labels=("status",)
        )
        for status, n in counts.items():
            orders.add_metric([status], n)
        yield orders
        waiting = GaugeMetricFamily(
            "bronco_orders_waiting_for_market",
            "Orders waiting in the book for their market to open, per symbol",
            labels=("symbol",),
        )
        for symbol, n in (
            Order.objects.filter(status=OrderStatus.PENDING, waiting_for=Waiting.MARKET)
            .order_by()
            .values_list("symbol")
            .annotate(n=Count("id"))
            .values_list("symbol", "n")
        ):
            waiting.add_metric([symbol], n)
        yield waiting
        yield GaugeMetricFamily(
            "bronco_orders_settling_oldest_seconds",
            "How long the longest-settling order has been in SETTLING (0: none)",
            value=oldest_settling_age_seconds(),
        )
        alerts = dict.fromkeys(AlertSeverity.values, 0)
        alerts.update(
            Alert.objects.filter(resolved_at__isnull=True)
            .order_by()
            .values_list("severity")
            .annotate(n=Count("id"))
            .values_list("severity", "n")
        )
        open_alerts = GaugeMetricFamily(
            "bronco_alerts_open", "Open alerts by severity", labels=("severity",)
        )
        for severity, n in alerts.items():
            open_alerts.add_metric([severity], n)
        yield open_alerts

    def _events(self) -> Iterator[Metric]:
        pipe = metrics_redis().pipeline(transaction=False)
        for metric in EVENT_METRICS:
            pipe.hgetall(metrics_key(metric.name))
        for metric, raw in zip(EVENT_METRICS, pipe.execute(), strict=True):
            yield metric.collect(raw)

    def _listener(self) -> Iterator[Metric]:
        lag = listener_lag()
        if lag is not None:
            yield GaugeMetricFamily(
                "bronco_listener_lag_blocks",
                "Blocks between the chain head the listener saw and its checkpoint",
                value=lag,
            )

    def _reserve(self) -> Iterator[Metric]:
        status = reserve_status()
        if status is None:
            return
        for name, help_text in (
            ("balance", "USDT the vault holds"),
            ("committed", "USDT committed to refunds not yet paid"),
            ("floor", "Configured reserve floor"),
        ):
            value = status[name] if isinstance(status, dict) else getattr(status, name)
            yield GaugeMetricFamily(
                f"bronco_reserve_{name}_usdt", help_text, value=int(value) / USDT_UNIT
            )


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(BroncoCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus scrape endpoint. With METRICS_BEARER_TOKEN set, requires it."""
    token = settings.METRICS_BEARER_TOKEN
    if token:
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return HttpResponse("unauthorized\n", status=401, content_type="text/plain")
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)

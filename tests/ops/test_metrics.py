"""/metrics: state read from the database at scrape time, events counted in Redis by any
process, the Prometheus rules file only uses metrics that exist."""

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from django.conf import settings as django_settings
from prometheus_client.parser import text_string_to_metric_families

from core import metrics
from core.alerts import alert_raise
from core.metrics import (
    count_broker_error,
    count_rate_limit_wait,
    count_refund_failure,
    observe_stage,
)
from orders.models import OrderStatus
from orders.state import order_transition
from tests.factories import OrderFactory

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def metrics_prefix(settings):
    """Each test counts under its own Redis prefix (in the test Redis database)."""
    settings.METRICS_REDIS_URL = ""
    settings.METRICS_BEARER_TOKEN = ""
    settings.METRICS_KEY_PREFIX = f"bronco:test-metrics:{uuid.uuid4().hex}"
    yield settings.METRICS_KEY_PREFIX
    metrics.reset_event_metrics()


def _scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_orders_by_status_and_open_alerts_are_read_at_scrape_time(client):
    for status, n in ((OrderStatus.PENDING, 2), (OrderStatus.EXECUTED, 3)):
        for _ in range(n):
            OrderFactory(status=status)
    alert_raise(key="k1", message="m", severity="critical", source="test")
    samples = _scrape(client)
    assert samples[("bronco_orders", (("status", "PENDING"),))] == 2
    assert samples[("bronco_orders", (("status", "EXECUTED"),))] == 3
    assert samples[("bronco_orders", (("status", "FAILED"),))] == 0
    assert samples[("bronco_alerts_open", (("severity", "critical"),))] == 1
    assert samples[("bronco_orders_settling_oldest_seconds", ())] == 0
    assert samples[("bronco_metrics_source_up", (("source", "database"),))] == 1
    assert samples[("bronco_metrics_source_up", (("source", "redis"),))] == 1

    OrderFactory(status=OrderStatus.PENDING, symbol="AAPL", waiting_for="market")
    OrderFactory(status=OrderStatus.PENDING, symbol="AAPL", waiting_for="market")
    OrderFactory(status=OrderStatus.PENDING, symbol="TCEHY", waiting_for="market")
    samples = _scrape(client)
    assert samples[("bronco_orders_waiting_for_market", (("symbol", "AAPL"),))] == 2
    assert samples[("bronco_orders_waiting_for_market", (("symbol", "TCEHY"),))] == 1

    order = OrderFactory(status=OrderStatus.PENDING)
    order_transition(order=order, to_status=OrderStatus.SETTLING, actor="t", action="settle")
    samples = _scrape(client)
    assert samples[("bronco_orders", (("status", "SETTLING"),))] == 1
    assert samples[("bronco_orders_settling_oldest_seconds", ())] >= 0


def test_stage_latency_histogram_is_cumulative(client):
    for seconds in (0.03, 4, 5000):
        observe_stage("place", seconds)
    observe_stage("place", 0.2, count=2)  # two orders at once, one round trip
    observe_stage("place", 9, count=0)  # nothing to record
    observe_stage("settle", 1)
    s = _scrape(client)

    def bucket(le, stage="place"):
        return s[("bronco_stage_latency_seconds_bucket", (("le", le), ("stage", stage)))]

    assert bucket("0.05") == 1
    assert bucket("0.25") == 3
    assert bucket("5.0") == 4
    assert bucket("1800.0") == 4
    assert bucket("+Inf") == 5
    assert s[("bronco_stage_latency_seconds_count", (("stage", "place"),))] == 5
    assert s[("bronco_stage_latency_seconds_sum", (("stage", "place"),))] == pytest.approx(5004.43)
    assert bucket("+Inf", "settle") == 1


def test_counters(client):
    count_broker_error(operation="place", error="BrokerRejected")
    count_broker_error(operation="place", error="BrokerRejected")
    count_rate_limit_wait(bucket="place", seconds=0.4)
    count_refund_failure(reason="ReserveShort")
    s = _scrape(client)
    key = (("error", "BrokerRejected"), ("operation", "place"))
    assert s[("bronco_broker_errors_total", key)] == 2
    assert s[("bronco_rate_limit_waits_total", (("bucket", "place"),))] == 1
    assert s[("bronco_rate_limit_wait_seconds_total", (("bucket", "place"),))] == 0.4
    assert s[("bronco_refund_failures_total", (("reason", "ReserveShort"),))] == 1


def test_wrong_labels_are_refused():
    with pytest.raises(ValueError):
        metrics.BROKER_ERRORS.inc(operation="place")


WORKER = """
import django
django.setup()
from core.metrics import count_broker_error, observe_stage
for _ in range(3):
    count_broker_error(operation="cancel", error="BrokerUnavailable")
observe_stage("poll", 0.7)
"""


def test_events_counted_in_another_process_show_in_this_scrape(client, metrics_prefix):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="bronco_project.settings.test",
        METRICS_KEY_PREFIX=metrics_prefix,
        TEST_REDIS_URL=django_settings.REDIS_URL,
    )
    for _ in range(2):  # two separate processes, like two prefork children
        subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=env, check=True, timeout=120)
    count_broker_error(operation="cancel", error="BrokerUnavailable")  # and this one
    s = _scrape(client)
    key = (("error", "BrokerUnavailable"), ("operation", "cancel"))
    assert s[("bronco_broker_errors_total", key)] == 7
    assert s[("bronco_stage_latency_seconds_count", (("stage", "poll"),))] == 2


def test_listener_lag_gauge_from_the_chain_selector(client):
    chain_models = pytest.importorskip("chain.models")
    assert not any(name == "bronco_listener_lag_blocks" for name, _ in _scrape(client))
    chain_models.ChainCursor.objects.create(
        chain_id=django_settings.CHAIN_ID, address="0x" + "22" * 20, block_number=5, head_number=12
    )
    assert _scrape(client)[("bronco_listener_lag_blocks", ())] == 7


def test_redis_down_never_breaks_the_caller_or_the_scrape(client, settings):
    settings.METRICS_REDIS_URL = "redis://127.0.0.1:1/0"
    observe_stage("place", 1.0)
    count_broker_error(operation="place", error="X")
    s = _scrape(client)
    assert s[("bronco_metrics_source_up", (("source", "redis"),))] == 0
    assert s[("bronco_metrics_source_up", (("source", "database"),))] == 1
    settings.METRICS_REDIS_URL = ""


def test_bearer_token_when_configured(client, settings):
    settings.METRICS_BEARER_TOKEN = "scrape-token-123"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    _scrape(client, HTTP_AUTHORIZATION="Bearer scrape-token-123")


def test_prometheus_rules_parse_and_only_use_exported_metrics(client):
    promql_parser = pytest.importorskip("promql_parser")
    # Make every family appear: one event of each kind, a lag reading.
    observe_stage("place", 1)
    count_broker_error(operation="place", error="X")
    count_rate_limit_wait(bucket="place", seconds=1)
    count_refund_failure(reason="x")
    chain_models = pytest.importorskip("chain.models")
    chain_models.ChainCursor.objects.create(
        chain_id=django_settings.CHAIN_ID, address="0x" + "33" * 20, block_number=1, head_number=2
    )
    exported = {name for name, _ in _scrape(client)}
    # Present only where the refunds app provides reserve_status().
    exported |= {f"bronco_reserve_{n}_usdt" for n in ("balance", "committed", "floor")}

    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert len(rules) >= 8
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        for name in re.findall(r"\bbronco_[a-z_]+", rule["expr"]):
            assert name in exported, f"{rule['alert']} uses {name}, not exported"

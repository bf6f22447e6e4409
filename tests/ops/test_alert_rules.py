"""The alert rules against real rows; the beat task and its schedule."""

from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from core.models import Alert
from ops import alert_rules
from ops.alert_rules import evaluate_alert_rules
from orders.models import OrderStatus
from orders.state import order_transition
from tests.factories import OrderFactory

pytestmark = pytest.mark.django_db

S = OrderStatus


@pytest.fixture(autouse=True)
def _thresholds(settings):
    settings.ADMINS = []
    settings.ALERT_WEBHOOK_URL = ""
    settings.ALERT_ORDER_FAILURE_WINDOW_SECONDS = 900
    settings.ALERT_ORDER_FAILURE_RATE = 0.2
    settings.ALERT_ORDER_FAILURE_MIN_ORDERS = 5
    settings.ALERT_SETTLEMENT_LATENCY_SECONDS = 600
    settings.ALERT_LISTENER_LAG_BLOCKS = 50


def _open(key):
    return Alert.objects.filter(key=key, resolved_at__isnull=True).first()


def _finished(status, n):
    for _ in range(n):
        OrderFactory(status=status)


def test_order_failure_rate_fires_above_the_threshold_and_resolves_when_it_drops():
    _finished(S.EXECUTED, 6)
    _finished(S.CANCELED, 1)
    _finished(S.FAILED, 3)  # 3 of 10 = 30 % > 20 %
    _finished(S.PENDING, 5)  # not finished: not counted
    assert evaluate_alert_rules()["order_failure_rate"] == "firing"
    alert = _open("order_failure_rate")
    assert alert.details == {"failed": 3, "finished": 10, "rate": 0.3, "window_s": 900}
    assert "3 of 10" in alert.message

    _finished(S.EXECUTED, 10)  # 3 of 20 = 15 %
    assert evaluate_alert_rules()["order_failure_rate"] == "clear"
    assert _open("order_failure_rate") is None


def test_order_failure_rate_needs_a_minimum_of_finished_orders():
    _finished(S.FAILED, 4)
    assert evaluate_alert_rules()["order_failure_rate"] == "clear"
    assert _open("order_failure_rate") is None


def test_order_failure_rate_ignores_orders_finished_before_the_window():
    _finished(S.FAILED, 5)
    later = timezone.now() + timedelta(seconds=901)
    assert evaluate_alert_rules(now=later)["order_failure_rate"] == "clear"


def _settling_order():
    order = OrderFactory(status=S.PENDING)
    return order_transition(order=order, to_status=S.SETTLING, actor="test", action="settle")


def test_settlement_latency_fires_for_orders_settling_too_long():
    order = _settling_order()
    OrderFactory(status=S.EXECUTING)
    assert evaluate_alert_rules()["settlement_latency"] == "clear"

    later = timezone.now() + timedelta(seconds=601)
    assert evaluate_alert_rules(now=later)["settlement_latency"] == "firing"
    alert = _open("settlement_latency")
    assert alert.severity == "critical"
    assert alert.details["count"] == 1
    assert alert.details["orders"] == [{"id": order.pk, "chain_tx_hash": order.chain_tx_hash}]

    order_transition(order=order, to_status=S.EXECUTED, actor="test", action="settled")
    assert evaluate_alert_rules(now=later)["settlement_latency"] == "clear"
    assert _open("settlement_latency") is None


def test_settlement_latency_counts_from_entering_settling_not_from_the_last_update():
    order = _settling_order()
    later = timezone.now() + timedelta(seconds=601)
    # A later bookkeeping write (no status change) must not restart the clock.
    from orders.state import order_record

    order_record(
        order=order, actor="test", action="settle.bump", settlement_tx_hash="0x" + "1" * 64
    )
    assert evaluate_alert_rules(now=later)["settlement_latency"] == "firing"


def test_listener_lag_reads_the_chain_selector():
    chain_models = pytest.importorskip("chain.models")
    assert evaluate_alert_rules()["listener_lag"] == "skipped"  # the listener never ran
    cursor = chain_models.ChainCursor.objects.create(
        chain_id=django_settings.CHAIN_ID,
        address="0x" + "11" * 20,
        block_number=1000,
        head_number=1060,
    )
    assert evaluate_alert_rules()["listener_lag"] == "firing"
    assert _open("listener_lag").details == {"lag_blocks": 60, "threshold_blocks": 50}
    cursor.block_number = 1055
    cursor.save()
    assert evaluate_alert_rules()["listener_lag"] == "clear"


def _provide(monkeypatch, name, value):
    """Stand-in for a refunds selector whose real answer needs a chain."""
    monkeypatch.setattr(alert_rules, name, lambda **kw: value)


def test_reserve_rule_fires_when_balance_less_committed_is_below_the_floor(monkeypatch):
    status = {"balance": 1_000_000_000, "committed": 600_000_000, "floor": 500_000_000}
    _provide(monkeypatch, "reserve_status", status)
    assert evaluate_alert_rules()["reserve_below_floor"] == "firing"
    assert _open("reserve_below_floor").severity == "critical"
    status["committed"] = 400_000_000
    assert evaluate_alert_rules()["reserve_below_floor"] == "clear"


def test_refund_failure_rule_fires_above_the_allowed_count(monkeypatch, settings):
    settings.ALERT_REFUND_FAILURES_MAX = 1
    _provide(monkeypatch, "refund_failure_count", 2)
    assert evaluate_alert_rules()["refund_failures"] == "firing"
    assert _open("refund_failures").details["failed"] == 2


def test_a_failing_rule_does_not_stop_the_others(monkeypatch):
    def rule_broken(*, now):
        raise RuntimeError("boom")

    monkeypatch.setattr(alert_rules, "RULES", (rule_broken, alert_rules.rule_order_failure_rate))
    assert evaluate_alert_rules() == {"broken": "error", "order_failure_rate": "clear"}


def test_the_beat_task_runs_the_rules():
    from bronco_project.celery import app

    app.loader.import_default_modules()  # what a worker does: imports every app's tasks
    task = app.tasks["ops.tasks.evaluate_alert_rules"]
    _finished(S.FAILED, 5)
    result = task.apply()
    assert result.get()["order_failure_rate"] == "firing"
    assert _open("order_failure_rate") is not None

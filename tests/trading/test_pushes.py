"""Broker pushes over TCP with the unmodified SDK: handled once however many sessions hold
the account, final statuses learned from pushes (so a finished order needs no history
request), deal pushes after the order was final re-sync it at once, and the watch keeps to
its share of the history budget."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from core.models import Alert
from tests.fixtures.broker import simulator_running
from trading import order_records, services
from trading.broker import BrokerOrder, BrokerStatus, Deal
from trading.futu import FutuBroker
from trading.models import BrokerFillCorrection, BrokerOrderRecord

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]


def _wait(predicate, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_two_sessions_handle_each_push_once():
    """Both sessions receive every order update and deal (the simulator pushes to every
    subscribed connection, as OpenD does); each update is handled by exactly one of them.
    A simulator of its own: no other session of this process may claim its pushes."""
    with simulator_running() as opend:
        _two_sessions(opend)


def _two_sessions(opend) -> None:  # type: ignore[no-untyped-def]
    lock = threading.Lock()
    orders: list[tuple[str, BrokerOrder]] = []
    deals: list[tuple[str, Deal]] = []

    def session(name: str) -> FutuBroker:
        def on_order(order: BrokerOrder) -> None:
            with lock:
                orders.append((name, order))

        def on_deal(deal: Deal) -> None:
            with lock:
                deals.append((name, deal))

        return FutuBroker(
            host=opend.host,
            port=opend.port,
            acc_id=opend.acc_id,
            trade_password="123456",
            on_order_update=on_order,
            on_deal_update=on_deal,
        )

    first, second = session("first"), session("second")
    try:
        first.connect()
        second.connect()
        assert opend.control.connections() == 4
        placed = first.place_order(
            client_id="push-once",
            code="US.AAPL",
            side="BUY",
            qty=Decimal(2),
            limit_price=Decimal("191"),
        )
        # Placed and filled at once: SUBMITTED, FILLED_ALL, and one deal.
        assert _wait(lambda: len(orders) >= 2 and len(deals) >= 1)
        time.sleep(0.5)  # any duplicate would have arrived by now
    finally:
        first.close()
        second.close()
    assert [o.raw_status for _, o in orders] == ["SUBMITTED", "FILLED_ALL"]
    assert {o.broker_order_id for _, o in orders} == {placed.broker_order_id}
    assert len(deals) == 1 and deals[0][1].qty == 2


def _submit(client_id: str, qty: str = "3"):  # type: ignore[no-untyped-def]
    return services.broker_order_submit(
        client_id=client_id,
        code="US.AAPL",
        side="BUY",
        qty=Decimal(qty),
        limit_price=Decimal("191"),
    )


def test_a_final_status_learned_from_a_push_needs_no_history_request(broker_settings):
    """The order push says FILLED_ALL; the record takes it at once, so the sync of the
    finished order (gone from the open list) reads only OpenD's cache."""
    broker_settings.set_security(code="US.AAPL", fill_mode="none")
    state = _submit("push-final")
    assert state.status == BrokerStatus.WORKING
    broker_settings.fill(order_id=state.broker_order_id)
    assert _wait(lambda: BrokerOrderRecord.objects.get(client_id="push-final").status == "FILLED")
    before = broker_settings.rate_stats(kind="history_order_list")["requests"]
    synced = services.broker_order_sync(client_id="push-final")
    assert synced.status == BrokerStatus.FILLED and synced.filled_qty == 3
    assert broker_settings.rate_stats(kind="history_order_list")["requests"] == before
    # Without the push (an order that finished unseen), its deals fill it in full
    # (trading.broker.filled_by_deals): still no history request.
    BrokerOrderRecord.objects.filter(client_id="push-final").update(status="WORKING")
    assert services.broker_order_sync(client_id="push-final").status == BrokerStatus.FILLED
    assert broker_settings.rate_stats(kind="history_order_list")["requests"] == before


def test_a_deal_push_after_final_resyncs_the_order_at_once(broker_settings, monkeypatch):
    from trading import tasks

    refreshed: list[str] = []

    def run_now(client_id: str) -> None:
        refreshed.append(client_id)
        tasks.broker_order_refresh.run(client_id)

    monkeypatch.setattr(tasks.broker_order_refresh, "delay", run_now)
    state = _submit("push-deal")
    assert state.status == BrokerStatus.FILLED and state.filled_qty == 3
    (deal,) = broker_settings.deals(order_id=state.broker_order_id)
    broker_settings.change_deal(fill_id=deal["fill_id"], qty="1")
    assert _wait(lambda: BrokerFillCorrection.objects.filter(client_id="push-deal").exists())
    assert refreshed and set(refreshed) == {"push-deal"}
    case = BrokerFillCorrection.objects.get(client_id="push-deal")
    assert (case.before_qty, case.after_qty) == (Decimal(3), Decimal(1))
    assert Alert.objects.get(key="broker_fill_changed:push-deal").severity == "critical"


def test_the_watch_keeps_to_its_share_of_the_history_budget(broker_settings, settings):
    """Five finished orders: two known final (free), three whose end was not seen (one
    history request each). With a share of one per run, one of the three is synced."""
    settings.TRADING_WATCH_HISTORY_PER_RUN = 1
    for i in range(5):
        _submit(f"watch-{i}", qty="1")
    time.sleep(1.1)  # the pushes are in; past the adapter's reuse of a history listing
    BrokerOrderRecord.objects.filter(client_id__in=["watch-2", "watch-3", "watch-4"]).update(
        status="WORKING"
    )
    before = broker_settings.rate_stats(kind="history_order_list")["requests"]
    assert order_records.broker_orders_watch() == 3
    # At most the share; here none at all, as the synced order's deals fill it in full
    # (trading.broker.filled_by_deals), so the history is never asked.
    assert broker_settings.rate_stats(kind="history_order_list")["requests"] == before
    statuses = dict(BrokerOrderRecord.objects.values_list("client_id", "status"))
    assert sorted(statuses.values()).count("WORKING") == 2


def test_the_watch_is_on_beat_on_the_broker_queue(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["bronco.broker_orders_watch"]
    assert entry["task"] == "trading.tasks.broker_orders_watch"
    assert entry["schedule"] == float(settings.TRADING_WATCH_INTERVAL_SECONDS)

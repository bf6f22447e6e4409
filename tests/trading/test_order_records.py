"""Broker orders by client id against the OpenD simulator over TCP (the unmodified SDK),
under Futu's documented listing: submit never doubles, cancels are re-sent until they
take, fills come from deals and are watched after the order is final, fees are the
broker's, buying power is checked, session faults are repaired."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django.utils import timezone

from core.models import Alert
from trading import services
from trading.broker import BrokerStatus
from trading.exceptions import BrokerRejected, InsufficientBuyingPower
from trading.futu.execution import HISTORY_REUSE_SECONDS
from trading.models import BrokerFillCorrection, BrokerOrderRecord

pytestmark = [pytest.mark.broker, pytest.mark.django_db(transaction=True)]


class Crash(BaseException):
    """A worker dying right after Futu accepted (nothing after the call runs)."""


def _crash_after_place(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    placed: list[str] = []
    real = services.broker_place_order

    def place_then_crash(**kwargs):  # type: ignore[no-untyped-def]
        order = real(**kwargs)
        placed.append(order.broker_order_id)
        raise Crash

    monkeypatch.setattr(services, "broker_place_order", place_then_crash)
    return placed


def _submit(client_id: str, code: str = "US.AAPL", qty: str = "2", price: str = "191"):
    return services.broker_order_submit(
        client_id=client_id, code=code, side="BUY", qty=Decimal(qty), limit_price=Decimal(price)
    )


@pytest.mark.parametrize("fill_mode", ["full", "fail"])
def test_a_retry_after_a_crash_finds_an_order_that_finished_at_once(
    broker_settings, monkeypatch, fill_mode
):
    """Filled (or failed) at once, the order left Futu's open list before the crash: only
    the history has it, and the retry asks it because the attempt was recorded first."""
    broker_settings.set_security(code="US.AAPL", fill_mode=fill_mode)
    placed = _crash_after_place(monkeypatch)
    with pytest.raises(Crash):
        _submit("rec-crash")
    record = BrokerOrderRecord.objects.get(client_id="rec-crash")
    assert record.attempts == 1 and record.broker_order_id == ""
    # The open list (documented: unfinished orders only) no longer shows it.
    assert services.broker_list_orders() == []
    monkeypatch.undo()
    BrokerOrderRecord.objects.filter(pk=record.pk).update(attempt_lease_until=None)

    state = _submit("rec-crash")

    assert state.broker_order_id == placed[0]
    assert len(broker_settings.orders(remark="rec-crash")) == 1
    expected = BrokerStatus.FILLED if fill_mode == "full" else BrokerStatus.FAILED
    assert state.status == expected and state.is_final
    assert _submit("rec-crash").broker_order_id == placed[0]  # and again: still one
    assert len(broker_settings.orders(remark="rec-crash")) == 1


def test_the_old_lenient_listing_hid_the_doubling(broker_settings):
    """Why the history matters: a filled order is not in the documented open list, so a
    look-up there alone would place it again (the simulator's old listing showed it)."""
    first = services.broker_place_order(
        client_id="rec-len", code="US.AAPL", side="BUY", qty=Decimal(1), limit_price=Decimal(191)
    )
    assert services.get_broker().find_by_remark("rec-len") is None
    found = services.get_broker().find_by_remark("rec-len", include_history=True)
    assert found.broker_order_id == first.broker_order_id and found.status == BrokerStatus.FILLED
    broker_settings.set_lenient_listing(lenient=True)
    assert services.get_broker().find_by_remark("rec-len") is not None


def test_a_second_submit_while_one_is_in_flight_waits(broker_settings):
    from trading.exceptions import PlacementInFlight

    BrokerOrderRecord.objects.create(
        client_id="rec-busy",
        code="US.AAPL",
        side="BUY",
        qty=2,
        limit_price=191,
        attempts=1,
        first_attempt_at=timezone.now(),
        attempt_lease_until=timezone.now() + timezone.timedelta(seconds=30),
    )
    with pytest.raises(PlacementInFlight):
        _submit("rec-busy")
    assert broker_settings.orders(remark="rec-busy") == []


def test_a_rejection_is_final_and_recorded(broker_settings):
    broker_settings.set_security(code="US.AAPL", fill_mode="reject")
    with pytest.raises(BrokerRejected):
        _submit("rec-rej")
    with pytest.raises(BrokerRejected):
        _submit("rec-rej")
    assert BrokerOrderRecord.objects.get(client_id="rec-rej").status == "REJECTED"


def test_a_cancel_that_does_not_take_is_sent_again_then_alerts(broker_settings, settings):
    settings.TRADING_CANCEL_GRACE_SECONDS = 0
    settings.TRADING_CANCEL_MAX_REQUESTS = 3
    broker_settings.set_security(code="US.AAPL", fill_mode="none", cancel_mode="ignore")
    _submit("rec-cx")
    for _ in range(5):
        state = services.broker_order_cancel(client_id="rec-cx")
        assert state is not None and not state.is_final  # acknowledged, still working
    record = BrokerOrderRecord.objects.get(client_id="rec-cx")
    assert record.cancel_requests == 3
    assert broker_settings.rate_stats(kind="modify")["requests"] == 3
    assert Alert.objects.get(key="broker_cancel_stuck:rec-cx").severity == "critical"
    # The cancel finally takes: the next look sees it final.
    broker_settings.set_security(code="US.AAPL", cancel_mode="take")
    record.cancel_requests = 0
    record.save()
    assert services.broker_order_cancel(client_id="rec-cx").status == BrokerStatus.CANCELLED


def test_cancelling_an_order_known_final_reads_no_history(broker_settings):
    # As in the sync: an order that left the open list with its final status recorded (a
    # push or an earlier look) costs none of the history's 10 requests per 30 s.
    state = _submit("rec-cx-done", qty="3")
    assert state.status == BrokerStatus.FILLED
    before = broker_settings.rate_stats(kind="history_order_list")["requests"]
    for _ in range(3):
        assert services.broker_order_cancel(client_id="rec-cx-done").status == BrokerStatus.FILLED
    assert broker_settings.rate_stats(kind="history_order_list")["requests"] == before
    assert broker_settings.rate_stats(kind="modify")["requests"] == 0


def test_a_disabled_order_is_cancelled_explicitly(broker_settings):
    broker_settings.set_security(code="US.AAPL", fill_mode="none")
    state = _submit("rec-dis")
    broker_settings.set_order_status(order_id=state.broker_order_id, status="DISABLED")
    synced = services.broker_order_sync(client_id="rec-dis")
    assert synced.status == BrokerStatus.CANCELLED
    assert BrokerOrderRecord.objects.get(client_id="rec-dis").cancel_requests == 1


def test_fills_come_from_deals_and_a_reversal_after_final_opens_a_case(broker_settings):
    state = _submit("rec-rev", qty="3")
    assert state.status == BrokerStatus.FILLED and state.filled_qty == 3
    assert state.watching  # final, but its fills may still change today
    (deal,) = broker_settings.deals(order_id=state.broker_order_id)
    broker_settings.change_deal(fill_id=deal["fill_id"], qty="2")
    changed = services.broker_order_sync(client_id="rec-rev")
    assert changed.filled_qty == 2
    broker_settings.reverse_fills(order_id=state.broker_order_id)
    time.sleep(HISTORY_REUSE_SECONDS)  # the adapter reuses a history listing this long
    assert services.broker_orders_watch() == 1
    record = BrokerOrderRecord.objects.get(client_id="rec-rev")
    assert record.status == BrokerStatus.FILL_CANCELLED and record.filled_qty == 0
    cases = list(BrokerFillCorrection.objects.order_by("pk").values_list("before_qty", "after_qty"))
    assert cases == [(Decimal(3), Decimal(2)), (Decimal(2), Decimal(0))]
    assert Alert.objects.get(key="broker_fill_changed:rec-rev").severity == "critical"


def test_the_fee_is_the_brokers_itemised_figure(broker_settings):
    state = _submit("rec-fee", code="HK.00700", qty="100", price="381")
    record = BrokerOrderRecord.objects.get(client_id="rec-fee")
    items = dict((name, Decimal(v)) for name, v in record.fee_details)
    # Futu HK schedule on HKD 38,000: commission 11.40, platform 15, stamp duty 38, ...
    assert items["Commission"] == Decimal("11.40") and items["Platform Fees"] == 15
    assert items["Stamp Duty"] == 38 and items["Settlement Fees"] == 2
    assert state.fee == record.fee == sum(items.values())
    assert services.broker_order_fees(client_ids=["rec-fee"]) == {"rec-fee": record.fee}


def test_short_of_buying_power_the_order_waits_with_an_alert(broker_settings):
    broker_settings.set_cash(currency="USD", amount="100")
    with pytest.raises(InsufficientBuyingPower):
        _submit("rec-bp")
    assert broker_settings.orders(remark="rec-bp") == []
    assert Alert.objects.get(key="broker_buying_power").severity == "critical"
    broker_settings.set_cash(currency="USD", amount="100000")
    assert _submit("rec-bp").status == BrokerStatus.FILLED


def test_one_snapshot_request_quotes_many_codes(broker_settings):
    from futu.common.constant import ProtoId

    before = broker_settings.request_count(proto_id=ProtoId.Qot_GetSecuritySnapshot)
    broker_settings.set_market_open(market="HK", is_open=False)
    quotes = services.broker_quotes(codes=["US.AAPL", "US.TSLA", "HK.00700"])
    assert broker_settings.request_count(proto_id=ProtoId.Qot_GetSecuritySnapshot) == before + 1
    assert set(quotes) == {"US.AAPL", "US.TSLA", "HK.00700"}
    assert quotes["US.AAPL"].market_open and not quotes["HK.00700"].market_open
    assert quotes["HK.00700"].lot_size == 100 and quotes["HK.00700"].tick_size > 0


@pytest.mark.parametrize("session", ["RTH", "ETH"])
def test_every_us_order_carries_the_configured_session(broker_settings, settings, session):
    from trading.session import reset_broker

    settings.FUTU_US_SESSION = session
    reset_broker()
    _submit(f"rec-session-{session}")
    (order,) = broker_settings.orders(remark=f"rec-session-{session}")
    assert order["session"] == session

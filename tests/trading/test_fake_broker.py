"""The in-memory fake broker: it satisfies both broker protocols with the adapter's call
shapes, behaves as scripted, is what `TRADING_BROKER_FACTORY` selects (pushes included),
works under the trading services and the place stage, and production refuses it."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from tests.fakes.broker import FAKE_BROKER_FACTORY, FakeBroker
from trading import pricing, services
from trading.broker import (
    Broker,
    BrokerOrder,
    BrokerStatus,
    ExecutionVenue,
    Quote,
    QuoteSource,
    Side,
)
from trading.exceptions import (
    BrokerRejected,
    BrokerUnavailable,
    InsufficientBuyingPower,
    NoQuote,
    RateLimited,
)
from trading.futu import FutuBroker
from trading.session import get_broker, reset_broker

ROOT = Path(__file__).resolve().parents[2]


def _placed_fake(**kwargs: object) -> tuple[FakeBroker, BrokerOrder]:
    fake = FakeBroker(**kwargs)  # type: ignore[arg-type]
    fake.set_quote("US.AAPL", "190")
    order = fake.place_order(
        client_id="c-1", code="US.AAPL", side=Side.BUY, qty=Decimal(10), limit_price=Decimal("191")
    )
    return fake, order


# --- protocols ---------------------------------------------------------------------------


def test_fake_and_futu_adapter_satisfy_both_protocols():
    fake = FakeBroker()
    futu = FutuBroker(host="127.0.0.1", port=1)  # never connects: construction is offline
    for broker in (fake, futu):
        assert isinstance(broker, QuoteSource)
        assert isinstance(broker, ExecutionVenue)
        assert isinstance(broker, Broker)


def test_protocol_checks_can_fail():
    class QuotesOnly:
        def quote(self, code: str) -> Quote:
            raise NoQuote(code)

        def quotes(self, codes: list[str]) -> dict[str, Quote]:
            return {}

    assert isinstance(QuotesOnly(), QuoteSource)
    assert not isinstance(QuotesOnly(), ExecutionVenue)
    assert not isinstance(QuotesOnly(), Broker)


def _protocol_methods(protocol: type) -> list[str]:
    return sorted(
        name
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    )


@pytest.mark.parametrize("implementation", [FakeBroker, FutuBroker])
def test_call_shapes_match_the_protocols(implementation):
    """isinstance only checks names; callers also rely on keyword names and defaults."""
    methods = [
        name for proto in (QuoteSource, ExecutionVenue, Broker) for name in _protocol_methods(proto)
    ]
    assert {"quote", "place_order", "query_order", "find_by_remark", "close"} <= set(methods)
    for name in methods:
        want = inspect.signature(getattr(Broker, name)).parameters
        have = inspect.signature(getattr(implementation, name)).parameters
        assert [(p.name, p.kind, p.default) for p in want.values()] == [
            (p.name, p.kind, p.default) for p in have.values()
        ], f"{implementation.__name__}.{name}"


# --- scripted behaviour ------------------------------------------------------------------


def test_quote_as_set_unknown_and_scripted_failure():
    fake = FakeBroker()
    fake.set_quote("HK.00700", "381.4", lot_size=100, tick_size="0.2")
    fake.set_quote("US.AAPL", "190", market_open=False)
    quote = fake.quote("HK.00700")
    assert (quote.price, quote.lot_size, quote.tick_size) == (Decimal("381.4"), 100, Decimal("0.2"))
    assert quote.currency == "HKD" and quote.market_open and quote.market_state == "AFTERNOON"
    closed = fake.quote("US.AAPL")
    assert closed.currency == "USD" and not closed.market_open and closed.market_state == "CLOSED"
    with pytest.raises(NoQuote):
        fake.quote("US.NOPE")
    fake.fail_next("quote", BrokerUnavailable("down"))
    with pytest.raises(BrokerUnavailable):
        fake.quote("US.AAPL")
    assert fake.quote("US.AAPL") == closed  # the failure was for one call only
    assert [c.kwargs["code"] for c in fake.calls_to("quote")] == [
        "HK.00700",
        "US.AAPL",
        "US.NOPE",
        "US.AAPL",
        "US.AAPL",
    ]


def test_place_rests_and_is_idempotent_by_client_id():
    fake, order = _placed_fake()
    assert order.status == BrokerStatus.WORKING and order.raw_status == "SUBMITTED"
    assert order.client_id == "c-1" and order.filled_qty == 0 and order.avg_fill_price is None
    again = fake.place_order(
        client_id="c-1", code="US.AAPL", side="BUY", qty=Decimal(10), limit_price=Decimal("191")
    )
    assert again == order
    assert len(fake.calls_to("place_order")) == 2
    assert fake.placed == [order]  # one placement reached the broker
    assert fake.query_order(client_id="c-1") == order
    assert fake.query_order(broker_order_id=order.broker_order_id) == order
    assert fake.list_orders() == [order]


@pytest.mark.parametrize(
    "script, error",
    [
        (lambda f: f.reject_next_place("risk control"), BrokerRejected),
        (lambda f: f.rate_limit_next_place(2.5), RateLimited),
        (lambda f: f.unavailable_next_place(), BrokerUnavailable),
    ],
)
def test_next_placement_fails_as_scripted_then_places(script, error):
    fake = FakeBroker()
    fake.set_quote("US.AAPL", "190")
    script(fake)
    args = dict(client_id="c-x", code="US.AAPL", side=Side.BUY, qty=Decimal(1))
    with pytest.raises(error) as info:
        fake.place_order(**args, limit_price=Decimal("191"))
    if error is RateLimited:
        assert info.value.retry_after == 2.5
    assert fake.placed == [] and fake.query_order(client_id="c-x") is None
    order = fake.place_order(**args, limit_price=Decimal("191"))
    assert fake.placed == [order]


def test_accepted_then_unavailable_is_adopted_on_retry():
    fake = FakeBroker()
    fake.set_quote("US.AAPL", "190")
    fake.unavailable_next_place(after_accept=True)
    args = dict(client_id="c-lost-answer", code="US.AAPL", side=Side.BUY, qty=Decimal(1))
    with pytest.raises(BrokerUnavailable):
        fake.place_order(**args, limit_price=Decimal("191"))
    assert len(fake.placed) == 1  # the broker has it; the caller never heard
    retried = fake.place_order(**args, limit_price=Decimal("191"))
    assert retried.broker_order_id == fake.placed[0].broker_order_id
    assert len(fake.placed) == 1


def test_venue_checks_reject_like_futu():
    fake = FakeBroker(cash={"USD": "1000", "HKD": "0"})
    fake.set_quote("HK.00700", "381.4", lot_size=100, tick_size="0.2")
    fake.set_quote("US.AAPL", "190")
    cases = [
        ("HK.00700", Side.BUY, "50", "381.4", "lot size"),
        ("HK.00700", Side.BUY, "100", "381.5", "price step"),
        # Short of buying power is the account's state, not a rejection: the order waits.
        ("HK.00700", Side.BUY, "100", "381.4", "buying power", InsufficientBuyingPower),
        ("US.AAPL", Side.BUY, "6", "190", "buying power", InsufficientBuyingPower),
        ("US.AAPL", Side.SELL, "1", "190", "sellable"),
        ("US.NOPE", Side.BUY, "1", "1", "unknown security"),
        ("US.AAPL", Side.BUY, "0", "190", "positive"),
    ]
    for i, (code, side, qty, price, reason, *error) in enumerate(cases):
        with pytest.raises(error[0] if error else BrokerRejected, match=reason):
            fake.place_order(
                client_id=f"r-{i}",
                code=code,
                side=side,
                qty=Decimal(qty),
                limit_price=Decimal(price),
            )
    assert fake.placed == []
    fake.place_order(
        client_id="ok", code="US.AAPL", side=Side.BUY, qty=Decimal(5), limit_price=Decimal("190")
    )
    # The first froze 950 of the 1000: 51 more is over the buying power, 50 is not.
    with pytest.raises(InsufficientBuyingPower, match="buying power"):
        fake.place_order(
            client_id="ok-2", code="US.AAPL", side=Side.BUY, qty=Decimal(1), limit_price=Decimal(51)
        )
    fake.place_order(
        client_id="ok-3", code="US.AAPL", side=Side.BUY, qty=Decimal(1), limit_price=Decimal(50)
    )
    assert len(fake.placed) == 2


def test_partial_fills_at_prices_then_the_rest_move_cash_and_positions():
    fake, order = _placed_fake()
    before = fake.funds()
    assert before.frozen_cash == Decimal(1910) and before.power == before.cash - 1910
    part = fake.fill(order.broker_order_id, qty=4, price="189.5")
    assert part.status == BrokerStatus.PARTIALLY_FILLED and part.raw_status == "FILLED_PART"
    assert part.filled_qty == 4 and part.avg_fill_price == Decimal("189.5")
    done = fake.fill(order.broker_order_id, price="190.5")
    assert done.status == BrokerStatus.FILLED and done.is_final and done.raw_status == "FILLED_ALL"
    assert done.filled_qty == 10
    assert done.avg_fill_price == (4 * Decimal("189.5") + 6 * Decimal("190.5")) / 10
    after = fake.funds()
    assert after.cash == before.cash - 4 * Decimal("189.5") - 6 * Decimal("190.5")
    assert after.frozen_cash == 0
    assert after.market_value == 10 * Decimal(190)
    [position] = fake.positions()
    assert (position.code, position.qty, position.can_sell_qty) == ("US.AAPL", 10, 10)
    assert position.cost_price == done.avg_fill_price and position.currency == "USD"
    with pytest.raises(ValueError, match="cannot fill"):
        fake.fill(order.broker_order_id)


def test_sell_locks_shares_and_pays_cash():
    fake = FakeBroker()
    fake.set_quote("US.AAPL", "190")
    fake.set_position("US.AAPL", 10, cost_price="150")
    cash = fake.funds().cash
    sell = fake.place_order(
        client_id="s-1", code="US.AAPL", side="SELL", qty=Decimal(4), limit_price=Decimal("189")
    )
    assert sell.side == Side.SELL
    assert fake.positions()[0].can_sell_qty == 6
    fake.fill(sell.broker_order_id)
    [position] = fake.positions()
    assert (position.qty, position.can_sell_qty, position.cost_price) == (6, 6, Decimal(150))
    assert fake.funds().cash == cash + 4 * Decimal(189)


def test_fill_crossing_orders_fills_at_the_quote():
    fake = FakeBroker(fill_crossing_orders=True)
    fake.set_quote("US.AAPL", "190")
    crossing = fake.place_order(
        client_id="x", code="US.AAPL", side="BUY", qty=Decimal(3), limit_price=Decimal("191")
    )
    resting = fake.place_order(
        client_id="y", code="US.AAPL", side="BUY", qty=Decimal(3), limit_price=Decimal("185")
    )
    assert crossing.status == BrokerStatus.FILLED and crossing.avg_fill_price == Decimal(190)
    assert resting.status == BrokerStatus.WORKING


def test_cancel_is_idempotent_and_can_be_held():
    fake, order = _placed_fake()
    fake.fill(order.broker_order_id, qty=2)
    cancelled = fake.cancel_order(broker_order_id=order.broker_order_id)
    assert cancelled.status == BrokerStatus.CANCELLED and cancelled.raw_status == "CANCELLED_PART"
    assert cancelled.filled_qty == 2
    assert fake.cancel_order(broker_order_id=order.broker_order_id) == cancelled
    with pytest.raises(BrokerRejected, match="does not exist"):
        fake.cancel_order(broker_order_id="999")

    second = fake.place_order(
        client_id="c-2", code="US.AAPL", side="BUY", qty=Decimal(1), limit_price=Decimal("191")
    )
    fake.hold_next_cancel()
    held = fake.cancel_order(broker_order_id=second.broker_order_id)
    assert held.status == BrokerStatus.CANCELLING and not held.is_final
    assert fake.cancel(second.broker_order_id).raw_status == "CANCELLED_ALL"


def test_broker_side_failure_and_lost_order():
    fake, order = _placed_fake()
    failed = fake.fail(order.broker_order_id, "exchange rejected")
    assert failed.status == BrokerStatus.FAILED and failed.last_error == "exchange rejected"
    fake.lose(order.broker_order_id)
    assert fake.query_order(broker_order_id=order.broker_order_id) is None
    assert fake.query_order(client_id="c-1") is None
    assert fake.list_orders() == []
    with pytest.raises(BrokerRejected):
        fake.cancel_order(broker_order_id=order.broker_order_id)


def test_remark_look_up_sees_past_days_only_with_history():
    fake, order = _placed_fake()
    fake.roll_day()
    expired = fake.query_order(client_id="c-1", include_history=True)
    assert expired is not None and expired.broker_order_id == order.broker_order_id
    assert expired.status == BrokerStatus.CANCELLED  # a DAY order does not outlive its day
    assert fake.query_order(client_id="c-1", include_history=False) is None
    assert fake.find_by_remark("c-1") is None
    assert fake.find_by_remark("c-1", include_history=True) == expired
    assert fake.find_by_remark("c-1", code="US.TSLA", include_history=True) is None
    assert fake.list_orders() == []
    # As at Futu, placing only looks at today's orders: the old client id places again.
    again = fake.place_order(
        client_id="c-1", code="US.AAPL", side="BUY", qty=Decimal(1), limit_price=Decimal("191")
    )
    assert again.broker_order_id != order.broker_order_id and len(fake.placed) == 2
    assert fake.query_order(client_id="c-1") == again  # today's first


def test_every_update_is_pushed_in_order_on_another_thread():
    seen: list[tuple[str, str]] = []
    threads: set[threading.Thread] = set()

    def on_update(order: BrokerOrder) -> None:
        seen.append((order.client_id, order.raw_status))
        threads.add(threading.current_thread())

    fake, order = _placed_fake(on_order_update=on_update)
    fake.fill(order.broker_order_id, qty=3)
    fake.fill(order.broker_order_id)
    assert seen == [("c-1", "SUBMITTED"), ("c-1", "FILLED_PART"), ("c-1", "FILLED_ALL")]
    assert threading.current_thread() not in threads
    assert [o.raw_status for o in fake.pushes] == [status for _, status in seen]


# --- selected by the setting -------------------------------------------------------------


@pytest.mark.django_db  # the orders app's push callback looks the order up
def test_the_setting_selects_the_fake_and_pushes_reach_registered_callbacks(settings):
    seen: list[BrokerOrder] = []
    settings.TRADING_BROKER_FACTORY = FAKE_BROKER_FACTORY
    reset_broker()
    services.register_order_update_callback(seen.append)
    try:
        fake = get_broker()
        assert isinstance(fake, FakeBroker) and get_broker() is fake
        fake.set_quote("US.AAPL", "190")
        order = services.broker_place_order(
            client_id="c-s", code="US.AAPL", side="BUY", qty=Decimal(2), limit_price=Decimal(191)
        )
        fake.fill(order.broker_order_id)
        assert [o.raw_status for o in seen] == ["SUBMITTED", "FILLED_ALL"]
        assert services.broker_query_order(client_id="c-s").filled_qty == 2
    finally:
        services.unregister_order_update_callback(seen.append)
        reset_broker()
    assert fake.closed == 1  # reset_broker closed it
    settings.TRADING_BROKER_FACTORY = "trading.futu.futu_broker_from_settings"
    assert isinstance(get_broker(), FutuBroker)  # a changed setting gives a new broker
    reset_broker()


@pytest.mark.django_db  # the orders app's push callback looks the order up
def test_trading_services_work_over_the_fake(fake_broker):
    fake_broker.set_quote("HK.00700", "381.4", lot_size=100, tick_size="0.2")
    limit = pricing.buy_limit_price(services.broker_quote(code="HK.00700"))
    assert limit == Decimal("383.4")  # on the quote's own tick
    order = services.broker_place_order(
        client_id="c-svc", code="HK.00700", side="BUY", qty=Decimal(200), limit_price=limit
    )
    fake_broker.fill(order.broker_order_id, qty=100, price="381.4")
    cancelled = services.broker_cancel_order(client_id="c-svc")
    assert cancelled.status == BrokerStatus.CANCELLED and cancelled.filled_qty == 100
    assert services.broker_cancel_order(client_id="c-svc") == cancelled  # final: no new cancel
    assert len(fake_broker.calls_to("cancel_order")) == 1
    with pytest.raises(BrokerRejected):
        services.broker_cancel_order(client_id="never-placed")
    assert services.broker_list_orders() == []  # the open list: unfinished orders only
    assert [o.client_id for o in services.broker_list_orders(include_finished=True)] == ["c-svc"]
    assert services.broker_positions()[0].qty == 100
    assert services.broker_funds(currency="HKD").cash == Decimal(10_000_000) - 100 * Decimal(
        "381.4"
    )


# --- production refuses it ---------------------------------------------------------------

PRODUCTION_ENV = {
    "BRONCO_ENV": "production",
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "k" * 50,
    "DATABASE_URL": "postgres://bronco:pw@db/bronco",
    "VAULT_ADDR": "https://vault.internal:8200",
    "VAULT_TOKEN": "s.token",
}


def _load_production_settings(**extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DATABASE_", "VAULT_", "TRADING_", "BRONCO_"))
    }
    env.update(PRODUCTION_ENV, **extra)
    return subprocess.run(
        [sys.executable, "-c", "import bronco_project.settings.production"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_any_broker_factory_but_futus():
    good = _load_production_settings()
    assert good.returncode == 0, good.stderr  # otherwise production-ready: only this differs
    proc = _load_production_settings(TRADING_BROKER_FACTORY=FAKE_BROKER_FACTORY)
    assert proc.returncode != 0
    assert "refuses to start" in proc.stderr
    assert "TRADING_BROKER_FACTORY" in proc.stderr and FAKE_BROKER_FACTORY in proc.stderr
